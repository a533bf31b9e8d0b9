"""The engine's shelves on disk (metrics/shelf.py): closed windows and published rows.

A shelf's keys stay in memory (a window's end, or its family, window and end: a few bytes
each); its values are in the shard's store of tables (streams/table_disk.py), under the
shelf's prefix, MessagePack. Like the tables, the store is no durable copy: a commit writes
the changed windows as parts (metrics/snapshot.py) and a takeover fills the shelf again from
them, so it is emptied with the store.

A value put is held until ``flush`` (the engine's, once a tick) or until ``FLUSH_AT`` are
held. A ``patch`` of a value not held is kept as a delta, folded in when the value is read
or written: a retraction weeks back (a reopened deal's old win) patches each closed window
that holds it, ~500 of them for a 30-day window, and decoding and writing them all for each
such event took 12.5 ms against 0.3 ms in memory.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, KeysView
from typing import Any, Final, Generic, TypeVar

import msgspec
import rocksdict

from metrics.errors import StateError
from metrics.shelf import Shelf
from streams.table_disk import DiskTables

#: values put and held in memory before they are written
FLUSH_AT: Final = 256
_ENCODE: Final = msgspec.msgpack.Encoder().encode

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class DiskShelf(Generic[K, V]):
    def __init__(self, store: DiskTables, prefix: bytes, name: str, value_type: Any):
        self.store = store
        self.prefix = prefix
        self.name = name
        self._decode = msgspec.msgpack.Decoder(value_type).decode
        self._keys: dict[K, None] = {}  # in the order put (``order``: sorted)
        self.cache: dict[K, V] = {}  # put since the last flush
        self._gone: set[K] = set()  # deleted since the last flush
        self._patches: dict[K, dict[Any, int]] = {}  # deltas of values not held, by field

    def get(self, key: K) -> V | None:
        value = self.cache.get(key)
        if value is not None or key not in self._keys:
            return value
        return self._read(key)

    def _read(self, key: K) -> V:
        """The value on disk, its patches since folded in."""
        raw = self.store.db.get(self.prefix + _ENCODE(key))
        if raw is None:
            raise StateError(f"shelf {self.name!r}: {key!r} is missing from the store")
        try:
            found: V = self._decode(raw)
        except msgspec.DecodeError as exc:
            raise StateError(f"shelf {self.name!r}: the value of {key!r} is unreadable: "
                             f"{exc}") from None
        deltas = self._patches.get(key)
        if deltas:
            _fold(found, deltas)
        return found

    def __setitem__(self, key: K, value: V) -> None:
        self._keys[key] = None
        self.cache[key] = value
        self._gone.discard(key)
        self._patches.pop(key, None)  # the value put holds them (read first) or replaces them
        if len(self.cache) >= FLUSH_AT:
            self.flush()

    def __delitem__(self, key: K) -> None:
        del self._keys[key]
        self.cache.pop(key, None)
        self._patches.pop(key, None)
        self._gone.add(key)

    def patch(self, key: K, field: Any, amount: int) -> None:
        value = self.cache.get(key)
        if value is not None:
            _fold(value, {field: amount})
            return
        deltas = self._patches.setdefault(key, {})
        deltas[field] = deltas.get(field, 0) + amount

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[K]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def keys(self) -> KeysView[K]:
        return self._keys.keys()

    def values(self) -> Iterator[V]:
        return (value for _, value in self.items())

    def items(self) -> Iterator[tuple[K, V]]:
        for key in list(self._keys):
            value = self.get(key)
            assert value is not None
            yield key, value

    def clear(self) -> None:
        self._gone.update(self._keys)
        self._keys, self.cache, self._patches = {}, {}, {}

    def order(self) -> None:
        self._keys = dict.fromkeys(sorted(self._keys))  # type: ignore[type-var]

    def flush(self) -> None:
        """Write what was put or patched and delete what went since the last flush, in one
        batch."""
        if not self.cache and not self._gone and not self._patches:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        prefix = self.prefix
        for key in self._gone:
            batch.delete(prefix + _ENCODE(key))
        for key in self._patches:
            batch.put(prefix + _ENCODE(key), _ENCODE(self._read(key)))
        for key, value in self.cache.items():
            batch.put(prefix + _ENCODE(key), _ENCODE(value))
        self.store.db.write(batch)
        self.cache, self._gone, self._patches = {}, set(), {}

    def forget(self) -> None:
        """Nothing held (the store is emptied by its owner)."""
        self._keys, self.cache, self._gone, self._patches = {}, {}, set(), {}


def _fold(value: Any, deltas: dict[Any, int]) -> None:
    """Add each delta to its field of a value (a dict of ints: a closed window's)."""
    for field, amount in deltas.items():
        value[field] = value.get(field, 0) + amount


class ShardStore(DiskTables):
    """A shard's store on disk: its trackers' tables and its engine's shelves."""

    def shelf(self, name: str, key_type: Any, value_type: Any) -> Shelf[Any, Any]:
        """A new shelf (the worker's ``ShelfFactory``), under the next prefix."""
        shelf: DiskShelf[Any, Any] = DiskShelf(self, self.prefix(), name, value_type)
        self.shelves.append(shelf)
        return shelf
