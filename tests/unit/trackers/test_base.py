"""What trackers share: net changes cancel unchanged facts; keyed state filed by hour; one
tuple for equal dims."""

from __future__ import annotations

from metrics.trackers.base import DimsMemo, Fact, Keyed, net_change

H = 3_600_000


def test_unchanged_facts_cancel_out() -> None:
    before: list[Fact] = [(1, "sessions", (), 1), (1, "single_page_sessions", (), 1)]
    after: list[Fact] = [(1, "sessions", (), 1)]
    assert net_change(before, after) == [(1, "single_page_sessions", (), -1)]
    assert net_change(after, after) == []


def test_keyed_state_is_filed_by_hour_and_says_which_hours_changed() -> None:
    k: Keyed[str, int] = Keyed(lambda ts: ts)
    k.put("old", 0)
    k.put("moved", 0)  # filed early, then active again later
    k.put("moved", 5 * H)
    assert k.drain() == {0, 5}
    assert k.sweep(2 * H) == [("old", 0)] and k.data == {"moved": 5 * H}
    assert k.drain() == {0} and k.hour(0) == {} and k.hour(5) == {"moved": 5 * H}
    k.put("moved", 5 * H + 1)
    assert k.drain() == {5}  # changed within its hour: that hour only


def test_keys_of_one_hour_share_its_int_and_forget_it_with_the_hour() -> None:
    """Each key held its own int for its hour (32 bytes a key, 1.9 M keys in a blast)."""
    k: Keyed[str, int] = Keyed(lambda ts: ts)
    for i in range(50):
        k.put(f"a{i}", 7 * H + i)
    assert len({id(h) for h in k.hours.values()}) == 1
    k.put("a0", 9 * H)  # moved on: its old hour keeps the others
    assert k.hours["a0"] == 9 and len({id(k.hours[f"a{i}"]) for i in range(1, 50)}) == 1
    for i in range(1, 50):
        k.delete(f"a{i}")
    assert k._canon == {9: 9}
    k.sweep(10 * H)
    assert k._canon == {} and not k.data and not k.hours


def test_equal_dims_are_one_tuple_and_the_memo_stays_bounded() -> None:
    memo = DimsMemo(limit=3)
    first = memo((("campaign_id", "c1"), ("segment", "smb")))
    again = memo((("campaign_id", "c" + str(1)), ("segment", "smb")))
    assert again is first
    for i in range(10):
        memo((("campaign_id", f"x{i}"),))
    assert len(memo._memo) <= 3
    fresh = (("campaign_id", "c1"), ("segment", "smb"))
    assert memo(fresh) == first  # forgotten when full: a new one is filed, equal
