"""Counting an event into its panes: the interpreted form (metrics/counting.py) and the
generated one (metrics/codegen.py) give the same records, late patches included."""

from __future__ import annotations

from typing import Any

import orjson

from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, parse_event
from tests.helpers import DEFAULT_CATALOG, ms

T0 = ms("2026-11-02T09:00:00+00:00")
MIN = 60_000


def sent(eid: str, at: int) -> dict[str, Any]:
    return {"event_id": eid, "type": "email.sent", "ts": at, "campaign_id": "c",
            "contact_id": eid}


def records(generated: bool) -> list[dict[str, Any]]:
    e = KpiEngine(DEFAULT_CATALOG.restrict(("email",)),
                  EngineConfig(generated=generated, idle_timeout_ms=0))
    stream = [sent(f"s{i}", T0 + i * MIN) for i in range(12)]
    # closes 09:05's 5-minute window, then lands in it within grace: a patch, a revision
    stream += [sent("late", T0 + 4 * MIN + 30_000)]
    out: list[dict[str, Any]] = []
    for body in stream:
        ev = parse_event(orjson.dumps(body), now_ms=T0 + 3_600_000)
        assert type(ev) is Event
        e.ingest(ev)
        out += e.advance()
    return [{k: v for k, v in r.items() if k != "emitted_at"} for r in out + e.flush()]


def test_interpreted_counting_equals_the_generated_one_late_patches_included() -> None:
    interpreted, generated = records(False), records(True)
    assert interpreted == generated
    revised = [r for r in generated if r["revision"] > 0 and r["kpi"] == "email_open_rate"]
    assert revised, "the late send revised a closed window"
