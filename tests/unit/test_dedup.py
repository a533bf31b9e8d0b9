"""The dedup store: ids remembered by hour of event time, expired by whole hours, and
restored from its typed state with the hour index rebuilt."""

from __future__ import annotations

import msgspec

from metrics.dedup import DedupState, MemoryDedup

H = 3_600_000


def test_ids_expire_by_the_hour_of_their_event_time() -> None:
    d = MemoryDedup()
    d.remember("a", 0)
    d.remember("b", H + 5)
    d.remember("c", 2 * H)
    assert "a" in d and len(d) == 3
    d.expire(2 * H - 1)  # hours before hour 1 go
    assert "a" not in d and "b" in d and "c" in d
    d.forget("b")
    assert "b" not in d


def test_a_restored_store_expires_like_the_original() -> None:
    d = MemoryDedup()
    for i in range(50):
        d.remember(f"id{i}", i * H // 4)
    blob = msgspec.msgpack.encode(d.snapshot())
    r = MemoryDedup()
    r.restore(msgspec.msgpack.decode(blob, type=DedupState))
    for store in (d, r):
        store.expire(6 * H)
    assert r.ids == d.ids and len(r) == 26
