"""Web sessions: a session id's events less than 30 minutes apart form one session."""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from metrics.constants import HOUR_MS, NEVER_END, UNKNOWN
from metrics.events import Event
from metrics.trackers.base import Dims, Fact, Keyed, net_change

SESSION_GAP_MS: Final = 30 * 60 * 1000
#: how long a window's session KPIs wait at most for a session that never ends
MAX_SETTLE_MS: Final = 4 * HOUR_MS
_WEB_DIMS: Final = frozenset({"channel", "campaign_id"})

_NO_GOALS: Final[frozenset[str]] = frozenset()


class _Session(msgspec.Struct, gc=False, eq=False):
    """A struct: one is made for most page views, and C builds it 3x faster than a class
    (no cycles: it holds numbers, strings and a frozenset of strings). Compared by identity."""

    start: int
    end: int
    views: int
    first: tuple[int, int, str, str]  # (0 for a page view else 1, ts, channel, campaign)
    goals: frozenset[str]  # most sessions convert on nothing: the shared empty one


class SessionsState(msgspec.Struct, gc=False):
    version: int
    #: session id -> its session, or its sessions (by start) when it has several
    sessions: dict[str, _Session | list[_Session]]


class Sessions:
    """Web sessions: a session_id's events with gaps under 30 minutes form one session.

    A session counts in the pane of its first event: sessions, single-page sessions,
    converting sessions, and sessions per goal converted. Channel and campaign come from its
    first page view. Its facts are settled once no event can extend it (``settled``): the
    KPIs built on them wait for that before their windows are final.
    """

    name: ClassVar[str] = "sessions"
    family: ClassVar[str] = "web"
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "sessions": _WEB_DIMS,
        "single_page_sessions": _WEB_DIMS,
        "converting_sessions": _WEB_DIMS,
        "goal_sessions": _WEB_DIMS | {"goal"},
    }
    consumes: ClassVar[frozenset[str]] = frozenset({"page.viewed", "goal.converted"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = True
    state_type: ClassVar[type[msgspec.Struct]] = SessionsState
    part_types: ClassVar[dict[str, Any]] = {"sessions": dict[str, _Session | list[_Session]]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: session id -> its session, or its sessions (a list, by start) when it has several;
        #: filed by the hour of its latest end
        self.state: Keyed[str, _Session | list[_Session]] = Keyed(_last_end)
        #: the last scan of ``settled``: (reach, bound, when the bound's session ends)
        self._scan: tuple[int, int, int] | None = None
        #: the earliest start of a session made or changed since that scan
        self._low = NEVER_END

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        if ev.type == "page.viewed":
            return self.observe_one(d.session_id, ev.ts_ms, True, d.channel,
                                    d.campaign_id or UNKNOWN, None)
        return self.observe_one(d.session_id, ev.ts_ms, False, d.channel,
                                d.campaign_id or UNKNOWN, d.goal)

    def observe_one(
        self, sid: str, ts: int, view: bool, channel: str, campaign: str, goal: str | None
    ) -> list[Fact]:
        held = self.state.get(sid)
        first = (0 if view else 1, ts, channel, campaign)
        if held is None:  # a new session: nothing to retract
            s = _Session(ts, ts, 1 if view else 0, first,
                         _NO_GOALS if goal is None else frozenset((goal,)))
            self.state.put(sid, s)
            if ts < self._low:
                self._low = ts
            return _session_facts(s)
        if isinstance(held, _Session):
            s = held
            if s.start <= ts < s.end + SESSION_GAP_MS and s.first <= first and (
                    goal is None or goal in s.goals):
                # inside or extending the one session, its start and attribution unchanged:
                # only a second page view changes a fact (no longer single-page)
                if ts > s.end:
                    s.end = ts
                if view:
                    s.views += 1
                self.state.touch(sid)  # changed in place: its hour is written again
                if s.start < self._low:
                    self._low = s.start
                if view and s.views == 2:
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
        self.state.put(sid, clusters[0] if len(clusters) == 1 else clusters)
        if s.start < self._low:
            self._low = s.start
        after = _session_facts(s)
        if after == before:
            return []
        return net_change(before, after)

    def settled(self, watermark: int, grace_ms: int) -> int:
        """The time before which every session has settled at this watermark: no event
        within grace can still extend one (its end + the session gap is past). Windows
        ending by then hold their sessions' final facts. A session kept alive for longer
        than ``MAX_SETTLE_MS`` (a bot, a monitor) holds nothing back beyond that."""
        reach = watermark - grace_ms  # the earliest event time still accepted
        floor = reach - SESSION_GAP_MS - MAX_SETTLE_MS
        scan = self._scan
        # The last scan's bound holds while its session is still open and no session made
        # or changed since starts before it: a session open now was open then (its end as
        # it was, reach no earlier) or changed since. Publishing asks at every batch while
        # windows wait: a scan each time walked every recent session.
        if scan is None or reach < scan[0] or reach >= scan[2] or self._low < scan[1]:
            scan = self._scan = (reach, *self._open_bound(reach))
            self._low = NEVER_END
        return max(scan[1], floor)

    def _open_bound(self, reach: int) -> tuple[int, int]:
        """The earliest start of a session still open at ``reach``, and the time that
        session ends for good (a rescan then); NEVER_END for both when none is open."""
        bound = closes = NEVER_END
        by_hour, data = self.state.by_hour, self.state.data
        # a session id is filed by its latest end: only the recent hours can hold open ones
        for hour in [h for h in by_hour if (h + 1) * HOUR_MS + SESSION_GAP_MS > reach]:
            for sid in by_hour[hour]:
                held = data[sid]
                for c in held if isinstance(held, list) else (held,):
                    if c.start < bound and c.end + SESSION_GAP_MS > reach:
                        bound, closes = c.start, c.end + SESSION_GAP_MS
        return bound, closes

    def expire(self, watermark: int) -> None:
        # a session id is filed by its latest end: every session of an expired hour ended
        # before the cutoff
        self.state.sweep(watermark - self.horizon_ms)

    def snapshot(self) -> SessionsState:
        return SessionsState(self.VERSION, self.state.data)

    def restore(self, state: SessionsState) -> None:
        self.state.replace(state.sessions)
        self._scan = None

    def tables(self) -> dict[str, Keyed[Any, Any]]:
        return {"sessions": self.state}

    def loaded(self) -> None:
        self._scan = None  # filled from parts: scan anew

    def __len__(self) -> int:
        return len(self.state)


def _last_end(held: _Session | list[_Session]) -> int:
    return max(c.end for c in held) if isinstance(held, list) else held.end


def _session_dims(s: _Session) -> Dims:
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
