"""Lead scores carried from hour to hour (metrics/trackers/running_score.py): within the
bound of the sum afresh, never on the other side of a half point, summed afresh where they
could be, and dropped when an account's past points change."""

from __future__ import annotations

import random
from array import array
from dataclasses import replace

import msgspec
import pytest

from metrics.catalog_types import MqlConfig
from metrics.constants import HOUR_MS
from metrics.trackers.lead_scoring import LeadScoring, LeadScoringState
from metrics.trackers.running_score import _REFRESH, RunningScores, bound
from tests.unit.trackers.test_lead_scoring import DAY, T0, ev, stage
from tests.unit.trackers.test_score_board import H0, every_account, sums_counted


def afresh(hours: list[int], points: list[int], hour: int, lookback: int,
           half_life: float) -> float:
    return float(sum(p * 2.0 ** (-(hour - h) / half_life)
                     for h, p in zip(hours, points, strict=True) if hour - lookback < h <= hour))


def carry(r: RunningScores, hours: list[int], points: list[int], hour: int, lookback: int,
          half_life: float) -> tuple[float, bool]:
    """The score at ``hour`` as ``scores`` takes it, and whether it was carried."""
    got = r.carried("a", hours, points, hour)
    if got is not None:
        return got, True
    value = afresh(hours, points, hour, lookback, half_life)
    r.start("a", hours, hour, value)
    return value, False


@pytest.mark.parametrize(("lookback", "half_life", "step"), [
    (2_160, 336.0, 1), (12, 3.0, 1), (12, 3.0, 5), (40, 0.7, 3)])
def test_carried_scores_stay_within_the_bound_of_the_sum_afresh(
        lookback: int, half_life: float, step: int) -> None:
    """Points at most hours, scored every ``step`` hours as hours enter and leave the
    lookback: each carried score is within the bound, and rounds as the sum afresh does."""
    rng = random.Random(3)
    r = RunningScores()
    r.configure([2.0 ** (-k / half_life) for k in range(lookback)], lookback, half_life)
    hours: list[int] = []
    points: list[int] = []
    carried = 0
    for hour in range(0, 3_000, step):
        for h in range(hour - step + 1, hour + 1):
            if h >= 0 and rng.random() < 0.8:
                hours.append(h)
                points.append(rng.choice([1, 2, 5, 10, 30]))
        got, was_carried = carry(r, hours, points, hour, lookback, half_life)
        want = afresh(hours, points, hour, lookback, half_life)
        _, _, mass, ops = r.sums["a"]
        assert abs(got - want) <= bound(mass, ops + 2 * lookback), hour
        assert round(got) == round(want), hour
        carried += was_carried
    assert carried >= 0.9 * len(range(0, 3_000, step))  # not summed afresh every hour


def test_a_score_at_a_half_point_is_summed_afresh() -> None:
    """One point a half-life ago is 0.5 exactly: carried, it could be 0.5 ± an ulp and round
    either way; summed afresh it rounds to 0 (to even), as every hour's sum does."""
    r = RunningScores()
    r.configure([2.0 ** -k for k in range(10)], 10, 1.0)
    hours, points = [0], [1]
    assert carry(r, hours, points, 0, 10, 1.0) == (1.0, False)
    assert r.carried("a", hours, points, 1) is None  # 0.5: the sum afresh decides
    assert r.carried("a", hours, points, 2) == 0.25  # from hour 0's sum, two hours on


def test_an_earlier_hour_changed_or_a_long_gap_sums_afresh() -> None:
    r = RunningScores()
    r.configure([2.0 ** (-k / 3) for k in range(12)], 12, 3.0)
    hours, points = [0, 1], [3, 4]
    carry(r, hours, points, 1, 12, 3.0)
    r.changed("a", 2)  # a later hour's points: carried on
    assert "a" in r.sums
    r.changed("a", 1)  # the hour scored changed: its sum is no longer the account's
    assert "a" not in r.sums
    carry(r, hours, points, 1, 12, 3.0)
    assert r.carried("a", hours, points, 0) is None  # an earlier hour
    assert r.carried("a", hours, points, 13) is None  # the whole lookback passed
    r.forget("a")
    assert r.sums == {}


def test_operations_carried_are_bounded_by_a_sum_afresh() -> None:
    r = RunningScores()
    r.configure([2.0 ** (-k / 100) for k in range(500)], 500, 100.0)
    hours: list[int] = []
    points: list[int] = []
    afresh_at = []
    for hour in range(3_000):
        hours.append(hour)
        points.append(3)
        if not carry(r, hours, points, hour, 500, 100.0)[1]:
            afresh_at.append(hour)
        assert r.sums["a"][3] <= _REFRESH + 4 + 3 * 2
    assert len(afresh_at) >= 2 and afresh_at[0] == 0  # once at the start, then after ~1,000 h


def test_lead_scoring_carries_the_scores_of_accounts_engaged_every_hour(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """50 accounts with points every hour for 10 days at a 3-hour half-life over a 12-hour
    lookback (hours leave it every hour): the scores are those of summing every account at
    every hour, and most are carried, not summed afresh."""
    rng = random.Random(5)
    t = LeadScoring(365 * DAY)
    t.set_config(replace(MqlConfig(), half_life_ms=3 * HOUR_MS, lookback_ms=12 * HOUR_MS))
    summed = sums_counted(monkeypatch, t)
    scorings = own = 0
    for h in range(240):
        for e in stage([ev(f"e{h}-{i}", "page.viewed", h + rng.random(), session_id="s",
                           page="/pricing", account_id=f"a{i % 50}") for i in range(150)]):
            t.observe(e)
        at = T0 + h * HOUR_MS + 59 * 60_000
        summed.clear()
        got = t.scores(at)
        scorings, own = scorings + 50, own + len(summed)
        assert got == every_account(t, at), h  # (which sums them all)
    assert scorings == 12_000 and own <= 1_000, own


def test_points_cut_from_an_account_drop_its_carried_score() -> None:
    """Hours before what any revisable crossing reads are cut when the account's next event
    comes: its sum, which counted them, goes with them."""
    t = LeadScoring(365 * DAY)
    t.set_config(replace(MqlConfig(), lookback_ms=2_000 * HOUR_MS))
    for e in stage([ev("e0", "page.viewed", 0.5, session_id="s", page="/x", account_id="a")]):
        t.observe(e)
    t.scores(T0)
    assert "a" in t._running.sums
    t._floor_h = H0 + 1  # as an expiry far on sets it
    for e in stage([ev("e1", "page.viewed", 2.5, session_id="s", page="/x", account_id="a")]):
        t.observe(e)
    assert "a" not in t._running.sums
    assert array("i", t.accounts.get("a").hours).tolist() == [H0 + 2]  # type: ignore[union-attr]
    assert t.scores(T0 + 3 * HOUR_MS) == every_account(t, T0 + 3 * HOUR_MS) == {"a": 1}


def test_an_account_expired_and_back_is_summed_afresh() -> None:
    """An account swept by expiry takes its carried score with it: back with new points, its
    score is theirs alone, not theirs plus what its gone hours had added."""
    t = LeadScoring(365 * DAY)
    t.set_config(replace(MqlConfig(), half_life_ms=3 * HOUR_MS, lookback_ms=12 * HOUR_MS,
                         within_ms=HOUR_MS))
    t.reach_ms = 0
    for e in stage([ev(f"e{h}", "goal.converted", h + 0.5, session_id="s", goal="demo",
                       account_id="a") for h in range(6)]):
        t.observe(e)
    assert t.scores(T0 + 5 * HOUR_MS) == {"a": 36}  # 10 × (1 + 2^(-1/3) + ... + 2^(-5/3))
    t.expire(T0 + 18 * HOUR_MS)
    assert len(t.accounts) == 0 and "a" not in t._running.sums
    for e in stage([ev("back", "goal.converted", 6.5, session_id="s", goal="demo",
                       account_id="a")]):
        t.observe(e)
    assert t.scores(T0 + 6 * HOUR_MS) == every_account(t, T0 + 6 * HOUR_MS) == {"a": 10}


def test_a_restore_drops_the_carried_scores() -> None:
    """A takeover restores another state into the same tracker: the scores carried from
    this one's points are not that state's."""
    ours, theirs = LeadScoring(365 * DAY), LeadScoring(365 * DAY)
    for t, eid in ((ours, "ours"), (theirs, "theirs")):
        for e in stage([ev(f"{eid}{h}", "goal.converted", h + 0.5, session_id="s", goal="demo",
                           account_id="a") for h in range(0, 6, 1 if t is ours else 3)]):
            t.observe(e)
    assert ours.scores(T0 + 5 * HOUR_MS) != theirs.scores(T0 + 5 * HOUR_MS)
    ours.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(theirs.snapshot()),
                                        type=LeadScoringState))
    at = T0 + 6 * HOUR_MS
    assert ours.scores(at) == theirs.scores(at) == every_account(theirs, at) == {"a": 20}
