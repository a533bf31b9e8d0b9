"""The accounts stage's won deals (metrics/feed.py): the revenue account KPIs set spend
against. A deal counts exactly as the pipeline counts it (metrics/trackers/pipeline.py):
its last stage by event time decides; won, it counts once, from the time it last became
won, with the amount of its latest event. So the stage's won revenue equals the crm
family's ``won_amount`` over the same windows.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from metrics.events import ACCOUNTS, Event
from metrics.trackers.base import Fact, Keyed, Table, TableFactory, net_change
from metrics.trackers.pipeline import WON, Step, insert_step, outcome, step_of


class WonDeal(msgspec.Struct, gc=False):
    history: list[Step] = []  # every stage event, sorted (the same step twice is one)
    last_ts: int = 0
    facts: list[Fact] = []  # what it contributes now (what its next change retracts)


class AccountRevenueState(msgspec.Struct, gc=False):
    version: int
    deals: dict[str, WonDeal]


class AccountRevenue:
    """Won deals and their amounts, in the accounts stage. A deal is kept for the family's
    horizon after its last event (default 365 days), so a deal reopened months after it
    was won counts once."""

    name: ClassVar[str] = "account_revenue"
    family: ClassVar[str] = ACCOUNTS
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "account_won_amount": frozenset(), "account_won_deals": frozenset()}
    consumes: ClassVar[frozenset[str]] = frozenset({"account.deal"})
    micro: ClassVar[frozenset[str]] = frozenset({"account_won_amount"})
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = AccountRevenueState
    part_types: ClassVar[dict[str, Any]] = {"deals": dict[str, WonDeal]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: deal -> its stage events and facts, filed by its last event
        self.deals: Table[str, WonDeal] = Keyed(_last_ts)

    def spill(self, make: TableFactory) -> None:
        """Its deals, kept a year: on disk (a worker's)."""
        self.deals = make(f"{self.name}.deals", _last_ts, str, WonDeal, cold=True)

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        deal = self.deals.get(d.deal_id)
        if deal is None:
            deal = WonDeal([], ev.ts_ms, [])
        insert_step(deal.history, step_of(d, ev.ts_ms))
        deal.last_ts = max(deal.last_ts, ev.ts_ms)
        stage, since, amount = outcome(deal.history)
        after: list[Fact] = [] if stage != WON else [
            (since, "account_won_amount", (), amount), (since, "account_won_deals", (), 1)]
        out = net_change(deal.facts, after)
        deal.facts = after
        self.deals.put(d.deal_id, deal)
        return out

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        self.deals.drop(watermark - self.horizon_ms)

    def snapshot(self) -> AccountRevenueState:
        return AccountRevenueState(self.VERSION, self.deals.data)

    def restore(self, state: AccountRevenueState) -> None:
        self.deals.replace(state.deals)

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"deals": self.deals}

    def loaded(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self.deals)


def _last_ts(deal: WonDeal) -> int:
    return deal.last_ts
