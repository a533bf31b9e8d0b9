"""Unique openers and clickers: a (campaign, contact) counts once, in the pane of its
earliest occurrence within the horizon."""

from __future__ import annotations

from typing import Any, ClassVar, Final

import msgspec

from metrics.constants import UNKNOWN
from metrics.events import Event
from metrics.trackers.base import Dims, DimsMemo, Fact, Keyed, Table, TableFactory

_EMAIL_DIMS: Final = frozenset({"campaign_id", "segment"})

Key = tuple[str, str]  # (campaign_id, contact_id)


class FirstSeenState(msgspec.Struct, gc=False):
    version: int
    #: key -> (event time of its earliest occurrence, the dims it counted under)
    first: dict[Key, tuple[int, Dims]]


class FirstSeen:
    """Counts a key once, in the pane of its earliest occurrence within ``horizon_ms``. An
    earlier occurrence arriving later moves the count to its own pane; occurrences further
    apart than the horizon count again (the state expired)."""

    name: ClassVar[str]
    family: ClassVar[str] = "email"
    builtin: ClassVar[str]
    builtins: ClassVar[dict[str, frozenset[str]]]
    consumes: ClassVar[frozenset[str]]
    micro: ClassVar[frozenset[str]] = frozenset()
    settles: ClassVar[bool] = False
    state_type: ClassVar[type[msgspec.Struct]] = FirstSeenState
    part_types: ClassVar[dict[str, Any]] = {"first": dict[Key, tuple[int, Dims]]}
    VERSION: ClassVar[int] = 1

    def __init__(self, horizon_ms: int):
        self.horizon_ms = horizon_ms
        self.first: Table[Key, tuple[int, Dims]] = Keyed(_first_ts)
        self._dims = DimsMemo()

    def spill(self, make: TableFactory) -> None:
        """Its keys, one per (campaign, contact) that answered: on disk (a worker's)."""
        self.first = make(f"{self.name}.first", _first_ts, Key, tuple[int, Dims],
                          self._canon)

    def observe(self, ev: Event) -> list[Fact]:
        d = ev.data
        return self.observe_key((d.campaign_id, d.contact_id), ev.ts_ms, self._dims(
            (("campaign_id", d.campaign_id), ("segment", d.segment or UNKNOWN))))

    def observe_key(self, key: Key, ts: int, dims: Dims) -> list[Fact]:
        cur = self.first.get(key)
        if cur is None or ts - cur[0] > self.horizon_ms:
            self.first.put(key, (ts, dims))
            return [(ts, self.builtin, dims, 1)]
        if cur[0] - ts > self.horizon_ms:  # far older than what we hold: a separate occurrence
            return [(ts, self.builtin, dims, 1)]
        if (ts, dims) < cur:
            self.first.put(key, (ts, dims))
            return [(cur[0], self.builtin, cur[1], -1), (ts, self.builtin, dims, 1)]
        return []

    def settled(self, watermark: int, grace_ms: int) -> int:
        raise NotImplementedError("its facts are final as they come")

    def expire(self, watermark: int) -> None:
        self.first.drop(watermark - self.horizon_ms)

    def snapshot(self) -> FirstSeenState:
        return FirstSeenState(self.VERSION, self.first.data)

    def restore(self, state: FirstSeenState) -> None:
        self.first.replace(state.first)

    def tables(self) -> dict[str, Table[Any, Any]]:
        return {"first": self.first}

    def loaded(self) -> None:
        """Decoded apart, every key held its own dims: one tuple each again."""
        if not isinstance(self.first, Keyed):  # on disk: through ``_canon`` as read
            return
        data = self.first.data
        for key, cur in data.items():
            data[key] = self._canon(cur)

    def _canon(self, cur: tuple[int, Dims]) -> tuple[int, Dims]:
        return cur[0], self._dims(cur[1])

    def __len__(self) -> int:
        return len(self.first)


def _first_ts(cur: tuple[int, Dims]) -> int:
    return cur[0]


class UniqueOpeners(FirstSeen):
    name: ClassVar[str] = "unique_opens"
    builtin: ClassVar[str] = "unique_opens"
    builtins: ClassVar[dict[str, frozenset[str]]] = {"unique_opens": _EMAIL_DIMS}
    consumes: ClassVar[frozenset[str]] = frozenset({"email.opened"})


class UniqueClickers(FirstSeen):
    name: ClassVar[str] = "unique_clicks"
    builtin: ClassVar[str] = "unique_clickers"
    builtins: ClassVar[dict[str, frozenset[str]]] = {"unique_clickers": _EMAIL_DIMS}
    consumes: ClassVar[frozenset[str]] = frozenset({"email.clicked"})
