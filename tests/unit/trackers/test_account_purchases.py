"""Accounts' purchases (metrics/trackers/account_purchases.py): distinct purchasing accounts
per window and RFM segments, valued when the window is published; customer lifetime value,
purchase frequency and RFM segment shares built on them, checked by hand through replay."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from metrics.events import Event
from metrics.trackers.account_purchases import (
    AccountPurchases,
    AccountPurchasesState,
    segment,
)
from tests.helpers import HOUR, ms, pick, replay
from tests.unit.trackers.test_attribution import _Deal, _Order

DAY = 24 * HOUR
T0 = ms("2026-03-02T00:00:00+00:00")
NOW = T0 + 400 * DAY


def order(eid: str, at: float, amount: float, account: str | None = None) -> dict[str, Any]:
    extra = {"account_id": account} if account else {}
    return {"event_id": eid, "type": "order.placed", "ts": T0 + int(at * DAY),
            "cart_id": eid, "amount": amount, **extra}


def stage(eid: str, at: float, deal: str, stage_: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": "deal.stage_changed", "ts": T0 + int(at * DAY),
            "deal_id": deal, "stage": stage_, **fields}


#: A buys twice, B once and wins a deal, C's deal is won then lost, one order names no
#: account (its own account)
PURCHASES = [
    order("o1", 1, 1000, "A"), order("o2", 2, 500, "A"), order("o3", 3, 1500, "B"),
    stage("d1", 4, "D", "won", amount=3000, account_id="B"),
    stage("e1", 5, "E", "won", amount=2000, account_id="C"), stage("e2", 6, "E", "lost"),
    order("o4", 10, 100),
]


def test_lifetime_value_and_purchase_frequency_by_hand() -> None:
    records = replay(PURCHASES, now_ms=NOW)
    end = "2026-03-13T00:00:00Z"  # the 30 days before day 11
    freq = pick(records, "purchase_frequency", "30d", end)
    assert (freq["numerator"], freq["denominator"]) == (5, 3)  # 5 purchases, 3 accounts
    ltv = pick(records, "customer_lifetime_value", "30d", end)
    # revenue 6,100 over 3 accounts in 30 days: x 365/30 a year, x 3 years
    assert ltv["numerator"] == 6100
    assert ltv["denominator"] == pytest.approx(3 * 30 / 365)
    assert ltv["value"] == pytest.approx(6100 / 3 * 365 / 30 * 3)
    assert ltv["unit"] == "EUR"
    # a day with A's one order: one purchase by one account
    day1 = pick(records, "purchase_frequency", "24h", "2026-03-04T00:00:00Z")
    assert (day1["numerator"], day1["denominator"]) == (1, 1)
    # LTV is read over 30 days only (a day's rate, annualized, says little)
    assert not [r for r in records if r["kpi"] == "customer_lifetime_value"
                and r["window"] != "30d"]


def test_a_late_purchase_revises_the_windows_holding_it() -> None:
    """C orders on day 3.5, read after day 10: the day's window was final with B alone."""
    late = [*PURCHASES, order("o5", 3.5, 700, "C")]
    records = replay(late, now_ms=NOW)
    versions = [(r["revision"], r["numerator"], r["denominator"]) for r in records
                if r["kpi"] == "purchase_frequency" and r["window"] == "24h"
                and r["end"] == "2026-03-06T00:00:00Z" and not r["dims"]]
    assert versions == [(0, 1, 1), (1, 2, 2)]
    # C joins the active accounts of the 30 days (not closed when the order came)
    assert pick(records, "purchase_frequency", "30d", "2026-03-13T00:00:00Z"
                )["denominator"] == 4


def events() -> list[Event]:
    return [Event("o1", "account.order", T0 + DAY, "accounts", _Order(5, "A")),
            Event("o2", "account.order", T0 + 2 * DAY, "accounts", _Order(5, "B")),
            Event("d1", "account.deal", T0 + 3 * DAY, "accounts", _Deal("D", "won", 9, "A")),
            Event("d2", "account.deal", T0 + 4 * DAY, "accounts", _Deal("D", "proposal")),
            Event("d3", "account.deal", T0 + 5 * DAY, "accounts", _Deal("D", "won", 9, "C"))]


def values(t: AccountPurchases) -> list[dict[Any, float]]:
    return [{(b, dims): v for b, dims, v in t.window_values(T0 + d * DAY, T0 + (d + 1) * DAY)}
            for d in range(7)] + [{(b, dims): v for b, dims, v in
                                  t.window_values(T0, T0 + 6 * DAY)}]


def test_any_arrival_order_gives_the_same_window_values() -> None:
    t = AccountPurchases(365 * DAY)
    for e in events():
        assert t.observe(e) == []
    expected = values(t)
    # the deal counts once, when it last became won (day 5), for its smallest account
    assert [v[("active_accounts", ())] for v in expected] == [0, 1, 1, 0, 0, 1, 0, 2]
    for perm in itertools.permutations(events()):
        again = AccountPurchases(365 * DAY)
        for e in perm:
            again.observe(e)
        assert values(again) == expected


def test_state_survives_a_snapshot_and_expires() -> None:
    t = AccountPurchases(365 * DAY)
    for e in events():
        t.observe(e)
    again = AccountPurchases(365 * DAY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=AccountPurchasesState))
    assert values(again) == values(t)
    assert len(again) == 4  # the deal, two orders and the won deal's purchase
    again.expire(T0 + 5 * DAY + 2 * 365 * DAY + HOUR)  # unconfigured: twice the horizon
    assert len(again) == 0 and again.window_values(T0, T0 + 6 * DAY)[0] == (
        "active_accounts", (), 0)


#: days before the moment RFM is read, and amounts: A buys often and lately, B lately, C
#: once lately, D often long ago, E once long ago
RFM_STORY = {"A": [(1, 100), (10, 100), (20, 100)], "B": [(2, 1000), (40, 1000)],
             "C": [(5, 50)], "D": [(100, 10), (120, 10), (150, 10), (200, 10)],
             "E": [(300, 5000)]}
AT = T0 + 400 * DAY


def rfm_orders() -> list[dict[str, Any]]:
    events = [order(f"{a}{i}", (AT - T0) / DAY - days, amount, a)
              for a, buys in RFM_STORY.items() for i, (days, amount) in enumerate(buys)]
    return sorted(events, key=lambda e: e["ts"])


def test_rfm_scores_and_segments_by_hand() -> None:
    t = AccountPurchases(365 * DAY)
    for e in rfm_orders():
        t.observe(Event(e["event_id"], "account.order", e["ts"], "accounts",
                        _Order(e["amount"], e["account_id"])))
    got = {a: (x.r, x.f, x.m, x.segment) for a, x in t.rfm(AT).items()}
    # recency: E oldest (1) .. A newest (5); frequency: C and E tie at 1, B 3, A 4, D 5;
    # monetary: D 40, C 50, A 300, B 2,000, E 5,000
    assert got == {"A": (5, 4, 3, "champions"), "B": (4, 3, 4, "loyal"),
                   "C": (3, 1, 2, "potential"), "D": (2, 5, 1, "at_risk"),
                   "E": (1, 1, 5, "lost")}
    assert (t.rfm(AT)["D"].recency_days, t.rfm(AT)["B"].monetary) == (100.0, 2000.0)
    # a year on from E's order, E is out of the horizon
    assert "E" not in t.rfm(AT + 66 * DAY)


def test_rfm_segment_share_by_hand() -> None:
    records = replay(rfm_orders(), now_ms=AT + 400 * DAY)
    end = "2027-04-06T00:00:00Z"  # AT
    shares = {seg: pick(records, "rfm_segment_share", "30d", end, rfm_segment=seg)
              for seg in ("champions", "loyal", "potential", "at_risk", "lost")}
    assert {s: (r["numerator"], r["denominator"]) for s, r in shares.items()} == {
        s: (1, 5) for s in shares}
    assert not [r for r in records if r["kpi"] == "rfm_segment_share"
                and r["window"] != "30d"]


def test_the_segment_map_covers_every_score_pair() -> None:
    cells = {(r, f): segment(r, f) for r in range(1, 6) for f in range(1, 6)}
    assert set(cells.values()) == {"champions", "loyal", "new", "potential", "at_risk",
                                   "hibernating", "lost"}
    assert (cells[(5, 5)], cells[(5, 1)], cells[(1, 5)], cells[(2, 1)], cells[(1, 1)]) == (
        "champions", "new", "at_risk", "hibernating", "lost")


def test_rfm_asked_again_at_the_same_moment_follows_every_purchase_in_between() -> None:
    """The account records and the 30-day window of the same end ask ``rfm`` in turn: the
    second is answered from the first while no purchase came or went, never after."""
    t = AccountPurchases(365 * DAY)
    for e in rfm_orders():
        t.observe(Event(e["event_id"], "account.order", e["ts"], "accounts",
                        _Order(e["amount"], e["account_id"])))
    first = t.rfm(AT)
    assert t.rfm(AT) is first  # nothing new: not ranked again
    assert set(t.rfm(AT + DAY)) == set(first) and t.rfm(AT + DAY) is not first
    # a late order before AT: F joins, and the ranks move
    t.observe(Event("f1", "account.order", AT - DAY, "accounts", _Order(9000, "F")))
    joined = t.rfm(AT)
    assert "F" in joined and joined["F"].m == 5 and joined["E"].m == 4
    # a won deal counts, then leaves when it is lost
    t.observe(Event("g1", "account.deal", AT - 2 * DAY, "accounts",
                    _Deal("G", "won", 7, "G")))
    assert "G" in t.rfm(AT)
    t.observe(Event("g2", "account.deal", AT - DAY, "accounts", _Deal("G", "lost")))
    assert "G" not in t.rfm(AT)
    # a restore replaces the purchases: asked again, the restored ones only
    again = AccountPurchases(365 * DAY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=AccountPurchasesState))
    assert set(again.rfm(AT)) == set(t.rfm(AT))
    again.restore(AccountPurchases(365 * DAY).snapshot())  # none held
    assert again.rfm(AT) == {}
    # purchases expired: gone from the answer at the same moment
    t.expire(AT + 2 * 365 * DAY)
    assert t.rfm(AT) == {}
