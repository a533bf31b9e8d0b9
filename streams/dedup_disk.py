"""A shard's event ids on disk: RocksDB (rocksdict), ids of the current commit in memory.

The worker's ``DedupStore`` (metrics/dedup.py). Memory stays flat whatever the traffic: the
ids live in RocksDB, whose caches are bounded by configuration; in Python are only the ids
remembered since the last commit. A commit (streams/shard.py) takes them with ``drain``,
makes them durable in the changelog as segments (streams/state.py), then writes them to
the local store in one write batch with a marker naming the snapshot they belong to. On a
restart the local store is used when its marker is part of the restored snapshot's history
(only the commits after it are applied from the changelog), and rebuilt from the changelog
otherwise.

Keys: ``i`` + id -> event time (8 bytes); ``x`` + hour (4 bytes) + ``\xff`` + write number
(8 bytes) -> the ids a write filed under that hour, msgpack (the hour index expiry walks: one
put a write and hour, not one an id, which cost as much again as the ids' own); ``m`` + name
-> metadata (the marker, the expiry cutoff, the count, the writes numbered). Stores of
before kept one index key an id, ``x`` + hour + id -> "": the sweep still reads them.
An id forgotten (held, then found late) is filed as ``-ts - 1``, in the hour of its event
time, until a commit deletes it.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import rocksdict

from metrics.constants import HOUR_MS
from metrics.dedup import DEDUP_VERSION, DedupState
from streams.settings import scratch_dir

log = logging.getLogger("kpi_engine.state")

_TS: Final = struct.Struct(">q")
_HOUR: Final = struct.Struct(">I")
_MARKER: Final = b"mmarker"
_CUTOFF: Final = b"mcutoff"
_COUNT: Final = b"mcount"
_WRITES: Final = b"mwrites"
#: ends an hour's prefix in the index keys of a write's ids (an id's key of before cannot
#: hold it: an id is UTF-8, where no byte is 0xff)
_FILED: Final = b"\xff"
_IDS: Final = msgspec.msgpack.Encoder().encode
_READ_IDS: Final = msgspec.msgpack.Decoder(list[str]).decode
#: ids written per RocksDB write batch while rebuilding
_BATCH: Final = 100_000


@dataclass
class Changes:
    """What a commit makes durable: ids remembered (or forgotten: ``-ts - 1``) since the
    last persisted commit, and the expiry cutoff reached."""

    ids: dict[str, int] = field(default_factory=dict)
    cutoff_h: int = 0

    def by_hour(self) -> dict[int, list[str]]:
        """The ids grouped by the hour of their event time (forgotten ones too). Ids only:
        a commit pairs them with their times an hour at a time as it encodes them
        (streams/state.py: encode_segments), rather than hold a pair per id until it is
        written (up to 200,000 of them, 64 bytes each, while a backlog is read)."""
        out: dict[int, list[str]] = {}
        for eid, ts in self.ids.items():
            out.setdefault(hour_of(ts), []).append(eid)
        return out


def hour_of(ts: int) -> int:
    """The hour of an entry's event time, a forgotten one's (``-ts - 1``) included."""
    return (ts if ts >= 0 else -ts - 1) // HOUR_MS


#: the block cache every store of a process shares: what RocksDB keeps in memory of the
#: ids and tables (with the filters and indexes, charged to it), whatever their number. Its
#: size is the worker's ``KPI_STATE_CACHE_MB``, divided among its processes (``set_cache_mb``)
CACHE_MB: Final = 64
_CACHE: list[rocksdict.Cache] = []
#: the memtables (writes not yet flushed) of every store a process opens, together, are
#: charged to the block cache, and take at most half of it: RocksDB holds at most the
#: cache's size in all. Each store's own bound (2 x 8 MB) let a worker's ten stores hold
#: 160 MB, beside a full cache
MEMTABLES_MB: Final = CACHE_MB // 2
_MEMTABLES: list[rocksdict.WriteBufferManager] = []
_MB: Final = 1024 * 1024
#: the memtables grow by blocks of this size (RocksDB's default: 1/8 of a memtable, 1 MB).
#: Above glibc's pinned mmap threshold (streams/heap.py): each block is mapped apart and
#: unmapped with its flushed memtable. 64 KB blocks came from the heap and left holes in it:
#: a 2-process worker at 6 days held 626-647 MB, against 582-616 with these
ARENA_BLOCK: Final = 132 * 1024


def set_cache_mb(mb: int) -> None:
    """This process's RocksDB memory, its stores together (the worker's settings): made at
    that size, or resized for the stores already open."""
    if not _CACHE:
        _CACHE.append(rocksdict.Cache(mb * _MB))
        _MEMTABLES.append(rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            mb // 2 * _MB, False, _CACHE[0]))
    else:
        _CACHE[0].set_capacity(mb * _MB)
        _MEMTABLES[0].set_buffer_size(mb // 2 * _MB)


def store_options() -> rocksdict.Options:
    if not _CACHE:  # no worker settings (a test, a benchmark): the default
        set_cache_mb(CACHE_MB)
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    table = rocksdict.BlockBasedOptions()
    # a miss (a new event: the common case) is answered by the filter, not a disk read
    table.set_bloom_filter(10, False)
    table.set_block_cache(_CACHE[0])
    table.set_cache_index_and_filter_blocks(True)
    # ... in small partitions: one whole filter (~1.2 MB a million ids) did not stay in the
    # cache, and every lookup read and checksummed it again (136 us at 1 M ids, 510 us at
    # 3 M; partitioned 2.6 and 2.8 us: benchmarks/rocksdb_bench.py)
    table.set_partition_filters(True)
    table.set_index_type(rocksdict.BlockBasedIndexType.two_level_index_search())
    table.set_pin_top_level_index_and_filter(True)
    opts.set_block_based_table_factory(table)
    # memtables: at most 2 x 8 MB per store before they go to disk, half the cache for all
    opts.set_write_buffer_size(8 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    opts.set_write_buffer_manager(_MEMTABLES[0])
    # a memtable grows by arena blocks (1 MB by default) and a store that stops writing keeps
    # its last one: with eight stores a process held ~8 MB past the memtables' budget
    opts.set_arena_block_size(ARENA_BLOCK)
    # ... with a filter of their own (0.8 MB each): a new id (every new event, and a table's
    # new key) missed the memtables by walking their skip lists, 1.65 us at 300,000 ids in
    # them; 0.37 us with it (benchmarks/rocksdb_bench.py; 4 % of the email shard's
    # instructions, callgrind)
    opts.set_memtable_prefix_bloom_ratio(0.1)
    opts.set_memtable_whole_key_filtering(True)
    return opts


def alive(pid: int) -> bool:
    """A process of this id runs (a store's folder named by it is in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


class LazyStore:
    """A RocksDB store opened on first use (``open``), closed on handover."""

    _db: rocksdict.Rdict | None = None

    @property
    def db(self) -> rocksdict.Rdict:
        if self._db is None:
            self.open()
        assert self._db is not None
        return self._db

    def open(self) -> None:
        raise NotImplementedError

    def between(self, start: bytes, stop: bytes, items: bool = False) -> list[Any]:
        """The keys (or items) from ``start`` up to ``stop``, bounded in RocksDB (one call a
        key, not valid/key/next); read here, while ``bound`` lives: the iterator uses it."""
        bound = rocksdict.ReadOptions()
        bound.set_iterate_upper_bound(stop)
        read = self.db.items if items else self.db.keys
        return list(read(from_key=start, read_opt=bound))


class DiskDedup(LazyStore):
    """``DedupStore`` over RocksDB. Opened when its shard is taken over, closed when it is
    handed over (another worker on the same data directory may take it then)."""

    def __init__(self, path: Path):
        self.path = path
        self.pending: dict[str, int] = {}  # remembered since the last drain
        self.flushing: dict[str, int] = {}  # drained, not yet persisted
        self.cutoff_h = 0  # ids of hours before it are expired
        self._persisted_cutoff_h = 0  # the hours before it are gone from disk
        self._count = 0  # ids on disk (persisted)
        self._writes = 0  # writes that filed ids: numbers their index keys
        #: ids remembered again after a forget not yet persisted: their disk copy is read
        #: when written (rare: an event held, found late, then sent again)
        self._recheck: set[str] = set()

    # ---- opening --------------------------------------------------------------------------

    def open(self) -> None:
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = rocksdict.Rdict(str(self.path), options=store_options())
        except Exception as exc:
            if "lock" in str(exc).lower():
                # another process holds it (a former owner not gone yet): never touch its
                # files; this tenure's store starts in a folder of its own
                self.path = scratch_dir("kpi-state-") / "dedup"
            else:  # damaged: what it held is in the changelog
                self._destroy()
            log.warning("dedup store unusable (%s): rebuilt from the changelog in %s",
                        exc, self.path)
            self._db = rocksdict.Rdict(str(self.path), options=store_options())
        self._persisted_cutoff_h = self.cutoff_h = _int(self._db.get(_CUTOFF))
        self._count = _int(self._db.get(_COUNT))
        self._writes = _int(self._db.get(_WRITES))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self.pending, self.flushing = {}, {}
        self._recheck = set()

    def _destroy(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        shutil.rmtree(self.path, ignore_errors=True)

    def reset(self) -> None:
        """Empty: nothing on disk, nothing pending."""
        self._destroy()
        self.pending, self.flushing = {}, {}
        self.cutoff_h = self._persisted_cutoff_h = self._count = 0
        self.open()

    def marker(self) -> tuple[str, int] | None:
        """(lineage, seq) of the snapshot the store's content belongs to; None when empty."""
        raw = self.db.get(_MARKER)
        if raw is None:
            return None
        lineage, _, seq = bytes(raw).decode().rpartition("|")
        return lineage, int(seq)

    # ---- DedupStore -----------------------------------------------------------------------

    def _lookup(self, eid: str) -> int | None:
        """An id's entry: in this commit, the one being written, or on disk."""
        ts = self.pending.get(eid)
        if ts is None:
            ts = self.flushing.get(eid)
            if ts is None:
                raw = self.db.get(b"i" + eid.encode())
                if raw is None:
                    return None
                ts = _TS.unpack(raw)[0]
        return ts

    def __contains__(self, eid: str) -> bool:
        ts = self._lookup(eid)
        # an id forgotten since the last commit, or of an expired hour not yet swept
        return ts is not None and ts >= 0 and ts // HOUR_MS >= self.cutoff_h

    def remember(self, eid: str, ts: int) -> None:
        if ts // HOUR_MS >= self.cutoff_h:  # an expired hour: gone at once (MemoryDedup too)
            before = self.pending.get(eid, self.flushing.get(eid))
            if before is not None and before < 0:  # forgotten, not yet deleted from disk
                self._recheck.add(eid)
            self.pending[eid] = ts

    def admit(self, eid: str, ts: int) -> bool:
        """``in`` and ``remember`` together: an event's id is looked up once (every event
        asks it). A forgotten id (``-ts - 1``) is only ever in memory: no write puts one."""
        before = self._lookup(eid)
        cutoff_h = self.cutoff_h
        if before is not None and before >= 0 and before // HOUR_MS >= cutoff_h:
            return False
        if ts // HOUR_MS >= cutoff_h:  # as remember
            if before is not None and before < 0:
                self._recheck.add(eid)
            self.pending[eid] = ts
        return True

    def forget(self, eid: str) -> None:
        ts = self._lookup(eid)
        if ts is not None and ts >= 0 and ts // HOUR_MS >= self.cutoff_h:  # else the sweep's
            self.pending[eid] = -ts - 1

    def expire(self, cutoff_ts: int) -> None:
        cutoff_h = cutoff_ts // HOUR_MS
        if cutoff_h <= self.cutoff_h:
            return
        self.cutoff_h = cutoff_h
        for held in (self.pending, self.flushing):
            for eid in [e for e, ts in held.items() if hour_of(ts) < cutoff_h]:
                del held[eid]

    def snapshot(self) -> DedupState:
        # the ids are made durable as segments (``drain``), not in the snapshot
        return DedupState(DEDUP_VERSION, {}, self.cutoff_h)

    def restore(self, state: DedupState) -> None:
        """A snapshot's dedup state. Its ids (a format 3 snapshot, migrated) replace what
        the store holds, and go out as segments with the next commit; otherwise the shard
        brings the store in line with the snapshot's segments (``apply``)."""
        self.pending, self.flushing = {}, {}
        if state.ids:
            self.reset()
            self.pending = dict(state.ids)
        self.cutoff_h = state.cutoff_h

    def __len__(self) -> int:
        return self._count + len(self.pending) + len(self.flushing)

    def uncommitted(self) -> int:
        """Ids held in memory until a commit persists them."""
        return len(self.pending) + len(self.flushing)

    # ---- durability -----------------------------------------------------------------------

    def drain(self) -> Changes:
        """Everything not yet persisted (a failed commit's ids go out with the next)."""
        if self.pending:
            self.flushing.update(self.pending)
            self.pending = {}
        return Changes(dict(self.flushing), self.cutoff_h)

    def persist(self, changes: Changes, marker: tuple[str, int]) -> None:
        """Write a durable commit's changes in one batch, with its marker."""
        self._write(changes.ids.items(), changes.cutoff_h, marker)
        if self.flushing.items() <= changes.ids.items():  # all of it: the usual case
            self.flushing = {}
            return
        for eid, ts in changes.ids.items():
            if self.flushing.get(eid) == ts:
                del self.flushing[eid]

    def apply(self, segments: Iterable[list[tuple[str, int]]], cutoff_h: int,
              marker: tuple[str, int]) -> int:
        """Catch up with segments from the changelog, in commit order (their hours before
        ``cutoff_h`` left out by the caller); returns the ids applied."""
        n = 0
        chunk: dict[str, int] = {}  # the latest entry per id wins (a forget after a remember)
        for seg in segments:
            chunk.update(seg)
            if len(chunk) >= _BATCH:
                n += len(chunk)
                self._write(chunk.items(), 0, None)
                chunk = {}
        n += len(chunk)
        self._write(chunk.items(), cutoff_h, marker)
        self.cutoff_h = max(self.cutoff_h, cutoff_h)
        return n

    def _write(self, ids: Iterable[tuple[str, int]], cutoff_h: int,
               marker: tuple[str, int] | None) -> None:
        db = self.db
        batch = rocksdict.WriteBatch(raw_mode=True)
        count = self._count
        # the sweep first: an id remembered again after its hour expired (the lookup took
        # it for absent) is written after the sweep deletes its old copy, and survives it
        swept_h = self._persisted_cutoff_h  # ids of hours before it are gone with this batch
        if cutoff_h > swept_h:
            count -= self._sweep(batch, cutoff_h)
            batch.put(_CUTOFF, str(cutoff_h).encode())
            swept_h = cutoff_h
        pack_ts, put = _TS.pack, batch.put
        filed: dict[int, list[str]] = {}
        for eid, ts in ids:
            key = b"i" + eid.encode()
            # new to the store, unless forgotten (an event held, then found late) or
            # remembered again since: its copy on disk goes, unless the sweep above took it
            # (its index entry may stay: the sweep skips an id whose copy is newer, or gone)
            gone = ts < 0
            if gone or eid in self._recheck:
                self._recheck.discard(eid)
                old = db.get(key)
                if old is not None and _TS.unpack(old)[0] // HOUR_MS >= swept_h:
                    if gone:
                        batch.delete(key)
                    count -= 1
                if gone:
                    continue
            put(key, pack_ts(ts))
            h = ts // HOUR_MS
            if (hour := filed.get(h)) is None:
                filed[h] = hour = []
            hour.append(eid)
            count += 1
        if filed:
            self._writes += 1
            suffix = _FILED + _TS.pack(self._writes)
            for h, eids in filed.items():
                put(b"x" + _HOUR.pack(h) + suffix, _IDS(eids))
            put(_WRITES, str(self._writes).encode())
        if marker is not None:
            batch.put(_MARKER, f"{marker[0]}|{marker[1]}".encode())
        batch.put(_COUNT, str(count).encode())
        db.write(batch)
        self._count = count
        self._persisted_cutoff_h = max(self._persisted_cutoff_h, cutoff_h)

    def _sweep(self, batch: rocksdict.WriteBatch, cutoff_h: int) -> int:
        """Delete the ids of the hours before ``cutoff_h`` (into ``batch``); returns how many.
        An id is deleted only when its own entry is that old: an index entry may outlive a
        copy written again later (rebuilt from segments that forgot, then remembered it)."""
        start, stop = b"x", b"x" + _HOUR.pack(cutoff_h)
        filed: dict[bytes, None] = {}  # an id may be filed more than once
        for key, value in self.between(start, stop, items=True):
            if key[5:6] == _FILED:
                filed.update(dict.fromkeys(b"i" + e.encode() for e in _READ_IDS(value)))
            else:  # an index key of before: one id
                filed[b"i" + key[5:]] = None
        keys: list[str | int | float | bytes | bool] = list(filed)
        n = 0
        for i in range(0, len(keys), _BATCH):
            part = keys[i:i + _BATCH]
            got: list[bytes | None] = self.db.get(part) or []
            for ikey, raw in zip(part, got, strict=True):
                if raw is not None and _TS.unpack(raw)[0] // HOUR_MS < cutoff_h:
                    batch.delete(ikey)
                    n += 1
        batch.delete_range(start, stop)
        return n


def _int(raw: bytes | None) -> int:
    return int(raw) if raw is not None else 0
