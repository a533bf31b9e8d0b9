"""Sessions: a second page view makes a session not single-page; two sessions merge when
an event bridges them."""

from __future__ import annotations

import msgspec

from metrics.trackers.sessions import MAX_SETTLE_MS, SESSION_GAP_MS, Sessions, SessionsState

D = (("campaign_id", "c"), ("channel", "web"))


def test_a_second_view_retracts_single_page_and_a_bridge_merges() -> None:
    s = Sessions(horizon_ms=10 * SESSION_GAP_MS)
    assert s.observe_one("s1", 0, True, "web", "c", None) == [
        (0, "sessions", D, 1), (0, "single_page_sessions", D, 1)]
    assert s.observe_one("s1", 60_000, True, "web", "c", None) == [
        (0, "single_page_sessions", D, -1)]
    far = 60_000 + SESSION_GAP_MS + 1
    assert (far, "sessions", D, 1) in s.observe_one("s1", far, True, "web", "c", None)
    merged = s.observe_one("s1", far - 1000, False, "web", "c", "demo")
    assert (far, "sessions", D, -1) in merged  # the later session folds into the first
    assert (0, "converting_sessions", D, 1) in merged


def test_state_round_trips() -> None:
    s = Sessions(horizon_ms=SESSION_GAP_MS)
    s.observe_one("a", 0, True, "web", "c", None)
    r = Sessions(horizon_ms=SESSION_GAP_MS)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(s.snapshot()), type=SessionsState))
    assert r.observe_one("a", 1000, True, "web", "c", None) == [
        (0, "single_page_sessions", D, -1)]


def test_settled_is_the_start_of_the_earliest_session_an_event_can_still_extend() -> None:
    s = Sessions(horizon_ms=10 * SESSION_GAP_MS)
    s.observe_one("a", 0, True, "web", "c", None)
    s.observe_one("b", 600_000, True, "web", "c", None)
    grace = 120_000
    # both can still be extended: nothing before the first one's start is settled
    assert s.settled(600_000, grace) == 0
    # a ended at 0: past its gap + grace, only b holds
    assert s.settled(SESSION_GAP_MS + grace + 1, grace) == 600_000
    # a session kept alive for days holds nothing back beyond 4 hours
    for k in range(1, 200):
        s.observe_one("bot", k * 1_200_000, True, "web", "c", None)
    wm = 199 * 1_200_000
    assert s.settled(wm, grace) == wm - grace - SESSION_GAP_MS - MAX_SETTLE_MS
