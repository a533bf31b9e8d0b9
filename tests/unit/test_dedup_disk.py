"""The on-disk dedup store (real RocksDB) answers exactly as the in-memory one, whatever the
commits, expiries and forgets in between; its content survives a reopen with its marker."""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import rocksdict

from metrics.dedup import DedupState, MemoryDedup
from streams.dedup_disk import (
    ARENA_BLOCK,
    CACHE_MB,
    MEMTABLES_MB,
    DiskDedup,
    set_cache_mb,
    store_options,
)
from streams.heap import MMAP_THRESHOLD_BYTES

H = 3_600_000


def test_the_disk_store_answers_as_the_memory_store(tmp_path: Path) -> None:
    """Every way in: ``in`` then ``remember``, ``admit``, forgets, commits, expiries."""
    rnd = random.Random(7)
    mem, disk = MemoryDedup(), DiskDedup(tmp_path / "d")
    pool = [f"e{i}" for i in range(3000)]
    t = 0
    checked = 0
    for step in range(20_000):
        t += rnd.randrange(0, 60_000)
        eid = rnd.choice(pool)
        ts = t - rnd.randrange(0, 3 * H)
        assert (eid in disk) == (eid in mem), (step, eid)
        checked += 1
        r = rnd.random()
        if r < 0.45:  # looked up and remembered at once, as the engine does an event's id
            held = eid in mem
            assert mem.admit(eid, ts) is disk.admit(eid, ts) is not held, (step, eid)
        elif eid not in mem and r < 0.9:
            mem.remember(eid, ts)
            disk.remember(eid, ts)
        elif r < 0.92:
            mem.forget(eid)
            disk.forget(eid)
        if step % 97 == 0:  # a commit: what it drains is made durable, in one batch
            disk.persist(disk.drain(), ("lin", step))
        if step % 211 == 0:
            mem.expire(t - 6 * H)
            disk.expire(t - 6 * H)
    assert checked == 20_000
    assert all((e in disk) == (e in mem) for e in pool)
    disk.persist(disk.drain(), ("lin", 99_999))
    assert len(disk) == len(mem) > 100  # the persisted count follows puts, forgets, sweeps


def test_a_reopened_store_keeps_its_ids_and_marker(tmp_path: Path) -> None:
    d = DiskDedup(tmp_path / "d")
    for i in range(1000):
        d.remember(f"a{i}", i * H // 100)
    d.persist(d.drain(), ("lineage-1", 42))
    d.remember("unpersisted", 5)  # not made durable: gone with the process
    d.close()
    again = DiskDedup(tmp_path / "d")
    assert again.marker() == ("lineage-1", 42)
    assert "a0" in again and "a999" in again and "unpersisted" not in again
    assert len(again) == 1000


def test_expired_hours_are_swept_from_disk_and_an_id_may_return(tmp_path: Path) -> None:
    d = DiskDedup(tmp_path / "d")
    d.remember("old", 0)
    d.remember("new", 5 * H)
    d.persist(d.drain(), ("l", 1))
    d.expire(2 * H)
    assert "old" not in d  # expired at once, swept with the next commit
    d.remember("old", 4 * H)  # the same id again, later: counted, remembered anew
    d.persist(d.drain(), ("l", 2))  # the sweep runs before the new copy is written
    assert "old" in d and len(d) == 2
    assert d.db.get(b"iold") is not None


def test_a_store_of_before_has_its_ids_swept_too(tmp_path: Path) -> None:
    """A store written before the index filed a write's ids together (one index key an
    id, ``x`` + hour + id): its expired ids still go with the sweep, beside ones filed now,
    and the index holds one key a write and hour."""
    d = DiskDedup(tmp_path / "d")
    before = rocksdict.WriteBatch(raw_mode=True)
    for eid, ts in (("old-a", 10), ("old-b", 2 * H + 10)):
        before.put(b"i" + eid.encode(), struct.pack(">q", ts))
        before.put(b"x" + struct.pack(">I", ts // H) + eid.encode(), b"")
    before.put(b"mcount", b"2")
    d.db.write(before)
    d.close()
    d = DiskDedup(tmp_path / "d")
    for i in range(50):
        d.remember(f"new-{i}", (i % 3) * H + i)
    d.persist(d.drain(), ("l", 1))
    assert len(d) == 52
    index = d.between(b"x", b"y")
    assert len(index) == 2 + 3  # the two ids of before, and the write's three hours
    d.expire(2 * H)
    d.persist(d.drain(), ("l", 2))  # hours 0 and 1 swept: old-a and 34 new ids
    assert len(d) == 52 - 1 - 34
    assert d.db.get(b"iold-a") is None and d.db.get(b"inew-0") is None
    assert d.db.get(b"iold-b") is not None and d.db.get(b"inew-2") is not None
    d.close()
    again = DiskDedup(tmp_path / "d")  # counts and numbers its writes on from where it was
    again.remember("late", 5 * H)
    again.persist(again.drain(), ("l", 3))
    assert "late" in again and "old-b" in again and len(again) == 18


def test_a_migrated_state_goes_out_with_the_next_commit(tmp_path: Path) -> None:
    d = DiskDedup(tmp_path / "d")
    d.remember("stale", 1)
    d.persist(d.drain(), ("l", 1))
    d.restore(DedupState(1, {"x": 10, "y": 20}, 0))  # a format 3 snapshot's ids
    assert "stale" not in d and "x" in d
    assert d.drain().ids == {"x": 10, "y": 20}


def test_the_stores_memtables_are_bounded_together_and_charged_to_the_cache(
        tmp_path: Path) -> None:
    """Each store alone would keep up to 8 MB of writes in its memtable before flushing:
    six stores of 7 MB each would hold 42 MB. Together, their flushes done, they stay within
    ``MEMTABLES_MB``: a store that stopped writing keeps one small arena block, not 1 MB.
    What they hold is counted in the block cache that bounds RocksDB's memory."""
    held = fill_six_stores(tmp_path)
    assert held <= MEMTABLES_MB * 1024 * 1024, held


def test_a_smaller_budget_bounds_the_memtables_of_stores_already_open(tmp_path: Path) -> None:
    """``KPI_STATE_CACHE_MB`` (a worker's processes share it): the cache, and with it the
    memtables' half, shrink for the stores a process opened before and after."""
    before = rocksdict.Rdict(str(tmp_path / "before"), options=store_options())
    set_cache_mb(16)
    try:
        before[b"k"] = b"v"
        held = fill_six_stores(tmp_path)
        assert held <= 8 * 1024 * 1024, held  # 16 MB: 8 MB of memtables
        assert held >= 4 * 1024 * 1024, held  # they are still used
    finally:
        set_cache_mb(CACHE_MB)
        before.close()


def fill_six_stores(tmp_path: Path) -> int:
    """Write 7 MB to each of six stores, one after another; the most their memtables hold
    together once the flushes the writes asked for are done (a flush runs on RocksDB's own
    thread: a memtable being flushed still counts until it is on disk, so a busy machine
    would otherwise see one in flight, and then not the bound but the thread's lag)."""
    stores = [rocksdict.Rdict(str(tmp_path / f"s{i}"), options=store_options())
              for i in range(6)]
    try:
        value = b"v" * 1000
        most = 0
        for i, db in enumerate(stores):
            for j in range(7 * 1024):  # 7 MB
                db[b"k%d-%d" % (i, j)] = value
            settle(stores)
            held = sum(s.property_int_value("rocksdb.cur-size-all-mem-tables") or 0
                       for s in stores)
            cache = stores[0].property_int_value("rocksdb.block-cache-usage") or 0
            assert cache >= held * 0.9, (cache, held)  # the memtables' share is in the cache
            most = max(most, held)
        assert all(db[b"k%d-%d" % (i, 7 * 1024 - 1)] == value for i, db in enumerate(stores))
        return most
    finally:
        for db in stores:
            db.close()


def settle(stores: list[rocksdict.Rdict]) -> None:
    """Wait until no store has a memtable waiting for, or in, a flush."""
    deadline = time.monotonic() + 30
    while any((db.property_int_value("rocksdb.num-immutable-mem-table") or 0)
              + (db.property_int_value("rocksdb.mem-table-flush-pending") or 0)
              + (db.property_int_value("rocksdb.num-running-flushes") or 0) for db in stores):
        assert time.monotonic() < deadline, "RocksDB's flushes did not finish in 30 s"
        time.sleep(0.01)


def test_a_memtables_blocks_are_mapped_apart_from_the_heap() -> None:
    """A flushed memtable's blocks go back to the OS, not into holes in the heap."""
    assert MMAP_THRESHOLD_BYTES < ARENA_BLOCK <= 1024 * 1024


def test_the_memtables_have_a_filter_of_their_own(tmp_path: Path) -> None:
    """A new id (most lookups) is answered by the memtables' filter, not by walking their
    skip lists (1.65 against 0.37 us: benchmarks/rocksdb_bench.py): RocksDB runs with the
    options the store asks for, as its OPTIONS file records them."""
    db = rocksdict.Rdict(str(tmp_path / "s"), options=store_options())
    try:
        db[b"k"] = b"v"
    finally:
        db.close()
    written = max(tmp_path.glob("s/OPTIONS-*")).read_text()
    assert "memtable_whole_key_filtering=true" in written
    ratio = [line for line in written.splitlines()
             if line.strip().startswith("memtable_prefix_bloom_size_ratio=")]
    assert len(ratio) == 1 and float(ratio[0].split("=")[1]) > 0, ratio
