"""Per-account scores (metrics/account_scores.py): what `kpi-accounts` and /accounts carry, a
record per account whose scores changed, and a last one when it is no longer scored."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from metrics.account_scores import AccountScores
from metrics.catalog_types import MqlConfig
from metrics.events import Event, struct_of
from metrics.trackers.account_purchases import AccountPurchases
from metrics.trackers.lead_scoring import LeadScoring
from tests.helpers import HOUR
from tests.unit.trackers.test_account_purchases import AT, DAY, rfm_orders
from tests.unit.trackers.test_attribution import _Order
from tests.unit.trackers.test_score_board import every_account


def purchases() -> AccountPurchases:
    t = AccountPurchases(365 * DAY)
    for e in rfm_orders():
        t.observe(Event(e["event_id"], "account.order", e["ts"], "accounts",
                        _Order(e["amount"], e["account_id"])))
    return t


def test_a_record_per_changed_account_and_none_when_nothing_changed() -> None:
    t, scores = purchases(), AccountScores("EUR")
    first = dict(scores.update(t, AT, "now"))
    assert sorted(first) == ["A", "B", "C", "D", "E"]
    assert first["A"] == {
        "account_id": "A", "as_of": "2027-04-06T00:00:00Z",
        "last_purchase": "2027-04-05T00:00:00Z", "frequency": 3, "monetary": 300.0,
        "currency": "EUR", "recency_score": 5, "frequency_score": 4, "monetary_score": 3,
        "rfm_segment": "champions", "lifetime_value": 900.0, "lead_score": 0,
        "emitted_at": "now"}
    assert scores.update(t, AT, "again") == []  # not a newer moment
    assert scores.update(t, AT + 3_600_000, "an hour on") == []  # nothing changed
    assert scores.latest["A"] is first["A"]


def test_a_change_and_an_account_leaving_the_horizon() -> None:
    t, scores = purchases(), AccountScores("EUR")
    scores.update(t, AT, "now")
    # 70 days on E's only order is past the 365 days: E is no longer scored, and the
    # others' ranks change (four accounts: quintiles of four)
    out = dict(scores.update(t, AT + 70 * DAY, "later"))
    assert out["E"] == {"account_id": "E", "as_of": "2027-06-15T00:00:00Z",
                        "rfm_segment": None, "lead_score": None, "emitted_at": "later"}
    assert "E" not in scores.latest and set(scores.latest) == {"A", "B", "C", "D"}
    assert all(out[a]["as_of"] == "2027-06-15T00:00:00Z" for a in out)


def test_lead_scores_whole_points_and_engaged_accounts_without_purchases() -> None:
    """A's lifetime value is its year's purchases times the three years assumed; an account
    with engagement and no purchase is scored for its engagement only; a record follows a
    change of the whole-number score, not the decay within it."""
    t, scoring, scores = purchases(), LeadScoring(365 * DAY), AccountScores("EUR", 3)
    for i, (account, n) in enumerate([("A", 4), ("Z", 30)]):
        for j in range(n):  # goal conversions of 10 points, an hour before AT
            scoring.observe(Event(f"g{i}-{j}", "account.goal", AT - HOUR, "accounts",
                                  struct_of("account.goal")(
                                      event_id="x", ts=0, session_id="s", goal="demo",
                                      account_id=account)))
    first = dict(scores.update(t, AT, "now", scoring))
    assert first["A"]["lead_score"] == 40  # 39.92: 40 points an hour old
    assert first["A"]["lifetime_value"] == 900.0 and first["A"]["rfm_segment"] == "champions"
    assert first["Z"] == {"account_id": "Z", "as_of": "2027-04-06T00:00:00Z",
                          "last_purchase": None, "frequency": None, "monetary": None,
                          "recency_score": None, "frequency_score": None,
                          "monetary_score": None, "rfm_segment": None,
                          "lifetime_value": None, "currency": "EUR", "lead_score": 299,
                          "emitted_at": "now"}
    # two hours on: A 39.75 is still 40, Z 298.15 is no longer 299 (299.38)
    assert [a for a, _ in scores.update(t, AT + 2 * HOUR, "later", scoring)] == ["Z"]
    # 90 days on, the points are past the lookback: Z is no longer scored
    gone = dict(scores.update(t, AT + 91 * DAY, "gone", scoring))
    assert gone["Z"] == {"account_id": "Z", "as_of": "2027-07-06T00:00:00Z",
                         "rfm_segment": None, "lead_score": None, "emitted_at": "gone"}


def test_records_follow_every_change_of_the_whole_numbers_at_every_hour() -> None:
    """Engagement over 40 accounts for 10 days at a 3-hour half-life (whole numbers move
    most hours), purchases beside: each hour's records are exactly the accounts whose lead
    score (scoring every account) or RFM changed, and /accounts holds every account's
    latest, as when every account was compared every hour."""
    t, scores = purchases(), AccountScores("EUR")
    scoring = LeadScoring(365 * DAY)
    scoring.set_config(replace(MqlConfig(), half_life_ms=3 * HOUR, lookback_ms=24 * HOUR))
    rng = random.Random(3)
    start = AT - 5 * DAY
    shown: dict[str, Any] = {}
    for h in range(10 * 24):
        for i in range(rng.randrange(8)):
            account = f"a{rng.randrange(40)}"
            scoring.observe(Event(f"g{h}-{i}", "account.goal", start + h * HOUR + i, "accounts",
                                  struct_of("account.goal")(
                                      event_id="x", ts=0, session_id="s", goal="demo",
                                      account_id=account)))
        at = start + h * HOUR + HOUR - 1
        out = dict(scores.update(t, at, "x", scoring))
        every = every_account(scoring, at)
        rfm = t.rfm(at)
        now = {a: (every.get(a), None if a not in rfm else (
            rfm[a].last_ts, rfm[a].frequency, rfm[a].monetary, rfm[a].r, rfm[a].f, rfm[a].m))
               for a in every.keys() | rfm.keys()}
        assert set(out) == {a for a in now.keys() | shown.keys()
                            if now.get(a) != shown.get(a)}, h
        shown = now
        assert {a: r["lead_score"] or None for a, r in scores.latest.items()} == {
            a: v[0] for a, v in now.items()}
