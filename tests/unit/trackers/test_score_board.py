"""The lead scores `kpi-accounts` shows, scored only when they can change
(metrics/trackers/score_board.py): the same whole numbers as scoring every account at every
hour, whatever the arrival order, the expiry and the settings, for far fewer scorings."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import msgspec
import pytest

from metrics.catalog_types import MqlConfig
from metrics.constants import HOUR_MS
from metrics.trackers.lead_scoring import LeadScoring, LeadScoringState
from metrics.trackers.score_board import next_due
from tests.unit.trackers.test_lead_scoring import DAY, T0, email, ev, lead, stage

H0 = T0 // HOUR_MS


def every_account(t: LeadScoring, at: int) -> dict[str, int]:
    """What ``scores`` returned before the board: each account summed at the hour."""
    hour = at // HOUR_MS
    out: dict[str, int] = {}
    for account, acc in t.accounts.items():
        base, pts = t._score_parts(acc, hour)
        if round(base + pts) > 0:
            out[account] = round(base + pts)
    return out


def sums_counted(monkeypatch: pytest.MonkeyPatch, t: LeadScoring) -> list[int]:
    """The hours at which the tracker sums an account afresh (``_score_parts``), from now."""
    summed: list[int] = []
    real = t._score_parts

    def counted(acc: Any, h: int) -> tuple[float, int]:
        summed.append(h)
        return real(acc, h)

    monkeypatch.setattr(t, "_score_parts", counted)
    return summed


def engagement(rng: random.Random, n: int, hours: int, accounts: int) -> list[dict[str, Any]]:
    kinds: list[tuple[str, dict[str, Any]]] = [("email.opened", {}), ("email.clicked", {}),
             ("goal.converted", {"session_id": "s", "goal": "demo"}),
             ("page.viewed", {"session_id": "s", "page": "/pricing"}),
             ("social.interaction", {"network": "linkedin", "kind": "like", "count": 3})]
    out = []
    for i in range(n):
        kind, extra = rng.choice(kinds)
        account = f"a{rng.randrange(accounts)}"
        at_h = rng.random() * hours
        if kind.startswith("email"):
            out.append(email(f"e{i}", kind, at_h, account))
        else:
            out.append(ev(f"e{i}", kind, at_h, account_id=account, **extra))
    return out


@pytest.mark.parametrize(("half_life_h", "lookback_h", "shuffle"), [
    (336, 2160, False),  # the default catalog's
    (3, 12, False),  # whole numbers change nearly every hour, hours leave the lookback
    (3, 12, True),  # late events: points in hours already scored
    (0.5, 4, True),
])
def test_the_same_scores_as_every_account_at_every_hour(
        half_life_h: float, lookback_h: int, shuffle: bool) -> None:
    rng = random.Random(7)
    events = engagement(rng, 3_000, 24 * 12, 60)
    events.sort(key=lambda e: e["ts"])
    if shuffle:  # each event up to a day late
        events.sort(key=lambda e: e["ts"] + rng.random() * DAY)
    t = LeadScoring(365 * DAY)
    t.set_config(replace(MqlConfig(), half_life_ms=int(half_life_h * HOUR_MS),
                         lookback_ms=lookback_h * HOUR_MS))
    copies, hour, checked = stage(events), 0, 0
    for i, e in enumerate(copies):
        t.observe(e)
        if i % 10 == 9:  # a scoring per ten events, a few hours behind the newest
            hour = max(hour, e.ts_ms // HOUR_MS - H0 - 3)
            at = T0 + hour * HOUR_MS + 59 * 60_000
            assert t.scores(at) == every_account(t, at), hour
            checked += 1
            if i % 500 == 499:
                t.expire(T0 + (hour - 48) * HOUR_MS)  # accounts and hours expire
    for h in range(hour + 1, 24 * 12 + lookback_h + 50):  # the decay alone, then none
        at = T0 + h * HOUR_MS
        assert t.scores(at) == every_account(t, at), h
    assert t.scores(at) == {}  # every hour left the lookback
    assert checked >= 290


def test_only_the_accounts_whose_number_can_change_are_scored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 accounts of 10 points each at the default half-life (14 days): the whole number
    moves from 10 to 9 after ~1 day, so a scoring every hour for a day reads each account
    once or twice, not 24 times; leads expiring meanwhile change nothing of it."""
    t = LeadScoring(365 * DAY)
    for e in stage([ev(f"g{i}", "goal.converted", 0.5, session_id="s", goal="demo",
                       account_id=f"a{i}") for i in range(1_000)]):
        t.observe(e)
    scored = sums_counted(monkeypatch, t)
    shown = [t.scores(T0)]
    for e in stage([lead("old", -1_000 * 24, None)]):  # years old: the next expiry drops it
        t.observe(e)
    t.expire(T0 + HOUR_MS)
    assert "old" not in t.leads.data and len(t.accounts) == 1_000
    shown += [t.scores(T0 + h * HOUR_MS) for h in range(1, 40)]
    assert scored.count(H0) == 1_000  # the first scoring: every account
    assert len(scored) <= 3_000  # then each once as it nears 9.5, once after
    assert shown[0] == dict.fromkeys((f"a{i}" for i in range(1_000)), 10)
    assert set(shown[39].values()) == {9}  # 10 × 2^(-39/336) = 9.23
    assert shown[1:39] == [every_account(t, T0 + h * HOUR_MS) for h in range(1, 39)]


def test_a_restore_and_new_settings_score_every_account_again_and_expiry_ends_it() -> None:
    t = LeadScoring(365 * DAY)
    for e in stage([email(f"o{i}", "email.opened", 1 + i / 100, f"a{i % 7}")
                    for i in range(70)]):
        t.observe(e)
    at = T0 + 5 * HOUR_MS
    assert t.scores(at) == dict.fromkeys((f"a{i}" for i in range(7)), 10)
    again = LeadScoring(365 * DAY)
    again.scores(at)  # scored before its restore: nothing
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=LeadScoringState))
    assert again.scores(at + HOUR_MS) == t.scores(at + HOUR_MS)
    # 10 points 5 hours ago at a half-life of 2 hours: 1.8 (the board showed 10, due days on)
    t.set_config(replace(MqlConfig(), half_life_ms=2 * HOUR_MS))
    assert t.scores(at + HOUR_MS) == dict.fromkeys((f"a{i}" for i in range(7)), 2)
    t.expire(T0 + 500 * DAY)  # every account expires before it is due again
    assert len(t.accounts) == 0 and t.scores(T0 + 500 * DAY) == {}


def test_next_due_by_hand() -> None:
    # 10 points at hour 0, a half-life of 1,000 hours: 9.5 is reached after 74.0 hours
    assert next_due([0], 0, 5_000, 1_000.0, 10.0) == 74
    assert round(10 * 2 ** (-74 / 1_000)) == 10 and round(10 * 2 ** (-75 / 1_000)) == 9
    assert next_due([0], 0, 50, 1_000.0, 10.0) == 50  # it leaves the lookback first
    assert next_due([0, 20], 8, 50, 1_000.0, 10.0) == 20  # a later hour's points enter
    assert next_due([0], 8, 50, 1_000.0, 0.4) == 50  # shown as 0: only its hours matter
    assert next_due([], 8, 50, 1_000.0, 0.0) is None
    assert next_due([0], 0, 50, 1_000.0, 9.5000000001) == 1  # at the half point: next hour
