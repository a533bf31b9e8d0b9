"""What every stateful aggregate (a *tracker*) provides, and the pieces they share.

A tracker turns events into *facts*: (ts, builtin aggregate, dims, value) deltas placed in
the pane of the moment they belong to. When a later (or out-of-order) event changes what an
earlier fact should have been, the tracker retracts the old facts and adds new ones. The final
state depends only on the set of events, never on their arrival order, which is what lets
shuffled input within grace give identical windows.

State expires with the tracker's horizon (its family's longest window plus grace), so memory
stays flat on an endless stream. A new tracker is one module with a class following
``Tracker`` plus its line in registry.py.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec

from metrics.constants import HOUR_MS
from metrics.events import Event

Dims = tuple[tuple[str, str], ...]
Fact = tuple[int, str, Dims, int]  # ts, builtin, dims, delta


class Tracker(Protocol):
    """A stateful aggregate, registered in registry.py."""

    #: what its state and size go by (snapshots, /health)
    name: ClassVar[str]
    #: the topic family whose events it observes and whose panes its facts land in
    family: ClassVar[str]
    #: builtin aggregate -> the dimensions its facts carry (what a catalog may break it by)
    builtins: ClassVar[dict[str, frozenset[str]]]
    #: the builtins whose values are sums in millionths (money, durations)
    micro: ClassVar[frozenset[str]]
    #: the event types it observes
    consumes: ClassVar[frozenset[str]]
    #: the msgspec type of ``snapshot()``; its ``version`` field is raised on any change
    state_type: ClassVar[type[msgspec.Struct]]

    def __init__(self, horizon_ms: int) -> None: ...

    def observe(self, ev: Event) -> list[Fact]:
        """Take one event of a type in ``consumes``; return the facts it changes."""
        ...

    def expire(self, watermark: int) -> None:
        """Forget what the horizon no longer reaches at this watermark."""
        ...

    def snapshot(self) -> msgspec.Struct:
        """Its whole state (live references: encode it before the next event)."""
        ...

    def restore(self, state: Any) -> None:
        """Continue from a ``snapshot()`` (decoded as ``state_type``)."""
        ...

    def __len__(self) -> int: ...


def net_change(before: list[Fact], after: list[Fact]) -> list[Fact]:
    """The facts that turn ``before`` into ``after``: unchanged facts cancel out, so they
    never touch (and needlessly revise) closed windows."""
    delta: dict[tuple[int, str, Dims], int] = {}
    for ts, b, dims, v in before:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) - v
    for ts, b, dims, v in after:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) + v
    return [(ts, b, dims, v) for (ts, b, dims), v in delta.items() if v]


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Buckets(Generic[K]):
    """Keys filed by the hour of their last activity, for cheap expiry sweeps. Derived
    state: rebuilt from the keys' times on restore, never stored."""

    def __init__(self) -> None:
        self.by_hour: dict[int, list[K]] = {}
        self.low = 0  # no hour before this is filed (a sweep walks from here)

    def file(self, key: K, ts: int) -> None:
        h = ts // HOUR_MS
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
        cutoff_h = cutoff_ts // HOUR_MS
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
