"""What trackers share: net changes cancel unchanged facts; keyed state filed by hour."""

from __future__ import annotations

from metrics.trackers.base import Fact, Keyed, net_change

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
