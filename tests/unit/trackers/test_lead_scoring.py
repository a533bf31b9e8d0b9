"""Lead scoring and MQLs (metrics/trackers/lead_scoring.py): an account's engagement points
per hour, decayed by the hour; a lead is an MQL from the first hour its account's score
reaches the threshold. Checked by hand through replay, order-independent in the tracker,
and its state packed and bounded."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from metrics.catalog import load_catalog
from metrics.catalog_types import MqlConfig
from metrics.events import Event, struct_of
from metrics.trackers.base import Fact
from metrics.trackers.lead_scoring import LeadScoring, LeadScoringState, mql_record
from tests.helpers import HOUR, ms, pick, replay

DAY = 24 * HOUR
T0 = ms("2026-03-02T00:00:00+00:00")
NOW = T0 + 100 * DAY
CFG = MqlConfig()  # the default catalog's: threshold 40, half-life 14 d, lookback 90 d


def ev(eid: str, type_: str, at_h: float, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": type_, "ts": T0 + int(at_h * HOUR), **fields}


def email(eid: str, type_: str, at_h: float, account: str) -> dict[str, Any]:
    return ev(eid, type_, at_h, campaign_id="nl", contact_id="k", account_id=account)


def lead(eid: str, at_h: float, account: str | None, lead_id: str | None = None
         ) -> dict[str, Any]:
    extra = {"account_id": account} if account else {}
    return ev(eid, "lead.created", at_h, lead_id=lead_id or eid, channel="events",
              campaign_id="fair", **extra)


#: account a earns 20 points in hour 11 of day 0 (a goal, a pricing page, five opens) and 21
#: in hour 11 of day 1 (a goal, a click, a social interaction counted 4 times): 20 × 2^(-24
#: / 336) + 21 = 40.03, over the threshold of 40 then, and only then. Lead L1 (day 0) and
#: L3 (day 1, 11:40) become MQLs in that hour; L2's account b has no engagement, L4 no
#: account: never.
STORY = [
    lead("L1", 10.5, "a"),
    ev("g1", "goal.converted", 11.1, session_id="s", goal="demo", account_id="a"),
    ev("p1", "page.viewed", 11.2, session_id="s", page="/pricing/enterprise", account_id="a"),
    *[email(f"o{i}", "email.opened", 11.3 + i / 100, "a") for i in range(5)],
    ev("p2", "page.viewed", 11.4, session_id="s", page="/blog", account_id="b"),
    lead("L2", 33, "b"),
    ev("g2", "goal.converted", 35.1, session_id="s2", goal="quote_request", account_id="a"),
    email("c1", "email.clicked", 35.2, "a"),
    ev("i1", "social.interaction", 35.3, network="linkedin", kind="share", count=4,
       account_id="a"),
    lead("L3", 35 + 40 / 60, "a"),
    lead("L4", 39, None),
]


def test_mql_rate_and_the_crossing_by_hand() -> None:
    records = replay(STORY, now_ms=NOW)
    day0 = pick(records, "mql_rate", "24h", "2026-03-03T00:00:00Z")
    assert (day0["numerator"], day0["denominator"]) == (0, 1)  # L1 crossed the day after
    day1 = pick(records, "mql_rate", "24h", "2026-03-04T00:00:00Z")
    assert (day1["numerator"], day1["denominator"]) == (1, 3)  # L3 of L2, L3, L4
    week = pick(records, "mql_rate", "7d", "2026-03-09T00:00:00Z")
    assert (week["numerator"], week["denominator"], week["value"]) == (2, 4, 0.5)
    assert week["lower"] is not None  # a proportion: its Wilson interval
    by_channel = pick(records, "mql_rate", "7d", "2026-03-09T00:00:00Z", channel="events")
    assert by_channel["value"] == 0.5

    t = tracker(STORY)
    crossed = {k: lead.qualified for k, lead in t.leads.data.items()}
    assert crossed == {"L1": (T0 + 35 * HOUR) // HOUR, "L2": None,
                       "L3": (T0 + 35 * HOUR) // HOUR, "L4": None}
    assert t.leads.data["L1"].score == pytest.approx(20 * 2 ** (-24 / 336) + 21)
    announced = t.announce()
    assert [k for k, _ in announced] == ["L1", "L3"]
    rec = mql_record("L1", announced[0][1], 40.0, "x")
    assert rec == {"lead_id": "L1", "account_id": "a", "campaign_id": "fair",
                   "channel": "events", "created_at": "2026-03-02T10:30:00Z",
                   "mql_at": "2026-03-03T11:00:00Z", "score": 40.034, "threshold": 40.0,
                   "emitted_at": "x"}
    assert t.announce() == []  # once


def test_one_point_less_and_no_mql() -> None:
    """The decay counts: 20 points a day earlier are worth 19.03, so 20 more fall short."""
    story = [e for e in STORY if e["event_id"] != "i1"] + [
        ev("i1", "social.interaction", 35.3, network="linkedin", kind="share", count=3,
           account_id="a"), ev("x", "email.opened", 35.5, campaign_id="nl", contact_id="k",
                               account_id="a")]
    assert all(lead.qualified is None for lead in tracker(story).leads.data.values())


def test_lead_velocity_by_hand() -> None:
    """Two MQLs in the 30 days before, three in the 30 days of the window: (3 - 2) / 2."""
    events: list[dict[str, Any]] = []
    for i, day in enumerate([2, 20, 31, 45, 50]):
        h = day * 24 + 9
        events.append(lead(f"L{i}", h, f"acct{i}"))
        events += [ev(f"g{i}-{j}", "goal.converted", h + 0.1, session_id=f"s{i}",
                      goal="demo", account_id=f"acct{i}") for j in range(4)]
    records = replay(events, now_ms=NOW)
    rec = pick(records, "lead_velocity", "30d", "2026-05-01T00:00:00Z")  # T0 + 60 days
    assert (rec["numerator"], rec["denominator"], rec["value"]) == (1, 2, 0.5)
    assert rec["lower"] is None  # a growth rate has no Wilson interval
    assert {r["window"] for r in records if r["kpi"] == "lead_velocity"} == {"30d"}


def test_a_late_event_moves_the_crossing_earlier() -> None:
    t = LeadScoring(365 * DAY)
    facts: list[Fact] = []
    for e in stage([lead("L", 1, "a"), *[ev(f"g{i}", "goal.converted", 8 + i / 10,
                                              session_id="s", goal="demo", account_id="a")
                                           for i in range(4)]]):
        facts += t.observe(e)
    assert t.leads.data["L"].qualified == (T0 + 8 * HOUR) // HOUR
    assert t.announce()[0][1].announced == (T0 + 8 * HOUR) // HOUR
    # a late pricing-page burst in hour 2: 8 views of 5 points
    for e in stage([ev(f"p{i}", "page.viewed", 2.5, session_id="s", page="/pricing",
                       account_id="a") for i in range(8)]):
        facts += t.observe(e)
    assert t.leads.data["L"].qualified == (T0 + 2 * HOUR) // HOUR
    assert t.unannounced == {"L"}  # announced again, with its earlier hour
    net = summed(facts)
    assert {k: v for k, v in net.items() if k[1] == "mqls"} == {
        (T0 + 2 * HOUR, "mqls", (("campaign_id", "fair"), ("channel", "events"))): 1}


def test_any_arrival_order_gives_the_same_facts() -> None:
    # L1 sent again, created earlier: that is its creation
    events = stage(STORY) + stage([lead("L1b", 9, "a", "L1")])
    one = LeadScoring(365 * DAY)
    expected = summed(f for e in events for f in one.observe(e))
    crossings = {k: lead.qualified for k, lead in one.leads.data.items()}
    assert one.leads.data["L1"].created == T0 + 9 * HOUR
    rng = random.Random(5)
    for _ in range(300):
        order = rng.sample(events, len(events))
        t = LeadScoring(365 * DAY)
        assert summed(f for e in order for f in t.observe(e)) == expected
        assert {k: lead.qualified for k, lead in t.leads.data.items()} == crossings


def test_state_is_packed_per_hour_and_survives_a_snapshot() -> None:
    t = LeadScoring(365 * DAY)
    busy = [email(f"o{i}", "email.opened", 1 + i / 1000, "a") for i in range(500)]
    tracker([*busy, lead("L", 0.5, "a")], t)
    acc = t.accounts.get("a")
    assert acc is not None and len(acc.hours) == 4 and len(acc.points) == 4  # one hour
    assert t.leads.data["L"].qualified == (T0 + HOUR) // HOUR  # 500 opens: 500 points
    t.announce()
    again = LeadScoring(365 * DAY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=LeadScoringState))
    assert again.unannounced == set()  # announced before the snapshot: not again
    assert again.current_score("a", T0 + HOUR) == 500
    assert again.window_values(T0, T0 + DAY) == [
        ("mql_leads", (("campaign_id", "fair"), ("channel", "events")), 1)]


def test_state_stays_flat_on_an_endless_stream() -> None:
    """400 days of steady leads and engagement over 50 accounts: the leads and the packed
    hours held at days 250 to 400 stay within 10 % of day 200 (every horizon is full by
    day 130: within + reach for a lead not yet an MQL, reach + lookback for an hour)."""
    t = LeadScoring(365 * DAY)
    t.configure(load_catalog())
    rng = random.Random(11)
    sizes: dict[int, tuple[int, int]] = {}
    for day in range(400):
        events = [lead(f"L{day}-{i}", day * 24 + rng.random() * 24, f"a{rng.randrange(50)}")
                  for i in range(5)]
        events += [email(f"o{day}-{i}", "email.opened", day * 24 + rng.random() * 24,
                         f"a{rng.randrange(50)}") for i in range(100)]
        tracker(sorted(events, key=lambda e: e["ts"]), t)
        t.expire(T0 + (day + 1) * DAY)
        if day % 50 == 0:
            sizes[day] = (len(t.leads), sum(len(a.hours) for a in t.accounts.data.values()))
    base = sizes[200]
    assert base[0] > 300 and base[1] > 1000
    for day in (250, 300, 350):
        assert all(abs(n - b) <= 0.1 * b for n, b in zip(sizes[day], base, strict=True)), \
            (day, sizes[day], base)


def test_state_expires_with_the_horizon() -> None:
    t = tracker(STORY)
    t.configure(load_catalog())
    t.expire(T0 + 100 * DAY)
    assert len(t.leads) == 4  # a lead is kept within + reach + two longest windows
    t.expire(T0 + 200 * DAY)
    assert len(t) == 0


# -- helpers ---------------------------------------------------------------------------------

_COPY = {"lead.created": "account.lead", "email.opened": "account.email_open",
         "email.clicked": "account.email_click", "page.viewed": "account.page_view",
         "goal.converted": "account.goal", "social.interaction": "account.social"}


def stage(events: list[dict[str, Any]]) -> list[Event]:
    """The accounts stage's copies of input events."""
    out = []
    for e in events:
        fields = {k: v for k, v in e.items() if k not in ("event_id", "type", "ts")}
        data = struct_of(_COPY[e["type"]])(event_id=e["event_id"], ts=0, **fields)
        out.append(Event(e["event_id"], _COPY[e["type"]], e["ts"], "accounts", data))
    return out


def tracker(events: list[dict[str, Any]], t: LeadScoring | None = None) -> LeadScoring:
    t = t if t is not None else LeadScoring(365 * DAY)
    for e in stage(events):
        t.observe(e)
    return t


def summed(facts: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for ts, b, dims, v in facts:
        out[(ts, b, dims)] = out.get((ts, b, dims), 0) + v
    return {k: v for k, v in out.items() if v}
