"""Accounts' purchases in the accounts stage (an order, or a deal won as the pipeline counts
it): what is no sum of panes about them, given per window as *windowed* builtins (the
publisher asks ``window_values`` when it publishes a window, and again for each revision):

- ``active_accounts``: the distinct accounts with a purchase in the window, and
  ``active_account_years``, the same times the window's length in years (what annualizes a
  window's revenue per account: customer lifetime value);
- ``rfm_accounts`` by ``rfm_segment`` (seed 000's RFM): the accounts with a purchase in the
  horizon (365 days) before the window's end, each in its segment as of that end.

Values depend only on purchases before the window's end, and a purchase can still arrive
only while a window holding it is open (the stage's reach is its longest window + grace): a
late one lands in its pane (the stage's order count, won deals), which revises the closed
windows holding it, and the revision asks again. So the values are a function of the set of
events, as sums of panes are, on the stage's longest window, the one RFM is published for;
active accounts, which read only the window, on every window. Purchases are kept while a
window that reads them can still be revised (horizon + longest window + grace); deals for
the horizon after their last event (a deal reopened months later counts once).

What the values read is held per account, packed (``Bought``: 16 bytes a purchase): a year
of purchases as objects sorted by time took ~350 bytes each, and grew with the traffic. In
a worker the purchases and deals themselves are on disk (``spill``).
"""

from __future__ import annotations

import bisect
from array import array
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from metrics.constants import HOUR_MS, MICRO
from metrics.events import ACCOUNTS, Event
from metrics.trackers.base import Dims, Fact, Keyed, Table, TableFactory
from metrics.trackers.pipeline import WON, Step, deal_account, insert_step, outcome, step_of

if TYPE_CHECKING:
    from metrics.catalog_types import Catalog

YEAR_MS: Final = 365 * 86_400_000


def segment(r: int, f: int) -> str:
    """The RFM segment of a recency and a frequency score (each 1-5): the usual map, read
    row by row."""
    if r >= 4 and f >= 4:
        return "champions"
    if r >= 3 and f >= 3:
        return "loyal"
    if r >= 4 and f == 1:
        return "new"
    if r >= 3:
        return "potential"
    if f >= 3:
        return "at_risk"
    return "hibernating" if r == 2 else "lost"


class DealWins(msgspec.Struct, gc=False):
    history: list[Step] = []
    account: str | None = None  # the smallest account_id its events carry
    last_ts: int = 0


#: a purchase: its time, account and amount (millionths)
Purchase = tuple[int, str, int]


class AccountPurchasesState(msgspec.Struct, gc=False):
    version: int
    deals: dict[str, DealWins]
    #: purchase ("o:" + order event id, "d:" + deal id) -> its time, account, amount
    purchases: dict[str, Purchase]


class Rfm(msgspec.Struct, gc=False):
    """An account's RFM as of a moment (over the horizon before it)."""

    recency_days: float
    frequency: int
    monetary: float
    r: int
    f: int
    m: int
    segment: str
    last_ts: int  # its last purchase


class Bought:
    """An account's purchases held: their times ascending, and their amounts (millionths),
    packed."""

    __slots__ = ("amounts", "times")

    def __init__(self) -> None:
        self.times = array("q")
        self.amounts = array("q")

    def add(self, ts: int, amount: int) -> None:
        i = bisect.bisect_right(self.times, ts)
        self.times.insert(i, ts)
        self.amounts.insert(i, amount)

    def remove(self, ts: int, amount: int) -> None:
        """One purchase at ``ts`` of ``amount`` (equal ones are alike: which goes is moot)."""
        times, amounts = self.times, self.amounts
        i = bisect.bisect_left(times, ts)
        while amounts[i] != amount:  # the purchase is held: found before ``ts`` ends
            i += 1
        del times[i], amounts[i]

    def before(self, cutoff: int) -> None:
        """Forget the purchases before ``cutoff``."""
        i = bisect.bisect_left(self.times, cutoff)
        del self.times[:i], self.amounts[:i]

    def holds(self, start: int, end: int) -> bool:
        """Whether a purchase lies in [start, end)."""
        i = bisect.bisect_left(self.times, start)
        return i < len(self.times) and self.times[i] < end

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Where the purchases in [start, end) lie."""
        return bisect.bisect_left(self.times, start), bisect.bisect_left(self.times, end)


class AccountPurchases:
    name: ClassVar[str] = "account_purchases"
    family: ClassVar[str] = ACCOUNTS
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "active_accounts": frozenset(), "active_account_years": frozenset(),
        "rfm_accounts": frozenset({"rfm_segment"})}
    #: builtins valued per window by ``window_values``, never by facts
    windowed: ClassVar[frozenset[str]] = frozenset(builtins)
    consumes: ClassVar[frozenset[str]] = frozenset({"account.order", "account.deal"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = AccountPurchasesState
    part_types: ClassVar[dict[str, Any]] = {
        "deals": dict[str, DealWins], "purchases": dict[str, Purchase]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: how long a purchase may still be read (configure: horizon + the longest window
        #: + grace; until then twice the horizon, which keeps more)
        self.keep_ms = 2 * horizon_ms
        self.deals: Table[str, DealWins] = Keyed(_last_ts)
        self.purchases: Table[str, Purchase] = Keyed(_purchase_ts)
        self._bought: dict[str, Bought] = {}  # derived: account -> its purchases held
        #: the last ``rfm`` asked, until a purchase comes or goes: the account records and
        #: the window of the same end ask it in turn, each ranking every account
        self._rfm_memo: tuple[int, dict[str, Rfm]] | None = None

    def spill(self, make: TableFactory) -> None:
        """Its deals, each with its stage history, and its purchases, kept for the horizon (a
        year) and more: on disk (a worker's). A deal read is changed, then put back, before
        the next read. What RFM reads stays in memory, packed per account (``Bought``)."""
        self.deals = make(f"{self.name}.deals", _last_ts, str, DealWins, cold=True)
        self.purchases = make(f"{self.name}.purchases", _purchase_ts, str, Purchase, cold=True)

    def configure(self, catalog: Catalog) -> None:
        fam = catalog.families[ACCOUNTS]
        self.keep_ms = self.horizon_ms + fam.longest_ms + fam.grace_ms

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        if ev.type == "account.order":
            self._set("o:" + ev.event_id, (ev.ts_ms, d.account_id or "order:" + ev.event_id,
                                           round(d.amount * MICRO)))
            return []
        deal = self.deals.get(d.deal_id)
        if deal is None:
            deal = DealWins([], None, ev.ts_ms)
        insert_step(deal.history, step_of(d, ev.ts_ms))
        deal.last_ts = max(deal.last_ts, ev.ts_ms)
        deal.account = deal_account(deal.account, d.account_id)
        self.deals.put(d.deal_id, deal)
        stage, since, amount = outcome(deal.history)
        self._set("d:" + d.deal_id, (since, deal.account or "deal:" + d.deal_id, amount)
                  if stage == WON else None)
        return []

    def _set(self, key: str, purchase: Purchase | None) -> None:
        old = self.purchases.get(key)
        if old == purchase:
            return
        if old is not None:
            self.purchases.delete(key)
            self._unbuy(old)
        if purchase is not None:
            self.purchases.put(key, purchase)
            self._buy(purchase)

    def _buy(self, purchase: Purchase) -> None:
        self._rfm_memo = None
        ts, account, amount = purchase
        bought = self._bought.get(account)
        if bought is None:
            bought = self._bought[account] = Bought()
        bought.add(ts, amount)

    def _unbuy(self, purchase: Purchase) -> None:
        self._rfm_memo = None
        ts, account, amount = purchase
        bought = self._bought[account]
        bought.remove(ts, amount)
        if not bought.times:
            del self._bought[account]

    def window_values(self, start: int, end: int, wanted: frozenset[str] = windowed
                      ) -> list[tuple[str, Dims, float]]:
        """The ``wanted`` windowed builtins of the window [start, end): (builtin, dims,
        value)."""
        out: list[tuple[str, Dims, float]] = []
        if "active_accounts" in wanted or "active_account_years" in wanted:
            n = sum(1 for b in self._bought.values() if b.holds(start, end))
            out += [("active_accounts", (), n),
                    ("active_account_years", (), n * (end - start) / YEAR_MS)]
        if "rfm_accounts" in wanted:
            counts: dict[str, int] = {}
            for rfm in self.rfm(end).values():
                counts[rfm.segment] = counts.get(rfm.segment, 0) + 1
            out += [("rfm_accounts", (("rfm_segment", s),), n) for s, n in counts.items()]
        return out

    def rfm(self, at: int) -> dict[str, Rfm]:
        """Each account with a purchase in the horizon before ``at``: its recency (since its
        last purchase), frequency (purchases) and monetary value (their amount), each
        scored 1-5 by quintile among those accounts (ties share the lower score), and its
        segment by recency and frequency score. The same dict while no purchase comes or
        goes: not to be changed by the caller."""
        if self._rfm_memo is not None and self._rfm_memo[0] == at:
            return self._rfm_memo[1]
        last: dict[str, int] = {}
        freq: dict[str, int] = {}
        money: dict[str, int] = {}
        for account, b in self._bought.items():
            lo, hi = b.span(at - self.horizon_ms, at)
            if hi > lo:
                last[account] = b.times[hi - 1]
                freq[account] = hi - lo
                money[account] = sum(b.amounts[lo:hi])
        r = _quintiles(last)  # the most recent scores highest
        f, m = _quintiles(freq), _quintiles(money)
        out = {a: Rfm((at - last[a]) / 86_400_000, freq[a], money[a] / MICRO, r[a], f[a],
                      m[a], segment(r[a], f[a]), last[a]) for a in last}
        self._rfm_memo = at, out
        return out

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its values are the window's as it is asked")

    def expire(self, watermark: int) -> None:
        self.deals.drop(watermark - self.horizon_ms)
        cutoff = watermark - self.keep_ms
        if self.purchases.drop(cutoff):  # the hours before the one holding ``cutoff``
            cutoff -= cutoff % HOUR_MS
            self._rfm_memo = None
            for account in [a for a, b in self._bought.items() if b.times[0] < cutoff]:
                bought = self._bought[account]
                bought.before(cutoff)
                if not bought.times:
                    del self._bought[account]

    def snapshot(self) -> AccountPurchasesState:
        return AccountPurchasesState(self.VERSION, self.deals.data, self.purchases.data)

    def restore(self, state: AccountPurchasesState) -> None:
        self.deals.replace(state.deals)
        self.purchases.replace(state.purchases)
        self.loaded()

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"deals": self.deals, "purchases": self.purchases}

    def loaded(self) -> None:
        self._bought, self._rfm_memo = {}, None
        for purchase in sorted(self.purchases.data.values()):
            self._buy(purchase)

    def __len__(self) -> int:
        return len(self.deals) + len(self.purchases)


def _quintiles(values: dict[str, int]) -> dict[str, int]:
    """Score 1-5 by quintile of value among the accounts: 1 + 5 × (accounts below) // n, so
    equal values score the same and the top fifth scores 5."""
    ordered = sorted(values.values())
    n = len(ordered)
    return {a: 1 + 5 * bisect.bisect_left(ordered, v) // n for a, v in values.items()}


def _last_ts(deal: DealWins) -> int:
    return deal.last_ts


def _purchase_ts(purchase: Purchase) -> int:
    return purchase[0]
