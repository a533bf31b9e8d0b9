"""The pipeline as a state machine: a deal's last stage decides won or lost (reopen), skipped
stages are passed through, a regression takes nothing back, an account's first won deal
makes a new customer, and none of it depends on the order events arrive in."""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec

from metrics.trackers.base import Fact
from metrics.trackers.pipeline import Deal, Pipeline, PipelineState

DAY = 86_400_000
DIMS = (("campaign_id", "camp"), ("channel", "paid_search"))


class _Deal(msgspec.Struct):
    deal_id: str = "D1"
    stage: str = "lead"
    amount: float | None = None
    lead_id: str | None = "L1"
    channel: str | None = None
    campaign_id: str | None = None
    account_id: str | None = None


def deal(stage: str, amount: float | None = None, **kw: Any) -> Any:
    return _Deal(stage=stage, amount=amount, **kw)


def totals(facts: list[Fact]) -> dict[tuple[int, str, Any], int]:
    """The net effect of a stream of facts: what the windows end up holding."""
    out: dict[tuple[int, str, Any], int] = {}
    for ts, b, dims, v in facts:
        out[(ts, b, dims)] = out.get((ts, b, dims), 0) + v
    return {k: v for k, v in out.items() if v}


def by_builtin(facts: list[Fact]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, b, _), v in totals(facts).items():
        out[b] = out.get(b, 0) + v
    return out


def stages(facts: list[Fact], builtin: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, b, dims), v in totals(facts).items():
        if b == builtin:
            stage = dict(dims)["stage"]
            out[stage] = out.get(stage, 0) + v
    return out


def run(steps: list[tuple[str, int, float | None]], lead_at: int | None = 0,
        **kw: Any) -> tuple[Pipeline, list[Fact]]:
    p = Pipeline(horizon_ms=400 * DAY)
    facts: list[Fact] = []
    if lead_at is not None:
        facts += p.lead("L1", lead_at, "paid_search", "camp")
    for stage, at, amount in steps:
        facts += p.deal(deal(stage, amount, **kw), at)
    return p, facts


def test_a_won_deal_counts_under_its_leads_channel_with_its_cycle() -> None:
    _, facts = run([("won", 10 * DAY, 5000.0)])
    net = totals(facts)
    assert net[(10 * DAY, "deals_won", DIMS)] == 1
    assert net[(10 * DAY, "won_amount", DIMS)] == 5_000_000_000
    assert net[(10 * DAY, "cycle_days_sum", DIMS)] == 10_000_000
    assert net[(10 * DAY, "new_customers", DIMS)] == 1


def test_won_lost_won_counts_won_once_with_the_latest_amount() -> None:
    """Issue 16: won -> lost -> won was counted won and lost (win rate 0.5) at 1000."""
    _, facts = run([("won", 1 * DAY, 1000.0), ("lost", 2 * DAY, None),
                    ("won", 3 * DAY, 5000.0)])
    net = by_builtin(facts)
    assert net["deals_won"] == 1 and net.get("deals_lost", 0) == 0
    assert net["won_amount"] == 5_000_000_000
    assert totals(facts)[(3 * DAY, "deals_won", DIMS)] == 1  # when it last became won
    assert net["new_customers"] == 1


def test_a_reopened_deal_leaves_lost_and_a_won_one_reopened_leaves_won() -> None:
    _, facts = run([("opportunity", DAY, None), ("lost", 2 * DAY, None),
                    ("opportunity", 3 * DAY, None)])
    net = by_builtin(facts)
    assert net.get("deals_lost", 0) == 0 and net["opportunities"] == 1
    _, facts = run([("proposal", DAY, None), ("won", 2 * DAY, 800.0), ("lost", 9 * DAY, None)])
    net = by_builtin(facts)
    assert net.get("deals_won", 0) == 0 and net.get("won_amount", 0) == 0
    assert net.get("new_customers", 0) == 0 and net["deals_lost"] == 1


def test_an_amount_update_on_a_won_deal_keeps_one_win_at_its_first_time() -> None:
    _, facts = run([("won", 5 * DAY, 1000.0), ("won", 6 * DAY, 1200.0)])
    net = totals(facts)
    assert by_builtin(facts)["deals_won"] == 1
    assert net[(5 * DAY, "won_amount", DIMS)] == 1_200_000_000


def test_skipped_stages_are_passed_through_so_conversion_never_exceeds_one() -> None:
    """lead -> opportunity passes mql and sql; won from opportunity passes proposal."""
    _, facts = run([("lead", DAY, None), ("opportunity", 2 * DAY, None),
                    ("won", 3 * DAY, 100.0)])
    entered, advanced = stages(facts, "deals_entered"), stages(facts, "deals_advanced")
    assert entered == {"lead": 1, "mql": 1, "sql": 1, "opportunity": 1, "proposal": 1,
                       "won": 1}
    assert advanced == {"lead": 1, "mql": 1, "sql": 1, "opportunity": 1, "proposal": 1}
    for stage, n in advanced.items():
        assert n <= entered[stage]
    net = totals(facts)
    assert net[(2 * DAY, "deals_entered", (*DIMS, ("stage", "sql")))] == 1  # passed then


def test_stages_below_the_first_one_are_not_entered() -> None:
    _, facts = run([("sql", DAY, None), ("proposal", 2 * DAY, None)])
    assert stages(facts, "deals_entered") == {"sql": 1, "opportunity": 1, "proposal": 1}
    assert stages(facts, "deals_advanced") == {"sql": 1, "opportunity": 1}
    _, facts = run([("won", DAY, 10.0)])  # created won: no open stage entered
    assert stages(facts, "deals_entered") == {"won": 1}
    assert stages(facts, "deals_advanced") == {}


def test_a_regression_takes_nothing_back_and_readvancing_counts_once() -> None:
    _, facts = run([("lead", DAY, None), ("opportunity", 2 * DAY, None),
                    ("sql", 3 * DAY, None), ("opportunity", 4 * DAY, None),
                    ("proposal", 5 * DAY, None)])
    assert stages(facts, "deals_entered") == {
        "lead": 1, "mql": 1, "sql": 1, "opportunity": 1, "proposal": 1}
    assert by_builtin(facts)["opportunities"] == 1
    assert totals(facts)[(2 * DAY, "opportunities", DIMS)] == 1


def test_an_accounts_first_won_deal_is_its_one_new_customer() -> None:
    p = Pipeline(horizon_ms=400 * DAY)
    facts = p.lead("L1", 0, "paid_search", "camp")
    facts += p.deal(deal("won", 100.0, deal_id="D2", account_id="acme"), 20 * DAY)
    facts += p.deal(deal("won", 100.0, deal_id="D1", account_id="acme"), 10 * DAY)
    facts += p.deal(deal("won", 100.0, deal_id="D3", account_id="other"), 15 * DAY)
    facts += p.deal(deal("won", 100.0, deal_id="D4", lead_id=None, channel="events"), 16 * DAY)
    net = {(ts, dict(d)["channel"]): v for (ts, b, d), v in totals(facts).items()
           if b == "new_customers"}
    # acme's earlier deal takes the count from the later one; a deal with no account is
    # its own customer
    assert net == {(10 * DAY, "paid_search"): 1, (15 * DAY, "paid_search"): 1,
                   (16 * DAY, "events"): 1}
    # acme's first deal reopened and lost: the second one becomes its first win
    facts += p.deal(deal("lost", None, deal_id="D1", account_id="acme"), 30 * DAY)
    firsts = {ts for (ts, b, _), v in totals(facts).items() if b == "new_customers" and v}
    assert firsts == {20 * DAY, 15 * DAY, 16 * DAY}


def test_a_deal_won_fifty_days_after_its_lead_keeps_the_leads_channel() -> None:
    """Issue 16: lead state expired after 30 days + 1 h, so the deal fell to 'unknown'."""
    p = Pipeline(horizon_ms=365 * DAY)
    p.lead("L1", 0, "paid_search", "camp")
    for day in range(1, 50):  # the watermark moves on every day
        p.expire(day * DAY)
    facts = p.deal(deal("won", 900.0), 50 * DAY)
    assert totals(facts)[(50 * DAY, "won_amount", DIMS)] == 900_000_000


def test_any_arrival_order_gives_the_same_net_facts() -> None:
    rnd = random.Random(16)
    names = ["lead", "mql", "sql", "opportunity", "proposal", "won", "lost"]
    for _ in range(300):
        steps = [(rnd.choice(names), rnd.randrange(1, 30) * DAY, float(rnd.randrange(1, 9)))
                 for _ in range(rnd.randrange(1, 6))]
        results = set()
        for order in itertools.islice(itertools.permutations(steps), 24):
            _, facts = run([(s, at, a if s == "won" else None) for s, at, a in order],
                           account_id="acme")
            results.add(tuple(sorted(totals(facts).items())))
        assert len(results) == 1, steps
        net = by_builtin(facts)
        assert net.get("deals_won", 0) + net.get("deals_lost", 0) <= 1
        assert all(v >= 0 for v in totals(facts).values())


def test_state_round_trips_with_the_lead_links() -> None:
    p = Pipeline(horizon_ms=400 * DAY)
    p.deal(deal("opportunity"), DAY)
    r = Pipeline(horizon_ms=400 * DAY)
    r.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(p.snapshot()), type=PipelineState))
    assert r.deals_by_lead == {"L1": {"D1"}}
    # the lead arriving after the restore re-attributes the deal
    out = r.lead("L1", 0, "events", "c2")
    assert any(f[2] == (("campaign_id", "c2"), ("channel", "events")) for f in out)


def test_a_format_1_deal_is_read_and_folded_into_its_history() -> None:
    """Before the state machine a deal kept its first entry per stage; a stored one is
    migrated on load, and its next event retracts exactly what it contributed."""

    class OldDeal(msgspec.Struct):
        entries: dict[str, tuple[int, int]]
        fallback: tuple[int, str, str] | None
        lead_id: str | None
        last_ts: int

    old = OldDeal({"opportunity": (DAY, 0), "won": (2 * DAY, 1_000_000_000)},
                  (DAY, "web", "c"), None, 2 * DAY)
    loaded = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=Deal)
    p = Pipeline(horizon_ms=400 * DAY)
    before = p._deal_facts(Deal([(DAY, 3, 0), (2 * DAY, 5, 1_000_000_000)], (DAY, "web", "c"),
                                None, None, 2 * DAY))[0]
    p.deals.replace({"D1": (loaded, before)})
    p.loaded()
    assert loaded.history == [(DAY, 3, 0), (2 * DAY, 5, 1_000_000_000)] and not loaded.entries
    out = p.deal(deal("lost", lead_id=None), 3 * DAY)
    net = by_builtin(before + out)
    assert net.get("deals_won", 0) == 0 and net["deals_lost"] == 1
