"""A tracker's large keyed tables on disk: RocksDB (rocksdict) behind a bounded cache.

The worker's ``TableFactory`` (metrics/trackers/base.py). A send cohort per (campaign,
contact) over the email horizon is the state that grows with the audience: 1.9 M of them
held 2 GB of Python objects at 10 M ids. Here a table holds in memory at most
``KPI_STATE_CACHE_KEYS`` keys (the half loaded last is kept when it is full); the rest are
in RocksDB, whose caches are bounded by ``KPI_STATE_CACHE_MB`` (streams/dedup_disk.py).

The store is no durable copy: what a commit makes durable are the tables' hours as parts
(metrics/snapshot.py), as for the tables in memory, and a takeover fills the store again
from them. So it is emptied whenever its shard is taken over or handed over, may be written
at any time (keys evicted from the cache between two commits), and needs no marker.
Its records' layout: streams/table_codec.py.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import msgspec
import rocksdict

from metrics.constants import HOUR_MS
from metrics.errors import StateError
from metrics.trackers.base import TableCommit
from streams.dedup_disk import LazyStore, alive, store_options
from streams.table_codec import map_header, pack_hour, unpack_hour

#: the most keys a table keeps in memory (those loaded from disk or created last): the
#: default of ``KPI_STATE_CACHE_KEYS`` (Settings.state_cache_keys)
CACHE_KEYS: Final = 50_000
#: a cold table (``TableFactory``) keeps this share of them, and at least 2 (evicting half)
COLD_SHARE: Final = 25
#: the most deltas a table's state holds over its hours before a commit writes them again
MAX_DELTAS: Final = 32
_CHUNK: Final = 256  # values read at once by a walk over the table (``items``)
_STORES: Final = itertools.count()  # names the folder of each store a process opens
_ENCODE: Final = msgspec.msgpack.Encoder().encode

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# a cached key: its value (None: absent), the hour it is filed under on disk and in
# memory (None: none)
_VALUE, _DISK_H, _HOUR_AT = 0, 1, 2


class DiskTables(LazyStore):
    """One shard's store of tables: one RocksDB, a prefix per table."""

    def __init__(self, path: Path, cache_keys: int = CACHE_KEYS):
        self.path = path
        self.cache_keys = cache_keys  # per table
        self._mine = path.with_name(f"{path.name}.{os.getpid()}.{next(_STORES)}")
        self.tables: list[DiskKeyed[Any, Any]] = []
        self.shelves: list[Any] = []  # DiskShelf (streams/shelf_disk.py)

    def open(self) -> None:
        """Empty and open: what it held is in the changelog's parts."""
        if self._db is not None:
            return
        # a folder of its own: a former owner of the shard on this data directory may still
        # hold one; those of processes gone (killed) are removed
        for old in self.path.parent.glob(self.path.name + ".*.*"):
            pid = old.name.split(".")[-2]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(self._mine, ignore_errors=True)
        self._mine.parent.mkdir(parents=True, exist_ok=True)
        self._db = rocksdict.Rdict(str(self._mine), options=store_options())
        # no write-ahead log: what the store holds is rebuilt at every open, never recovered
        # from it (RocksDB wrote each key twice, ~10 % of a write)
        unlogged = rocksdict.WriteOptions()
        unlogged.disable_wal = True  # type: ignore[method-assign,assignment]  # a property: the stub is wrong
        self._db.set_write_options(unlogged)

    def close(self) -> None:
        """Handed over: nothing of it is kept (the next takeover fills it again)."""
        for part in (*self.tables, *self.shelves):
            part.forget()
        if self._db is not None:
            self._db.close()
            self._db = None
        shutil.rmtree(self._mine, ignore_errors=True)

    def table(self, name: str, ts_of: Callable[[Any], int], key_type: Any, value_type: Any,
              canon: Callable[[Any], Any] | None = None, cold: bool = False
              ) -> DiskKeyed[Any, Any]:
        """A new table (``name`` for errors and /health)."""
        keys = max(2, self.cache_keys // COLD_SHARE) if cold else self.cache_keys
        table: DiskKeyed[Any, Any] = DiskKeyed(self, self.prefix(), name, ts_of, key_type,
                                               value_type, keys, canon)
        self.tables.append(table)
        return table

    def prefix(self) -> bytes:
        """A new table's or shelf's prefix: its rank."""
        rank = len(self.tables) + len(self.shelves)
        if rank >= 255:
            raise ValueError("at most 255 tables and shelves on disk per shard")
        return bytes([rank])


class DiskKeyed(Generic[K, V]):
    """``Keyed`` (metrics/trackers/base.py) with its keys on disk. A value from ``get`` is
    the tracker's to change until its next ``get``/``put`` on the table (which may evict it
    from the cache); a change is ``touch``ed before that."""

    def __init__(self, store: DiskTables, prefix: bytes, name: str,
                 ts_of: Callable[[V], int], key_type: Any, value_type: Any, cache_keys: int,
                 canon: Callable[[V], V] | None = None):
        self.store = store
        self.cache_keys = cache_keys  # the most keys it keeps in memory
        self.name = name
        self.ts_of = ts_of
        self.canon = canon  # what a value read into the cache goes through (TableFactory)
        self._d, self._h = prefix + b"d", prefix + b"h"
        self.key_type = key_type
        self._key = msgspec.msgpack.Decoder(key_type).decode
        self._decode_value = msgspec.msgpack.Decoder(value_type).decode
        self.cache: dict[K, list[Any]] = {}
        self.changed: set[K] = set()  # cached keys not yet written to disk
        self.counts: dict[int, int] = {}  # hour -> keys filed under it
        self.dirty: set[int] = set()  # hours changed since the last ``drain``
        #: one int object per hour a cached key is filed under, not one per key (32 bytes)
        self._hours: dict[int, int] = {}
        self._filed: dict[int, list[K]] | None = None  # ``hour``'s; a cache change drops it
        self._len = 0
        # what the changelog holds of it (``commit``): its hours as last written, then deltas
        self.pending: set[K] = set()  # keys changed (or gone) since the last commit
        self.stale: set[int] = set()  # hours changed since the deltas began
        self.deltas: list[int] = []  # the deltas since, in order
        self._delta_keys = 0  # the keys they hold

    # ---- Keyed ----------------------------------------------------------------------------

    def get(self, key: K) -> V | None:
        entry = self.cache.get(key)
        if entry is None:
            entry = self._load(key)
        value: V | None = entry[_VALUE]
        return value

    def __contains__(self, key: K) -> bool:
        return self.get(key) is not None

    def __len__(self) -> int:
        return self._len

    def put(self, key: K, value: V) -> None:
        entry = self.cache.get(key)
        if entry is None:
            entry = self._load(key)
        if entry[_VALUE] is None:
            self._len += 1
        entry[_VALUE] = value
        self.touch(key)

    def touch(self, key: K) -> None:
        entry = self.cache[key]  # a KeyError here: touched after it was evicted
        hour = self.ts_of(entry[_VALUE]) // HOUR_MS
        old = entry[_HOUR_AT]
        if old != hour:
            if old is not None:
                self._unfile(old)
            hour = self._hours.setdefault(hour, hour)
            self.counts[hour] = self.counts.get(hour, 0) + 1
            entry[_HOUR_AT] = hour
        self.dirty.add(hour)
        self.changed.add(key)
        self.pending.add(key)
        self._filed = None

    def delete(self, key: K) -> V:
        entry = self.cache.get(key)
        if entry is None:
            entry = self._load(key)
        value: V | None = entry[_VALUE]
        if value is None:
            raise KeyError(key)
        self._unfile(entry[_HOUR_AT])
        self._len -= 1
        self.pending.add(key)
        self._filed = None
        if entry[_DISK_H] is None:  # never written: nothing to delete on disk, nor to keep
            del self.cache[key]
            self.changed.discard(key)
        else:
            entry[_VALUE], entry[_HOUR_AT] = None, None
            self.changed.add(key)
        return value

    def _unfile(self, hour: int) -> None:
        n = self.counts[hour] - 1
        if n:
            self.counts[hour] = n
        else:
            del self.counts[hour]
        self.dirty.add(hour)

    def sweep(self, cutoff_ts: int) -> list[tuple[K, V]]:
        """Delete the keys of the hours before the one holding ``cutoff_ts``; returns them."""
        cutoff_h, hours, keys = self._expired(cutoff_ts)
        gone = [self._key(kb) for kb in keys]
        removed = [(key, self._value(memoryview(raw)[4:], key))
                   for key, raw in zip(gone, self._values(keys), strict=True)]
        self._delete(cutoff_h, hours, keys, gone)
        return removed

    def drop(self, cutoff_ts: int) -> int:
        """``sweep`` with the values unread; returns how many keys went. Sweeping the send
        cohorts of a day-old hour read and decoded ~70,000 values nobody used (at 10 M ids,
        half the CPU of a trickle crossing an hour)."""
        cutoff_h, hours, keys = self._expired(cutoff_ts)
        self._delete(cutoff_h, hours, keys, map(self._key, keys))
        return len(keys)

    def _expired(self, cutoff_ts: int) -> tuple[int, list[int], list[bytes]]:
        """The hour ``cutoff_ts`` falls in, the hours filed before it, their keys (encoded)."""
        cutoff_h = cutoff_ts // HOUR_MS
        hours = [h for h in self.counts if h < cutoff_h]
        if not hours:
            return cutoff_h, [], []
        self.flush()
        return cutoff_h, hours, self._scan(self._h, self._h + pack_hour(cutoff_h))

    def _delete(self, cutoff_h: int, hours: list[int], keys: list[bytes],
                gone: Iterable[K]) -> None:
        """Delete what ``_expired`` found (``gone``: the keys decoded). An index entry is
        never left behind (``_write`` moves both in one batch)."""
        if not hours:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for kb in keys:
            batch.delete(self._d + kb)
        batch.delete_range(self._h, self._h + pack_hour(cutoff_h))
        self.store.db.write(batch)
        for key in [k for k, e in self.cache.items()
                    if e[_HOUR_AT] is not None and e[_HOUR_AT] < cutoff_h]:
            del self.cache[key]
        for h in hours:
            del self.counts[h]
        self._hours = {h: h for h in self._hours if h >= cutoff_h}
        self.dirty.update(hours)
        self.pending.update(gone)
        self._len -= len(keys)
        self._filed = None

    def hour(self, hour: int) -> msgspec.Raw:
        """The keys filed under an hour with their values, as a commit writes it: the
        ``dict[K, V]`` encoded. A cached key's value is encoded from memory, not written to
        disk first (that flush was 5 % of a backlog's CPU); a key only on disk is written
        as stored, not decoded and encoded again (a backlog rewrites busy hours whole)."""
        cache = self.cache
        if self._filed is None:  # the cached keys by hour: once for a commit's hours
            self._filed = {}
            for key, e in cache.items():
                if e[_VALUE] is not None:
                    self._filed.setdefault(e[_HOUR_AT], []).append(key)
        body = [_ENCODE(k) + _ENCODE(cache[k][_VALUE]) for k in self._filed.get(hour, ())]
        stored = [kb for kb in self._scan(self._h + pack_hour(hour), self._h + pack_hour(hour + 1))
                  if self._key(kb) not in cache]  # a cached key's disk record may be old
        body += [kb + raw[4:] for kb, raw in zip(stored, self._values(stored), strict=True)]
        body.sort()  # in key order, as the disk holds them (msgpack keys: none a prefix of
        # another): a part's bytes are the same whether its keys were cached or not
        return msgspec.Raw(map_header(len(body)) + b"".join(body))

    def drain(self) -> set[int]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def commit(self, full: bool) -> TableCommit:
        """What a commit writes of it. An hour's part is all its keys: a commit rewriting
        every changed hour whole costs what the hours hold, not what changed (a busy hour's
        send cohorts: ~4 us a key, every commit). So a commit writes the changed keys as a
        delta over the hours as last written, until the deltas hold as many keys as those
        hours (or ``MAX_DELTAS`` of them): then it writes the hours changed since and the
        deltas go. Each key is written at most about twice for each change."""
        stale = self.stale | self.drain()
        pending, self.pending = self.pending, set()
        if full or (pending and (
                len(self.deltas) >= MAX_DELTAS
                or self._delta_keys + len(pending) >= sum(self.counts.get(h, 0)
                                                          for h in stale))):
            self.stale, self.deltas, self._delta_keys = set(), [], 0
            return TableCommit(set(self.counts) if full else stale, [], None)
        self.stale = stale
        if not pending:
            return TableCommit(set(), list(self.deltas), None)
        n = self.deltas[-1] + 1 if self.deltas else 0
        self.deltas.append(n)
        self._delta_keys += len(pending)
        return TableCommit(set(), list(self.deltas), (n, lambda: self._delta(pending)))

    def _delta(self, keys: set[K]) -> tuple[dict[K, msgspec.Raw], list[K]]:
        """These keys' values (encoded), and those of them gone."""
        puts: dict[K, msgspec.Raw] = {}
        gone: list[K] = []
        evicted: list[K] = []  # written to disk when they left the cache
        for key in keys:
            entry = self.cache.get(key)
            if entry is None:
                evicted.append(key)
            elif entry[_VALUE] is None:
                gone.append(key)
            else:
                puts[key] = msgspec.Raw(_ENCODE(entry[_VALUE]))
        if evicted:
            got = self._values([_ENCODE(k) for k in evicted])
            for key, raw in zip(evicted, got, strict=True):
                if raw is None:
                    gone.append(key)
                else:
                    puts[key] = msgspec.Raw(raw[4:])
        return puts, gone

    def delta_type(self, declared: Any) -> Any:
        return tuple[dict[self.key_type, msgspec.Raw], list[self.key_type]]  # type: ignore[name-defined]

    def load_delta(self, n: int, delta: tuple[dict[K, Any], list[K]]) -> None:
        """Apply a restored delta over the hours filled (``fill``, all of them first); the
        hours it changes are written whole by the next commit that does not write a delta."""
        self.drain()  # the fills' hours: written as they are
        puts, gone = delta
        for key, raw in puts.items():
            self.put(key, self._read(raw, key))
        for key in gone:
            if key in self:
                self.delete(key)
        self.stale |= self.drain()
        self.pending = set()
        self.deltas.append(n)
        self._delta_keys += len(puts) + len(gone)

    def filed(self) -> Collection[int]:
        """The hours some key is filed under."""
        return self.counts.keys()

    def resident(self) -> Iterable[V]:
        """The values held in memory."""
        return [e[_VALUE] for e in self.cache.values() if e[_VALUE] is not None]

    def replace(self, data: dict[K, V]) -> None:
        """Start over from a restored state (every hour dirty: nothing written yet)."""
        self.forget()
        db = self.store.db
        db.delete_range(self._d, self._d + b"\xff")
        db.delete_range(self._h, self._h + b"\xff")
        self.fill(data)

    def part_type(self, declared: Any) -> Any:
        """A part's values are left encoded: ``fill`` writes them as they are (decoding and
        encoding again 1.9 M cohorts was most of a 10 M-id takeover). A value is checked
        when it is read (``_value``)."""
        return dict[self.key_type, msgspec.Raw]  # type: ignore[name-defined]

    def fill(self, data: dict[K, Any], hour: int | None = None) -> None:
        """Keys new to the table (a takeover's parts: each key is in one), written in one
        batch per hour, not read first. With ``hour`` (a part's), the values are encoded
        (Raw); without, each value is filed by its own hour."""
        if hour is None:
            parts: dict[int, dict[K, bytes]] = {}
            for key, value in data.items():
                parts.setdefault(self.ts_of(value) // HOUR_MS, {})[key] = _ENCODE(value)
            for at, part in parts.items():
                self.fill(part, at)
            return
        self.flush()
        batch = rocksdict.WriteBatch(raw_mode=True)
        put, cache, hb = batch.put, self.cache, pack_hour(hour)
        d, hk = self._d, self._h + hb
        new = 0  # counted once per part (a restart fills 1.7 M send cohorts at 10 M ids)
        for key, value in data.items():
            if key in cache:  # not new after all: as any change
                self.put(key, self._read(value, key))
                continue
            kb = _ENCODE(key)
            put(d + kb, hb + value)
            put(hk + kb, b"")
            new += 1
        if new:
            self.counts[hour] = self.counts.get(hour, 0) + new
            self.dirty.add(hour)
            self._len += new
        self.store.db.write(batch)

    @property
    def data(self) -> dict[K, V]:
        """Every key with its value, read from disk (a whole snapshot, tests)."""
        return dict(self._stored(self._value))

    def items(self) -> Iterable[tuple[K, V]]:
        """Every key with its value as the tracker reads them (``canon``): the cache's if it
        holds them all, else from disk ``_CHUNK`` at a time (months of hours per key)."""
        cached = [(k, e[_VALUE]) for k, e in self.cache.items() if e[_VALUE] is not None]
        return cached if len(cached) == self._len else self._stored(self._read)

    def _stored(self, read: Callable[[Any, Any], Any]) -> Iterator[tuple[K, V]]:
        self.flush()
        keys = [k[len(self._d):] for k in self.store.between(self._d, self._d[:-1] + b"e")]
        for i in range(0, len(keys), _CHUNK):
            for kb, raw in zip(chunk := keys[i:i + _CHUNK], self._values(chunk), strict=True):
                key = self._key(kb)
                yield key, read(memoryview(raw)[4:], key)

    # ---- the cache ------------------------------------------------------------------------

    def forget(self) -> None:
        """Nothing held in memory (the store is emptied by its owner)."""
        self.cache, self.changed, self.counts, self.dirty = {}, set(), {}, set()
        self._hours, self._filed = {}, None
        self._len = 0
        self.pending, self.stale, self.deltas, self._delta_keys = set(), set(), [], 0

    def _load(self, key: K) -> list[Any]:
        if len(self.cache) >= self.cache_keys:
            self._evict()
        raw = self.store.db.get(self._d + _ENCODE(key))
        if raw is None:
            entry: list[Any] = [None, None, None]
        else:
            hour = unpack_hour(raw)
            hour = self._hours.setdefault(hour, hour)
            entry = [self._read(memoryview(raw)[4:], key), hour, hour]
        self.cache[key] = entry
        self._filed = None  # (the only place an eviction happens: before a load)
        return entry

    def _read(self, raw: Any, key: Any) -> Any:
        """A value read into the cache: decoded, then its tracker's (``canon``)."""
        value = self._value(raw, key)
        return value if self.canon is None else self.canon(value)

    def _value(self, raw: Any, key: Any) -> Any:
        """A value read from disk; ``StateError`` naming the key when it is not one of the
        table's (a part's values are written unread: ``fill``)."""
        try:
            return self._decode_value(raw)
        except msgspec.DecodeError as exc:
            raise StateError(f"table {self.name!r}: the value of {key!r} is unreadable: "
                             f"{exc}") from None

    def _evict(self) -> None:
        """Drop the half of the cache loaded first, written first if changed. A key's events
        come close together (a send, its delivery, its opens): the keys loaded last are read
        again soonest (emptying the whole cache made every one of them a read from disk)."""
        cache = self.cache
        old = list(itertools.islice(cache, len(cache) // 2))
        changed = self.changed
        self._write([k for k in old if k in changed])
        changed.difference_update(old)
        for key in old:
            del cache[key]

    def flush(self) -> None:
        """Write the changed keys to disk, in one batch; those deleted leave the cache (a
        read finds them gone on disk: the cache's room is for keys that exist)."""
        if self.changed:
            changed, self.changed = self.changed, set()
            self._write(changed)
            cache = self.cache
            for key in changed:
                if cache[key][_VALUE] is None:
                    del cache[key]

    def _write(self, keys: Iterable[K]) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        pack = pack_hour
        for key in keys:
            entry = self.cache[key]
            kb = _ENCODE(key)
            disk_h, hour = entry[_DISK_H], entry[_HOUR_AT]
            if disk_h is not None and disk_h != hour:
                batch.delete(self._h + pack(disk_h) + kb)
            if entry[_VALUE] is None:
                if disk_h is not None:
                    batch.delete(self._d + kb)
            else:
                batch.put(self._d + kb, pack(hour) + _ENCODE(entry[_VALUE]))
                if disk_h != hour:
                    batch.put(self._h + pack(hour) + kb, b"")
            entry[_DISK_H] = hour
        self.store.db.write(batch)

    def _values(self, keys: list[bytes]) -> list[Any]:
        """The records of these keys (encoded; None: not on disk)."""
        want: list[str | int | float | bytes | bool] = [self._d + kb for kb in keys]
        got = self.store.db.get(want) if want else []
        return list(got or [])

    def _scan(self, start: bytes, stop: bytes) -> list[bytes]:
        """The keys (encoded) of the index entries from ``start`` up to ``stop``."""
        n = len(self._h) + 4
        return [k[n:] for k in self.store.between(start, stop)]

