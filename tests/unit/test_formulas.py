"""Every KPI formula of CONTRACT.md §2 on small hand-computed cases."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.helpers import ms, pick, replay

T0 = ms("2026-11-01T00:00:00+00:00")
MIN = 60_000
DAY = 86_400_000
_ids = itertools.count()


def ev(type_: str, at_ms: int, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"t{next(_ids)}", "type": type_, "ts": at_ms, **fields}


def email_events() -> list[dict[str, Any]]:
    out = []
    for i in range(10):
        seg = "cfo" if i < 4 else "engineer"
        out.append(ev("email.sent", T0 + i * 1000, campaign_id="c1", contact_id=f"p{i}",
                      segment=seg))
    for i in range(8):
        out.append(ev("email.delivered", T0 + MIN + i, campaign_id="c1", contact_id=f"p{i}"))
    out.append(ev("email.bounced", T0 + MIN, campaign_id="c1", contact_id="p8", bounce="hard"))
    out.append(ev("email.bounced", T0 + MIN, campaign_id="c1", contact_id="p9", bounce="soft"))
    # 3 unique openers, p0 opens twice; 1 clicker
    out.append(ev("email.opened", T0 + 2 * MIN, campaign_id="c1", contact_id="p0",
                  segment="cfo", client="mobile"))
    out.append(ev("email.opened", T0 + 3 * MIN, campaign_id="c1", contact_id="p0",
                  segment="cfo", client="mobile"))
    out.append(ev("email.opened", T0 + 2 * MIN, campaign_id="c1", contact_id="p1",
                  segment="cfo", client="desktop"))
    out.append(ev("email.opened", T0 + 4 * MIN, campaign_id="c1", contact_id="p5",
                  segment="engineer"))
    out.append(ev("email.clicked", T0 + 5 * MIN, campaign_id="c1", contact_id="p0"))
    out.append(ev("email.unsubscribed", T0 + 6 * MIN, campaign_id="c1", contact_id="p2"))
    return out


END_1H = "2026-11-01T01:00:00Z"


@pytest.fixture(scope="module")
def email_records() -> list[dict[str, Any]]:
    return replay(email_events())


@pytest.mark.parametrize(("kpi", "dims", "num", "den", "value"), [
    ("email_open_rate", {}, 3, 10, 0.3),
    ("email_open_rate", {"campaign_id": "c1"}, 3, 10, 0.3),
    ("email_open_rate", {"segment": "cfo"}, 2, 4, 0.5),
    ("email_open_rate", {"segment": "engineer"}, 1, 6, 1 / 6),
    ("email_click_rate", {}, 1, 3, 1 / 3),
    ("email_bounce_rate", {}, 2, 10, 0.2),
    ("email_hard_bounce_rate", {"campaign_id": "c1"}, 1, 10, 0.1),
    ("email_unsubscribe_rate", {}, 1, 8, 0.125),
    ("email_open_share", {"client": "mobile"}, 2, 4, 0.5),
    ("email_open_share", {"client": "unknown"}, 1, 4, 0.25),
    ("email_open_share", {}, 4, 4, 1.0),
])
def test_email_kpis(email_records: list[dict[str, Any]], kpi: str, dims: dict[str, str],
                    num: float, den: float, value: float) -> None:
    rec = pick(email_records, kpi, "1h", END_1H, **dims)
    assert (rec["numerator"], rec["denominator"]) == (num, den)
    assert rec["value"] == pytest.approx(value, rel=1e-12)
    assert rec["unit"] == "ratio" and rec["final"] is True


def test_open_rate_counts_each_contact_once_across_windows(
        email_records: list[dict[str, Any]]) -> None:
    # p0's second open (3 min) is not a new unique open in the 5m window ending 00:05
    rec = pick(email_records, "email_open_rate", "5m", "2026-11-01T00:05:00Z")
    assert rec["numerator"] == 3


def web_events() -> list[dict[str, Any]]:
    return [
        # s1: one page (bounce), organic
        ev("page.viewed", T0, session_id="s1", page="/", duration_s=10, channel="organic"),
        # s2: two pages 10 minutes apart, converts on demo, paid
        ev("page.viewed", T0 + MIN, session_id="s2", page="/", duration_s=20,
           channel="paid_search"),
        ev("page.viewed", T0 + 11 * MIN, session_id="s2", page="/pricing",
           channel="paid_search"),
        ev("goal.converted", T0 + 12 * MIN, session_id="s2", goal="demo"),
        # s3: the same id twice, 40 minutes apart: two single-page sessions
        ev("page.viewed", T0 + 2 * MIN, session_id="s3", page="/pricing", channel="organic"),
        ev("page.viewed", T0 + 42 * MIN, session_id="s3", page="/", channel="organic"),
        ev("cart.created", T0, cart_id="k1"), ev("cart.created", T0, cart_id="k2"),
        ev("cart.created", T0, cart_id="k3"), ev("cart.created", T0, cart_id="k4"),
        ev("order.placed", T0 + MIN, cart_id="k1", amount=250.5),
    ]


@pytest.fixture(scope="module")
def web_records() -> list[dict[str, Any]]:
    return replay(web_events())


@pytest.mark.parametrize(("kpi", "dims", "num", "den", "value"), [
    ("web_bounce_rate", {}, 3, 4, 0.75),
    ("web_bounce_rate", {"channel": "organic"}, 3, 3, 1.0),
    ("web_bounce_rate", {"channel": "paid_search"}, 0, 1, 0.0),
    ("web_conversion_rate", {}, 1, 4, 0.25),
    ("web_conversion_rate", {"goal": "demo"}, 1, 4, 0.25),
    ("web_conversion_rate", {"channel": "paid_search"}, 1, 1, 1.0),
    ("web_avg_time_on_page_seconds", {}, 30, 2, 15.0),
    ("web_avg_time_on_page_seconds", {"page": "/"}, 30, 2, 15.0),
    ("web_cart_abandonment_rate", {}, 3, 4, 0.75),
])
def test_web_kpis(web_records: list[dict[str, Any]], kpi: str, dims: dict[str, str],
                  num: float, den: float, value: float) -> None:
    rec = pick(web_records, kpi, "1h", END_1H, **dims)
    assert (rec["numerator"], rec["denominator"]) == (num, den)
    assert rec["value"] == pytest.approx(value, rel=1e-12)


def test_a_session_that_starts_with_its_goal_is_attributed_to_its_first_page_view() -> None:
    # the goal arrives (and happened) first: the page view after it still makes the session
    # single-page, attributed to the view's channel, and the views after that undo it
    recs = replay([
        ev("goal.converted", T0 + MIN, session_id="g1", goal="demo"),
        ev("page.viewed", T0 + 2 * MIN, session_id="g1", page="/", channel="referral"),
        ev("goal.converted", T0 + MIN, session_id="g2", goal="demo"),
        ev("page.viewed", T0 + 2 * MIN, session_id="g2", page="/", channel="email"),
        ev("page.viewed", T0 + 3 * MIN, session_id="g2", page="/pricing", channel="email"),
    ])
    rec = pick(recs, "web_bounce_rate", "1h", END_1H, channel="referral")
    assert (rec["numerator"], rec["denominator"]) == (1, 1)
    rec = pick(recs, "web_bounce_rate", "1h", END_1H, channel="email")
    assert (rec["numerator"], rec["denominator"]) == (0, 1)
    rec = pick(recs, "web_conversion_rate", "1h", END_1H, channel="referral")
    assert (rec["numerator"], rec["denominator"]) == (1, 1)


def test_social_engagement() -> None:
    recs = replay([
        ev("social.impressions", T0, network="linkedin", count=1000),
        ev("social.interaction", T0 + 1, network="linkedin", kind="like", count=20),
        ev("social.interaction", T0 + 2, network="linkedin", kind="share"),
        ev("social.impressions", T0, network="twitter", count=500),
        ev("social.interaction", T0 + 3, network="twitter", kind="click", count=4),
    ])
    rec = pick(recs, "social_engagement_rate", "1h", END_1H, network="linkedin")
    assert (rec["numerator"], rec["denominator"], rec["value"]) == (21, 1000, 0.021)
    rec = pick(recs, "social_engagement_rate", "1h", END_1H)
    assert (rec["numerator"], rec["denominator"]) == (25, 1500)


def crm_events() -> list[dict[str, Any]]:
    out = [
        ev("lead.created", T0, lead_id="l1", channel="email", campaign_id="c1"),
        ev("lead.created", T0, lead_id="l2", channel="email", campaign_id="c1"),
        ev("lead.created", T0, lead_id="l3", channel="events", campaign_id="c2"),
        ev("lead.created", T0, lead_id="l4", channel="events", campaign_id="c2"),
        ev("spend.recorded", T0, amount=500, channel="email", campaign_id="c1",
           category="content"),
        ev("spend.recorded", T0, amount=1000, channel="events", campaign_id="c2",
           category="events"),
    ]
    # d1 (l1, email) wins 1000 after 10 days; d3 (l3, events) wins 3000 after 20 days
    for deal, lead, won_day, amount in (("d1", "l1", 10, 1000), ("d3", "l3", 20, 3000)):
        for i, stage in enumerate(("lead", "mql", "sql", "opportunity", "proposal")):
            out.append(ev("deal.stage_changed", T0 + i * DAY + MIN, deal_id=deal,
                          stage=stage, lead_id=lead))
        out.append(ev("deal.stage_changed", T0 + won_day * DAY, deal_id=deal, stage="won",
                      amount=amount, lead_id=lead))
    out.append(ev("deal.stage_changed", T0 + MIN, deal_id="d2", stage="lead", lead_id="l2"))
    out.append(ev("deal.stage_changed", T0 + DAY, deal_id="d2", stage="mql", lead_id="l2"))
    out.append(ev("deal.stage_changed", T0 + 2 * DAY, deal_id="d2", stage="lost",
                  lead_id="l2"))
    for score in (10, 10, 9, 5):
        out.append(ev("survey.answered", T0 + 3 * DAY, score=score))
    return sorted(out, key=lambda e: e["ts"])


END_30D = "2026-11-22T00:00:00Z"  # covers 2026-10-23 .. 2026-11-22


@pytest.fixture(scope="module")
def crm_records() -> list[dict[str, Any]]:
    return replay(crm_events(), now_ms=T0 + 40 * DAY)


@pytest.mark.parametrize(("kpi", "dims", "num", "den", "value"), [
    ("leads", {}, 4, 1, 4),
    ("leads", {"channel": "email"}, 2, 1, 2),
    ("lead_to_customer_rate", {}, 2, 4, 0.5),
    ("lead_to_customer_rate", {"channel": "events"}, 1, 2, 0.5),
    ("deal_win_rate", {}, 2, 3, 2 / 3),
    ("deal_win_rate", {"channel": "email"}, 1, 2, 0.5),
    ("avg_deal_size", {}, 4000, 2, 2000),
    ("avg_deal_size", {"channel": "events"}, 3000, 1, 3000),
    ("sales_cycle_days", {}, 30, 2, 15),
    ("sales_cycle_days", {"channel": "email"}, 10, 1, 10),
    # opportunities x avg deal size x win rate / cycle = 2 x 2000 x 2/3 / 15
    ("sales_velocity", {}, 2 * 4000 * 2, 3 * 30, 2 * 2000 * (2 / 3) / 15),
    ("revenue_share", {"channel": "email"}, 1000, 4000, 0.25),
    ("revenue_share", {}, 4000, 4000, 1.0),
    ("cost_per_lead", {}, 1500, 4, 375),
    ("cost_per_lead", {"channel": "email"}, 500, 2, 250),
    ("cost_per_lead", {"campaign_id": "c2"}, 1000, 2, 500),
    ("cost_per_acquisition", {"channel": "email"}, 500, 1, 500),
    ("cost_per_acquisition", {}, 1500, 2, 750),
    ("romi", {"channel": "email"}, 500, 500, 1.0),
    ("romi", {"campaign_id": "c2"}, 2000, 1000, 2.0),
    ("romi", {}, 2500, 1500, 2500 / 1500),
    ("funnel_stage_conversion_rate", {"stage": "lead"}, 3, 3, 1.0),
    ("funnel_stage_conversion_rate", {"stage": "mql"}, 2, 3, 2 / 3),
    ("funnel_stage_conversion_rate", {"stage": "proposal"}, 2, 2, 1.0),
    ("nps", {}, 2, 4, 50.0),
    ("spend_category_share", {"category": "content"}, 500, 1500, 1 / 3),
    ("spend_category_share", {"category": "events"}, 1000, 1500, 2 / 3),
    ("spend_category_share", {}, 1500, 1500, 1.0),
])
def test_pipeline_and_roi_kpis(crm_records: list[dict[str, Any]], kpi: str,
                               dims: dict[str, str], num: float, den: float,
                               value: float) -> None:
    rec = pick(crm_records, kpi, "30d", END_30D, **dims)
    assert rec["numerator"] == pytest.approx(num, rel=1e-12)
    assert rec["denominator"] == pytest.approx(den, rel=1e-12)
    assert rec["value"] == pytest.approx(value, rel=1e-12)


def test_units_and_currency(crm_records: list[dict[str, Any]]) -> None:
    units = {r["kpi"]: r["unit"] for r in crm_records}
    assert units["cost_per_lead"] == "EUR"
    assert units["sales_cycle_days"] == "days"
    assert units["nps"] == "score"
    assert units["leads"] == "count"
    assert units["sales_velocity"] == "per_day"


def test_value_is_null_when_denominator_is_zero() -> None:
    # a send clicked without a tracked open (images blocked): click-to-open over no opens
    recs = replay([ev("email.sent", T0, campaign_id="c1", contact_id="p1"),
                   ev("email.clicked", T0 + MIN, campaign_id="c1", contact_id="p1")])
    rec = pick(recs, "email_click_rate", "1h", END_1H)
    assert (rec["numerator"], rec["denominator"], rec["value"]) == (1, 0, None)


def test_won_before_its_lead_arrives_is_reattributed() -> None:
    # within grace, the won deal arrives before its lead: attribution follows the lead
    events = [
        ev("deal.stage_changed", T0 + 10 * MIN, deal_id="d", stage="won", amount=100,
           lead_id="l"),
        ev("lead.created", T0, lead_id="l", channel="events"),
    ]
    recs = replay(events)
    rec = pick(recs, "avg_deal_size", "24h", "2026-11-01T01:00:00Z", channel="events")
    assert rec["numerator"] == 100
    assert pick(recs, "sales_cycle_days", "24h", "2026-11-01T01:00:00Z")["numerator"] == \
        pytest.approx(10 / 1440, abs=1e-6)


# ---- the compiled formulas equal the reference reading of the plan ------------------------

def _random_index(draw: Any, keys: list[tuple[str, str]]) -> dict[Any, dict[Any, int]]:
    from hypothesis import strategies as st

    from metrics.catalog import TOTAL

    amounts = st.integers(-3, 10**7) | st.sampled_from([0, 1, 10**6, 2**53 + 1])
    idx: dict[Any, dict[Any, int]] = {}
    for agg, b in keys:
        if draw(st.booleans()):
            continue  # an aggregate without input in the window
        if b == TOTAL:
            values: list[Any] = [TOTAL]
        elif "+" in b:
            values = [tuple(draw(st.sampled_from(["a", "b", "x\x1fy"])) for _ in b.split("+"))
                      for _ in range(draw(st.integers(0, 3)))]
        else:
            values = draw(st.lists(st.sampled_from(["a", "b", "unknown", "x\x1fy"]),
                                   max_size=3))
        idx[(agg, b)] = {v: draw(amounts) for v in values}
    return idx


def test_compiled_kpis_equal_the_reference_on_random_windows() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from metrics.catalog import load_catalog
    from metrics.formulas import compile_kpi, compute_kpi, micro_aggregates, plan_kpi

    catalog = load_catalog()
    micro = micro_aggregates(catalog)
    plans = {k.name: plan_kpi(catalog, k, micro) for k in catalog.kpis.values()}
    compiled = {name: compile_kpi(plan) for name, plan in plans.items()}

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(plans)), st.data())
    def check(name: str, data: st.DataObject) -> None:
        plan = plans[name]
        keys = sorted({t[0] for _, _, _, num, den in plan for f in num + den for t in f}
                      | {k for _, _, sources, _, _ in plan for k in sources})
        idx = _random_index(data.draw, keys)
        want = compute_kpi(plan, idx)
        got = compiled[name](idx)
        assert got == want
        for dims, (num, den) in got.items():  # bit-identical, not merely ==
            assert (num.hex(), den.hex()) == (want[dims][0].hex(), want[dims][1].hex())

    check()


def test_a_dimension_value_may_hold_any_character() -> None:
    """Breakdown values were once joined with \\x1f and split again at publish: a campaign id
    holding it made the publish step raise. Combined breakdowns keep a tuple instead."""
    from pathlib import Path

    import yaml

    from metrics.catalog import build_catalog

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "metrics" / "catalog.yaml")
                         .read_text())
    doc["kpis"]["email_open_rate"]["dims"].append("campaign_id+segment")
    catalog = build_catalog(doc)
    events = [ev("email.sent", T0, campaign_id="a\x1fb", contact_id="p1", segment="cfo"),
              ev("email.sent", T0, campaign_id="a", contact_id="p2", segment="b\x1fcfo")]
    for cat in (None, catalog):
        records = replay(events, cat) if cat is not None else replay(events)
        sent = {tuple(sorted(r["dims"].items())): r["denominator"] for r in records
                if r["kpi"] == "email_open_rate" and r["window"] == "5m"
                and r["start"] == "2026-10-31T23:56:00Z"}
        assert sent[()] == 2
        assert sent[(("campaign_id", "a\x1fb"),)] == 1
        assert sent[(("segment", "b\x1fcfo"),)] == 1
        if cat is not None:
            assert sent[(("campaign_id", "a\x1fb"), ("segment", "cfo"))] == 1
            assert sent[(("campaign_id", "a"), ("segment", "b\x1fcfo"))] == 1


def test_spend_without_a_category_counts_under_unknown() -> None:
    records = replay([ev("spend.recorded", T0, amount=300, channel="email", category="tools"),
                      ev("spend.recorded", T0 + MIN, amount=100, channel="email")],
                     now_ms=T0 + 40 * DAY)
    tools = pick(records, "spend_category_share", "24h", "2026-11-02T00:00:00Z",
                 category="tools")
    unknown = pick(records, "spend_category_share", "24h", "2026-11-02T00:00:00Z",
                   category="unknown")
    assert (tools["numerator"], tools["denominator"], tools["value"]) == (300, 400, 0.75)
    assert (unknown["numerator"], unknown["value"]) == (100, 0.25)
