"""The deal pipeline: leads and deals, stage entries, attribution to the lead's channel and
campaign, and the sales cycle."""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from metrics.constants import DAY_MS, MICRO, UNKNOWN
from metrics.events import DEAL_STAGES, Event
from metrics.trackers.base import Fact, Keyed, net_change

_DEAL_DIMS: Final = frozenset({"channel", "campaign_id"})

_STAGE_INDEX: Final = {s: i for i, s in enumerate(DEAL_STAGES)}


class Deal(msgspec.Struct, gc=False):
    #: stage -> (first ts, amount in millionths)
    entries: dict[str, tuple[int, int]] = {}
    #: earliest (ts, channel, campaign) the deal's own events carry
    fallback: tuple[int, str, str] | None = None
    lead_id: str | None = None
    last_ts: int = 0


class PipelineState(msgspec.Struct, gc=False):
    version: int
    leads: dict[str, tuple[int, str, str]]  # lead -> (ts, channel, campaign)
    deals: dict[str, Deal]
    #: deal -> the facts it contributes now (what the next change retracts)
    facts: dict[str, list[Fact]]


class Pipeline:
    """Leads and deals: stage entries, attribution to the lead's channel and campaign, cycle.

    A deal's facts are a pure function of its state and its lead's, recomputed whenever
    either changes; the difference is applied as retractions and additions.
    """

    name: ClassVar[str] = "pipeline"
    family: ClassVar[str] = "crm"
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "deals_entered": _DEAL_DIMS | {"stage"},
        "deals_advanced": _DEAL_DIMS | {"stage"},
        "opportunities": _DEAL_DIMS,
        "deals_won": _DEAL_DIMS,
        "deals_lost": _DEAL_DIMS,
        "won_amount": _DEAL_DIMS,
        "cycle_days_sum": _DEAL_DIMS,
        "cycle_deals": _DEAL_DIMS,
    }
    consumes: ClassVar[frozenset[str]] = frozenset({"lead.created", "deal.stage_changed"})
    micro: ClassVar[frozenset[str]] = frozenset({"won_amount", "cycle_days_sum"})
    state_type: ClassVar[type[msgspec.Struct]] = PipelineState
    part_types: ClassVar[dict[str, Any]] = {
        "leads": dict[str, tuple[int, str, str]],
        "deals": dict[str, tuple[Deal, list[Fact]]]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: lead -> (ts, channel, campaign)
        self.leads: Keyed[str, tuple[int, str, str]] = Keyed(_lead_ts)
        #: deal -> its state, and the facts it contributes now (what the next change
        #: retracts), filed by its last event
        self.deals: Keyed[str, tuple[Deal, list[Fact]]] = Keyed(_deal_ts)
        self.deals_by_lead: dict[str, set[str]] = {}

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        if ev.type == "lead.created":
            return self.lead(d.lead_id, ev.ts_ms, d.channel, d.campaign_id or UNKNOWN)
        return self.deal(d, ev.ts_ms)

    def lead(self, lead_id: str, ts: int, channel: str, campaign: str) -> list[Fact]:
        info = (ts, channel, campaign)
        cur = self.leads.get(lead_id)
        if cur is not None and cur <= info:
            return []
        self.leads.put(lead_id, info)
        out: list[Fact] = []
        for deal_id in sorted(self.deals_by_lead.get(lead_id, ())):
            out += self._refresh(deal_id)
        return out

    def deal(self, data: Any, ts: int) -> list[Fact]:
        """A deal.stage_changed event (``data``: its struct, metrics.events)."""
        deal_id: str = data.deal_id
        held = self.deals.get(deal_id)
        if held is None:
            d = Deal({})
            self.deals.put(deal_id, (d, []))
        else:
            d = held[0]
        stage: str = data.stage
        amount = data.amount
        entry = (ts, round(amount * MICRO) if amount is not None else 0)
        cur = d.entries.get(stage)
        if cur is None or entry < cur:
            d.entries[stage] = entry
        fb = (ts, data.channel or UNKNOWN, data.campaign_id or UNKNOWN)
        if d.fallback is None or fb < d.fallback:
            d.fallback = fb
        lead_id = data.lead_id
        if lead_id is not None and (d.lead_id is None or lead_id < d.lead_id):
            if d.lead_id is not None:
                self.deals_by_lead.get(d.lead_id, set()).discard(deal_id)
            d.lead_id = lead_id
            self.deals_by_lead.setdefault(lead_id, set()).add(deal_id)
        d.last_ts = max(d.last_ts, ts)
        self.deals.touch(deal_id)  # changed in place
        return self._refresh(deal_id)

    def _refresh(self, deal_id: str) -> list[Fact]:
        d, before = self.deals.data[deal_id]
        after = self._deal_facts(d)
        if after == before:
            return []
        self.deals.put(deal_id, (d, after))
        return net_change(before, after)

    def _deal_facts(self, d: Deal) -> list[Fact]:
        lead = self.leads.get(d.lead_id) if d.lead_id is not None else None
        assert d.fallback is not None
        _, channel, campaign = lead if lead is not None else d.fallback
        dims = (("campaign_id", campaign), ("channel", channel))
        facts: list[Fact] = []
        for stage in sorted(d.entries, key=_STAGE_INDEX.__getitem__):
            ts, amount = d.entries[stage]
            facts.append((ts, "deals_entered", (*dims, ("stage", stage)), 1))
            idx = _STAGE_INDEX[stage]
            if idx > 0 and stage != "lost":
                facts.append((ts, "deals_advanced", (*dims, ("stage", DEAL_STAGES[idx - 1])), 1))
            if stage == "opportunity":
                facts.append((ts, "opportunities", dims, 1))
            elif stage == "lost":
                facts.append((ts, "deals_lost", dims, 1))
            elif stage == "won":
                facts.append((ts, "deals_won", dims, 1))
                facts.append((ts, "won_amount", dims, amount))
                lead_ts = lead[0] if lead is not None else d.entries.get("lead", (None, 0))[0]
                if lead_ts is not None and lead_ts <= ts:
                    cycle = round((ts - lead_ts) * MICRO / DAY_MS)
                    facts.append((ts, "cycle_days_sum", dims, cycle))
                    facts.append((ts, "cycle_deals", dims, 1))
        return facts

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self.horizon_ms
        self.leads.sweep(cutoff)
        for deal_id, (d, _) in self.deals.sweep(cutoff):
            if d.lead_id is not None:
                linked = self.deals_by_lead.get(d.lead_id)
                if linked is not None:
                    linked.discard(deal_id)
                    if not linked:
                        del self.deals_by_lead[d.lead_id]

    def snapshot(self) -> PipelineState:
        deals = self.deals.data
        return PipelineState(self.VERSION, self.leads.data, {k: d for k, (d, _) in deals.items()},
                             {k: f for k, (_, f) in deals.items() if f})

    def restore(self, state: PipelineState) -> None:
        self.leads.replace(state.leads)
        self.deals.replace({k: (d, state.facts.get(k, [])) for k, d in state.deals.items()})
        self.loaded()

    def tables(self) -> dict[str, Keyed[Any, Any]]:
        return {"leads": self.leads, "deals": self.deals}

    def loaded(self) -> None:
        self.deals_by_lead = {}
        for deal_id, (d, _) in self.deals.data.items():
            if d.lead_id is not None:
                self.deals_by_lead.setdefault(d.lead_id, set()).add(deal_id)

    def __len__(self) -> int:
        return len(self.deals) + len(self.leads)


def _lead_ts(lead: tuple[int, str, str]) -> int:
    return lead[0]


def _deal_ts(held: tuple[Deal, list[Fact]]) -> int:
    return held[0].last_ts
