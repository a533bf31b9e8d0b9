"""A tracker's tables on disk (streams/table_disk.py): the same answers as ``Keyed`` in
memory under any sequence of operations, with at most the cache's keys in Python; an engine
whose send cohorts are on disk counts, commits and restores exactly as one holding them in
memory."""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest

from metrics.catalog_types import MqlConfig
from metrics.constants import HOUR_MS
from metrics.engine import EngineConfig, KpiEngine
from metrics.errors import StateError
from metrics.events import Event
from metrics.shelf import mem_shelf
from metrics.snapshot import EngineState
from metrics.trackers.base import Keyed
from metrics.trackers.first_seen import UniqueOpeners
from metrics.trackers.lead_scoring import LeadScoring
from streams.settings import Settings
from streams.shelf_disk import ShardStore
from streams.table_disk import CACHE_KEYS, COLD_SHARE, DiskKeyed, DiskTables
from tests.helpers import DEFAULT_CATALOG
from tests.unit.test_parts import Store, comparable
from tests.unit.test_snapshot import events, run
from tests.unit.trackers.test_lead_scoring import DAY, T0, stage
from tests.unit.trackers.test_score_board import engagement, every_account

Key = tuple[str, str]


class Val(msgspec.Struct, array_like=True):
    ts: int
    n: int


def _ts(v: Val) -> int:
    return v.ts


@pytest.fixture
def tables(tmp_path: Path) -> Any:
    store = DiskTables(tmp_path / "tables", cache_keys=16)  # the cache emptied again and again
    yield store
    store.close()


def _decoded(part: Any) -> dict[Key, Val]:
    if isinstance(part, msgspec.Raw):  # an hour on disk: written as its bytes are stored
        return msgspec.msgpack.decode(part, type=dict[Key, Val])
    return {k: v if isinstance(v, Val) else msgspec.msgpack.decode(v, type=Val)
            for k, v in part.items()}


def test_a_table_on_disk_answers_as_one_in_memory(tables: DiskTables) -> None:
    rnd = random.Random(7)
    mem: Keyed[Key, Val] = Keyed(_ts)
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    keys = [(f"c{i % 5}", f"k{i}") for i in range(120)]
    now = 50 * HOUR_MS
    for _ in range(6000):
        key = rnd.choice(keys)
        op = rnd.random()
        if op < 0.45:  # a tracker's read-modify-touch, or a new key
            a, b = mem.get(key), disk.get(key)
            assert a == b
            if a is None:
                ts = now + rnd.randrange(-3 * HOUR_MS, HOUR_MS)
                mem.put(key, Val(ts, 1))
                disk.put(key, Val(ts, 1))
            else:
                assert b is not None
                ts = max(a.ts, now + rnd.randrange(-HOUR_MS, HOUR_MS))
                a.ts, a.n, b.ts, b.n = ts, a.n + 1, ts, b.n + 1
                mem.touch(key)
                disk.touch(key)
        elif op < 0.55 and key in mem:
            assert key in disk
            assert mem.delete(key) == disk.delete(key)
        elif op < 0.6:
            assert key in mem or key not in disk
        elif op < 0.62:
            now += HOUR_MS // 2
            cutoff = now - 4 * HOUR_MS
            if rnd.random() < 0.5:
                assert sorted(mem.sweep(cutoff)) == sorted(disk.sweep(cutoff))
            else:  # the values unread
                assert len(mem.sweep(cutoff)) == disk.drop(cutoff)
        elif op < 0.7:  # a commit: the hours changed, and what each holds
            assert mem.drain() == disk.drain()
            assert set(mem.filed()) == set(disk.filed())
            for h in mem.filed():
                assert mem.hour(h) == _decoded(disk.hour(h))
        assert len(mem) == len(disk)
        assert len(disk.cache) <= tables.cache_keys == 16
    assert mem.data == disk.data
    assert len(mem) > 30


def test_the_cache_size_defaults_to_the_settings_default(tmp_path: Path) -> None:
    assert DiskTables(tmp_path / "t").cache_keys == CACHE_KEYS == Settings().state_cache_keys


def test_a_cold_table_keeps_a_small_cache_and_reads_the_rest_back(tmp_path: Path) -> None:
    """A table read at the CRM's pace keeps a 25th of the keys (2,000 by default): its
    values are read back from disk, changed ones included, and the cache never grows
    past its bound."""
    store = DiskTables(tmp_path / "t", cache_keys=100)
    cold: DiskKeyed[str, Any] = store.table("c", lambda v: v[0], str, tuple[int, str],
                                            cold=True)
    hot: DiskKeyed[str, Any] = store.table("h", lambda v: v[0], str, tuple[int, str])
    assert (cold.cache_keys, hot.cache_keys) == (100 // COLD_SHARE, 100) == (4, 100)
    tiny = DiskTables(tmp_path / "u", cache_keys=8)  # at least 2: an eviction drops half
    assert tiny.table("one", lambda v: v[0], str, tuple[int, str], cold=True).cache_keys == 2
    tiny.close()
    t0, hour = 1_767_225_600_000, HOUR_MS
    for i in range(300):
        cold.put(f"k{i}", (t0 + i * hour, f"v{i}"))
        hot.put(f"k{i}", (t0 + i * hour, f"v{i}"))
        assert len(cold.cache) <= 4 and len(hot.cache) <= 100
    for i in range(0, 300, 7):
        value = cold.get(f"k{i}")
        assert value == (t0 + i * hour, f"v{i}")
        cold.put(f"k{i}", (value[0], "changed"))
    assert all(cold.get(f"k{i}") == (t0 + i * hour, "changed" if i % 7 == 0 else f"v{i}")
               for i in range(300))
    assert len(cold.cache) <= 4 and cold.data == {
        k: (v[0], "changed" if int(k[1:]) % 7 == 0 else v[1]) for k, v in hot.data.items()}
    store.close()


def test_memory_holds_the_cache_only(tables: DiskTables) -> None:
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    for i in range(5000):
        disk.put(("c", f"k{i}"), Val(i * 1000, i))
        assert len(disk.cache) <= 16
    assert len(disk) == 5000 and len(disk.data) == 5000
    assert disk.get(("c", "k4321")) == Val(4_321_000, 4321)
    disk.replace({("c", "x"): Val(1, 1)})
    assert disk.data == {("c", "x"): Val(1, 1)} and len(disk) == 1


def test_a_walk_reads_the_table_a_chunk_at_a_time_as_the_tracker_reads_it(
        tables: DiskTables, monkeypatch: pytest.MonkeyPatch) -> None:
    """``items``: every key with its value through the table's ``canon`` (as a ``get``
    returns it), read from disk at most 256 values at a time (lead scoring walks every
    account, each with months of hours, at each of its closes)."""
    canon_seen: list[Val] = []

    def canon(v: Val) -> Val:
        canon_seen.append(v)
        return Val(v.ts, v.n * 10)

    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val, canon)
    for i in range(600):
        disk.put(("c", f"k{i}"), Val(i * 1000, i))
    disk.delete(("c", "k5"))
    disk.put(("c", "k9"), Val(9000, 90))  # changed since it was written: in the walk
    want = {k: Val(v.ts, v.n * 10) for k, v in disk.data.items()}
    reads: list[int] = []
    canon_seen.clear()  # the delete and the put read their keys back
    values = disk._values

    def counted(keys: list[bytes]) -> list[Any]:
        reads.append(len(keys))
        return values(keys)

    monkeypatch.setattr(disk, "_values", counted)
    walked = dict(disk.items())
    assert walked == want and len(walked) == 599 and ("c", "k5") not in walked
    assert walked[("c", "k9")] == Val(9000, 900)
    assert len(canon_seen) == 599 and max(reads) == 256 and sum(reads) == 599
    assert len(disk.cache) <= 16


def test_a_walk_over_a_table_all_in_its_cache_reads_nothing_from_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskTables(tmp_path / "t", cache_keys=100)
    disk: DiskKeyed[Key, Val] = store.table("t", _ts, Key, Val)
    for i in range(50):
        disk.put(("c", f"k{i}"), Val(i * 1000, i))
    disk.get(("c", "absent"))  # cached as absent: not in the walk
    disk.delete(("c", "k3"))
    monkeypatch.setattr(disk, "_stored", None)  # a read from disk would fail
    walked = list(disk.items())
    assert len(walked) == 49 and all(v is disk.get(k) for k, v in walked)
    store.close()


def test_a_full_cache_keeps_the_keys_read_last(tables: DiskTables) -> None:
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    for i in range(16):
        disk.put(("c", f"k{i}"), Val(i * 1000, i))
    assert disk.get(("c", "k16")) is None  # the 17th key: the 8 read first leave
    assert list(disk.cache) == [("c", f"k{i}") for i in range(8, 17)]
    assert disk.changed == {("c", f"k{i}") for i in range(8, 16)}  # the rest are written
    assert disk.data == {("c", f"k{i}"): Val(i * 1000, i) for i in range(16)}
    assert disk.get(("c", "k3")) == Val(3000, 3)  # read back from disk


def test_a_table_filled_at_once_answers_as_one_filled_key_by_key(tables: DiskTables) -> None:
    data = {("c", f"k{i}"): Val(i * 600_000, i) for i in range(300)}
    mem: Keyed[Key, Val] = Keyed(_ts)
    mem.fill(data)
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    disk.get(("c", "k7"))  # cached as absent: filled as any change
    disk.fill(data)
    assert len(disk) == len(mem) == 300 and disk.drain() == mem.drain()
    assert set(disk.filed()) == set(mem.filed())
    assert all(mem.hour(h) == _decoded(disk.hour(h)) for h in mem.filed())
    assert sorted(disk.sweep(100 * 600_000)) == sorted(mem.sweep(100 * 600_000))
    assert disk.data == mem.data and len(disk) == len(mem) > 150


def test_an_hour_is_written_from_the_cache_and_the_disk_without_a_flush(
        tables: DiskTables) -> None:
    """``hour`` takes a cached key's value from memory (nothing is written to disk for it)
    and a key only on disk as stored, in key order as the disk holds them; reads and
    evictions between two calls change neither."""
    mem: Keyed[Key, Val] = Keyed(_ts)
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    filled = {("c", f"f{i:02d}"): Val(7 * HOUR_MS + i, i) for i in range(40)}
    for t in (mem, disk):
        t.fill(filled)  # on disk only: none cached
        for i in range(5):  # new, cached, in no write yet
            t.put(("c", f"n{i:02d}"), Val(7 * HOUR_MS + 100 + i, 100 + i))
        moved = t.get(("c", "f03"))  # to the next hour
        assert moved is not None
        moved.ts = 8 * HOUR_MS
        t.touch(("c", "f03"))
        t.delete(("c", "f04"))
    unwritten = {("c", f"n{i:02d}") for i in range(5)} | {("c", "f03"), ("c", "f04")}
    assert disk.changed == unwritten

    def same() -> None:  # the bytes too: in key order, wherever the keys are
        for h in (7, 8):
            assert bytes(disk.hour(h)) == msgspec.msgpack.encode(dict(sorted(
                mem.hour(h).items())))

    same()
    assert disk.changed == unwritten  # ``hour`` wrote nothing
    assert disk.get(("c", "f10")) == mem.get(("c", "f10"))  # read into the cache: no touch
    same()
    for i in range(20, 40):  # the cache fills, half of it leaves (written as it goes)
        assert disk.get(("c", f"f{i:02d}")) == mem.get(("c", f"f{i:02d}"))
    same()
    assert len(mem.hour(7)) == 43 and mem.hour(8) == {("c", "f03"): Val(8 * HOUR_MS, 3)}
    assert mem.delete(("c", "f39")) == disk.delete(("c", "f39"))  # a cached key
    same()
    assert sorted(mem.sweep(8 * HOUR_MS)) == sorted(disk.sweep(8 * HOUR_MS))
    same()
    assert mem.hour(7) == {} and len(mem) == len(disk) == 1


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_an_hour_on_disk_is_the_bytes_msgpack_writes_of_its_keys_and_values(
        tmp_path: Path, n: int) -> None:
    """``hour`` joins the keys and values, under a map header of its own: the bytes msgspec
    writes of the dict (a header of each size msgpack has)."""
    store = DiskTables(tmp_path / "tables", cache_keys=100_000)
    disk: DiskKeyed[Key, Val] = store.table("t", _ts, Key, Val)
    data = {("c", f"k{i:06d}"): Val(7 * HOUR_MS + i, i) for i in range(n)}
    for key, value in data.items():
        disk.put(key, value)
    disk.put(("c", "elsewhere"), Val(8 * HOUR_MS, -1))  # another hour's: not in it
    written = disk.hour(7)
    assert isinstance(written, msgspec.Raw)
    assert bytes(written) == msgspec.msgpack.encode(dict(sorted(data.items())))
    assert _decoded(written) == data
    store.close()


def test_parts_filled_as_they_are_encoded_read_as_the_values_they_hold(
        tables: DiskTables) -> None:
    """A takeover writes a part's values without decoding them (``part_type``, ``fill``
    with the part's hour): the table answers as one filled with the values."""
    data = {("c", f"k{i}"): Val(i * 600_000, i) for i in range(300)}
    mem: Keyed[Key, Val] = Keyed(_ts)
    mem.fill(data)
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    disk.get(("c", "k7"))  # cached as absent: filled as any change
    for hour in mem.filed():
        part = msgspec.msgpack.encode(mem.hour(hour))
        disk.fill(msgspec.msgpack.decode(part, type=disk.part_type(dict[Key, Val])), hour)
    assert len(disk) == 300 and disk.drain() == mem.drain()
    assert all(mem.hour(h) == _decoded(disk.hour(h)) for h in mem.filed())
    assert disk.get(("c", "k7")) == Val(7 * 600_000, 7) and disk.data == data
    assert sorted(disk.sweep(100 * 600_000)) == sorted(mem.sweep(100 * 600_000))


class Changelog:
    """A table's parts as commits leave them (as metrics/snapshot.py names and restores
    them): its hours written whole, then its deltas, applied in order over them."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}
        self.keys_written: list[int] = []  # keys per commit

    def commit(self, table: Any, full: bool = False) -> Any:
        plan = table.commit(full)
        names = {str(h) for h in table.filed()} | {f"d|{n}" for n in plan.deltas}
        written: dict[str, Any] = {str(h): table.hour(h) for h in table.filed()
                                   if h in plan.hours}
        if plan.delta is not None:
            written[f"d|{plan.delta[0]}"] = plan.delta[1]()
        self.keys_written.append(sum(
            len(v) if isinstance(v, dict) else len(_decoded(v)) if isinstance(v, msgspec.Raw)
            else len(v[0]) + len(v[1]) for v in written.values()))
        self.parts = {n: v for n, v in self.parts.items() if n in names}
        self.parts.update({n: msgspec.msgpack.encode(v) for n, v in written.items()})
        return plan

    def restore(self, table: Any) -> None:
        deltas = []
        for name, raw in self.parts.items():
            if name.startswith("d|"):
                deltas.append((int(name[2:]), msgspec.msgpack.decode(
                    raw, type=table.delta_type(dict[Key, Val]))))
            else:
                table.fill(msgspec.msgpack.decode(raw, type=table.part_type(dict[Key, Val])),
                           int(name))
        for n, delta in sorted(deltas, key=lambda d: d[0]):
            table.load_delta(n, delta)
        table.drain()


def test_commits_write_deltas_that_restore_the_table_exactly(tmp_path: Path,
                                                             tables: DiskTables) -> None:
    """Keys moved between hours, deleted, swept and evicted from the cache, with a commit
    every few changes: restoring the changelog at any commit, into a table on disk or in
    memory, gives the table's keys, values and hours; commits write deltas and, from time
    to time, the changed hours whole. Every third commit the table is taken over."""
    rnd = random.Random(11)
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    log = Changelog()
    keys = [(f"c{i % 7}", f"k{i}") for i in range(400)]
    now = 100 * HOUR_MS
    kinds = []
    for step in range(1, 1201):
        key = rnd.choice(keys)
        op = rnd.random()
        cur = disk.get(key)
        if cur is None:
            disk.put(key, Val(now + rnd.randrange(-5 * HOUR_MS, HOUR_MS), 1))
        elif op < 0.8:  # on, maybe to a later hour
            cur.ts, cur.n = max(cur.ts, now + rnd.randrange(-2 * HOUR_MS, HOUR_MS)), cur.n + 1
            disk.touch(key)
        else:
            disk.delete(key)
        now += rnd.randrange(0, 60_000)
        if step % 300 == 150:
            assert isinstance(disk.sweep(now - 4 * HOUR_MS), list)
        elif step % 300 == 0:  # the values unread
            assert isinstance(disk.drop(now - 4 * HOUR_MS), int)
        if step % 7 == 0:
            plan = log.commit(disk)
            kinds.append("delta" if plan.delta else "hours" if plan.hours else "none")
            if step % 21 == 0:
                want = disk.data
                other = DiskTables(tmp_path / f"other{step}")
                back: DiskKeyed[Key, Val] = other.table("t", _ts, Key, Val)
                log.restore(back)
                mem: Keyed[Key, Val] = Keyed(_ts)
                log.restore(mem)
                assert back.data == want == mem.data and len(back) == len(want)
                assert dict(back.counts) == dict(disk.counts)
                assert {h: len(mem.hour(h)) for h in mem.filed()} == dict(disk.counts)
                # a takeover: the restored table goes on over what the changelog holds
                assert back.deltas == disk.deltas
                disk.store.close()
                disk = back
    assert kinds.count("delta") > 50 and kinds.count("hours") > 5
    disk.store.close()


def test_a_commit_writes_the_keys_changed_not_their_hours(tables: DiskTables) -> None:
    """A busy hour's keys written once; a commit after 10 of them changed writes those 10."""
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    log = Changelog()
    for i in range(5000):
        disk.put(("c", f"k{i}"), Val(7 * HOUR_MS + i, 1))
    log.commit(disk)
    assert log.keys_written == [5000]
    for round_ in range(3):
        for i in range(10):
            v = disk.get(("c", f"k{round_ * 10 + i}"))
            assert v is not None
            v.n += 1
            disk.touch(("c", f"k{round_ * 10 + i}"))
        plan = log.commit(disk)
        assert plan.hours == set() and plan.delta is not None
    assert log.keys_written == [5000, 10, 10, 10]
    assert set(log.parts) == {str(7), "d|0", "d|1", "d|2"}
    full = log.commit(disk, full=True)  # a new tenure: the hours whole, the deltas gone
    assert full.deltas == [] and set(log.parts) == {str(7)}


def test_a_part_value_that_is_none_fails_by_its_key_when_read(tmp_path: Path,
                                                              tables: DiskTables) -> None:
    """Written unread, a value that is not one (corrupt, or crafted: a pickle that would
    create a file) gives a ``StateError`` naming the table and the key when it is read."""
    target = tmp_path / "pwned"
    crafted = b"cos\nsystem\n(S'touch " + str(target).encode() + b"'\ntR."
    part = msgspec.msgpack.encode({("c", "good"): Val(5 * HOUR_MS, 1), ("c", "bad"): crafted})
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    disk.fill(msgspec.msgpack.decode(part, type=disk.part_type(dict[Key, Val])), 5)
    assert disk.get(("c", "good")) == Val(5 * HOUR_MS, 1)
    with pytest.raises(StateError, match=r"table 't': the value of \('c', 'bad'\)"):
        disk.get(("c", "bad"))
    with pytest.raises(StateError, match="'bad'"):
        disk.sweep(6 * HOUR_MS)
    assert not target.exists()


def test_a_drop_reads_no_value(tables: DiskTables) -> None:
    """``drop``: the keys of the hours before the cutoff go, their values unread (a value
    no one could decode goes too), and the next commit says they went."""
    part = msgspec.msgpack.encode({("c", "good"): Val(5 * HOUR_MS, 1), ("c", "bad"): b"\xc1"})
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    disk.fill(msgspec.msgpack.decode(part, type=disk.part_type(dict[Key, Val])), 5)
    disk.put(("c", "later"), Val(6 * HOUR_MS, 1))
    disk.drain()
    assert disk.drop(6 * HOUR_MS) == 2
    assert len(disk) == 1 and disk.data == {("c", "later"): Val(6 * HOUR_MS, 1)}
    assert disk.drain() == {5} and disk.pending >= {("c", "good"), ("c", "bad")}
    assert disk.drop(6 * HOUR_MS) == 0


def test_each_process_has_its_folder_and_a_dead_ones_goes(tmp_path: Path) -> None:
    dead = tmp_path / "tables.999999999.0"  # no such process
    dead.mkdir()
    live = tmp_path / f"tables.{os.getppid()}.0"  # a former owner still running
    live.mkdir()
    store, again = DiskTables(tmp_path / "tables"), DiskTables(tmp_path / "tables")
    store.table("t", _ts, Key, Val).put(("a", "b"), Val(1, 1))
    again.table("t", _ts, Key, Val).put(("a", "b"), Val(2, 2))  # one of this process too
    mine = [p for p in tmp_path.iterdir() if p.name.startswith(f"tables.{os.getpid()}.")]
    assert len(mine) == 2 and live.is_dir() and not dead.exists()
    store.close()
    assert not store._mine.exists() and again._mine.is_dir() and live.is_dir()
    again.close()


def engine_on(tables: DiskTables | None) -> KpiEngine:
    """An engine whose large tables are on disk in ``tables`` (a ``ShardStore``: its
    shelves too), or in memory."""
    return KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0),
                     tables=tables.table if tables else None,
                     shelves=tables.shelf if isinstance(tables, ShardStore) else mem_shelf)


def restored_on(store: Store, tables: DiskTables) -> KpiEngine:
    """An engine on ``tables`` restored from what ``store``'s commits wrote."""
    engine = engine_on(tables)
    engine.restore(msgspec.msgpack.decode(store.core, type=EngineState))
    engine.load_parts(sorted(store.parts.items()))
    return engine


Records = list[dict[str, Any]]


def side_by_side(mem: KpiEngine, disk: KpiEngine, evs: list[Event]
                 ) -> tuple[Records, Records, Store, Store]:
    """The first half of ``evs`` into both engines, each committed after each quarter: what
    each published, and what its commits wrote."""
    out_mem: Records = []
    out_disk: Records = []
    store_mem, store_disk = Store(), Store()
    cut = len(evs) // 2
    for a, b in ((0, cut // 2), (cut // 2, cut)):
        run(mem, evs[a:b], out_mem)
        run(disk, evs[a:b], out_disk)
        store_mem.commit(mem)
        store_disk.commit(disk)
    return out_mem, out_disk, store_mem, store_disk


def goes_on_alike(mem: KpiEngine, restored: KpiEngine, rest: list[Event], out: Records
                  ) -> None:
    """The rest of the input into both: the same records after ``out`` (what ``mem``
    published so far)."""
    out_restored = list(out)
    run(mem, rest, out)
    run(restored, rest, out_restored)
    assert out == out_restored


def test_an_engine_with_its_cohorts_on_disk_counts_and_restores_as_in_memory(
        tables: DiskTables, tmp_path: Path) -> None:
    """Send cohorts, visitors and their sessions, the accounts stage's touches, orders and
    deals and purchases and its accounts' engagement (lead scoring), the pipeline's leads,
    deals and accounts on disk, a cache of 16 keys a table."""
    evs = events(seed=21)
    mem, disk = engine_on(None), engine_on(tables)
    t: dict[str, Any] = disk.trackers
    assert isinstance(t["send_cohorts"].cohorts, DiskKeyed)
    assert isinstance(t["visitors"].visitors, DiskKeyed)
    assert isinstance(t["visitors"].sessions, DiskKeyed)
    assert all(isinstance(table, DiskKeyed) for table in (
        *t["attribution"].tables().values(), t["account_revenue"].deals,
        *t["pipeline"].tables().values(), *t["account_purchases"].tables().values(),
        t["lead_scoring"].accounts))
    # the tables read at the CRM's pace keep 2 keys here (16 // 25, at least 2): most reads
    # of a lead, a deal, a purchase or a day of touches go to disk
    cold = [*t["pipeline"].tables().values(), *t["account_purchases"].tables().values(),
            t["account_revenue"].deals, t["attribution"].touches, t["attribution"].orders,
            t["attribution"].deals, t["lead_scoring"].accounts]
    assert {table.cache_keys for table in cold} == {2}
    assert t["attribution"].accounts.cache_keys == t["visitors"].sessions.cache_keys == 16
    out_mem, out_disk, store_mem, store_disk = side_by_side(mem, disk, evs)
    cut = len(evs) // 2
    assert out_mem == out_disk and len(out_mem) > 100
    assert comparable(mem) == comparable(disk)
    # the parts written: the same names, but for the deltas of the table on disk (the second
    # commit wrote the cohorts it changed, not their hours whole)
    deltas = {n for n in store_disk.parts if "|d|" in n}
    assert {n.rpartition("|d|")[0] for n in deltas} == {
        "t|send_cohorts|cohorts", "t|visitors|visitors", "t|visitors|sessions",
        "t|attribution|accounts", "t|attribution|orders", "t|attribution|touches",
        "t|account_purchases|purchases", "t|lead_scoring|accounts"}
    assert set(store_mem.parts) == set(store_disk.parts) - deltas
    assert comparable(store_mem.restore()) == comparable(store_disk.restore())
    # a takeover in another process: its tables filled from the parts, then on as before
    other = DiskTables(tmp_path / "other")
    restored = restored_on(store_disk, other)
    assert comparable(restored) == comparable(mem)
    goes_on_alike(mem, restored, evs[cut:], out_mem)
    other.close()


def test_a_takeover_keeps_nothing_of_what_the_trackers_held_before(
        tables: DiskTables) -> None:
    """A shard handed over and taken back: its trackers start from the parts alone, not
    from what they held at the handover (keys the other owner dropped stay dropped)."""
    evs = events(seed=22)
    for engine in (engine_on(None), engine_on(tables)):
        store = Store()
        run(engine, evs[:2000], [])
        store.commit(engine)
        before = comparable(store.restore())
        run(engine, evs[2000:], [])  # what the other owner made of the rest: not restored
        engine.restore(msgspec.msgpack.decode(store.core, type=EngineState))
        engine.load_parts(sorted(store.parts.items()))
        assert comparable(engine) == before


def test_unique_openers_on_disk_count_as_in_memory(tables: DiskTables) -> None:
    """Not in the default catalog (it counts by send cohort), but a catalog may use them."""
    mem, disk = UniqueOpeners(24 * HOUR_MS), UniqueOpeners(24 * HOUR_MS)
    disk.spill(tables.table)
    assert isinstance(disk.first, DiskKeyed)
    rnd = random.Random(5)
    dims = tuple((("campaign_id", f"c{i}"), ("segment", "s")) for i in range(3))
    for i in range(4000):
        key = (f"c{rnd.randrange(3)}", f"k{rnd.randrange(300)}")
        ts = i * 60_000 + rnd.randrange(-6 * HOUR_MS, 0)  # shuffled within hours
        d = dims[int(key[0][1])]
        assert mem.observe_key(key, ts, d) == disk.observe_key(key, ts, d)
        if i % 500 == 0:
            mem.expire(i * 60_000)
            disk.expire(i * 60_000)
            assert len(mem) == len(disk)
    assert mem.first.data == disk.first.data and len(mem) > 100


def test_a_key_deleted_before_it_was_written_leaves_the_cache(tables: DiskTables) -> None:
    """Nothing of it is on disk to delete: it keeps no room in the cache, reads as gone,
    and the commit's delta says it is gone; a key deleted once written leaves the cache
    when the deletion is written."""
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    log = Changelog()
    kept = {("c", f"kept{i}"): Val(HOUR_MS + i, 1) for i in range(10)}
    for key, value in kept.items():
        disk.put(key, value)
    disk.put(("c", "written"), Val(HOUR_MS, 2))
    log.commit(disk)
    disk.flush()
    disk.put(("c", "brief"), Val(HOUR_MS, 3))
    assert disk.delete(("c", "brief")) == Val(HOUR_MS, 3)
    assert ("c", "brief") not in disk.cache and not disk.changed
    assert disk.delete(("c", "written")) == Val(HOUR_MS, 2)
    assert disk.cache[("c", "written")][0] is None  # its deletion not yet written
    plan = log.commit(disk)
    assert plan.delta is not None
    puts, gone = plan.delta[1]()
    assert puts == {} and sorted(gone) == [("c", "brief"), ("c", "written")]
    disk.flush()
    assert list(disk.cache) == list(kept)
    assert disk.get(("c", "brief")) is None and disk.get(("c", "written")) is None
    assert len(disk) == 10 and disk.data == kept


def test_keys_filed_under_one_hour_share_its_int(tables: DiskTables) -> None:
    """One int per hour, not per key (32 bytes a key), read from disk or filed here."""
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    hour = 490_000 * HOUR_MS  # 2025: an int Python does not share by itself
    for i in range(40):  # over the 16 keys of the cache: some read back from disk
        disk.put(("c", f"k{i}"), Val(hour + i, i))
    for i in range(40):
        assert disk.get(("c", f"k{i}")) == Val(hour + i, i)
    hours = {id(entry[2]) for entry in disk.cache.values()}
    assert len(disk.cache) > 1 and len(hours) == 1


def test_the_store_writes_no_log_ahead(tables: DiskTables) -> None:
    """Rebuilt at every open, never recovered: a write-ahead log would write it twice."""
    disk: DiskKeyed[Key, Val] = tables.table("t", _ts, Key, Val)
    for i in range(2000):
        disk.put(("c", f"k{i}"), Val(i * 1000, i))
    disk.flush()
    logs = list(tables.path.parent.glob(f"{tables.path.name}.*/*.log"))
    assert logs and all(p.stat().st_size == 0 for p in logs)


def test_values_read_back_share_the_trackers_dims_and_names(tables: DiskTables) -> None:
    """Cohorts, sessions and visitors read back from disk hold the tracker's one tuple per
    dims and one string per kind or builtin, as the values it makes do: decoded apart,
    each held its own (~400 bytes a dims)."""
    engine = engine_on(tables)
    run(engine, events(seed=23), [])
    t: dict[str, Any] = engine.trackers
    disk_tables = (t["send_cohorts"].cohorts, t["visitors"].sessions, t["visitors"].visitors)
    for table in disk_tables:  # the cache emptied, then keys read back from disk
        keys = list(table.data)[:12]
        table.flush()
        table.cache.clear()
        assert all(table.get(k) is not None for k in keys)
    dims: list[Any] = []
    names: list[str] = []
    for c in disk_tables[0].resident():
        dims += [d for _, d in c.sends]
        names += [k for _, k in c.responses]
    for visit in disk_tables[1].resident():
        dims += [d for _, d in visit.goals.values()] + ([visit.first[1]] if visit.first else [])
    for _, facts in disk_tables[2].resident():
        dims += [d for _, _, d, _ in facts]
        names += [b for _, b, _, _ in facts]
    assert len(dims) > 24 and len(names) > 12
    assert len({id(d) for d in dims}) == len(set(dims)) < len(dims)
    assert len({id(n) for n in names}) == len(set(names)) < len(names)


def test_new_sessions_leave_no_missing_visitors_in_the_cache(tmp_path: Path) -> None:
    """A new session's stand-in visitor cannot exist (made with its session, they expire
    together): it is not looked up, so the visitors' cache holds visitors only (the
    lookups left a missing key per new session, half the cache in a day of traffic)."""
    store = DiskTables(tmp_path / "t", cache_keys=100_000)
    engine = engine_on(store)
    run(engine, events(seed=24), [])
    t: dict[str, Any] = engine.trackers
    visitors = t["visitors"].visitors
    assert len(visitors) > 100
    assert [k for k, e in visitors.cache.items() if e[0] is None] == []
    store.close()


def test_lead_scores_with_the_accounts_on_disk_are_those_in_memory(tables: DiskTables
                                                                   ) -> None:
    """Lead scoring's accounts on disk behind a cache of 2 (cold): the scores at every hour,
    whether the accounts due are read one by one or in one walk, are those of the tracker
    in memory, and those of scoring every account."""
    rng = random.Random(9)
    evs = stage(sorted(engagement(rng, 2_000, 24 * 6, 30),
                       key=lambda e: e["ts"] + rng.random() * 6 * HOUR_MS))
    cfg = replace(MqlConfig(), half_life_ms=4 * HOUR_MS, lookback_ms=18 * HOUR_MS)
    mem, disk = LeadScoring(365 * DAY), LeadScoring(365 * DAY)
    disk.spill(tables.table)
    assert isinstance(disk.accounts, DiskKeyed) and disk.accounts.cache_keys == 2
    for t in (mem, disk):
        t.set_config(cfg)
    hour = 0
    for i, ev in enumerate(evs):
        mem.observe(ev)
        disk.observe(ev)
        if i % 7 == 6:
            hour = max(hour, ev.ts_ms // HOUR_MS - T0 // HOUR_MS - 2)
            at = T0 + hour * HOUR_MS
            assert disk.scores(at) == mem.scores(at) == every_account(mem, at), hour
    assert len(mem.board.shown) > 10
