"""Session KPIs are final once their sessions are settled: on in-order input no window is
ever revised (issue 16: first finals of web bounce were ~7 points off, then revised)."""

from __future__ import annotations

from typing import Any

import orjson

from kpi_engine.generator import GeneratorConfig
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, parse_event
from metrics.records import window_key
from metrics.trackers.cohorts import SendCohorts
from tests.helpers import DEFAULT_CATALOG, generated_events, ms

T0 = ms("2026-11-01T10:00:00+00:00")
MIN = 60_000
NOW = T0 + 30 * 86_400_000


def view(eid: str, at: int, session: str) -> Event:
    ev = parse_event(orjson.dumps({"event_id": eid, "type": "page.viewed", "ts": at,
                                   "session_id": session, "page": "/", "channel": "web"}),
                     now_ms=NOW)
    assert isinstance(ev, Event)
    return ev


def bounce_5m(records: list[dict[str, Any]], end: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kpi"] == "web_bounce_rate" and r["window"] == "5m"
            and r["dims"] == {} and r["end"] == end]


def test_a_session_is_published_once_its_second_view_can_no_longer_come() -> None:
    e = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    out: list[dict[str, Any]] = []
    e.ingest(view("a1", T0, "s1"))
    e.ingest(view("tick", T0 + 10 * MIN, "s2"))  # the 10:01 window closes (grace 2 m)
    out += e.advance()
    assert not bounce_5m(out, "2026-11-01T10:01:00Z")  # s1 may still get a second view
    e.ingest(view("a2", T0 + 20 * MIN, "s1"))  # ... and it does
    e.ingest(view("tock", T0 + 60 * MIN, "s3"))
    out += e.advance()
    (rec,) = bounce_5m(out, "2026-11-01T10:01:00Z")
    assert rec["final"] and rec["revision"] == 0 and rec["value"] == 0.0


def test_in_order_generated_traffic_publishes_every_window_once() -> None:
    events, _ = generated_events(GeneratorConfig(rate=40, duration_s=3 * 3600, seed=16,
                                                   start_ms=T0, history_days=0))
    e = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0), clock=lambda: NOW)
    out: list[dict[str, Any]] = []
    for ev in sorted(events, key=lambda ev: ev.ts_ms):
        e.ingest(ev)
        if e.due:
            out += e.advance()
    out += e.flush()
    web = [r for r in out if r["kpi"] in ("web_bounce_rate", "web_conversion_rate")]
    assert len(web) > 1000
    # email rates count responses at their send (CONTRACT.md §2): those windows are revised
    # by design as the responses come, and only upwards on in-order input
    cohort = {k.name for k in DEFAULT_CATALOG.kpis.values()
              if any(DEFAULT_CATALOG.aggregates[a].builtin in SendCohorts.builtins
                     for a in k.aggregates())}
    assert {"email_open_rate", "email_bounce_rate"} <= cohort
    assert not cohort & {"web_bounce_rate", "web_conversion_rate", "deal_win_rate"}
    revised = [r for r in out if r["revision"] and r["kpi"] not in cohort]
    assert not revised, revised[:3]
    seen: dict[str, int] = {}
    rises = 0
    for r in out:
        key = window_key(r)
        if key in seen:
            assert r["numerator"] >= seen[key], r
            rises += r["numerator"] > seen[key]
        seen[key] = r["numerator"]
    assert rises > 100  # the opens of the last minutes' sends came after their windows
