"""Web visitors: a visitor (`visitor_id` of its page views) counts once, in the pane of its
first page view within the horizon; a converting visitor once, in the pane of its first
conversion, and once per goal. Seed 003's conversion rate per visitor.

A goal.converted event names its session, not its visitor: the session's page views say
whose it is (the smallest `visitor_id` they carry). A session none of whose page views
carries one is its own visitor (``session:<id>``), as is a conversion whose session's page
views have not been seen. When they are, its conversions move to that visitor: the facts
are a function of the set of events, whatever their order.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeVar

import msgspec

from metrics.constants import UNKNOWN
from metrics.events import Event
from metrics.trackers.base import Dims, DimsMemo, Fact, Keyed, Table, TableFactory, net_change

_WEB_DIMS: Final = frozenset({"channel", "campaign_id"})


class Visit(msgspec.Struct, gc=False):
    """A session as far as visitors go (what moves with it to another visitor)."""

    #: the smallest visitor_id its page views carry
    visitor: str | None = None
    first: tuple[int, Dims] | None = None  # its first page view: (ts, dims)
    #: goal -> (its first conversion's ts, the conversion's dims)
    goals: dict[str, tuple[int, Dims]] = {}
    last_ts: int = 0


class Visitor(msgspec.Struct, gc=False):
    #: its first page view and first conversion per goal, over its sessions; kept here, so
    #: a session expiring before its visitor takes nothing back
    first: tuple[int, Dims] | None = None
    goals: dict[str, tuple[int, Dims]] = {}
    sessions: list[str] = []
    last_ts: int = 0


class VisitorsState(msgspec.Struct, gc=False):
    version: int
    sessions: dict[str, Visit]
    visitors: dict[str, tuple[Visitor, list[Fact]]]


#: a fact's builtin -> the one string of it (those decoded from disk are strings of their own)
_NAMES: Final = {b: b for b in ("visitors", "converting_visitors", "goal_visitors")}
V = TypeVar("V", Visit, Visitor)


class Visitors:
    """Visitors and converting visitors; their channel and campaign are those of their
    first page view (else of their first conversion)."""

    name: ClassVar[str] = "visitors"
    family: ClassVar[str] = "web"
    builtins: ClassVar[dict[str, frozenset[str]]] = {
        "visitors": _WEB_DIMS,
        "converting_visitors": _WEB_DIMS,
        "goal_visitors": _WEB_DIMS | {"goal"},
    }
    consumes: ClassVar[frozenset[str]] = frozenset({"page.viewed", "goal.converted"})
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = VisitorsState
    part_types: ClassVar[dict[str, Any]] = {
        "sessions": dict[str, Visit], "visitors": dict[str, tuple[Visitor, list[Fact]]]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        #: session -> its visitor, first view and conversions, filed by its last event
        self.sessions: Table[str, Visit] = Keyed(_visit_ts)
        #: visitor -> its firsts and sessions, with the facts it contributes now, filed by
        #: its latest event
        self.visitors: Table[str, tuple[Visitor, list[Fact]]] = Keyed(_visitor_ts)
        self._dims = DimsMemo()  # a view's dims: one tuple per campaign and channel

    def spill(self, make: TableFactory) -> None:
        """Its sessions and visitors, one per session and visitor over the horizon: on disk
        (a worker's). A value read is changed until the next read of its table only: a
        session is put back after its visitor's other sessions are read (``_leave``)."""
        self.sessions = make(f"{self.name}.sessions", _visit_ts, str, Visit,
                             self._canon_visit)
        self.visitors = make(f"{self.name}.visitors", _visitor_ts, str,
                             tuple[Visitor, list[Fact]], self._canon_visitor)

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        ts = ev.ts_ms
        dims: Dims = self._dims((("campaign_id", d.campaign_id or UNKNOWN),
                                 ("channel", d.channel)))
        sid: str = d.session_id
        visit = self.sessions.get(sid)
        new = visit is None
        if visit is None:  # filed by the put below, once it is whole
            visit = Visit(None, None, {}, ts)
        out: list[Fact] = []
        if ev.type == "page.viewed":
            if visit.first is None or (ts, dims) < visit.first:
                visit.first = (ts, dims)
            vid = d.visitor_id
            if vid is not None and (visit.visitor is None or vid < visit.visitor):
                old = _who(sid, visit)
                visit.visitor = vid
                # a new session has no stand-in to leave (made with its session, and they
                # expire together): looking it up left a missing key in a disk table's cache,
                # half of the visitors' cache in a day of traffic
                if not new:
                    out += self._leave(old, sid)
        else:
            goal: str = d.goal
            cur = visit.goals.get(goal)
            if cur is None or (ts, dims) < cur:
                visit.goals[goal] = (ts, dims)
        visit.last_ts = max(visit.last_ts, ts)
        self.sessions.put(sid, visit)  # put, not touch: ``_leave`` may have evicted it
        who = _who(sid, visit)
        held = self.visitors.get(who)
        if held is None:  # filed by ``_refresh``, once its facts are known
            held = (Visitor(None, {}, [sid], ts), [])
        else:
            v = held[0]
            if sid not in v.sessions:
                v.sessions.append(sid)
            v.last_ts = max(v.last_ts, ts)
        _absorb(held[0], visit)
        return out + self._refresh(who, held)

    def _leave(self, who: str, sid: str) -> list[Fact]:
        """The session left ``who`` for a visitor id of its own: ``who``'s firsts are
        recomputed from the sessions it keeps (a stand-in visitor goes with its session)."""
        held = self.visitors.get(who)
        if held is None:
            return []
        v, before = held
        if sid in v.sessions:
            v.sessions.remove(sid)
        if who.startswith("session:") or not v.sessions:
            self.visitors.delete(who)
            return net_change(before, [])
        v.first, v.goals = None, {}
        for other in v.sessions:
            visit = self.sessions.get(other)
            if visit is not None:
                _absorb(v, visit)
        return self._refresh(who, held)

    def _refresh(self, who: str, held: tuple[Visitor, list[Fact]]) -> list[Fact]:
        """The facts of a visitor just changed (its sessions, its latest event, its firsts),
        and filed again by its latest event whether they changed or not. ``held``: as the
        caller read it (or made it: a new visitor, filed here), no read of the table since."""
        v, before = held
        after: list[Fact] = []
        conv = min(v.goals.values()) if v.goals else None
        base = v.first if v.first is not None else conv
        if base is not None:
            dims = base[1]  # the visitor's channel and campaign: its first view's
            if v.first is not None:
                after.append((v.first[0], "visitors", dims, 1))
            if conv is not None:
                after.append((conv[0], "converting_visitors", dims, 1))
                for goal in sorted(v.goals):
                    after.append((v.goals[goal][0], "goal_visitors", (*dims, ("goal", goal)), 1))
        if after == before and before:  # (a new visitor has facts: it is filed below)
            self.visitors.touch(who)
            return []
        self.visitors.put(who, (v, after))
        # a visitor's facts differ in their builtin or goal: none cancels another
        return net_change(before, after) if before else after.copy()

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self.horizon_ms
        self.sessions.drop(cutoff)
        self.visitors.drop(cutoff)

    def snapshot(self) -> VisitorsState:
        return VisitorsState(self.VERSION, self.sessions.data, self.visitors.data)

    def restore(self, state: VisitorsState) -> None:
        self.sessions.replace(state.sessions)
        self.visitors.replace(state.visitors)

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"sessions": self.sessions, "visitors": self.visitors}

    def loaded(self) -> None:
        """Decoded apart, every first view held its own dims: one tuple each again (of the
        values in memory: in place, what a table on disk holds is not changed)."""
        for visit in self.sessions.resident():
            self._canon_visit(visit)
        for held in self.visitors.resident():
            self._canon_visitor(held)

    def _canon_visit(self, visit: V) -> V:
        """A session or visitor decoded apart, its dims the ones the others share."""
        memo = self._dims
        if visit.first is not None:
            visit.first = (visit.first[0], memo(visit.first[1]))
        if visit.goals:
            visit.goals = {g: (ts, memo(d)) for g, (ts, d) in visit.goals.items()}
        return visit

    def _canon_visitor(self, held: tuple[Visitor, list[Fact]]
                       ) -> tuple[Visitor, list[Fact]]:
        self._canon_visit(held[0])
        memo, facts = self._dims, held[1]
        facts[:] = [(ts, _NAMES.get(b, b), memo(d), n) for ts, b, d, n in facts]
        return held

    def __len__(self) -> int:
        return len(self.visitors) + len(self.sessions)


def _absorb(v: Visitor, visit: Visit) -> None:
    """Fold a session's first view and conversions into its visitor's firsts."""
    if visit.first is not None and (v.first is None or visit.first < v.first):
        v.first = visit.first
    for goal, conv in visit.goals.items():
        cur = v.goals.get(goal)
        if cur is None or conv < cur:
            v.goals[goal] = conv


def _who(sid: str, visit: Visit) -> str:
    return visit.visitor if visit.visitor is not None else f"session:{sid}"


def _visit_ts(visit: Visit) -> int:
    return visit.last_ts


def _visitor_ts(held: tuple[Visitor, list[Fact]]) -> int:
    return held[0].last_ts
