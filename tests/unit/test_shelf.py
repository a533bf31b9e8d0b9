"""Shelves (metrics/shelf.py, streams/shelf_disk.py): closed windows and published rows kept
on disk answer as those held in memory; an engine whose shelves are on disk publishes,
revises, commits and restores exactly as one holding them, with only the keys in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from metrics.errors import StateError
from metrics.events import Event
from metrics.shelf import MemShelf
from metrics.windows import Agg
from streams.shelf_disk import FLUSH_AT, DiskShelf, ShardStore
from tests.helpers import DEFAULT_CATALOG
from tests.unit.test_parts import comparable
from tests.unit.test_snapshot import events
from tests.unit.test_table_disk import engine_on, goes_on_alike, restored_on, side_by_side


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = ShardStore(tmp_path / "tables", cache_keys=16)
    yield s
    s.close()


def test_a_mem_shelf_sorts_its_keys_and_has_nothing_to_write() -> None:
    shelf: MemShelf[int, str] = MemShelf()
    for k in (30, 10, 20):
        shelf[k] = str(k)
    shelf.flush()
    assert list(shelf) == [30, 10, 20]
    shelf.order()
    assert list(shelf.items()) == [(10, "10"), (20, "20"), (30, "30")]


def test_a_disk_shelf_answers_as_a_dict_and_holds_its_values_on_disk(store: ShardStore
                                                                      ) -> None:
    shelf = store.shelf("crm.30d", int, Agg)
    assert isinstance(shelf, DiskShelf)
    want: dict[int, Agg] = {}
    for end in range(3 * FLUSH_AT, 0, -1):
        want[end] = {("leads", "channel", f"c{end % 7}"): end, ("leads", "", ""): 2 * end}
        shelf[end] = dict(want[end])
        assert len(shelf.cache) < FLUSH_AT  # written in batches, never all held
    for end in range(1, 3 * FLUSH_AT, 5):
        del shelf[end]
        del want[end]
    patched = shelf.get(42)
    assert patched is not None
    patched[("leads", "", "")] += 1  # a change is put back, not made in place only
    shelf[42] = patched
    want[42][("leads", "", "")] += 1
    shelf.flush()
    assert not shelf.cache
    assert list(shelf) == list(want) and len(shelf) == len(want)
    assert dict(shelf.items()) == want
    assert shelf.get(1) is None and 1 not in shelf and 2 in shelf
    # each value is in the store, each key deleted is not
    db = store.db
    assert db.get(shelf.prefix + msgspec.msgpack.encode(2)) is not None
    assert db.get(shelf.prefix + msgspec.msgpack.encode(1)) is None
    shelf.order()
    assert list(shelf) == sorted(want)
    # a handover: the store emptied, the shelf holds nothing
    store.close()
    assert len(shelf) == 0 and shelf.get(2) is None


def test_patches_of_values_on_disk_are_folded_in_when_read_and_written(store: ShardStore
                                                                       ) -> None:
    """A patch of a value not held stays a delta: a read folds it in (as often as it reads),
    a flush writes the value with it, and a value put replaces what was patched before."""
    shelf = store.shelf("accounts.30d", int, Agg)
    assert isinstance(shelf, DiskShelf)
    total, leads = ("revenue", "", ""), ("leads", "", "")
    for end in (1, 2, 3):
        shelf[end] = {total: 10 * end}
    shelf.flush()
    shelf.patch(1, total, 5)
    shelf.patch(1, leads, 1)
    shelf.patch(1, total, 2)
    shelf.patch(2, total, -20)
    assert not shelf.cache  # nothing decoded for a patch
    assert shelf.get(1) == {total: 17, leads: 1}
    assert shelf.get(1) == {total: 17, leads: 1}  # read twice, folded once each time
    shelf[3] = {total: 99}
    shelf.patch(3, total, 1)  # held: patched in place
    shelf.flush()
    on_disk = [store.db.get(shelf.prefix + msgspec.msgpack.encode(e)) for e in (1, 2, 3)]
    assert [msgspec.msgpack.decode(raw or b"", type=Agg) for raw in on_disk] == [
        {total: 17, leads: 1}, {total: 0}, {total: 100}]
    shelf.patch(2, total, 4)
    shelf[2] = {total: 7}  # put after the patch: the value put is the value
    shelf.flush()
    assert dict(shelf.items()) == {1: {total: 17, leads: 1}, 2: {total: 7}, 3: {total: 100}}


def test_a_shelf_value_that_is_no_agg_fails_by_its_key(store: ShardStore) -> None:
    shelf = store.shelf("crm.30d", int, Agg)
    shelf[7] = {("leads", "", ""): 1}
    shelf.flush()
    assert isinstance(shelf, DiskShelf)
    store.db[shelf.prefix + msgspec.msgpack.encode(7)] = msgspec.msgpack.encode(["x"])
    with pytest.raises(StateError, match=r"shelf 'crm.30d': the value of 7 is unreadable"):
        shelf.get(7)


def test_tables_and_shelves_share_the_store_under_their_own_prefixes(store: ShardStore
                                                                     ) -> None:
    table = store.table("t", lambda v: 0, str, int)
    shelves = [store.shelf(f"s{i}", int, int) for i in range(3)]
    prefixes = [table._d[:1], *(s.prefix for s in shelves if isinstance(s, DiskShelf))]
    assert len(set(prefixes)) == 4


def _late_ones(evs: list[Event]) -> int:
    """Events behind the watermark of their family when they come: they revise windows."""
    seen: dict[str, int] = {}
    late = 0
    for ev in evs:
        late += ev.ts_ms < seen.get(ev.family, ev.ts_ms)
        seen[ev.family] = max(seen.get(ev.family, 0), ev.ts_ms)
    return late


def test_an_engine_with_its_shelves_on_disk_publishes_commits_and_restores_as_in_memory(
        store: ShardStore, tmp_path: Path) -> None:
    """Three days of history (crm and spend: hourly 30-day windows) and events out of
    order: every final and revision equal, the commits' parts equal, and a takeover in
    another store goes on as the engine in memory."""
    evs = events(seed=31)
    assert _late_ones(evs) > 100
    mem, disk = engine_on(None), engine_on(store)
    out_mem, out_disk, store_mem, store_disk = side_by_side(mem, disk, evs)
    cut = len(evs) // 2
    assert out_mem == out_disk
    assert any(r["revision"] > 0 for r in out_mem) and len(out_mem) > 1000
    crm = disk.windows["crm"]
    assert sum(len(s.closed) for s in crm.specs) > 100
    # the closed windows and published rows are on disk: at most a flush's worth in memory
    shelves = store.shelves
    assert len(shelves) == 1 + sum(len(f.windows) for f in DEFAULT_CATALOG.families.values())
    assert sum(len(s) for s in shelves) > 1000 > 10 * sum(len(s.cache) for s in shelves)
    assert comparable(mem) == comparable(disk)
    deltas = {n for n in store_disk.parts if "|d|" in n}
    assert set(store_mem.parts) == set(store_disk.parts) - deltas
    assert all(store_mem.parts[n] == store_disk.parts[n] for n in store_mem.parts
               if n.startswith(("w|", "p|")))
    # a state written by an engine holding them in memory (a worker before the shelves)
    # reads as the same
    third = ShardStore(tmp_path / "third")
    assert comparable(restored_on(store_mem, third)) == comparable(mem)
    third.close()
    other = ShardStore(tmp_path / "other")
    restored = restored_on(store_disk, other)
    assert comparable(restored) == comparable(mem)
    goes_on_alike(mem, restored, evs[cut:], out_mem)
    other.close()
