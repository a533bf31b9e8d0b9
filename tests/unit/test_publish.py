"""The publisher: a window's first publication carries every row at revision 0; a change
republishes only the rows that changed, each with its own revision."""

from __future__ import annotations

from typing import Any

import orjson

from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, parse_event
from tests.helpers import DEFAULT_CATALOG, ms

T0 = ms("2026-11-01T10:00:00+00:00")


def ev(i: int, type_: str, at: int, campaign: str) -> Event:
    raw = {"event_id": f"e{i}", "type": type_, "ts": at, "campaign_id": campaign,
           "contact_id": f"p{i % 7}"}
    out = parse_event(orjson.dumps(raw), now_ms=T0 + 10**9)
    assert type(out) is Event
    return out


def test_only_changed_rows_are_revised() -> None:
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    recs: list[dict[str, Any]] = []
    for i in range(20):
        engine.ingest(ev(i, "email.sent", T0 + i * 1000, "a" if i % 2 else "b"))
    engine.ingest(ev(99, "email.sent", T0 + 8 * 60_000, "a"))  # closes 10:00-10:05
    recs += engine.advance()
    first = [r for r in recs if r["kpi"] == "email_bounce_rate" and r["window"] == "5m"]
    assert first and {r["revision"] for r in first} == {0}
    engine.ingest(ev(100, "email.sent", T0 + 2000, "a"))  # late within grace, campaign a
    revised = [r for r in engine.advance() if r["kpi"] == "email_bounce_rate"
               and r["window"] == "5m" and r["end"] == first[0]["end"]]
    dims = {tuple(r["dims"].items()) for r in revised}
    assert (("campaign_id", "a"),) in dims and (("campaign_id", "b"),) not in dims
    assert all(r["revision"] == 1 for r in revised)
    assert len(engine.publisher) >= 1
