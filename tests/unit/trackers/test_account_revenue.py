"""The accounts stage's won deals: counted as the pipeline counts them (the last stage
decides, once, with the latest amount, at the time the deal last became won), whatever
order the stage events arrive in."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec

from metrics.events import Event
from metrics.trackers.account_revenue import AccountRevenue, AccountRevenueState
from metrics.trackers.base import Fact

DAY = 86_400_000
MICRO = 1_000_000


class _Deal(msgspec.Struct):
    deal_id: str
    stage: str
    amount: float | None = None


def step(ts: int, deal_id: str, stage: str, amount: float | None = None) -> Event:
    return Event(f"{deal_id}-{ts}", "account.deal", ts, "accounts",
                 _Deal(deal_id, stage, amount))


def totals(facts: list[Fact]) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for ts, b, _, v in facts:
        out[(ts, b)] = out.get((ts, b), 0) + v
    return {k: v for k, v in out.items() if v}


def run(events: list[Event], tracker: AccountRevenue | None = None) -> dict[Any, int]:
    t = tracker if tracker is not None else AccountRevenue(365 * DAY)
    facts: list[Fact] = []
    for ev in events:
        facts += t.observe(ev)
    return totals(facts)


REOPENED = [step(1 * DAY, "D", "proposal"), step(2 * DAY, "D", "won", 3000),
            step(3 * DAY, "D", "proposal"), step(4 * DAY, "D", "won", 4000)]


def test_a_reopened_deal_counts_once_with_its_latest_amount_when_it_last_became_won() -> None:
    assert run(REOPENED) == {(4 * DAY, "account_won_amount"): 4000 * MICRO,
                             (4 * DAY, "account_won_deals"): 1}


def test_a_deal_won_then_lost_counts_nothing() -> None:
    assert run([step(DAY, "L", "won", 500), step(2 * DAY, "L", "lost")]) == {}


def test_any_arrival_order_gives_the_same_facts() -> None:
    expected = run(REOPENED)
    for order in itertools.permutations(REOPENED):
        assert run(list(order)) == expected


def test_state_survives_a_snapshot_and_expires_after_the_horizon() -> None:
    t = AccountRevenue(30 * DAY)
    run(REOPENED[:2], t)
    again = AccountRevenue(30 * DAY)
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=AccountRevenueState))
    # restored, the deal's history goes on: lost now takes its win back
    assert run([step(3 * DAY, "D", "lost")], again) == {
        (2 * DAY, "account_won_amount"): -3000 * MICRO, (2 * DAY, "account_won_deals"): -1}
    assert len(again) == 1
    again.expire(3 * DAY + 30 * DAY + 3_600_000)
    assert len(again) == 0
