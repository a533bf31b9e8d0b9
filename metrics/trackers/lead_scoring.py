"""Lead scoring and MQLs in the accounts stage (seed 003's MQL score; docs/catalog.md).

An account's engagement earns points (catalog `mql.points`: email opens and clicks, page
views, a pricing page's more, goal conversions, social interactions times their count),
summed per hour. Its score at hour H is the sum over the hours h in (H - lookback, H] of
their points × 2^(-(H - h) / half-life), in hours. A lead (``account.lead``) is an MQL from
the first hour H, from the hour it was created to ``within`` after, at which its account's
score reaches the threshold. Only an hour with points, or a lead's own first hour, can be
that hour: between them the score only decays.

Points only add up, so a late event can only move a crossing earlier, and a lead announced
as an MQL stays one: its ``kpi-mql`` record goes out as soon as its account crosses, and
again if a late event moves its hour earlier. Facts: ``mqls`` +1 at the crossing hour (by
the lead's channel and campaign); ``prior_mqls``, windowed, the crossings in the window of
the same length just before (lead velocity). The score is a function of the hours' points,
summed in hour order: shuffled input gives the same crossings.

State: per account its hours with points, packed (8 bytes an hour: 32-bit hours and points,
an hour's points saturating at 2^31 - 1; version 1 packed 64-bit ones, converted when
read), and its leads; no object per event. An hour is kept while a revisable crossing
can read it (reach + lookback), a lead while its crossing can change or a revisable window
reads it. In a worker the accounts are on disk behind a small cache (``spill``): an
account's hours over the ~4 months kept are up to ~23 KB, and their number grows with the
accounts engaged.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Final

import msgspec

from metrics.catalog_types import MqlConfig
from metrics.constants import HOUR_MS, UNKNOWN
from metrics.events import ACCOUNTS, Event
from metrics.records import iso_ms
from metrics.trackers.base import Dims, Fact, Keyed, Table, TableFactory
from metrics.trackers.running_score import RunningScores
from metrics.trackers.score_board import ScoreBoard, next_due

if TYPE_CHECKING:
    from metrics.catalog_types import Catalog

#: the stage's copies that earn points -> the input type the catalog's points name
ENGAGEMENT: Final[dict[str, str]] = {
    "account.email_open": "email.opened", "account.email_click": "email.clicked",
    "account.page_view": "page.viewed", "account.goal": "goal.converted",
    "account.social": "social.interaction"}
_DIMS: Final = frozenset({"channel", "campaign_id"})
#: the hours' and points' packing (array typecode): 32 bits since version 2; 64 in version 1
PACKING: Final = "i"
_POINTS_MAX: Final = 2**31 - 1


class Engagement(msgspec.Struct, gc=False):
    """An account's points per hour, and its leads held."""

    hours: bytes = b""  # epoch hours with points, ascending, packed (``packing``)
    points: bytes = b""  # each one's points, packed (``packing``)
    leads: list[str] = []
    last_ts: int = 0
    packing: str = "q"  # version 1 wrote none: 64 bits


class Lead(msgspec.Struct, gc=False):
    account: str | None
    created: int
    channel: str
    campaign: str
    qualified: int | None = None  # the epoch hour it became an MQL
    score: float = 0.0  # its account's score at that hour
    announced: int | None = None  # the qualified hour last announced (``kpi-mql``)


class LeadScoringState(msgspec.Struct, gc=False):
    version: int
    accounts: dict[str, Engagement]
    leads: dict[str, Lead]


class LeadScoring:
    name: ClassVar[str] = "lead_scoring"
    family: ClassVar[str] = ACCOUNTS
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "new_leads": _DIMS, "mqls": _DIMS, "mql_leads": _DIMS, "prior_mqls": _DIMS}
    windowed: ClassVar[frozenset[str]] = frozenset({"mql_leads", "prior_mqls"})
    consumes: ClassVar[frozenset[str]] = frozenset({*ENGAGEMENT, "account.lead"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = LeadScoringState
    part_types: ClassVar[dict[str, Any]] = {
        "accounts": dict[str, Engagement], "leads": dict[str, Lead]}
    #: 2: hours and points packed in 32 bits (``PACKING``); version 1's converted when loaded
    VERSION: ClassVar[int] = 2

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.reach_ms = horizon_ms  # configure: the stage's longest window + grace
        self.longest_ms = horizon_ms
        self.accounts: Table[str, Engagement] = Keyed(_last_ts)
        self._kept = KeptBy()
        self.leads: Keyed[str, Lead] = Keyed(self._kept)
        self._floor_h = -(2**62)  # hours before this no revisable crossing reads
        #: account -> (hour, its score from the hours before it): derived, what each new
        #: event of the hour adds its points to
        self._base: dict[str, tuple[int, float]] = {}
        self._running = RunningScores()  # derived: the scores `scores` carries hour to hour
        self.unannounced: set[str] = set()
        self.board = ScoreBoard()  # derived: the scores `kpi-accounts` shows
        #: derived, sorted: (creation time, lead) and (crossing hour, lead), what the
        #: windowed builtins read
        self._by_created: list[tuple[int, str]] = []
        self._by_crossing: list[tuple[int, str]] = []
        self.set_config(MqlConfig())

    def spill(self, make: TableFactory) -> None:
        """Its accounts' hours with points: on disk (a worker's), a small cache. A value read
        is changed, then put back or touched, before the next read of its table."""
        self.accounts = make(f"{self.name}.accounts", _last_ts, str, Engagement, _repacked,
                             cold=True)

    def set_config(self, cfg: MqlConfig) -> None:
        self.cfg = cfg
        self._kept.within_ms, self._kept.longest_ms = cfg.within_ms, self.longest_ms
        self._points = dict(cfg.points)
        self._lookback_h = max(1, cfg.lookback_ms // HOUR_MS)
        self._half_life_h = half_life_h = cfg.half_life_ms / HOUR_MS
        self._decay = [2.0 ** (-k / half_life_h) for k in range(self._lookback_h)]
        self._within_h = cfg.within_ms // HOUR_MS
        self._base.clear()
        self._running.configure(self._decay, self._lookback_h, half_life_h)
        self.board.reset()

    def configure(self, catalog: Catalog) -> None:
        fam = catalog.families[ACCOUNTS]
        self.reach_ms = fam.longest_ms + fam.grace_ms
        self.longest_ms = fam.longest_ms
        self.set_config(catalog.mql)
        self.leads.replace(dict(self.leads.data))  # filed by what these settings keep

    # -- events ---------------------------------------------------------------------------

    def observe(self, ev: Event) -> list[Fact]:
        if ev.type == "account.lead":
            return self._lead(ev)
        d = ev.data
        account = d.account_id
        pts = self.points_of(ev)
        if account is None or pts <= 0:
            return []
        hour = ev.ts_ms // HOUR_MS
        acc = self.accounts.get(account)
        if acc is None:
            acc = Engagement(b"", b"", [], ev.ts_ms, PACKING)
        hours, points = array(PACKING, acc.hours), array(PACKING, acc.points)
        if hours and hours[0] < self._floor_h:  # what no revisable crossing reads any more
            cut = bisect.bisect_left(hours, self._floor_h)
            del hours[:cut], points[:cut]
            self._running.forget(account)
        i = bisect.bisect_left(hours, hour)
        if i < len(hours) and hours[i] == hour:
            points[i] = min(points[i] + pts, _POINTS_MAX)
        else:
            hours.insert(i, hour)
            points.insert(i, min(pts, _POINTS_MAX))
        acc.hours, acc.points = hours.tobytes(), points.tobytes()
        acc.last_ts = max(acc.last_ts, ev.ts_ms)
        self.accounts.put(account, acc)
        self.board.touch(account)
        self._running.changed(account, hour)
        base = self._base.get(account)
        if base is not None and base[0] > hour:  # an earlier hour's points changed
            del self._base[account]
        return self._rescore(account, acc, hour)

    def points_of(self, ev: Event) -> int:
        kind = ENGAGEMENT[ev.type]
        d = ev.data
        if kind == "page.viewed":
            for prefix, pts in self.cfg.pages:
                if d.page.startswith(prefix):
                    return pts
        pts = self._points.get(kind, 0)
        return pts * d.count if kind == "social.interaction" else pts

    def _lead(self, ev: Event) -> list[Fact]:
        d = ev.data
        key = d.lead_id
        old = self.leads.get(key)
        if old is not None and old.created <= ev.ts_ms:
            return []  # the earliest creation of a lead is its creation
        out: list[Fact] = []
        if old is not None:  # an earlier creation of a lead seen: it starts over from that
            out.append((old.created, "new_leads", _dims(old), -1))
            _remove(self._by_created, (old.created, key))
            if old.qualified is not None:
                out.append(_fact(old, -1))
                _remove(self._by_crossing, (old.qualified, key))
            old_acc = self.accounts.get(old.account) if old.account is not None else None
            if old_acc is not None and key in old_acc.leads:
                old_acc.leads.remove(key)
                self.accounts.touch(old.account)  # type: ignore[arg-type]
        lead = Lead(d.account_id, ev.ts_ms, d.channel or UNKNOWN, d.campaign_id or UNKNOWN,
                    None, 0.0, old.announced if old is not None else None)
        self.leads.put(key, lead)
        out.append((lead.created, "new_leads", _dims(lead), 1))
        bisect.insort(self._by_created, (lead.created, key))
        self._announce_check(key, lead)
        if d.account_id is None:
            return out  # no account: never scored
        acc = self.accounts.get(d.account_id)
        if acc is None:
            acc = Engagement(b"", b"", [], ev.ts_ms, PACKING)
        acc.leads.append(key)
        acc.last_ts = max(acc.last_ts, ev.ts_ms)
        self.accounts.put(d.account_id, acc)
        return out + self._rescore(d.account_id, acc, ev.ts_ms // HOUR_MS)

    # -- scores -----------------------------------------------------------------------------

    def _rescore(self, account: str, acc: Engagement, since: int) -> list[Fact]:
        """Crossings of the account's leads that the hour ``since`` (its points changed, or a
        lead created in it) can move: those not yet crossed, or crossed after it."""
        held: list[str] = []
        open_: list[tuple[str, Lead, int, int]] = []  # key, lead, first and last hour
        for key in acc.leads:
            lead = self.leads.get(key)
            if lead is None:
                continue  # expired
            held.append(key)
            first = lead.created // HOUR_MS
            last = first + self._within_h
            if last >= since and (lead.qualified is None or lead.qualified > since):
                open_.append((key, lead, first, last))
        if len(held) != len(acc.leads):
            acc.leads = held
            self.accounts.touch(account)
        if not open_:
            return []
        hours = memoryview(acc.hours).cast(PACKING)
        start = max(since, min(first for _, _, first, _ in open_))
        cands = {first for _, _, first, _ in open_ if first >= start}
        cands.update(hours[bisect.bisect_left(hours, start):])
        out: list[Fact] = []
        for h in sorted(cands):
            if not open_:
                break
            score = self.score(account, acc, h)
            if score < self.cfg.threshold:
                continue
            still: list[tuple[str, Lead, int, int]] = []
            for item in open_:
                key, lead, first, last = item
                if first <= h <= last and (lead.qualified is None or lead.qualified > h):
                    if lead.qualified is not None:
                        out.append(_fact(lead, -1))
                        _remove(self._by_crossing, (lead.qualified, key))
                    lead.qualified, lead.score = h, score
                    out.append(_fact(lead, 1))
                    bisect.insort(self._by_crossing, (h, key))
                    self.leads.touch(key)
                    self._announce_check(key, lead)
                elif h < first:
                    still.append(item)
            open_ = still
        return out

    def score(self, account: str, acc: Engagement, hour: int) -> float:
        """The account's score at an hour: its hours' points within the lookback, each
        decayed by its age in hours, summed oldest first."""
        cached = self._base.get(account)
        if cached is not None and cached[0] == hour:
            return cached[1] + self._points_at(acc, hour)
        base, at = self._score_parts(acc, hour)
        if cached is None or cached[0] <= hour:  # in-order input asks the newest hour
            self._base[account] = (hour, base)
        return base + at

    def _points_at(self, acc: Engagement, hour: int) -> int:
        hours = memoryview(acc.hours).cast(PACKING)
        i = bisect.bisect_left(hours, hour)
        return memoryview(acc.points).cast(PACKING)[i] if i < len(hours) and hours[i] == hour \
            else 0

    def _score_parts(self, acc: Engagement, hour: int) -> tuple[float, int]:
        """The score from the hours before ``hour``, and the hour's own points."""
        hours = memoryview(acc.hours).cast(PACKING)
        points = memoryview(acc.points).cast(PACKING)
        hi = bisect.bisect_right(hours, hour)
        at = points[hi - 1] if hi and hours[hi - 1] == hour else 0
        decay = self._decay
        base = 0.0
        for i in range(bisect.bisect_right(hours, hour - self._lookback_h),
                       hi - 1 if at else hi):
            base += points[i] * decay[hour - hours[i]]
        return base, at

    def scores(self, at: int) -> dict[str, int]:
        """Each account's score at the hour holding ``at``, to the nearest whole point (the
        accounts above 0): what `kpi-accounts` carries. Only the accounts whose number can
        have changed since the last call are scored (``ScoreBoard``)."""
        hour, board, running = at // HOUR_MS, self.board, self._running
        if board.hour is None or hour < board.hour:
            board.reset()
            due: set[str] = set()
            todo: Iterable[tuple[str, Engagement | None]] = self.accounts.items()
        elif 4 * len(due := board.due(hour)) < len(self.accounts):  # a few: each read
            todo = ((a, self.accounts.get(a)) for a in list(due))
        else:  # most: read in one pass, as on disk a scan reads them in chunks
            todo = ((a, acc) for a, acc in self.accounts.items() if a in due)
        for account, acc in todo:
            due.discard(account)
            if acc is not None:
                hours = memoryview(acc.hours).cast(PACKING)
                s = running.carried(account, hours, memoryview(acc.points).cast(PACKING), hour)
                if s is None:
                    s = sum(self._score_parts(acc, hour))
                    running.start(account, hours, hour, s)
                board.show(account, round(s), next_due(hours, hour, self._lookback_h,
                                                       self._half_life_h, s))
        for account in due:  # expired
            board.show(account, 0, None)
        board.hour = hour
        return dict(board.shown)

    def current_score(self, account: str, at: int) -> float:
        """The account's score at the hour holding ``at`` (0 for an unknown account)."""
        acc = self.accounts.get(account)
        return 0.0 if acc is None else self.score(account, acc, at // HOUR_MS)

    # -- outputs ----------------------------------------------------------------------------

    def _announce_check(self, key: str, lead: Lead) -> None:
        if lead.qualified is not None and lead.qualified != lead.announced:
            self.unannounced.add(key)
        else:
            self.unannounced.discard(key)

    def announce(self) -> list[tuple[str, Lead]]:
        """The leads that became MQLs (or whose hour moved earlier) since the last call,
        marked announced (in the state: a restart does not announce them again)."""
        out: list[tuple[str, Lead]] = []
        for key in sorted(self.unannounced):
            lead = self.leads.get(key)
            if lead is not None and lead.qualified is not None:
                lead.announced = lead.qualified
                self.leads.touch(key)
                out.append((key, lead))
        self.unannounced.clear()
        return out

    def window_values(self, start: int, end: int, wanted: frozenset[str] = windowed
                      ) -> list[tuple[str, Dims, float]]:
        """``mql_leads``: the leads created in the window that became MQLs before its end
        (the cohort: never more than the leads created); ``prior_mqls``: the crossings in
        the window of the same length before this one. A change to either is a change to
        ``mqls`` in the window, which revises it (the crossing hour is in it)."""
        out: list[tuple[str, Dims, float]] = []
        leads = self.leads.data
        if "mql_leads" in wanted:
            end_h = end // HOUR_MS  # windows end on an hour: crossed in an hour before it
            out += _count("mql_leads", (leads[k] for _, k in _between(
                self._by_created, start, end)), end_h)
        if "prior_mqls" in wanted:
            out += _count("prior_mqls", (leads[k] for _, k in _between(
                self._by_crossing, (2 * start - end) // HOUR_MS, start // HOUR_MS)))
        return out

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        cfg = self.cfg
        self._floor_h = (watermark - self.reach_ms - cfg.lookback_ms) // HOUR_MS - 1
        for account, _ in self.accounts.sweep(
                watermark - self.reach_ms - max(cfg.lookback_ms, cfg.within_ms)):
            self._base.pop(account, None)
            self._running.forget(account)
        if self.leads.sweep(watermark - self.reach_ms - 2 * self.longest_ms):
            self._base.clear()
            self._index_leads()  # the board stays: no account's hours changed



    def snapshot(self) -> LeadScoringState:
        return LeadScoringState(self.VERSION, self.accounts.data, self.leads.data)

    def restore(self, state: LeadScoringState) -> None:
        self.accounts.replace(state.accounts)
        self.leads.replace(state.leads)
        self.loaded()

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"accounts": self.accounts, "leads": self.leads}

    def loaded(self) -> None:
        for acc in self.accounts.resident():  # on disk, the others as they are read
            _repacked(acc)
        self._base.clear()
        self._running.clear()
        self.board.reset()
        self._index_leads()

    def _index_leads(self) -> None:
        """The derived indexes of the leads held (after a restore, or leads expired)."""
        leads = self.leads.data
        self._by_created = sorted((lead.created, k) for k, lead in leads.items())
        self._by_crossing = sorted((lead.qualified, k) for k, lead in leads.items()
                                   if lead.qualified is not None)
        self.unannounced = {k for k, lead in self.leads.data.items()
                            if lead.qualified is not None and lead.qualified != lead.announced}

    def __len__(self) -> int:
        return len(self.accounts) + len(self.leads)


class KeptBy:
    """A lead's filing time: it is dropped once this is reach + two longest windows behind
    the watermark. Its crossing can move until `within` + reach after its creation; a window
    still revisable counts it up to reach + its length after its creation (``mql_leads``)
    and up to reach + twice its length after its crossing (``prior_mqls``). (Not a method
    of the tracker: its table would hold the tracker in a cycle.)"""

    __slots__ = ("longest_ms", "within_ms")

    def __init__(self) -> None:
        self.within_ms = self.longest_ms = 0

    def __call__(self, lead: Lead) -> int:
        two = 2 * self.longest_ms
        kept = max(lead.created + self.within_ms - two, lead.created - two // 2)
        return kept if lead.qualified is None else max(kept, lead.qualified * HOUR_MS)


def mql_record(lead_id: str, lead: Lead, threshold: float, emitted_at: str) -> dict[str, Any]:
    """A lead's record on `kpi-mql` (key lead_id; sent again if its hour moves earlier)."""
    assert lead.qualified is not None
    return {"lead_id": lead_id, "account_id": lead.account, "campaign_id": lead.campaign,
            "channel": lead.channel, "created_at": iso_ms(lead.created),
            "mql_at": iso_ms(lead.qualified * HOUR_MS), "score": round(lead.score, 3),
            "threshold": threshold, "emitted_at": emitted_at}


def _between(index: list[tuple[int, str]], lo: int, hi: int) -> list[tuple[int, str]]:
    return index[bisect.bisect_left(index, (lo,)):bisect.bisect_left(index, (hi,))]


def _remove(index: list[tuple[int, str]], item: tuple[int, str]) -> None:
    i = bisect.bisect_left(index, item)
    if i < len(index) and index[i] == item:
        del index[i]


def _count(builtin: str, leads: Iterable[Lead], crossed_before: int | None = None
           ) -> list[tuple[str, Dims, float]]:
    """Leads per dims (those crossed before an hour, when one is given)."""
    counts: dict[Dims, int] = {}
    for lead in leads:
        if crossed_before is None or (lead.qualified is not None
                                      and lead.qualified < crossed_before):
            dims = _dims(lead)
            counts[dims] = counts.get(dims, 0) + 1
    return [(builtin, dims, n) for dims, n in counts.items()]


def _dims(lead: Lead) -> Dims:
    return (("campaign_id", lead.campaign), ("channel", lead.channel))


def _fact(lead: Lead, delta: int) -> Fact:
    assert lead.qualified is not None
    return (lead.qualified * HOUR_MS, "mqls", _dims(lead), delta)


def _last_ts(acc: Engagement) -> int:
    return acc.last_ts


def _repacked(acc: Engagement) -> Engagement:
    """An account as this version packs it: version 1's 64-bit hours and points (their
    values fit) converted, in place."""
    if acc.packing != PACKING:
        acc.hours = array(PACKING, array(acc.packing, acc.hours)).tobytes()
        acc.points = array(PACKING, (min(p, _POINTS_MAX) for p in array(
            acc.packing, acc.points))).tobytes()
        acc.packing = PACKING
    return acc
