"""Event time: revisions, late input, idle watermarks, dedup horizon, bounded state."""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from dataclasses import replace
from typing import Any

import msgspec
import orjson
import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.clock import Watermark, hold, unhold
from metrics.constants import NEVER
from metrics.engine import EngineConfig, KpiEngine
from metrics.errors import StateError
from metrics.events import Event, parse_event
from metrics.feed import copy_for_accounts
from tests.helpers import DEFAULT_CATALOG, final_values, ms, replay

T0 = ms("2026-11-01T00:00:00+00:00")
MIN = 60_000
NOW = T0 + 400 * 86_400_000
_ids = itertools.count()


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def sent(at: int, campaign: str = "c1", eid: str | None = None) -> Event:
    ev = parse_event(orjson.dumps({
        "event_id": eid or f"e{next(_ids)}", "type": "email.sent", "ts": at,
        "campaign_id": campaign, "contact_id": f"p{next(_ids)}"}), now_ms=NOW)
    assert isinstance(ev, Event)
    return ev


def engine(clock: Clock | None = None, idle_ms: int = 0, **cfg: Any) -> KpiEngine:
    return KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=idle_ms, **cfg),
                     clock=clock)


def open_rate_5m(records: list[dict[str, Any]], end: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kpi"] == "email_open_rate" and r["window"] == "5m"
            and r["dims"] == {} and r["end"] == end]


def test_window_closes_at_end_plus_grace_and_is_final() -> None:
    e = engine()
    e.ingest(sent(T0 + 10_000))
    e.ingest(sent(T0 + MIN + 2 * MIN - 1))  # watermark just before 00:01 + 2 min grace
    assert open_rate_5m(e.advance(), "2026-11-01T00:01:00Z") == []
    e.ingest(sent(T0 + 3 * MIN))  # reaches end + grace
    (rec,) = open_rate_5m(e.advance(), "2026-11-01T00:01:00Z")
    assert rec["final"] is True and rec["revision"] == 0 and rec["denominator"] == 1


def test_late_event_within_grace_of_a_longer_window_revises_the_closed_one() -> None:
    e = engine()
    e.ingest(sent(T0 + 10_000))
    e.ingest(sent(T0 + 10 * MIN))
    first = open_rate_5m(e.advance(), "2026-11-01T00:01:00Z")
    assert [r["denominator"] for r in first] == [1]
    # 9 minutes late: its 5 m windows up to 00:06 are closed, but the 1 h window is open,
    # so the event counts and the closed 5 m windows are republished
    assert e.ingest(sent(T0 + 20_000)) == "ok"
    revised = open_rate_5m(e.advance(), "2026-11-01T00:01:00Z")
    assert [(r["denominator"], r["revision"]) for r in revised] == [(2, 1)]


def test_event_beyond_every_window_is_late_and_not_counted() -> None:
    e = engine()
    e.ingest(sent(T0))
    e.ingest(sent(T0 + 26 * 3_600_000))
    e.advance()
    assert e.ingest(sent(T0 + 30_000)) == "late"  # its 24 h windows have all closed
    assert e.late_total["email"] == 1
    assert e.events_total["email.sent"] == 2


def test_duplicates_are_ignored_within_the_horizon_and_counted_again_after() -> None:
    """The horizon is the configured one, but never shorter than what the family still
    accepts (24 h + 2 min of grace for email): a duplicate of an accepted event never
    counts twice."""
    e = engine(dedup_horizon_ms=2 * 3_600_000)
    assert e.ingest(sent(T0, eid="same")) == "ok"
    assert e.ingest(sent(T0 + MIN, eid="same")) == "duplicate"
    assert e.duplicates_total == 1
    for h in range(1, 25):  # 24 hours on: within the family's reach, still a duplicate
        e.ingest(sent(T0 + h * 3_600_000))
        e.advance()
    assert e.ingest(sent(T0 + 24 * 3_600_000 + MIN, eid="same")) == "duplicate"
    for h in range(25, 28):  # beyond it, the id expired
        e.ingest(sent(T0 + h * 3_600_000))
        e.advance()
    assert e.ingest(sent(T0 + 27 * 3_600_000 + MIN, eid="same")) == "ok"


def test_idle_family_watermark_moves_with_the_injected_clock() -> None:
    clock = Clock(T0)
    e = engine(clock, idle_ms=30_000)
    e.ingest(sent(T0))
    e.advance()
    wm = e.watermarks["email"].value
    clock.t += 10_000
    e.advance()
    assert e.watermarks["email"].value == wm  # not idle yet
    clock.t += 5 * MIN  # quiet for 5 min 10 s: event time follows the wall clock
    records = e.advance()
    assert e.watermarks["email"].value == wm + 5 * MIN + 10_000
    assert open_rate_5m(records, "2026-11-01T00:01:00Z")  # closed without new events


def test_idle_advance_can_be_turned_off() -> None:
    clock = Clock(T0)
    e = engine(clock, idle_ms=0)
    e.ingest(sent(T0))
    e.advance()
    clock.t += 3_600_000
    e.advance()
    assert e.watermarks["email"].value == T0


def test_watermark_is_the_minimum_over_sources() -> None:
    e = engine()
    e.assign_source("email", "p0")
    e.assign_source("email", "p1")
    e.ingest(sent(T0 + 10 * MIN), source="p0")
    e.advance()
    assert open_rate_5m(e.advance(), "2026-11-01T00:01:00Z") == []  # p1 holds it back
    assert e.watermarks["email"].spoken() == ["p0"]  # what p0 brings next is held too
    assert e.watermarks["email"].awaited() == ["p1"]  # what it waits for
    e.ingest(sent(T0 + MIN), source="p1")
    assert e.watermarks["email"].value == T0 + MIN
    assert e.watermarks["email"].spoken() == []  # known: nothing more is held
    assert e.watermarks["email"].awaited() == []
    # p1 lags 9 minutes behind p0: an event it delivers at 00:02 is not late
    assert e.ingest(sent(T0 + 2 * MIN), source="p1") == "ok"
    e.forget_source("p1")  # revoked: it no longer holds the watermark back
    e.ingest(sent(T0 + 11 * MIN), source="p0")
    assert e.watermarks["email"].value == T0 + 11 * MIN


def test_state_stays_flat_on_an_endless_stream() -> None:
    """40 days of steady traffic, past every state horizon (the pipeline's and the accounts
    stage's set to 30 d + 1 h here, 7 d for dedup): each state size at days 34, 37 and 40
    stays within 15 % of day 31. (The default 365 d horizons bound it the same way, a year
    on.)"""
    day_ms = 86_400_000
    gen = Generator(GeneratorConfig(rate=0.1, duration_s=40 * 86_400, seed=3, history_days=0))
    fams = DEFAULT_CATALOG.families
    catalog = replace(DEFAULT_CATALOG, families={
        **fams, "crm": replace(fams["crm"], horizon_ms=0),
        "accounts": replace(fams["accounts"], horizon_ms=0)})
    e = KpiEngine(catalog, EngineConfig(idle_timeout_ms=0))
    sizes: dict[int, dict[str, int]] = {}
    checkpoints = [31 * day_ms, 34 * day_ms, 37 * day_ms, 40 * day_ms - 3_600_000]
    for ts, (_, raw) in gen.messages():
        ev = parse_event(raw, now_ms=NOW)
        assert isinstance(ev, Event)
        e.ingest(ev)
        if e.due:
            e.advance()
        if checkpoints and ts - gen.cfg.start_ms >= checkpoints[0]:
            sizes[checkpoints.pop(0)] = e.state_sizes()
    assert not checkpoints
    base = sizes[31 * day_ms]
    assert base["pipeline"] > 1000 and base["dedup_ids"] > 10_000
    for cp, s in sizes.items():
        for name, n in s.items():
            if name == "lead_scoring":  # its horizons are its own (lookback, within: 90 d),
                continue  # flat past them: tests/unit/trackers/test_lead_scoring.py
            assert n <= max(base[name] * 1.15, base[name] + 50), (cp // day_ms, name, n,
                                                                  base[name])


def test_a_quiet_partition_stops_holding_the_watermark() -> None:
    clock = Clock(T0)
    e = engine(clock, idle_ms=30_000)
    e.assign_source("email", "p0")
    e.assign_source("email", "p1")  # never delivers
    e.ingest(sent(T0 + MIN), source="p0")
    e.ingest(sent(T0 + 10 * MIN), source="p0")
    assert e.advance() == []
    assert e.watermarks["email"].value < T0  # p1 holds it back: nothing closes
    clock.t += 20_000
    e.ingest(sent(T0 + 11 * MIN), source="p0")
    e.advance()
    clock.t += 15_000  # p1 quiet for 35 s, p0 active 15 s ago
    e.ingest(sent(T0 + 12 * MIN), source="p0")
    records = e.advance()
    assert e.watermarks["email"].value == T0 + 12 * MIN
    (rec,) = open_rate_5m(records, "2026-11-01T00:02:00Z")
    assert rec["denominator"] == 1


def test_a_family_whose_sources_all_go_quiet_at_once_still_starts() -> None:
    """One partition delivered, then it and the silent ones are found idle in the same
    check: the watermark starts from what was delivered instead of staying unknown."""
    clock = Clock(0)
    e = engine(clock, idle_ms=1_000)
    for p in range(4):
        e.assign_source("email", p)
    clock.t = 400
    assert e.ingest(sent(T0), source=0) == "held"
    clock.t = 450
    e.advance()  # stamps partition 0's activity at 450
    clock.t = 5_000  # all four are quiet for over 1 s, found in one check
    e.advance()
    assert e.held_total == 0
    assert e.watermarks["email"].value == T0
    assert e.events_total == {"email.sent": 1}


def test_an_old_first_event_of_one_partition_is_counted_as_replay_counts_it() -> None:
    """Partition p1 delivers a 40-day-old event first. It arrived before anything ahead of it
    on its own partition, as it comes first in the file replay reads: counted, not late.
    Closing the 40 days of empty windows between costs nothing."""
    e = engine()
    e.assign_source("email", "p0")
    e.assign_source("email", "p1")
    assert e.ingest(sent(T0 - 40 * 86_400_000), source="p1") == "held"
    e.ingest(sent(T0 + MIN), source="p1")
    assert e.ingest(sent(T0), source="p0") == "ok"  # the watermark is known: the family starts
    assert e.late_total["email"] == 0
    assert e.events_total == {"email.sent": 3}
    old = [r for r in e.advance() if r["kpi"] == "email_open_rate" and r["window"] == "24h"
           and r["dims"] == {} and r["denominator"]]
    assert old and old[0]["end"] < "2026-09-23"


def test_an_ancient_event_that_reached_the_broker_last_is_late_even_as_a_first() -> None:
    """A 40-day-old event produced after the others (replay reads it below them) is late,
    though it is the first one its partition delivers; read in the other order, the
    arrival stamps still put it last."""
    for first in ("p1", "p0"):
        e = engine()
        e.assign_source("email", "p0")
        e.assign_source("email", "p1")
        old = (sent(T0 - 40 * 86_400_000), "p1", 2)
        new = [(sent(T0), "p0", 0), (sent(T0 + MIN), "p0", 1)]
        for ev, src, arrival in ([old, *new] if first == "p1" else [*new, old]):
            e.ingest(ev, source=src, arrival=arrival)
        assert e.late_total["email"] == 1, first
        assert e.events_total == {"email.sent": 2}


def spend_line(eid: str, at: int, channel: str = "paid_search") -> bytes:
    return orjson.dumps({"event_id": eid, "type": "spend.recorded", "ts": at,
                         "amount": 100.0, "channel": channel})


def test_held_events_are_not_late_when_partitions_fill_unevenly() -> None:
    """Issue 16: three spend events land on three of four partitions; much later one event
    per partition comes 40 days ahead. Whichever partition speaks last, and in whatever
    order the partitions are read, the finals equal replay's: the early spend, which reached
    the broker first, is counted in its CPL/ROMI windows; nothing goes to kpi-late."""
    day = 86_400_000
    early = [spend_line(f"s{i}", T0 + i * MIN) for i in range(3)]
    ahead = [spend_line(f"f{p}", T0 + 40 * day + p * MIN) for p in range(4)]
    oracle = final_values(replay(early + ahead, now_ms=NOW))
    spent = [r for r in oracle.values() if r["kpi"] == "cost_per_lead"
             and r["window"] == "30d" and r["dims"] == {} and r["numerator"] == 300]
    assert spent  # replay counts the early spend
    # (arrival at the broker, the event): the early ones were produced first
    partitions: dict[int, list[tuple[int, bytes]]] = {0: [(0, early[0])], 1: [(1, early[1])],
                                                     2: [(2, early[2])], 3: []}
    for p in range(4):
        partitions[p].append((12_000 + p, ahead[p]))
    for order in itertools.permutations(range(4)):
        e = engine()
        for p in range(4):
            e.assign_source("spend", p)
        records = []
        # each partition in turn delivers everything it holds (a consumer's fetch)
        for p in order:
            for arrival, raw in partitions[p]:
                ev = parse_event(raw, now_ms=NOW)
                assert isinstance(ev, Event)
                assert e.ingest(ev, source=p, arrival=arrival) != "late"
                records += e.advance()
        records += e.flush()
        assert e.late_total["spend"] == 0, order
        assert final_values(records) == oracle, order


def deal(at: int, eid: str, deal_id: str, stage: str, amount: float | None = None) -> Event:
    body: dict[str, Any] = {"event_id": eid, "type": "deal.stage_changed", "ts": at,
                            "deal_id": deal_id, "stage": stage, "lead_id": f"l-{deal_id}"}
    if amount is not None:
        body["amount"] = amount
    ev = parse_event(orjson.dumps(body), now_ms=NOW)
    assert isinstance(ev, Event)
    return ev


def test_a_won_deal_resent_ten_days_on_counts_once_whatever_the_partition_order() -> None:
    """A long B2B cycle: the CRM resends a deal's 'won' event when the deal is touched ten
    days later. CRM windows reach 30 days back, so the event is still accepted: its
    duplicate must be found, though the configured dedup horizon is 7 days. Read in either
    partition order, the won count and amount are the same."""
    day = 86_400_000
    won = deal(T0, "won-1", "d1", "won", 5000.0)
    later = [deal(T0 + k * day, f"tick-{k}", f"other-{k}", "lead") for k in range(1, 11)]
    resent = deal(T0, "won-1", "d1", "won", 5000.0)  # same event id, same event
    results = []
    for order in ((0, 1), (1, 0)):
        e = engine(dedup_horizon_ms=7 * day)
        e.assign_source("crm", order[0])
        e.assign_source("crm", order[1])
        e.ingest(won, order[0])
        for ev in later:  # both partitions move on, ten days of event time
            e.ingest(ev, order[0])
            e.ingest(deal(ev.ts_ms, ev.event_id + "b", ev.data.deal_id + "b", "lead"), order[1])
            e.advance()
        status = e.ingest(resent, order[1])
        results.append((status, e.duplicates_total, e.events_total["deal.stage_changed"]))
    assert results[0] == results[1] == ("duplicate", 1, 21)


def test_same_millisecond_arrivals_are_not_late_behind_each_other() -> None:
    """A producer sends thousands of records in one millisecond. While the family is held,
    one partition is read to its end, a sentinel a day ahead, and its same-millisecond
    neighbours on the silent partitions come after it: order unknown, so none is late
    behind it (each was counted by replay, which read them above the sentinel)."""
    day = 86_400_000
    for order in itertools.permutations(range(3)):
        e = engine()
        for p in range(3):
            e.assign_source("email", p)
        ahead = (sent(T0 + day + 5 * MIN, eid="ahead"), 0, 7)
        normal = [(sent(T0 + p * MIN, eid=f"n{p}"), p, 7) for p in range(1, 3)]
        by_source = {0: [(sent(T0, eid="n0"), 0, 6), ahead], 1: [normal[0]], 2: [normal[1]]}
        for p in order:
            for ev, src, arrival in by_source[p]:
                e.ingest(ev, source=src, arrival=arrival)
        e.advance()
        assert e.late_total["email"] == 0, order
        assert e.events_total == {"email.sent": 4}, order


def test_within_one_millisecond_an_event_is_late_behind_its_own_partition() -> None:
    """The generator's late lead: produced with a dozen others in one millisecond, 40 days
    older than those before it on its own partition. Replay finds it late; so does the
    worker, whichever partitions it reads first, while the family is still held. The same
    event alone on a partition of its own, behind only other partitions' events of that
    millisecond, cannot be proved late: counted, as before."""
    day = 86_400_000
    for order in itertools.permutations(range(3)):
        e = engine()
        for p in range(4):  # partition 3 speaks last: all the others are held until then
            e.assign_source("email", p)
        by_source = {0: [(sent(T0, eid="a"), 0, 7), (sent(T0 - 40 * day, eid="old"), 0, 7)],
                     1: [(sent(T0 + MIN, eid="b"), 1, 7)],
                     2: [(sent(T0 - 40 * day, eid="first-on-2"), 2, 7),
                         (sent(T0 + 2 * MIN, eid="c"), 2, 8)]}
        for p in order:
            for ev, src, arrival in by_source[p]:
                assert e.ingest(ev, source=src, arrival=arrival) == "held"
        e.ingest(sent(T0 + 3 * MIN, eid="d"), source=3, arrival=9)
        e.advance()
        # "old" follows "a" on partition 0; "first-on-2" is first on its partition
        assert e.late_total["email"] == 1, order
        assert e.events_total == {"email.sent": 5}, order


def test_held_events_keep_their_source_through_a_snapshot() -> None:
    e = engine()
    e.assign_source("email", ("t", 0))
    e.assign_source("email", ("t", 1))
    e.ingest(sent(T0, eid="a"), source=("t", 0), arrival=7)
    e.ingest(sent(T0 - 40 * 86_400_000, eid="old"), source=("t", 0), arrival=7)
    again = engine()
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(e.snapshot()),
                                         type=type(e.snapshot())))
    again.ingest(sent(T0 + MIN, eid="b"), source=("t", 1), arrival=8)
    again.advance()
    assert again.late_total["email"] == 1 and again.events_total == {"email.sent": 2}


def test_a_revoke_never_raises_the_watermark_and_the_next_owner_waits_for_every_partition(
) -> None:
    """A revoke forgets a family's partitions one by one. Recomputed after each, the
    watermark jumped to the furthest of the last ones left (here p3, at its log's end), the
    handover snapshot carried it to the next owner, and every event the others still had to
    deliver was late there (the kill loop's 14,836 late email events)."""
    e = engine()
    for p in ("p0", "p1", "p2", "p3"):
        e.assign_source("email", p)
    for p, minutes in (("p0", 3), ("p1", 2), ("p2", 4), ("p3", 59)):
        e.ingest(sent(T0 + minutes * MIN), source=p)
    assert e.watermarks["email"].value == T0 + 2 * MIN
    for p in ("p0", "p1", "p2", "p3"):  # the revoke, before the handover snapshot
        e.forget_source(p)
        assert e.watermarks["email"].value == T0 + 2 * MIN
    nxt = engine()
    nxt.restore(e.snapshot())
    for p in ("p0", "p1", "p2", "p3"):
        nxt.assign_source("email", p)
    assert nxt.watermarks["email"].value == T0 + 2 * MIN
    # p1 goes on from 00:02: nothing of it is late, and p3 alone moves nothing
    nxt.ingest(sent(T0 + 60 * MIN), source="p3")
    assert nxt.ingest(sent(T0 + 3 * MIN), source="p1") == "ok"
    assert nxt.watermarks["email"].value == T0 + 2 * MIN


def test_a_partition_forgotten_for_good_stops_holding_the_others_back_at_their_next_event(
) -> None:
    e = engine()
    for p in ("p0", "p1", "p2"):
        e.assign_source("email", p)
    e.ingest(sent(T0 + MIN), source="p0")
    e.ingest(sent(T0 + 20 * MIN), source="p1")
    e.ingest(sent(T0 + 30 * MIN), source="p2")
    e.forget_source("p0")
    assert e.watermarks["email"].value == T0 + MIN  # not at once
    e.ingest(sent(T0 + 31 * MIN), source="p2")  # p2 was not at the minimum
    assert e.watermarks["email"].value == T0 + 20 * MIN
    # forgotten, then restored: still recomputed at the next event
    e.forget_source("p1")
    nxt = engine()
    nxt.restore(e.snapshot())
    nxt.assign_source("email", "p2")
    nxt.ingest(sent(T0 + 32 * MIN), source="p2")
    assert nxt.watermarks["email"].value == T0 + 32 * MIN


def test_time_down_or_cut_off_from_the_broker_is_no_quiet_time() -> None:
    """With an idle timeout, a family whose sources are all quiet moves on with the wall
    clock. A worker restored after 10 minutes down counted those 10 minutes as quiet: event
    time jumped 10 minutes at its first tick, closing windows the backlog (what reached the
    broker meanwhile) still feeds. A shard that takes a state over resumes the quiet count
    (streams/shard.py: restore); restore() itself gives back the state as it was."""
    clock = Clock(T0)
    e = engine(clock, idle_ms=30_000)
    for p in ("p0", "p1"):
        e.assign_source("email", p)
    for i in range(20):
        clock.t = T0 + i * 1000
        for p in ("p0", "p1"):
            e.ingest(sent(T0 + i * 1000), source=p)
        e.advance()
    assert e.watermarks["email"].value == T0 + 19_000
    later = Clock(T0 + 10 * MIN)
    nxt = engine(later, idle_ms=30_000)
    nxt.restore(e.snapshot())
    for wm in nxt.watermarks.values():
        wm.resume(later.t)
    nxt.advance()
    assert nxt.watermarks["email"].value == T0 + 19_000  # not T0 + 10 min
    later.t += 31_000  # really quiet now: it moves on from where it stood
    nxt.advance()
    assert nxt.watermarks["email"].value == T0 + 19_000 + 31_000
    # the same while the broker is out of reach: resumed at every tick, no quiet builds up
    later.t += 5 * MIN
    for wm in nxt.watermarks.values():
        wm.resume(later.t)
    nxt.advance()
    assert nxt.watermarks["email"].value == T0 + 50_000


def _mixed_events(n: int) -> list[Event]:
    gen = Generator(GeneratorConfig(rate=40, duration_s=900, seed=5, history_days=0))
    lines = [raw for _, (topic, raw) in gen.messages()
             if topic in ("email-events", "web-events", "social-events")][:n]
    events = [parse_event(raw, now_ms=NOW) for raw in lines]
    assert all(isinstance(ev, Event) for ev in events)
    return events  # type: ignore[return-value]


def test_a_held_event_costs_a_fraction_of_the_parsed_event_and_comes_back_equal() -> None:
    """A backlog's first seconds hold every event read before each partition of its family
    has spoken: 40,000-130,000 per family in a 6-day backlog (state_bench), three families
    at once. Held as parsed events they cost 450-700 B each; their field values encoded as an
    array, ~250 B (as a map with the field names, ~500: no better than the events)."""
    gc.collect()
    tracemalloc.start()
    try:
        events = _mixed_events(6_000)
        parsed = tracemalloc.get_traced_memory()[0]
        held = [hold(ev, None, T0, ("web-events", 0)) for ev in events]
        assert [unhold(h) for h in held] == events
        del events
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0]  # the held ones (their ids included)
    finally:
        tracemalloc.stop()
    assert kept < 0.6 * parsed, (kept, parsed)


def test_held_events_written_by_the_previous_format_are_read() -> None:
    """Before stop 45 a held event's data was a msgpack map with the field names."""
    for ev in _mixed_events(300):
        h = hold(ev, None, T0, 0)
        old = msgspec.structs.replace(h, data=msgspec.msgpack.encode(ev.data))
        assert unhold(old) == ev


def test_every_type_comes_back_as_it_was_held() -> None:
    """``unhold`` gives back the same values of the same Python types (an amount held as an
    int stays one, 120 == 120.0 would not tell), for every event type the generator sends
    (CRM, spend, surveys and the accounts stage's copies included)."""
    gen = Generator(GeneratorConfig(rate=40, duration_s=3_600, seed=11, history_days=30))
    seen: dict[str, int] = {}
    for _, (_, raw) in gen.messages():
        ev = parse_event(raw, now_ms=NOW)
        if not isinstance(ev, Event) or seen.get(ev.type, 0) >= 20:
            continue
        seen[ev.type] = seen.get(ev.type, 0) + 1
        back = unhold(hold(ev, None, T0, 0))
        assert back == ev
        assert msgspec.msgpack.encode(back.data) == msgspec.msgpack.encode(ev.data)
        for copy in filter(None, [copy_for_accounts(ev)]):
            assert unhold(hold(copy, None, T0, 0)) == copy
    assert len(seen) >= 14, sorted(seen)


def test_a_forged_held_event_fails_the_restore_naming_it() -> None:
    e = engine()
    e.assign_source("email", 0)
    e.assign_source("email", 1)
    e.ingest(sent(T0, eid="ok"), source=0)
    state = e.snapshot()
    real = state.held["email"][0]
    values = msgspec.msgpack.decode(real.data)
    empty = [v if i != 2 else "" for i, v in enumerate(values)]  # a campaign id of ""
    for type_, bad in (("email.sent", [1, 2]), ("email.sent", ["x"] * 40),
                       ("email.sent", empty),
                       ("email.sent", {"event_id": 5}), ("no.such", msgspec.msgpack.decode(
                           real.data))):
        forged = msgspec.structs.replace(real, event_id="forged", type=type_,
                                         data=msgspec.msgpack.encode(bad))
        st = msgspec.structs.replace(state, held={**state.held, "email": [forged]})
        with pytest.raises(StateError, match="held event 'forged'"):
            engine().restore(st)


def test_awaited_names_the_sources_holding_an_unknown_watermark_back() -> None:
    """What /health shows of the accounts stage (`awaiting`): assigned sources that have
    delivered nothing and are not idle; none once the watermark is known."""
    wm = Watermark()
    wm.assign("p0", 0)
    wm.assign("p1", 0)
    wm.assign("p2", 20_000)  # assigned later: not quiet as long
    wm.observe("p0", T0)
    wm.idle_advance(1_000, 30_000)
    assert wm.awaited() == ["p1", "p2"]
    wm.observe("p0", T0)  # p0 delivers again: not quiet
    wm.idle_advance(35_000, 30_000)  # p1 quiet for the idle timeout: no longer waited for
    assert wm.value == NEVER
    assert wm.awaited() == ["p2"]
    wm.observe("p2", T0 + MIN)
    assert wm.value == T0
    assert wm.awaited() == []
