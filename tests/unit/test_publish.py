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


def test_published_rows_are_held_encoded_and_read_back_on_a_revision() -> None:
    """A closed window's rows are kept for as long as it can be revised (a day of 5-minute
    windows): held as bytes, not a dict of tuples per row, and decoded when revised."""
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    for i in range(20):
        engine.ingest(ev(i, "email.sent", T0 + i * 1000, "a" if i % 2 else "b"))
    engine.ingest(ev(99, "email.sent", T0 + 8 * 60_000, "a"))
    engine.advance()
    held = [filed for by_kpi in engine.publisher.published.values()
            for filed in by_kpi.values()]
    assert held and all(type(rows) is bytes for rows, _ in held)
    full = engine.publisher.snapshot()  # the whole state decodes them again
    rows = full.published[("email", "5m", T0 + 300_000)]["email_open_rate"][0]
    assert rows[(("campaign_id", "a"),)] == (0.0, 10.0)
    assert not engine.publisher.snapshot(rows=False).published
    # two revisions of one row: the second is numbered from the first, read back
    for n, at in ((100, 2000), (101, 3000)):
        engine.ingest(ev(n, "email.sent", T0 + at, "a"))
        revised = [r for r in engine.advance() if r["kpi"] == "email_open_rate"
                   and r["window"] == "5m" and r["dims"] == {"campaign_id": "a"}
                   and r["end"] == "2026-11-01T10:05:00Z"]
        assert [(r["denominator"], r["revision"]) for r in revised] == [
            (11 if n == 100 else 12, n - 99)]
