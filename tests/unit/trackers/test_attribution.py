"""Multi-touch attribution (metrics/trackers/attribution.py): a purchase's amount shared among
its account's touches in the lookback before it, under five models, each summing exactly to
the amount; checked by hand through replay, and order-independent in the tracker."""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec
import pytest

from metrics.events import Event, struct_of
from metrics.trackers.attribution import (
    MODELS,
    Attribution,
    AttributionState,
    credits,
    split,
    weights,
)
from metrics.trackers.base import Fact
from tests.helpers import HOUR, ms, pick, replay

DAY = 24 * HOUR
MICRO = 1_000_000
T0 = ms("2026-03-02T00:00:00+00:00")
NOW = T0 + 400 * DAY


def ev(eid: str, type_: str, at: float, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": type_, "ts": T0 + int(at * DAY), **fields}


#: account a1: an email click, a paid-search page view and a lead (campaigns e, w, l) in
#: the 90 days before its 3,000 order on day 100; one touch before the lookback and one
#: after the order, neither credited. Account a2 orders 500 with no touch at all.
JOURNEY = [
    ev("t0", "email.clicked", 5, campaign_id="old", contact_id="k", account_id="a1"),
    ev("t1", "email.clicked", 79, campaign_id="e", contact_id="k", account_id="a1"),
    ev("t2", "page.viewed", 89, session_id="s", page="/pricing", campaign_id="w",
       channel="paid_search", account_id="a1"),
    ev("t3", "lead.created", 99, lead_id="L", channel="events", campaign_id="l",
       account_id="a1"),
    ev("o1", "order.placed", 100, cart_id="c1", amount=3000, account_id="a1"),
    ev("t4", "page.viewed", 100.5, session_id="s2", page="/", campaign_id="late",
       account_id="a1"),
    ev("o2", "order.placed", 100.2, cart_id="c2", amount=500, account_id="a2"),
    # not touches: no campaign, no account
    ev("n1", "page.viewed", 99.5, session_id="s3", page="/", account_id="a1"),
    ev("n2", "email.clicked", 99.5, campaign_id="e", contact_id="k2"),
    ev("s1", "spend.recorded", 100.1, amount=1000, campaign_id="e", channel="email"),
]
END = "2026-06-11T00:00:00Z"  # the 24h window of day 100 (T0 + 101 days)


def test_every_model_credits_the_purchase_by_hand() -> None:
    records = replay(JOURNEY, now_ms=NOW)

    def credit(model: str, campaign: str) -> float:
        return float(pick(records, "attributed_revenue", "24h", END, model=model,
                          campaign_id=campaign)["value"])

    assert credit("first_touch", "e") == 3000
    assert credit("last_touch", "l") == 3000
    assert [credit("linear", c) for c in "ewl"] == [1000, 1000, 1000]
    assert [credit("position_based", c) for c in "ewl"] == [1200, 600, 1200]
    # time decay, half-life 7 days: the touches are 21, 11 and 1 days old
    w = [2 ** (-21 / 7), 2 ** (-11 / 7), 2 ** (-1 / 7)]
    for c, wi in zip("ewl", w, strict=True):
        assert credit("time_decay", c) == pytest.approx(3000 * wi / sum(w), abs=1e-6)
    for model in MODELS:  # the untouched order, in full; nothing for old or late touches
        assert credit(model, "unknown") == 500
        for r in records:
            if r["kpi"] == "attributed_revenue" and r["dims"].get("model") == model:
                assert r["dims"].get("campaign_id") not in ("old", "late")
    by_channel = pick(records, "attributed_revenue", "24h", END, model="linear",
                      channel="paid_search")
    assert by_channel["value"] == 1000
    total = pick(records, "attributed_revenue", "24h", END)
    assert total["value"] == 3500  # every model credits all of the revenue
    # ROMI per model sets its credits against the same spend: (3,000 - 1,000) / 1,000
    romi = pick(records, "attributed_romi", "24h", END, model="first_touch", campaign_id="e")
    assert (romi["numerator"], romi["denominator"], romi["value"]) == (2000, 1000, 2.0)
    linear = pick(records, "attributed_romi", "24h", END, model="linear", campaign_id="e")
    assert linear["value"] == 0.0


def test_credits_of_one_purchase_sum_exactly_to_its_amount() -> None:
    rng = random.Random(7)
    for n in (1, 2, 3, 7, 40):
        touches = [(f"c{i}", "web", sorted(T0 + rng.randrange(90 * DAY)
                                          for _ in range(rng.randrange(1, 4))))
                   for i in range(n)]
        amount = rng.randrange(1, 10**12)
        facts = credits(T0 + 90 * DAY, amount, touches, 7 * DAY)
        for model in MODELS:
            assert sum(v for _, _, dims, v in facts if dict(dims)["model"] == model) == amount


def test_model_weights() -> None:
    five = [(f"c{i}", "web", [i]) for i in range(5)]
    assert weights("position_based", five, 10, DAY) == [6, 1, 1, 1, 6]  # 40/20/40
    assert weights("position_based", five[:2], 10, DAY) == [1, 1]
    # c first and last, d between: 80 % and 20 %
    assert weights("position_based", [("c", "web", [0, 5]), ("d", "web", [3])], 10, DAY) == [
        4, 1]
    assert weights("first_touch", five, 10, DAY) == [1, 0, 0, 0, 0]
    assert weights("last_touch", five, 10, DAY) == [0, 0, 0, 0, 1]
    # ties: the first by campaign, the last by the last campaign
    tied = [("a", "web", [7]), ("b", "web", [7])]
    assert weights("first_touch", tied, 10, DAY) == [1, 0]
    assert weights("last_touch", tied, 10, DAY) == [0, 1]
    assert weights("linear", [("c", "web", [0, 1, 2]), ("d", "web", [3])], 10, DAY) == [3, 1]
    decay = weights("time_decay", [("c", "w", [0]), ("d", "w", [DAY])], 2 * DAY, DAY)
    assert decay == [2**30, 2**31]  # a half-life apart: half the weight
    assert split(100, [1, 1, 1]) == [34, 33, 33]
    assert split(7, [0, 1]) == [0, 7]


def test_touches_kept_packed_per_campaign_and_channel() -> None:
    """A busy account's state is 8 bytes a touch, not an object per touch."""
    t = Attribution(365 * DAY)
    for i in range(500):
        t.observe(touch(i, i / 1440, "x"))  # a touch a minute, one campaign
    day = t.touches.get(f"a|{T0 // DAY}")  # 500 minutes: one day's
    assert day is not None and len(day.groups) == 1 and len(day.groups[0].times) == 500 * 8
    got = facts_of([deal("d", 0.2, "won", 100)], t)  # after 289 of them
    assert got == {(T0 + int(0.2 * DAY), "attributed_amount",
                    (("campaign_id", "x"), ("channel", "web"), ("model", m))): 100 * MICRO
                   for m in MODELS}


class _Order(msgspec.Struct):
    amount: float
    account_id: str | None = None


class _Deal(msgspec.Struct):
    deal_id: str
    stage: str
    amount: float | None = None
    account_id: str | None = None


def touch(i: int, at: float, campaign: str) -> Event:
    data = struct_of("account.page_view")(event_id=f"t{i}", ts=0, session_id="s", page="/",
                                          campaign_id=campaign, account_id="a")
    return Event(f"t{i}", "account.page_view", T0 + int(at * DAY), "accounts", data)


def deal(eid: str, at: float, stage: str, amount: float | None = None) -> Event:
    return Event(eid, "account.deal", T0 + int(at * DAY), "accounts",
                 _Deal("D", stage, amount, "a"))


def facts_of(events: list[Event], t: Attribution | None = None) -> dict[Any, int]:
    tracker = t if t is not None else Attribution(365 * DAY)
    out: dict[Any, int] = {}
    facts: list[Fact] = []
    for e in events:
        facts += tracker.observe(e)
    for ts, b, dims, v in facts:
        out[(ts, b, dims)] = out.get((ts, b, dims), 0) + v
    return {k: v for k, v in out.items() if v}


#: a deal won on day 10, reopened and won again on day 30 with a new amount; touches before,
#: between and after
STORY = [touch(1, 1, "x"), deal("d1", 10, "won", 100), touch(2, 20, "y"),
         deal("d2", 25, "proposal"), deal("d3", 30, "won", 250), touch(3, 31, "z"),
         Event("o", "account.order", T0 + 15 * DAY, "accounts", _Order(40, "a"))]


def test_a_reopened_deal_is_credited_once_when_it_last_became_won() -> None:
    got = facts_of(STORY)
    at30 = {dict(d)["campaign_id"]: v for (ts, b, d), v in got.items()
            if ts == T0 + 30 * DAY and dict(d)["model"] == "linear"}
    assert at30 == {"x": 125 * MICRO, "y": 125 * MICRO}
    assert not [k for k in got if k[0] == T0 + 10 * DAY]  # its first win: taken back
    at15 = {dict(d)["campaign_id"]: v for (ts, b, d), v in got.items()
            if ts == T0 + 15 * DAY and dict(d)["model"] == "last_touch"}
    assert at15 == {"x": 40 * MICRO}


def test_any_arrival_order_gives_the_same_facts() -> None:
    expected = facts_of(STORY)
    rng = random.Random(3)
    orders = list(itertools.permutations(STORY))
    for order in rng.sample(orders, 300):
        assert facts_of(list(order)) == expected


def test_state_survives_a_snapshot_and_expires() -> None:
    t = Attribution(365 * DAY)
    facts_of(STORY[:2], t)
    again = Attribution(365 * DAY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=AttributionState))
    # restored, a touch before the won deal re-credits it
    moved = facts_of([touch(9, 5, "w")], again)
    linear = {dict(d)["campaign_id"]: v for (ts, b, d), v in moved.items()
              if dict(d)["model"] == "linear"}
    assert linear == {"x": -50 * MICRO, "w": 50 * MICRO}
    assert len(again) == 2 and len(again.touches) == 2  # the account, the deal; two days
    # the deal lasts the horizon after its last event; its account's touches the lookback
    # and twice the reach more (until configured, the reach is the horizon)
    again.expire(T0 + 10 * DAY + 365 * DAY + HOUR)
    assert len(again) == 1 and len(again.touches) == 2  # the account and its days
    again.expire(T0 + 10 * DAY + 2 * 365 * DAY + 90 * DAY + HOUR)
    assert len(again) == 0 and len(again.touches) == 0
