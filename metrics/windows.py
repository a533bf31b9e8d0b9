"""Event-time panes and rolling windows of one topic family.

Every aggregate update lands in one *fine pane* (the gcd of the family's hops, e.g. 1 min).
Each window spec (size, hop) keeps a running sum over the panes of the last closed window;
closing the next window adds the newest hop of panes and subtracts the expired one, so a 24 h
window is never re-summed from scratch. Values are integers (money and durations in
millionths), so add-then-subtract is exact and order does not matter.

A closed window keeps a snapshot while it can still change (its end + longest window + grace):
an update that lands in it (a late event inside grace, or a stateful retraction such as a
session turning out not to be single-page) patches the snapshot and marks it dirty, and the
engine republishes it as a revision. The snapshots are on a shelf (metrics/shelf.py): a
worker keeps them on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from math import gcd
from typing import Any

import msgspec

from metrics.catalog import FamilyConfig, WindowSpec
from metrics.shelf import Shelf, ShelfFactory, mem_shelf

#: a breakdown's value: a string, or a tuple of them for a combined breakdown (campaign_id+segment)
DimValue = str | tuple[str, ...]
Key = tuple[str, str, DimValue]  # (aggregate, breakdown, value); breakdown "" is the total
Agg = dict[Key, int]
#: a pending tally's signature: (event type, *the values plans.fields_read lists for it)
Sig = tuple[Any, ...]


class SpecState(msgspec.Struct, array_like=True, gc=False):
    name: str
    last_end: int
    running: Agg
    closed: dict[int, Agg]


class WindowsState(msgspec.Struct, gc=False):
    """A family's panes and windows. ``version`` is raised on any change of layout."""

    version: int
    started: bool
    frontier: int
    pane_floor: int
    panes: dict[int, Agg]
    specs: list[SpecState]
    dirty: list[tuple[str, int]]
    #: the event time the family started at (None: a state written before it was kept)
    first_ts: int | None = None


WINDOWS_VERSION = 1


class _Spec:
    __slots__ = ("closed", "last_end", "running", "spec")

    def __init__(self, spec: WindowSpec, last_end: int, closed: Shelf[int, Agg]):
        self.spec = spec
        self.last_end = last_end  # windows ending at or before this are closed
        self.running: Agg = {}  # sum of panes in [last_end - size, last_end)
        closed.clear()
        self.closed = closed  # end -> snapshot, while revisable


class FamilyWindows:
    def __init__(self, cfg: FamilyConfig, shelves: ShelfFactory = mem_shelf):
        self.cfg = cfg
        #: each window's shelf of closed snapshots, made once (a worker's are on disk)
        self._shelves = {w.name: shelves(f"{cfg.name}.{w.name}", int, Agg) for w in cfg.windows}
        hop = 0
        for w in cfg.windows:
            hop = gcd(hop, w.hop_ms)
        self.pane_ms = hop
        self.panes: dict[int, Agg] = {}
        #: pane start -> (event type, the values its update reads) -> events: events at or
        #: beyond the frontier are tallied here and expanded into their pane's aggregate
        #: keys (settle) when the pane is read, once per distinct signature
        self.pending: dict[int, dict[Sig, int]] = {}
        self.specs: list[_Spec] = []
        self._by_name: dict[str, _Spec] = {}
        self.started = False
        #: the event time the family's windows started at: windows beginning earlier are
        #: partial (their data began inside them)
        self.first_ts: int | None = None
        #: panes at or after this start belong to no closed window and no running sum
        self.frontier = 0
        #: (window name, end) of closed windows changed since the last drain
        self.dirty: set[tuple[str, int]] = set()
        self._longest = cfg.longest_ms
        self._pane_floor = 0  # panes before this were dropped
        # what changed since the last ``drain_changes`` (a commit writes those parts only):
        # panes at or beyond the frontier it saw and windows closed after it, which change
        # without being told; before them, what ``add`` patched
        self._seen_frontier = 0
        self._seen_ends: dict[str, int] = {}
        self._patched_panes: set[int] = set()
        self._patched_closed: set[tuple[str, int]] = set()

    def start(self, first_ts: int) -> None:
        """Windows ending before first event - grace are treated as closed (never emitted)."""
        self.first_ts = first_ts
        base = first_ts - self.cfg.grace_ms
        self.specs = [_Spec(w, base - base % w.hop_ms, self._shelves[w.name])
                      for w in self.cfg.windows]
        self._by_name = {s.spec.name: s for s in self.specs}
        self.frontier = max(s.last_end for s in self.specs)
        self._pane_floor = min(s.last_end - s.spec.size_ms for s in self.specs)
        self.started = True

    def is_late(self, ts: int) -> bool:
        """True when every window containing ts is already closed."""
        for s in self.specs:
            hop = s.spec.hop_ms
            last_window_end = (ts + s.spec.size_ms) // hop * hop
            if last_window_end > s.last_end:
                return False
        return True

    def settle(self, expanders: dict[Any, Callable[[Agg, Sig, int], None]]) -> None:
        """Expand the pending tallies into their panes, each with the expander of its
        event type (sig[0]). Before any read of a pane at or beyond the frontier (a close,
        an open snapshot)."""
        if not self.pending:
            return
        panes = self.panes
        for start, tally in self.pending.items():
            pane = panes.get(start)
            if pane is None:
                pane = panes[start] = {}
            for sig, n in tally.items():
                expanders[sig[0]](pane, sig, n)
        self.pending.clear()

    def add(self, ts: int, key: Key, value: int) -> None:
        """Apply one delta anywhere in time (slow path: may touch closed windows). At or
        beyond ``frontier`` the engine adds to ``panes`` directly: the pane of ts starts at
        ts - ts % pane_ms."""
        p = ts - ts % self.pane_ms
        if p >= self._pane_floor:
            pane = self.panes.get(p)
            if pane is None:
                pane = self.panes[p] = {}
            pane[key] = pane.get(key, 0) + value
        if p >= self.frontier:
            return
        self._patched_panes.add(p)
        for s in self.specs:
            if p >= s.last_end:
                continue
            size, hop = s.spec.size_ms, s.spec.hop_ms
            if p >= s.last_end - size:
                s.running[key] = s.running.get(key, 0) + value
            end = (p // hop + 1) * hop
            stop = min(p + size, s.last_end)
            while end <= stop:
                if end in s.closed:
                    s.closed.patch(end, key, value)
                    self.dirty.add((s.spec.name, end))
                    self._patched_closed.add((s.spec.name, end))
                end += hop

    def _sum_panes(self, start: int, stop: int) -> Iterator[tuple[Key, int]]:
        step = self.pane_ms
        for p in range(start - start % step, stop, step):
            pane = self.panes.get(p)
            if pane:
                yield from pane.items()

    def close_until(self, watermark: int, keep_from: int | None = None
                    ) -> list[tuple[WindowSpec, int, Agg]]:
        """Close every window whose end + grace <= watermark. Returns (spec, end, snapshot).

        Empty windows ending before ``keep_from`` (the engine's expiry horizon: nothing can
        revise them, their snapshots would be dropped right after) are skipped at once, not
        closed one by one: a jump in event time costs nothing per empty window."""
        out: list[tuple[WindowSpec, int, Agg]] = []
        if not self.started:
            return out
        grace = self.cfg.grace_ms
        for s in self.specs:
            size, hop = s.spec.size_ms, s.spec.hop_ms
            while s.last_end + hop + grace <= watermark:
                if not s.running and keep_from is not None:
                    skip_to = self._empty_until(s.last_end, hop, watermark - grace, keep_from)
                    if skip_to > s.last_end + hop:
                        s.last_end = skip_to  # every window up to it is empty, as is its sum
                        continue
                end = s.last_end + hop
                run = s.running
                for k, v in self._sum_panes(end - hop, end):
                    run[k] = run.get(k, 0) + v
                for k, v in self._sum_panes(end - hop - size, end - size):
                    run[k] = run.get(k, 0) - v
                snap = {k: v for k, v in run.items() if v}
                s.running = snap
                s.last_end = end
                s.closed[end] = dict(snap)
                out.append((s.spec, end, snap))
        self.frontier = max(s.last_end for s in self.specs)
        return out

    def _empty_until(self, last_end: int, hop: int, last_close: int, keep_from: int) -> int:
        """The latest window end, at most ``last_close`` and before ``keep_from``, up to which
        every window after ``last_end`` is empty, given that the one ending at ``last_end``
        is: no pane from ``last_end`` on holds data before it. (Every pane's amounts are net
        non-negative, so an empty window holds only empty panes.)"""
        bound = min(last_close, keep_from - 1)
        nxt = min((p for p, pane in self.panes.items() if p >= last_end and any(pane.values())),
                  default=None)
        if nxt is not None:
            bound = min(bound, nxt)  # a window ending at or before nxt does not hold it
        return bound - bound % hop

    def expire(self, watermark: int) -> None:
        """Drop snapshots and panes nothing can change or read any more. Call after the
        closed windows were published."""
        if not self.started:
            return
        # A closed window can change while an event inside it is still accepted, i.e. while
        # some window holding that event is open: until end + longest + grace.
        horizon = watermark - self._longest - self.cfg.grace_ms
        for s in self.specs:
            old = []
            for end in s.closed:  # filed in closing order, so oldest first
                if end >= horizon:
                    break
                old.append(end)
            for end in old:
                del s.closed[end]
            s.closed.flush()
        # Running sums only ever subtract panes from last_end - size on.
        floor = min(s.last_end - s.spec.size_ms for s in self.specs)
        if floor > self._pane_floor:
            # every pane starts at or after the old floor: walk the expired span, unless
            # scanning what is held is shorter (event time jumped)
            step = self.pane_ms
            first = self._pane_floor - self._pane_floor % step
            if (floor - first) // step < len(self.panes):
                for p in range(first, floor, step):
                    self.panes.pop(p, None)
            else:
                for p in [p for p in self.panes if p < floor]:
                    del self.panes[p]
            self._pane_floor = floor

    def drain_changes(self) -> tuple[set[int], set[tuple[str, int]]]:
        """The panes and closed windows (name, end) changed since the last call (settle()
        first). Running sums and the rest are small: a commit writes them every time."""
        panes = {p for p in self.panes if p >= self._seen_frontier} | (
            self._patched_panes & self.panes.keys())
        closed = {(s.spec.name, end) for s in self.specs for end in s.closed
                  if end > self._seen_ends.get(s.spec.name, -1)}
        closed |= {(n, e) for n, e in self._patched_closed
                   if e in self._by_name[n].closed}
        self.mark_written()
        return panes, closed

    def mark_written(self) -> None:
        """Everything held is durable as it is: nothing changed since."""
        self._seen_frontier = self.frontier
        self._seen_ends = {s.spec.name: s.last_end for s in self.specs}
        self._patched_panes = set()
        self._patched_closed = set()

    def retain(self, keep: Callable[[Key], bool]) -> None:
        """Drop every value ``keep`` rejects, wherever it is held (a restored state's
        aggregates that were redefined or removed since it was written)."""
        for spec in self.specs:
            for k in [k for k in spec.running if not keep(k)]:
                del spec.running[k]
            for end, agg in list(spec.closed.items()):
                if not all(map(keep, agg)):
                    spec.closed[end] = {k: v for k, v in agg.items() if keep(k)}
            spec.closed.flush()
        for pane in self.panes.values():
            for k in [k for k in pane if not keep(k)]:
                del pane[k]

    def open_snapshot(self, spec: WindowSpec, end: int) -> Agg:
        """Current contents of the (still open) window of ``spec`` ending at ``end``."""
        s = self._by_name[spec.name]
        if end <= s.last_end:
            return dict(s.closed.get(end) or {})
        acc = dict(s.running)
        for k, v in self._sum_panes(s.last_end, end):
            acc[k] = acc.get(k, 0) + v
        for k, v in self._sum_panes(s.last_end - spec.size_ms, end - spec.size_ms):
            acc[k] = acc.get(k, 0) - v
        return {k: v for k, v in acc.items() if v}

    def closed_snapshot(self, spec_name: str, end: int) -> Agg | None:
        s = self._by_name.get(spec_name)
        return None if s is None else s.closed.get(end)

    def last_end(self, spec_name: str) -> int | None:
        s = self._by_name.get(spec_name)
        return None if s is None else s.last_end

    def snapshot(self, closed: bool = True) -> WindowsState:
        """The family's state (live references); settle() first: tallies are not kept.
        Without the closed windows' snapshots when not ``closed`` (a commit writes them as
        parts, metrics/snapshot.py)."""
        if self.pending:
            raise RuntimeError("settle() the pending tallies before a snapshot")
        return WindowsState(WINDOWS_VERSION, self.started, self.frontier, self._pane_floor,
                            self.panes, [SpecState(s.spec.name, s.last_end, s.running,
                                                   dict(s.closed.items()) if closed else {})
                                         for s in self.specs], sorted(self.dirty),
                            self.first_ts)

    def flush(self) -> None:
        """Write the closed snapshots put since the last flush (a shelf on disk)."""
        for s in self.specs:
            s.closed.flush()

    def restore(self, state: WindowsState) -> None:
        by_name = {w.name: w for w in self.cfg.windows}
        self.started, self.frontier, self._pane_floor = (state.started, state.frontier,
                                                         state.pane_floor)
        self.first_ts = state.first_ts
        self.panes = state.panes
        self.pending = {}
        self.specs = []
        for st in state.specs:
            spec = _Spec(by_name[st.name], st.last_end, self._shelves[st.name])
            spec.running = st.running
            for end, agg in sorted(st.closed.items()):
                spec.closed[end] = agg
            spec.closed.flush()
            self.specs.append(spec)
        self._by_name = {s.spec.name: s for s in self.specs}
        self.dirty = set(state.dirty)
