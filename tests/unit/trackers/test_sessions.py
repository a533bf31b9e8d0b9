"""Sessions: a second page view makes a session not single-page; two sessions merge when
an event bridges them."""

from __future__ import annotations

import msgspec

from metrics.trackers.sessions import SESSION_GAP_MS, Sessions, SessionsState

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
