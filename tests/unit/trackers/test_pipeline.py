"""The pipeline: a deal attributed to its lead's channel, its cycle from the lead."""

from __future__ import annotations

from typing import Any

import msgspec

from metrics.trackers.pipeline import Pipeline, PipelineState

DAY = 86_400_000


def deal(stage: str, amount: float | None = None, lead_id: str | None = "L1") -> Any:
    return msgspec.structs.replace(_Deal(), stage=stage, amount=amount, lead_id=lead_id)


class _Deal(msgspec.Struct):
    deal_id: str = "D1"
    stage: str = "lead"
    amount: float | None = None
    lead_id: str | None = None
    channel: str | None = None
    campaign_id: str | None = None


def test_a_won_deal_counts_under_its_leads_channel_with_its_cycle() -> None:
    p = Pipeline(horizon_ms=400 * DAY)
    p.lead("L1", 0, "paid_search", "camp")
    facts = p.deal(deal("won", 5000.0), 10 * DAY)
    dims = (("campaign_id", "camp"), ("channel", "paid_search"))
    assert (10 * DAY, "deals_won", dims, 1) in facts
    assert (10 * DAY, "won_amount", dims, 5_000_000_000) in facts
    assert (10 * DAY, "cycle_days_sum", dims, 10_000_000) in facts


def test_state_round_trips_with_the_lead_links() -> None:
    p = Pipeline(horizon_ms=400 * DAY)
    p.deal(deal("opportunity"), DAY)
    r = Pipeline(horizon_ms=400 * DAY)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(p.snapshot()), type=PipelineState))
    assert r.deals_by_lead == {"L1": {"D1"}}
    # the lead arriving after the restore re-attributes the deal
    out = r.lead("L1", 0, "events", "c2")
    assert any(f[2] == (("campaign_id", "c2"), ("channel", "events")) for f in out)
