"""Sessions: a second page view makes a session not single-page; two sessions merge when
an event bridges them."""

from __future__ import annotations

import random

import msgspec
import pytest

from metrics.constants import HOUR_MS, NEVER_END
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


def _settled_by_scan(s: Sessions, watermark: int, grace: int) -> int:
    """What ``settled`` answers, from every session held (no scan kept between calls)."""
    reach = watermark - grace
    starts = [c.start for held in s.state.data.values()
              for c in (held if isinstance(held, list) else [held])
              if c.end + SESSION_GAP_MS > reach]
    return max(min(starts, default=NEVER_END), reach - SESSION_GAP_MS - MAX_SETTLE_MS)


@pytest.mark.parametrize("seed", range(6))
def test_settled_between_scans_equals_a_scan_of_every_session(seed: int) -> None:
    """``settled`` keeps its last scan while it still holds: asked after every event, as
    publishing does while windows wait, it must equal a scan of every session. Events come
    out of order, some from before grace (a window still open takes them); sessions bridge,
    close, start on the same minute, and start before the bound after a quiet spell; a
    watermark is asked about after a later one; the state is restored, and filled, mid-way."""
    rng = random.Random(seed)
    grace = 10 * 60_000
    s = Sessions(horizon_ms=7 * 24 * HOUR_MS)
    wm = 0
    for i in range(3_000):
        if rng.random() < 0.02:  # a quiet spell: every session closes
            wm += SESSION_GAP_MS + grace + rng.randrange(HOUR_MS)
        back = grace + SESSION_GAP_MS if rng.random() < 0.1 else grace
        ts = max(0, wm - rng.randrange(back)) // 60_000 * 60_000
        sid = f"s{rng.randrange(60 if rng.random() < 0.5 else 600)}"
        goal = "demo" if rng.random() < 0.05 else None
        s.observe_one(sid, ts, goal is None, "web", "c", goal)
        wm += rng.randrange(20_000)
        if i == 1_500:  # restored empty: the scan kept from before holds no more
            s.restore(SessionsState(1, {}))
        if i == 2_000:  # a takeover's part, an early session in it: it holds the rest back
            s.settled(wm, grace)
            early = wm - grace
            part = {"taken": {"start": early, "end": early, "views": 1,
                              "first": (0, early, "web", "c"), "goals": []}}
            s.state.fill(msgspec.convert({"version": 1, "sessions": part},
                                         SessionsState).sessions)
            s.loaded()
        asked = wm - rng.randrange(SESSION_GAP_MS) if rng.random() < 0.05 else wm
        assert s.settled(asked, grace) == _settled_by_scan(s, asked, grace), i
