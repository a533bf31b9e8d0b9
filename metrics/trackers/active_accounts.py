"""Active accounts of the accounts stage: the accounts with a purchase (an order, or a deal
won as the pipeline counts it) in a window. A count of *distinct* accounts is no sum of
panes, so it is a *windowed* builtin: the publisher asks for it per window, start and end
(``window_values``), when it publishes the window, and again for each revision.

Its values depend only on the purchases inside the window, so they are a function of the
set of events, as sums of panes are: a purchase arriving late lands a fact in its pane
(the stage's order count, won deals), which revises the windows holding it, and the
revision asks again. So does a won deal lost since. Purchases are kept while a window
holding them can still be revised (two longest windows + grace back from the watermark);
deals for the horizon (a deal reopened months later counts once).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from metrics.events import ACCOUNTS, Event
from metrics.trackers.base import Fact, Keyed
from metrics.trackers.pipeline import WON, Step, insert_step, outcome, step_of

if TYPE_CHECKING:
    from metrics.catalog_types import Catalog

YEAR_MS: Final = 365 * 86_400_000


class DealWins(msgspec.Struct, gc=False):
    history: list[Step] = []
    account: str | None = None  # the smallest account_id its events carry
    last_ts: int = 0


class ActiveAccountsState(msgspec.Struct, gc=False):
    version: int
    deals: dict[str, DealWins]
    #: purchase ("o:" + order event id, "d:" + deal id) -> (its time, its account)
    purchases: dict[str, tuple[int, str]]


class ActiveAccounts:
    """Distinct purchasing accounts per window (``active_accounts``), and the same times the
    window's length in years (``active_account_years``, a float: exact, where millionths of
    a year would round): what annualizes a window's revenue per account (customer lifetime
    value)."""

    name: ClassVar[str] = "active_accounts"
    family: ClassVar[str] = ACCOUNTS
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "active_accounts": frozenset(), "active_account_years": frozenset()}
    #: builtins valued per window by ``window_values``, never by facts
    windowed: ClassVar[frozenset[str]] = frozenset(builtins)
    consumes: ClassVar[frozenset[str]] = frozenset({"account.order", "account.deal"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = ActiveAccountsState
    part_types: ClassVar[dict[str, Any]] = {
        "deals": dict[str, DealWins], "purchases": dict[str, tuple[int, str]]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: how long a purchase may still be asked for (configure: two longest windows +
        #: grace; until then the horizon, which keeps more)
        self.keep_ms = horizon_ms
        self.deals: Keyed[str, DealWins] = Keyed(_last_ts)
        self.purchases: Keyed[str, tuple[int, str]] = Keyed(_purchase_ts)
        self._by_time: list[tuple[int, str, str]] = []  # (ts, key, account), sorted

    def configure(self, catalog: Catalog) -> None:
        fam = catalog.families[ACCOUNTS]
        self.keep_ms = 2 * fam.longest_ms + fam.grace_ms

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        if ev.type == "account.order":
            self._set("o:" + ev.event_id, (ev.ts_ms, d.account_id or "order:" + ev.event_id))
            return []
        deal = self.deals.get(d.deal_id)
        if deal is None:
            deal = DealWins([], None, ev.ts_ms)
        insert_step(deal.history, step_of(d, ev.ts_ms))
        deal.last_ts = max(deal.last_ts, ev.ts_ms)
        if d.account_id is not None and (deal.account is None or d.account_id < deal.account):
            deal.account = d.account_id
        self.deals.put(d.deal_id, deal)
        stage, since, _ = outcome(deal.history)
        self._set("d:" + d.deal_id, (since, deal.account or "deal:" + d.deal_id)
                  if stage == WON else None)
        return []

    def _set(self, key: str, purchase: tuple[int, str] | None) -> None:
        old = self.purchases.get(key)
        if old == purchase:
            return
        if old is not None:
            self.purchases.delete(key)
            self._by_time.pop(bisect.bisect_left(self._by_time, (old[0], key, old[1])))
        if purchase is not None:
            self.purchases.put(key, purchase)
            bisect.insort(self._by_time, (purchase[0], key, purchase[1]))

    def window_values(self, start: int, end: int) -> dict[str, float]:
        """The windowed builtins of the window [start, end)."""
        lo = bisect.bisect_left(self._by_time, (start,))
        hi = bisect.bisect_left(self._by_time, (end,))
        n = len({account for _, _, account in self._by_time[lo:hi]})
        return {"active_accounts": n, "active_account_years": n * (end - start) / YEAR_MS}

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its values are the window's as it is asked")

    def expire(self, watermark: int) -> None:
        self.deals.sweep(watermark - self.horizon_ms)
        if self.purchases.sweep(watermark - self.keep_ms):
            self.loaded()

    def snapshot(self) -> ActiveAccountsState:
        return ActiveAccountsState(self.VERSION, self.deals.data, self.purchases.data)

    def restore(self, state: ActiveAccountsState) -> None:
        self.deals.replace(state.deals)
        self.purchases.replace(state.purchases)
        self.loaded()

    def tables(self) -> dict[str, Keyed[Any, Any]]:
        return {"deals": self.deals, "purchases": self.purchases}

    def loaded(self) -> None:
        self._by_time = sorted((ts, key, account)
                               for key, (ts, account) in self.purchases.data.items())

    def __len__(self) -> int:
        return len(self.deals) + len(self.purchases)


def _last_ts(deal: DealWins) -> int:
    return deal.last_ts


def _purchase_ts(purchase: tuple[int, str]) -> int:
    return purchase[0]
