"""Multi-touch attribution in the accounts stage (seed 003, "attribution pilotée par les
données"; docs/catalog.md): each purchase (an order, or a deal won as the pipeline counts
it) shares its amount among its account's touches within the lookback before it, under five
models. In every model the credits of one purchase sum exactly to its amount (millionths,
largest remainders); a purchase with no touch credits campaign and channel ``unknown``.
Spend is counted once per model too, so ROMI sets each model's credits against the same
spend.

Touches are the stage's touch copies (metrics/events.py ``TOUCH_CHANNEL``): email clicks,
page views, goal conversions, social interactions and leads naming both account and
campaign. An account's touches are kept per day (a key of their own, ``touches``), per
campaign and channel, as the packed times of its touches (8 bytes a touch): touches at the
same millisecond with the same campaign and channel are alike, and ties order by campaign,
then channel. A touch reads and writes its day's touches only; a purchase reads the days of
its lookback. So a table on disk keeps the days read of late in memory, not an account's
whole lookback (version 1 kept all of an account's touches in one value: 2.3 MB a day more
held until the lookback filled, docs/benchmarks.md stop 56). A touch that arrives after a
purchase it precedes re-credits that purchase: the facts depend on the set of events only,
whatever their order.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from metrics.constants import MICRO, UNKNOWN
from metrics.events import ACCOUNTS, TOUCH_CHANNEL, Event
from metrics.trackers.base import Dims, Fact, Keyed, Table, TableFactory, net_change
from metrics.trackers.pipeline import WON, Step, deal_account, insert_step, outcome, step_of

if TYPE_CHECKING:
    from metrics.catalog_types import Catalog

MODELS: Final = ("first_touch", "last_touch", "linear", "time_decay", "position_based")
_DIMS: Final = frozenset({"model", "campaign_id", "channel"})
#: a time-decay weight's resolution: 2**32 for a touch at the purchase, never below 1
_DECAY_ONE: Final = 2**32
_DAY_MS: Final = 86_400_000
_ANY: Final = 2**62  # a purchase's time not known: read it


class Touches(msgspec.Struct, array_like=True, gc=False):
    """An account's touches of one campaign and channel."""

    campaign: str
    channel: str
    #: their times, sorted, packed as native int64 (``array('q')``): a busy account's
    #: state is 8 bytes a touch
    times: bytes


class DayTouches(msgspec.Struct, array_like=True, gc=False):
    """An account's touches of one day (UTC)."""

    groups: list[Touches] = []  # sorted by (campaign, channel)
    last_ts: int = 0


class AccountTouches(msgspec.Struct, gc=False):
    #: version 1 held all of its touches here; moved to its days when first read (migrated)
    groups: list[Touches] = []
    purchases: list[str] = []  # keys of its purchases held (some may have expired)
    last_ts: int = 0
    #: the days it has touches of (``ts // day``), sorted, packed as ``array('q')``; some
    #: may have expired
    days: bytes = b""
    #: when each of ``purchases`` counts (packed, in their order; ``_ANY``: not known, as
    #: version 1 filed them): a touch reads only the purchases it can credit
    at: bytes = b""


class Purchase(msgspec.Struct, gc=False):
    account: str | None = None
    ts: int = 0  # when it counts (a deal: when it last became won)
    amount: int = 0  # millionths
    won: bool = True  # a deal: whether it is won now
    history: list[Step] = []  # a deal's stage events, sorted
    facts: list[Fact] = []  # what it contributes now (what its next change retracts)
    last_ts: int = 0


class AttributionState(msgspec.Struct, gc=False):
    version: int
    accounts: dict[str, AccountTouches]
    orders: dict[str, Purchase]
    deals: dict[str, Purchase]
    touches: dict[str, DayTouches] = {}  # "{account}|{day}" -> its touches (version 2)


class Attribution:
    """Purchases credited to the touches before them. An account's touches are kept while a
    purchase they precede can still change a window that can still be revised (lookback +
    twice the longest window + grace before the watermark); an order while a touch before
    it can still come (longest window + grace); a deal for the horizon after its last
    event, as the pipeline keeps it (a reopened deal counts once)."""

    name: ClassVar[str] = "attribution"
    family: ClassVar[str] = ACCOUNTS
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "attributed_amount": _DIMS, "attributed_spend": _DIMS}
    consumes: ClassVar[frozenset[str]] = frozenset(
        {"account.order", "account.deal", "account.spend", *TOUCH_CHANNEL})
    micro: ClassVar[frozenset[str]] = frozenset({"attributed_amount", "attributed_spend"})
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = AttributionState
    part_types: ClassVar[dict[str, Any]] = {
        "accounts": dict[str, AccountTouches], "orders": dict[str, Purchase],
        "deals": dict[str, Purchase], "touches": dict[str, DayTouches]}
    #: 2: touches per account and day (``touches``); version 1's are moved when read
    VERSION: ClassVar[int] = 2

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.lookback_ms = 90 * 86_400_000
        self.half_life_ms = 7 * 86_400_000
        #: how far before the watermark an event is still accepted (configure: the family's
        #: longest window + grace; until then the horizon, which keeps more)
        self.reach_ms = horizon_ms
        self._floor = -(2**62)  # touches before this credit nothing revisable
        self._orders_floor = -(2**62)  # orders before this are dropped
        self.accounts: Table[str, AccountTouches] = Keyed(_last_ts)
        self.orders: Table[str, Purchase] = Keyed(_purchase_ts)
        self.deals: Table[str, Purchase] = Keyed(_last_ts)
        self.touches: Table[str, DayTouches] = Keyed(_last_ts)

    def spill(self, make: TableFactory) -> None:
        """Its accounts, orders, deals and touches, kept up to a year: on disk (a worker's).
        A value read is changed, then put back, before the next read of its table. Small
        caches but for the accounts: a touch reads its day's touches, and a purchase only
        when it may credit the touch (a touch late for it); a purchase reads its lookback's
        days once."""
        self.accounts = make(f"{self.name}.accounts", _last_ts, str, AccountTouches)
        self.orders = make(f"{self.name}.orders", _purchase_ts, str, Purchase, cold=True)
        self.deals = make(f"{self.name}.deals", _last_ts, str, Purchase, cold=True)
        self.touches = make(f"{self.name}.touches", _last_ts, str, DayTouches, cold=True)

    def configure(self, catalog: Catalog) -> None:
        """The catalog's lookback and half-life, and how late the stage accepts events."""
        fam = catalog.families[ACCOUNTS]
        self.reach_ms = fam.longest_ms + fam.grace_ms
        self.lookback_ms = catalog.attribution.lookback_ms
        self.half_life_ms = catalog.attribution.half_life_ms

    def observe(self, ev: Event) -> list[Fact]:
        t = ev.type
        if t == "account.spend":
            d = ev.data
            amount = round(d.amount * MICRO)
            return [(ev.ts_ms, "attributed_spend", _dims(d.campaign_id or UNKNOWN,
                                                         d.channel or UNKNOWN, m), amount)
                    for m in MODELS]
        if t == "account.order":
            return self._order(ev)
        if t == "account.deal":
            return self._deal(ev)
        return self._touch(ev)

    def _order(self, ev: Event) -> list[Fact]:
        key = "o:" + ev.event_id
        if key in self.orders:  # the engine counts an id once; a restored copy may not know
            return []
        d = ev.data
        p = Purchase(d.account_id, ev.ts_ms, round(d.amount * MICRO), True, [], [], ev.ts_ms)
        self._index(p, key, ev.ts_ms)
        return self._credit(key, p, self.orders)

    def _deal(self, ev: Event) -> list[Fact]:
        d = ev.data
        key = "d:" + d.deal_id
        p = self.deals.get(key)
        if p is None:
            p = Purchase(None, 0, 0, False, [], [], ev.ts_ms)
        insert_step(p.history, step_of(d, ev.ts_ms))
        p.last_ts = max(p.last_ts, ev.ts_ms)
        p.account = deal_account(p.account, d.account_id)
        stage, since, p.amount = outcome(p.history)
        p.won = stage == WON
        if p.won:
            p.ts = since
            self._index(p, key, max(since, ev.ts_ms))
        return self._credit(key, p, self.deals)

    def _touch(self, ev: Event) -> list[Fact]:
        d = ev.data
        account, campaign = d.account_id, d.campaign_id
        if account is None or campaign is None:
            return []  # no touch (the stage copies only those naming both)
        ts = ev.ts_ms
        channel = d.channel or TOUCH_CHANNEL[ev.type]
        day = ts // _DAY_MS
        key = f"{account}|{day}"
        bucket = self.touches.get(key)
        if bucket is None:
            bucket = DayTouches([], ts)
        _add(bucket.groups, campaign, channel, [ts])
        bucket.last_ts = max(bucket.last_ts, ts)
        self.touches.put(key, bucket)
        acc = self._account(account)
        if acc is None:
            acc = AccountTouches([], [], ts)
        days = array("q", acc.days)
        if days and days[0] < self._floor // _DAY_MS:  # days no revisable purchase reads
            del days[:bisect.bisect_left(days, self._floor // _DAY_MS)]
        _file_day(days, day)
        acc.days = days.tobytes()
        acc.last_ts = max(acc.last_ts, ts)
        self.accounts.put(account, acc)
        out: list[Fact] = []
        held, held_at = [], array("q")
        for key, at in zip(acc.purchases, array("q", acc.at), strict=True):
            if at < (self._orders_floor if key[0] == "o" else self._floor):
                continue  # dropped (an order), or before any touch still taken
            if at == _ANY or at - self.lookback_ms < ts <= at:  # it may credit this touch
                table = self.orders if key[0] == "o" else self.deals
                p = table.get(key)
                if p is None:
                    continue  # expired: forgotten here too
                at = p.ts
                if p.won and p.account == account and p.ts - self.lookback_ms < ts <= p.ts:
                    out.extend(self._credit(key, p, table))
            held.append(key)
            held_at.append(at)
        if held != acc.purchases or held_at.tobytes() != acc.at:
            acc.purchases, acc.at = held, held_at.tobytes()
            self.accounts.put(account, acc)
        return out

    def _index(self, p: Purchase, key: str, ts: int) -> None:
        """File the purchase under its account, so the account's later touches find it."""
        if p.account is None:
            return
        acc = self._account(p.account)
        if acc is None:
            acc = AccountTouches([], [], ts)
        at = array("q", acc.at)
        try:
            at[acc.purchases.index(key)] = p.ts
        except ValueError:  # not filed yet
            acc.purchases.append(key)
            at.append(p.ts)
        acc.at = at.tobytes()
        acc.last_ts = max(acc.last_ts, ts)
        self.accounts.put(p.account, acc)

    def _credit(self, key: str, p: Purchase, table: Table[str, Purchase]) -> list[Fact]:
        after: list[Fact] = []
        if p.won:
            acc = self._account(p.account) if p.account is not None else None
            before = self._lookback(p.account, acc, p.ts) if acc is not None else []
            after = credits(p.ts, p.amount, before, self.half_life_ms)
        out = net_change(p.facts, after)
        p.facts = after
        table.put(key, p)
        return out

    def _lookback(self, account: str | None, acc: AccountTouches, ts: int) -> Credited:
        """The account's touches that credit a purchase at ``ts``: in its lookback, and not
        before the floor (those no revisable purchase reads), per campaign and channel."""
        after = max(ts - self.lookback_ms, self._floor - 1)  # touches after this, up to ts
        first, last = after // _DAY_MS, ts // _DAY_MS
        days = memoryview(acc.days).cast("q")
        got: dict[tuple[str, str], array[int]] = {}  # packed: no int object per touch
        for day in days[bisect.bisect_left(days, first):bisect.bisect_right(days, last)]:
            bucket = self.touches.get(f"{account}|{day}")
            if bucket is None:
                continue  # expired
            for g in bucket.groups:
                into = got.get((g.campaign, g.channel))
                if into is None:
                    got[(g.campaign, g.channel)] = into = array("q")
                if first < day < last:  # a day inside the lookback: all of it
                    into.frombytes(g.times)
                    continue
                times = memoryview(g.times).cast("q")
                into.frombytes(times[bisect.bisect_right(times, after):
                                     bisect.bisect_right(times, ts)].cast("B"))
        return [(c, ch, times) for (c, ch), times in sorted(got.items()) if times]

    def _account(self, account: str) -> AccountTouches | None:
        """The account, its version 1 touches first moved to their days (and its purchases'
        times marked unknown)."""
        acc = self.accounts.get(account)
        if acc is None or (not acc.groups and len(acc.at) == 8 * len(acc.purchases)):
            return acc
        acc.at = array("q", [_ANY] * len(acc.purchases)).tobytes()
        days = array("q", acc.days)
        for g in acc.groups:
            times = array("q", g.times)
            i = 0
            while i < len(times):
                day = times[i] // _DAY_MS
                j = bisect.bisect_left(times, (day + 1) * _DAY_MS, i)
                key = f"{account}|{day}"
                bucket = self.touches.get(key)
                if bucket is None:
                    bucket = DayTouches([], times[j - 1])
                _file_day(days, day)
                _add(bucket.groups, g.campaign, g.channel, times[i:j].tolist())
                bucket.last_ts = max(bucket.last_ts, times[j - 1])
                self.touches.put(key, bucket)
                i = j
        acc.groups = []
        acc.days = days.tobytes()
        self.accounts.put(account, acc)
        return acc

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        self._floor = watermark - 2 * self.reach_ms - self.lookback_ms
        self._orders_floor = watermark - self.reach_ms
        self.accounts.drop(self._floor)
        self.touches.drop(self._floor)
        self.orders.drop(watermark - self.reach_ms)
        self.deals.drop(watermark - self.horizon_ms)

    def snapshot(self) -> AttributionState:
        return AttributionState(self.VERSION, self.accounts.data, self.orders.data,
                                self.deals.data, self.touches.data)

    def restore(self, state: AttributionState) -> None:
        self.accounts.replace(state.accounts)
        self.orders.replace(state.orders)
        self.deals.replace(state.deals)
        self.touches.replace(state.touches)

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"accounts": self.accounts, "orders": self.orders, "deals": self.deals,
                "touches": self.touches}

    def loaded(self) -> None:
        pass

    def __len__(self) -> int:
        """Its accounts and purchases (its days of touches are the accounts' lookback: they
        grow for its 90 days and more, a horizon of their own)."""
        return len(self.accounts) + len(self.orders) + len(self.deals)


#: a purchase's touches: per campaign and channel, their times (sorted)
Credited = Sequence[tuple[str, str, Sequence[int]]]


def credits(ts: int, amount: int, touches: Credited, half_life_ms: int) -> list[Fact]:
    """A purchase's facts: per model, its amount split over its touches, summed per campaign
    and channel."""
    if not amount:
        return []
    if not touches:
        return [(ts, "attributed_amount", _dims(UNKNOWN, UNKNOWN, m), amount) for m in MODELS]
    out: list[Fact] = []
    for model in MODELS:
        shares = split(amount, weights(model, touches, ts, half_life_ms))
        out.extend((ts, "attributed_amount", _dims(c, ch, model), v)
                   for (c, ch, _), v in zip(touches, shares, strict=True) if v)
    return out


def weights(model: str, touches: Credited, ts: int, half_life_ms: int) -> list[int]:
    """Each campaign and channel's integer weight under a model: the sum of its touches'.
    The first touch is the earliest (ties: the first campaign, then channel), the last the
    latest (ties: the last)."""
    counts = [len(times) for _, _, times in touches]
    if model == "linear":
        return counts
    if model == "time_decay":  # each touch: 2**32 at the purchase, halving per half-life
        return [sum(max(1, round(_DECAY_ONE * 2 ** (-(ts - t) / half_life_ms)))
                    for t in times) for _, _, times in touches]
    n = len(touches)
    first = min(range(n), key=lambda i: (touches[i][2][0], i))
    last = max(range(n), key=lambda i: (touches[i][2][-1], i))
    if model == "first_touch":
        return [int(i == first) for i in range(n)]
    if model == "last_touch":
        return [int(i == last) for i in range(n)]
    if model == "position_based":  # 40 % first, 40 % last, 20 % over the touches between
        total = sum(counts)
        if total > 2:  # one touch takes all, two share evenly
            counts[first] += 2 * (total - 2) - 1
            counts[last] += 2 * (total - 2) - 1
        return counts
    raise ValueError(f"unknown attribution model {model!r}")


def split(amount: int, weights: list[int]) -> list[int]:
    """``amount`` in integer shares proportional to ``weights``, summing exactly to it: the
    remainder goes one unit at a time to the largest fractional parts (earliest first)."""
    total = sum(weights)
    shares = [amount * w // total for w in weights]
    left = amount - sum(shares)
    if left:
        order = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % total), i))
        for i in order[:left]:
            shares[i] += 1
    return shares


def _add(groups: list[Touches], campaign: str, channel: str, times: list[int]) -> None:
    """Add sorted ``times`` to the group of this campaign and channel (made if new)."""
    i = bisect.bisect_left(groups, (campaign, channel), key=_group_key)
    if i == len(groups) or _group_key(groups[i]) != (campaign, channel):
        groups.insert(i, Touches(campaign, channel, b""))
    held = array("q", groups[i].times)
    if not held or held[-1] <= times[0]:
        held.extend(times)
    else:
        for t in times:
            bisect.insort(held, t)
    groups[i].times = held.tobytes()


def _file_day(days: array[int], day: int) -> None:
    """Insert ``day`` in the sorted ``days`` unless it is there."""
    i = bisect.bisect_left(days, day)
    if i == len(days) or days[i] != day:
        days.insert(i, day)


def _group_key(g: Touches) -> tuple[str, str]:
    return g.campaign, g.channel


def _dims(campaign: str, channel: str, model: str) -> Dims:
    return (("campaign_id", campaign), ("channel", channel), ("model", model))


def _last_ts(x: AccountTouches | Purchase | DayTouches) -> int:
    return x.last_ts


def _purchase_ts(p: Purchase) -> int:
    return p.ts
