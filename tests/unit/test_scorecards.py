"""Campaign scorecards (CONTRACT.md §2): each email rate over a campaign's lifetime, since its
first send, beyond the windows' horizon, kept across a restore."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, parse_event
from metrics.snapshot import decode_state, encode_state
from metrics.trackers.cohorts import SendCohorts
from streams.exporter import ShellStats, make_registry
from tests.helpers import DEFAULT_CATALOG, ms
from tests.unit.trackers.test_cohorts import HOUR, MIN, T10, blast

DAY = 24 * HOUR
NOW = T10 + 40 * DAY


def event(raw: dict[str, Any]) -> Event:
    ev = parse_event(orjson.dumps(raw), now_ms=NOW)
    assert isinstance(ev, Event), ev
    return ev


def run(events: list[dict[str, Any]], engine: KpiEngine | None = None) -> KpiEngine:
    e = engine or KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0), clock=lambda: NOW)
    for raw in sorted(events, key=lambda r: r["ts"]):
        e.ingest(event(raw))
        if e.due:
            e.advance()
    return e


def lifetime(e: KpiEngine) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["kpi"], r["dims"]["campaign_id"]): r for r in e.open_records()
            if r["window"] == "lifetime"}


def later_wave(day: int, campaign: str = "blast") -> list[dict[str, Any]]:
    """Days later, 10 more sends of the campaign: 4 opened (one of them twice), 1 bounce."""
    t = T10 + day * DAY
    out = []
    for i in range(10):
        c = f"w{day}-{i}"
        out.append({"event_id": f"s{day}-{i}", "type": "email.sent", "ts": t + i * 1000,
                    "campaign_id": campaign, "contact_id": c})
        if i == 9:
            out.append({"event_id": f"b{day}-{i}", "type": "email.bounced", "ts": t + 20_000,
                        "campaign_id": campaign, "contact_id": c, "bounce": "soft"})
            continue
        out.append({"event_id": f"d{day}-{i}", "type": "email.delivered",
                    "ts": t + i * 1000 + 500, "campaign_id": campaign, "contact_id": c})
        for n in range(2 if i == 0 else 1 if i < 4 else 0):
            out.append({"event_id": f"o{day}-{i}-{n}", "type": "email.opened",
                        "ts": t + 30 * MIN + n * MIN, "campaign_id": campaign,
                        "contact_id": c})
    return out


def test_a_campaign_scorecard_counts_every_send_once_since_the_first() -> None:
    e = run(blast())
    cards = lifetime(e)
    got = {k: (r["numerator"], r["denominator"]) for (k, c), r in cards.items() if c == "blast"}
    assert got == {"email_open_rate": (60, 100), "email_click_rate": (12, 60),
                   "email_click_through_rate": (12, 95), "email_bounce_rate": (5, 100),
                   "email_hard_bounce_rate": (2, 100), "email_unsubscribe_rate": (1, 95),
                   "email_undelivered_rate": (5, 100)}
    rec = cards[("email_open_rate", "blast")]
    assert rec["start"] == "2026-11-02T10:00:00Z"  # the first send
    assert ms(rec["end"].replace("Z", "+00:00")) > T10 + HOUR  # its latest response
    assert rec["dims"] == {"campaign_id": "blast"} and rec["final"] is False
    assert rec["value"] == 0.6 and rec["lower"] < 0.6 < rec["upper"]
    assert {r["kpi"] for r in cards.values()} == set(got)  # never email_opens-based KPIs


def test_a_scorecard_outlives_the_windows_and_ignores_campaigns_never_sent() -> None:
    strays = [{"event_id": "x1", "type": "email.opened", "ts": T10 + 5 * MIN,
               "campaign_id": "unsent", "contact_id": "q"}]
    e = run(blast() + strays + later_wave(3) + later_wave(9))
    cards = lifetime(e)
    # the blast's day is 9 days behind, beyond every email window and cohort horizon
    cohorts = e.trackers["send_cohorts"]
    assert isinstance(cohorts, SendCohorts) and cohorts.cohorts.get(("blast", "p1")) is None
    assert cards[("email_open_rate", "blast")]["numerator"] == 60 + 4 + 4
    assert cards[("email_open_rate", "blast")]["denominator"] == 120
    assert cards[("email_bounce_rate", "blast")]["numerator"] == 5 + 1 + 1
    assert cards[("email_open_rate", "blast")]["start"] == "2026-11-02T10:00:00Z"
    assert not any(c == "unsent" for _, c in cards)


def test_a_restored_engine_keeps_the_scorecards() -> None:
    first = run(blast() + later_wave(3))
    state = decode_state(encode_state(first.snapshot()))
    second = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0), clock=lambda: NOW)
    second.restore(state)
    run(later_wave(5), second)
    want = run(blast() + later_wave(3) + later_wave(5))
    assert lifetime(second) == lifetime(want)
    assert lifetime(second)[("email_open_rate", "blast")]["denominator"] == 120


def test_scorecards_go_out_on_kpi_updates_and_survive_a_takeover() -> None:
    """Through the shard: the scorecards are on `kpi-updates` (key kpi|lifetime|campaign_id=…),
    and a worker taking over from the state table (incremental commits) goes on from them."""
    from tests.unit.test_shard import FakeIO, FakeTable, batches, new_shard, traffic
    from tests.unit.test_shard import run as arun

    parts = batches(traffic())

    def cards(io: FakeIO) -> dict[bytes, dict[str, Any]]:
        out = {}
        for topic, key, value in io.sent:
            if topic == "kpi-updates" and key is not None and b"|lifetime|" in key:
                rec = orjson.loads(value)
                out[key] = {k: v for k, v in rec.items() if k != "emitted_at"}
        return out

    async def once() -> FakeIO:
        io, table = FakeIO(), FakeTable()
        sh = new_shard(io, table)
        await sh.activate([], 0.0)
        for b in parts:
            await sh.handle(b)
        await sh.tick()
        return io

    async def taken_over() -> FakeIO:
        table = FakeTable()
        first = new_shard(FakeIO(), table)
        await first.activate([], 0.0)
        for b in parts[:len(parts) // 2]:
            await first.handle(b)
        await first.snapshot(force=True)
        for b in parts[len(parts) // 2:len(parts) // 2 + 3]:  # counted, never committed
            await first.handle(b)
        io = FakeIO()
        second = new_shard(io, table)
        await second.activate(table.records("email"), 0.0)
        for b in parts:
            await second.handle(b)
        await second.tick()
        return io

    want, got = cards(arun(once())), cards(arun(taken_over()))
    assert b"email_open_rate|lifetime|campaign_id=spring-webinar" in want
    assert got == want


def test_scorecards_are_exported_as_gauges_with_window_lifetime() -> None:
    engine = run(blast())
    stats = ShellStats()
    stats.kpis = engine.open_records()
    registry, _ = make_registry(DEFAULT_CATALOG, lambda: [(engine, stats)])
    text = generate_latest(registry).decode()
    got = {(s.name, s.labels.get("window"), s.labels.get("campaign_id")): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert got[("kpi_email_open_rate", "lifetime", "blast")] == 0.6
    assert got[("kpi_email_open_rate_denominator", "lifetime", "blast")] == 100
