"""The dedup store: event ids counted within the horizon, per shard.

An id repeats only within a shard's topics, as the worker that owns the shard sees them, so
a shard's families share one store. Ids are filed by the hour of their event time, so expiry
drops whole hours.
"""

from __future__ import annotations

import msgspec

from metrics.constants import HOUR_MS


class DedupState(msgspec.Struct, gc=False):
    version: int
    ids: dict[str, int]  # event id -> event time


DEDUP_VERSION = 1


class DedupStore:
    """``ids`` and ``by_hour`` are public: the engine's ingest writes them inline (it runs
    once per event), exactly as ``remember`` does."""

    __slots__ = ("by_hour", "ids")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.by_hour: dict[int, list[str]] = {}

    def __contains__(self, eid: str) -> bool:
        return eid in self.ids

    def remember(self, eid: str, ts: int) -> None:
        self.ids[eid] = ts
        self._file(eid, ts)

    def _file(self, eid: str, ts: int) -> None:
        hour = ts // HOUR_MS
        bucket = self.by_hour.get(hour)
        if bucket is None:
            self.by_hour[hour] = [eid]
        else:
            bucket.append(eid)

    def forget(self, eid: str) -> None:
        self.ids.pop(eid, None)

    def expire(self, cutoff_ts: int) -> None:
        """Forget the ids of the hours before the one holding ``cutoff_ts``."""
        cutoff_h = cutoff_ts // HOUR_MS
        ids, by_hour = self.ids, self.by_hour
        for h in [h for h in by_hour if h < cutoff_h]:
            for eid in by_hour.pop(h):
                ids.pop(eid, None)

    def snapshot(self) -> DedupState:
        return DedupState(DEDUP_VERSION, self.ids)

    def restore(self, state: DedupState) -> None:
        self.ids = state.ids
        self.by_hour = {}
        for eid, ts in self.ids.items():
            self._file(eid, ts)

    def __len__(self) -> int:
        return len(self.ids)
