"""Per-account scores (metrics/account_scores.py): what `kpi-accounts` and /accounts carry, a
record per account whose scores changed, and a last one when it is no longer scored."""

from __future__ import annotations

from metrics.account_scores import AccountScores
from metrics.events import Event
from metrics.trackers.account_purchases import AccountPurchases
from tests.unit.trackers.test_account_purchases import AT, DAY, rfm_orders
from tests.unit.trackers.test_attribution import _Order


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
        "rfm_segment": "champions", "emitted_at": "now"}
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
                        "rfm_segment": None, "emitted_at": "later"}
    assert "E" not in scores.latest and set(scores.latest) == {"A", "B", "C", "D"}
    assert all(out[a]["as_of"] == "2027-06-15T00:00:00Z" for a in out)
