"""What trackers share: net changes cancel unchanged facts; buckets sweep by hour."""

from __future__ import annotations

from metrics.trackers.base import Buckets, Fact, net_change

H = 3_600_000


def test_unchanged_facts_cancel_out() -> None:
    before: list[Fact] = [(1, "sessions", (), 1), (1, "single_page_sessions", (), 1)]
    after: list[Fact] = [(1, "sessions", (), 1)]
    assert net_change(before, after) == [(1, "single_page_sessions", (), -1)]
    assert net_change(after, after) == []


def test_a_sweep_deletes_only_entries_still_older_than_the_cutoff() -> None:
    b: Buckets[str] = Buckets()
    state = {"old": 0, "refreshed": 5 * H}
    b.file("old", 0)
    b.file("refreshed", 0)  # filed early, then active again later
    b.file("refreshed", 5 * H)
    removed = b.sweep(state, 2 * H, lambda ts: ts)
    assert removed == [("old", 0)] and state == {"refreshed": 5 * H}
