"""Unique openers: once per (campaign, contact), in the pane of the earliest open."""

from __future__ import annotations

import msgspec

from metrics.trackers.first_seen import FirstSeenState, UniqueOpeners

D = (("campaign_id", "c"), ("segment", "s"))


def test_an_earlier_open_arriving_later_moves_the_count() -> None:
    t = UniqueOpeners(horizon_ms=10_000)
    assert t.observe_key(("c", "p"), 5_000, D) == [(5_000, "unique_opens", D, 1)]
    assert t.observe_key(("c", "p"), 6_000, D) == []
    assert t.observe_key(("c", "p"), 4_000, D) == [(5_000, "unique_opens", D, -1),
                                                    (4_000, "unique_opens", D, 1)]
    assert t.observe_key(("c", "p"), 30_000, D) == [(30_000, "unique_opens", D, 1)]


def test_state_round_trips_and_expires() -> None:
    t = UniqueOpeners(horizon_ms=10_000)
    t.observe_key(("c", "p"), 5_000, D)
    r = UniqueOpeners(horizon_ms=10_000)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()), type=FirstSeenState))
    assert r.observe_key(("c", "p"), 6_000, D) == [] and len(r) == 1
    r.expire(3 * 3_600_000)  # expiry sweeps whole hours
    assert len(r) == 0


def test_restored_keys_hold_one_dims_tuple_again() -> None:
    t = UniqueOpeners(horizon_ms=10_000)
    for i in range(20):
        t.observe_key(("c", f"p{i}"), 5_000 + i, D)
    r = UniqueOpeners(horizon_ms=10_000)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()), type=FirstSeenState))
    assert len({id(d) for _, d in r.first.data.values()}) == 20  # decoded apart
    r.loaded()
    assert len({id(d) for _, d in r.first.data.values()}) == 1
    assert {k: v for k, v in r.first.data.items()} == t.first.data
