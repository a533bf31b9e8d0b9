"""Stateful parts of the KPIs, made additive.

Each tracker turns events into *facts*: (ts, builtin aggregate, dims, value) deltas placed in
the pane of the moment they belong to. When a later (or out-of-order) event changes what an
earlier fact should have been, the tracker retracts the old facts and adds new ones. The final
state depends only on the set of events, never on their arrival order, which is what lets
shuffled input within grace give identical windows.

State expires with the longest window plus grace, so memory stays flat on an endless stream.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Final, Generic, TypeVar

import msgspec

from metrics.events import DEAL_STAGES, UNKNOWN

Fact = tuple[int, str, tuple[tuple[str, str], ...], int]  # ts, builtin, dims, delta
MICRO: Final = 1_000_000  # sums of money and durations are kept in millionths (exact ints)
DAY_MS: Final = 86_400_000
SESSION_GAP_MS: Final = 30 * 60 * 1000
_HOUR: Final = 3_600_000


def net_change(before: list[Fact], after: list[Fact]) -> list[Fact]:
    """The facts that turn ``before`` into ``after``: unchanged facts cancel out, so they
    never touch (and needlessly revise) closed windows."""
    delta: dict[tuple[int, str, tuple[tuple[str, str], ...]], int] = {}
    for ts, b, dims, v in before:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) - v
    for ts, b, dims, v in after:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) + v
    return [(ts, b, dims, v) for (ts, b, dims), v in delta.items() if v]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Buckets(Generic[K]):
    """Keys filed by the hour of their last activity, for cheap expiry sweeps."""

    def __init__(self) -> None:
        self.by_hour: dict[int, list[K]] = {}
        self.low = 0  # no hour before this is filed (a sweep walks from here)

    def file(self, key: K, ts: int) -> None:
        h = ts // _HOUR
        bucket = self.by_hour.get(h)
        if bucket is None:
            self.by_hour[h] = [key]
            if h < self.low:
                self.low = h
        else:
            bucket.append(key)

    def sweep(self, state: dict[K, V], cutoff_ts: int, ts_of: Callable[[V], int]
              ) -> list[tuple[K, V]]:
        """Delete from ``state`` the keys filed before the cutoff whose entry is still older
        than it (a key refiled later stays); returns what was deleted."""
        removed = []
        for key in self.pop_before(cutoff_ts):
            cur = state.get(key)
            if cur is not None and ts_of(cur) < cutoff_ts:
                del state[key]
                removed.append((key, cur))
        return removed

    def pop_before(self, cutoff_ts: int) -> list[K]:
        cutoff_h = cutoff_ts // _HOUR
        out: list[K] = []
        if cutoff_h <= self.low:
            return out
        by_hour = self.by_hour
        if cutoff_h - self.low < len(by_hour):  # walk the expired hours
            for h in range(self.low, cutoff_h):
                bucket = by_hour.pop(h, None)
                if bucket is not None:
                    out.extend(bucket)
        else:  # event time jumped: scanning what is held is shorter
            for h in [h for h in by_hour if h < cutoff_h]:
                out.extend(by_hour.pop(h))
        self.low = cutoff_h
        return out


class FirstSeen:
    """Counts a key once, in the pane of its earliest occurrence within ``horizon_ms``.

    Used for unique openers and clickers per (campaign, contact). An earlier occurrence
    arriving later moves the count to its own pane; occurrences further apart than the
    horizon count again (the state expired).
    """

    def __init__(self, builtin: str, horizon_ms: int):
        self.builtin = builtin
        self.horizon_ms = horizon_ms
        self.state: dict[Hashable, tuple[int, tuple[tuple[str, str], ...]]] = {}
        self._buckets: _Buckets[Hashable] = _Buckets()

    def observe(self, key: Hashable, ts: int, dims: tuple[tuple[str, str], ...]) -> list[Fact]:
        cur = self.state.get(key)
        if cur is None or ts - cur[0] > self.horizon_ms:
            self.state[key] = (ts, dims)
            self._buckets.file(key, ts)
            return [(ts, self.builtin, dims, 1)]
        if cur[0] - ts > self.horizon_ms:  # far older than what we hold: a separate occurrence
            return [(ts, self.builtin, dims, 1)]
        if (ts, dims) < cur:
            self.state[key] = (ts, dims)
            self._buckets.file(key, ts)
            return [(cur[0], self.builtin, cur[1], -1), (ts, self.builtin, dims, 1)]
        return []

    def expire(self, watermark: int) -> None:
        self._buckets.sweep(self.state, watermark - self.horizon_ms, lambda cur: cur[0])

    def __len__(self) -> int:
        return len(self.state)


_NO_GOALS: Final[frozenset[str]] = frozenset()


class _Session(msgspec.Struct, gc=False, eq=False):
    """A struct: one is made for most page views, and C builds it 3x faster than a class
    (no cycles: it holds numbers, strings and a frozenset of strings). Compared by identity."""

    start: int
    end: int
    views: int
    first: tuple[int, int, str, str]  # (0 for a page view else 1, ts, channel, campaign)
    goals: frozenset[str]  # most sessions convert on nothing: the shared empty one


class Sessions:
    """Web sessions: a session_id's events with gaps under 30 minutes form one session.

    A session counts in the pane of its first event: sessions, single-page sessions,
    converting sessions, and sessions per goal converted. Channel and campaign come from its
    first page view.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: session id -> its session, or its sessions (a list, by start) when it has several
        self.state: dict[str, _Session | list[_Session]] = {}
        self._buckets: _Buckets[str] = _Buckets()

    def observe(
        self, sid: str, ts: int, view: bool, channel: str, campaign: str, goal: str | None
    ) -> list[Fact]:
        held = self.state.get(sid)
        first = (0 if view else 1, ts, channel, campaign)
        if held is None:  # a new session: nothing to retract
            s = _Session(ts, ts, view, first, _NO_GOALS if goal is None else frozenset((goal,)))
            self.state[sid] = s
            self._buckets.file(sid, ts)
            return _session_facts(s)
        if isinstance(held, _Session):
            s = held
            if s.start <= ts < s.end + SESSION_GAP_MS and s.first <= first and (
                    goal is None or goal in s.goals):
                # inside or extending the one session, its start and attribution unchanged:
                # only a second page view changes a fact (no longer single-page)
                if ts > s.end:
                    if ts // _HOUR != s.end // _HOUR:
                        self._buckets.file(sid, ts)
                    s.end = ts
                if view:
                    s.views += 1
                    if s.views == 2:
                        return [(s.start, "single_page_sessions", _session_dims(s), -1)]
                return []
            clusters = [held]
        else:
            clusters = held
        touching = [c for c in clusters if c.start - SESSION_GAP_MS < ts < c.end + SESSION_GAP_MS]
        if len(touching) == 1:
            s = touching[0]
            before = _session_facts(s)
        else:
            before = [f for c in touching for f in _session_facts(c)]
            s = _Session(ts, ts, 0, first, _NO_GOALS)
            for c in touching:
                clusters.remove(c)
                s.start = min(s.start, c.start)
                s.end = max(s.end, c.end)
                s.views += c.views
                s.first = min(s.first, c.first)
                s.goals |= c.goals
            clusters.append(s)
            clusters.sort(key=lambda c: c.start)
        s.start = min(s.start, ts)
        s.end = max(s.end, ts)
        s.views += view
        s.first = min(s.first, first)
        if goal is not None:
            s.goals = s.goals | {goal}
        self.state[sid] = clusters[0] if len(clusters) == 1 else clusters
        self._buckets.file(sid, s.end)
        after = _session_facts(s)
        if after == before:
            return []
        return net_change(before, after)

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self.horizon_ms
        for sid in self._buckets.pop_before(cutoff):
            held = self.state.get(sid)
            if held is None:
                continue
            keep = [c for c in ([held] if isinstance(held, _Session) else held)
                    if c.end >= cutoff]
            if not keep:
                del self.state[sid]
            else:
                self.state[sid] = keep[0] if len(keep) == 1 else keep

    def __len__(self) -> int:
        return len(self.state)


def _session_dims(s: _Session) -> tuple[tuple[str, str], ...]:
    """A session counts under the channel and campaign of its first page view."""
    _, _, channel, campaign = s.first
    return (("campaign_id", campaign), ("channel", channel))


def _session_facts(s: _Session) -> list[Fact]:
    dims = _session_dims(s)
    facts: list[Fact] = [(s.start, "sessions", dims, 1)]
    if s.views == 1:
        facts.append((s.start, "single_page_sessions", dims, 1))
    if s.goals:
        facts.append((s.start, "converting_sessions", dims, 1))
        for g in sorted(s.goals):
            facts.append((s.start, "goal_sessions", (*dims, ("goal", g)), 1))
    return facts


_STAGE_INDEX: Final = {s: i for i, s in enumerate(DEAL_STAGES)}


class _Deal:
    __slots__ = ("entries", "fallback", "last_ts", "lead_id")

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, int]] = {}  # stage -> (first ts, amount micro)
        self.fallback: tuple[int, str, str] | None = None  # earliest (ts, channel, campaign)
        self.lead_id: str | None = None
        self.last_ts = 0


class Pipeline:
    """Leads and deals: stage entries, attribution to the lead's channel and campaign, cycle.

    A deal's facts are a pure function of its state and its lead's, recomputed whenever
    either changes; the difference is applied as retractions and additions.
    """

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.leads: dict[str, tuple[int, str, str]] = {}  # lead -> (ts, channel, campaign)
        self.deals: dict[str, _Deal] = {}
        self.deals_by_lead: dict[str, set[str]] = {}
        self.facts: dict[str, list[Fact]] = {}
        self._lead_buckets: _Buckets[str] = _Buckets()
        self._deal_buckets: _Buckets[str] = _Buckets()

    def lead(self, lead_id: str, ts: int, channel: str, campaign: str) -> list[Fact]:
        info = (ts, channel, campaign)
        cur = self.leads.get(lead_id)
        if cur is not None and cur <= info:
            return []
        self.leads[lead_id] = info
        self._lead_buckets.file(lead_id, ts)
        out: list[Fact] = []
        for deal_id in sorted(self.deals_by_lead.get(lead_id, ())):
            out += self._refresh(deal_id)
        return out

    def deal(self, data: Any, ts: int) -> list[Fact]:
        """A deal.stage_changed event (``data``: its struct, metrics.events)."""
        deal_id: str = data.deal_id
        d = self.deals.get(deal_id)
        if d is None:
            d = self.deals[deal_id] = _Deal()
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
        self._deal_buckets.file(deal_id, d.last_ts)
        return self._refresh(deal_id)

    def _refresh(self, deal_id: str) -> list[Fact]:
        before = self.facts.get(deal_id, [])
        after = self._deal_facts(self.deals[deal_id])
        if after == before:
            return []
        self.facts[deal_id] = after
        return net_change(before, after)

    def _deal_facts(self, d: _Deal) -> list[Fact]:
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
        self._lead_buckets.sweep(self.leads, cutoff, lambda lead: lead[0])
        for deal_id, d in self._deal_buckets.sweep(self.deals, cutoff, lambda d: d.last_ts):
            self.facts.pop(deal_id, None)
            if d.lead_id is not None:
                linked = self.deals_by_lead.get(d.lead_id)
                if linked is not None:
                    linked.discard(deal_id)
                    if not linked:
                        del self.deals_by_lead[d.lead_id]

    def __len__(self) -> int:
        return len(self.deals) + len(self.leads)
