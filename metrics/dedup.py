"""The dedup store: event ids counted within the horizon, per shard.

An id repeats only within a shard's topics, as the worker that owns the shard sees them, so
a shard's families share one store. Ids are filed by the hour of their event time, so expiry
drops whole hours.

Two stores follow ``DedupStore``: ``MemoryDedup`` here (replay, tests: everything in a dict)
and the worker's on-disk one (streams/dedup_disk.py: RocksDB, made durable one commit's
changes at a time). Both answer the same questions the same way, so a worker's counts equal
replay's.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from metrics.constants import HOUR_MS


class DedupState(msgspec.Struct, gc=False):
    version: int
    #: event id -> event time. Empty when the ids live outside the snapshot (on disk, made
    #: durable as segments: streams/dedup_disk.py); a format 3 snapshot holds them all here
    ids: dict[str, int]
    #: ids of the hours before this one are expired (0: none yet)
    cutoff_h: int = 0


DEDUP_VERSION = 1


class DedupStore(Protocol):
    """What the engine asks of a dedup store."""

    def __contains__(self, eid: str) -> bool: ...

    def remember(self, eid: str, ts: int) -> None: ...

    def admit(self, eid: str, ts: int) -> bool:
        """``remember`` an id not held; False (nothing done) when it is: a duplicate."""
        ...

    def forget(self, eid: str) -> None:
        """An id remembered for an event that then turned out late: not counted."""
        ...

    def expire(self, cutoff_ts: int) -> None:
        """Forget the ids of the hours before the one holding ``cutoff_ts``."""
        ...

    def snapshot(self) -> DedupState: ...

    def restore(self, state: DedupState) -> None: ...

    def __len__(self) -> int: ...


class MemoryDedup:
    """Every id in a dict, filed by hour for expiry."""

    __slots__ = ("by_hour", "cutoff_h", "ids")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.by_hour: dict[int, list[str]] = {}
        self.cutoff_h = 0

    def __contains__(self, eid: str) -> bool:
        return eid in self.ids

    def remember(self, eid: str, ts: int) -> None:
        hour = ts // HOUR_MS
        if hour < self.cutoff_h:
            return  # an expired hour: gone at once (the disk store treats it so too)
        self.ids[eid] = ts
        bucket = self.by_hour.get(hour)
        if bucket is None:
            self.by_hour[hour] = [eid]
        else:
            bucket.append(eid)

    def admit(self, eid: str, ts: int) -> bool:
        if eid in self.ids:
            return False
        self.remember(eid, ts)
        return True

    def forget(self, eid: str) -> None:
        self.ids.pop(eid, None)

    def expire(self, cutoff_ts: int) -> None:
        cutoff_h = cutoff_ts // HOUR_MS
        if cutoff_h <= self.cutoff_h:
            return
        self.cutoff_h = cutoff_h
        ids, by_hour = self.ids, self.by_hour
        for h in [h for h in by_hour if h < cutoff_h]:
            for eid in by_hour.pop(h):
                ts = ids.get(eid)
                if ts is not None and ts // HOUR_MS < cutoff_h:  # not remembered anew since
                    del ids[eid]

    def snapshot(self) -> DedupState:
        return DedupState(DEDUP_VERSION, self.ids, self.cutoff_h)

    def restore(self, state: DedupState) -> None:
        self.ids = {}
        self.by_hour = {}
        self.cutoff_h = state.cutoff_h
        for eid, ts in state.ids.items():
            self.remember(eid, ts)

    def __len__(self) -> int:
        return len(self.ids)
