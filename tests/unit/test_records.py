"""KPI records (CONTRACT.md §3) and their topic keys."""

from __future__ import annotations

import pytest

from metrics.records import iso_ms, make_record, update_key, window_key
from tests.helpers import DEFAULT_CATALOG

KPI = DEFAULT_CATALOG.kpis["email_open_rate"]


def test_a_record_has_the_contract_fields_and_null_when_nothing_was_sent() -> None:
    rec = make_record(KPI, "ratio", "1h", "2026-11-22T07:00:00Z", "2026-11-22T08:00:00Z",
                      {"campaign_id": "c"}, 2132.0, 10000.0, True, 0, iso_ms(1))
    assert rec["value"] == 0.2132 and rec["numerator"] == 2132 and type(rec["numerator"]) is int
    assert rec["emitted_at"] == "1970-01-01T00:00:00.001Z"
    empty = make_record(KPI, "ratio", "1h", "a", "b", {}, 0.0, 0.0, True, 0, "t")
    assert empty["value"] is None
    huge = make_record(KPI, "ratio", "1h", "a", "b", {}, 2.0**60, 1.0, True, 0, "t")
    assert type(huge["numerator"]) is float  # past 2**53 a float stays a float


def test_keys_sort_dims() -> None:
    rec = {"kpi": "k", "window": "5m", "dims": {"segment": "s", "campaign_id": "c"},
           "end": "E"}
    assert window_key(rec) == "k|5m|campaign_id=c;segment=s|E"
    assert update_key(rec) == "k|5m|campaign_id=c;segment=s"


def test_ratio_records_carry_a_wilson_interval() -> None:
    from metrics.records import interval

    kpi = DEFAULT_CATALOG.kpis["email_open_rate"]
    rec = make_record(kpi, "ratio", "1h", "a", "b", {}, 2132.0, 10000.0, True, 0, "t")
    # Wilson score, 95 %, for 2132 / 10000 (computed by hand from the formula)
    assert round(rec["lower"], 4) == 0.2053 and round(rec["upper"], 4) == 0.2213
    assert rec["lower"] < rec["value"] < rec["upper"]
    # bounded and not degenerate at the edges, wide on few trials
    lo, hi = interval(kpi, 0.0, 5.0)
    assert lo == 0.0 and hi is not None and 0.4 < hi < 0.45  # 0 of 5: upper 0.4345
    lo, hi = interval(kpi, 5.0, 5.0)
    assert hi == 1.0 and lo is not None and 0.56 < lo < 0.57
    assert interval(kpi, 1.0, 0.0) == (None, None)  # nothing sent
    assert interval(kpi, 3.0, 2.0) == (None, None)  # not a proportion
    # money ratios carry the fields, without an interval; other units have none
    romi = DEFAULT_CATALOG.kpis["romi"]
    r = make_record(romi, "ratio", "30d", "a", "b", {}, 5.0, 2.0, True, 0, "t")
    assert r["lower"] is None and r["upper"] is None
    deal = DEFAULT_CATALOG.kpis["avg_deal_size"]  # a mean: its interval from its squares
    r = make_record(deal, "EUR", "30d", "a", "b", {}, 5.0, 2.0, True, 0, "t")
    assert r["lower"] is None and r["upper"] is None  # no squares given
    r = make_record(deal, "EUR", "30d", "a", "b", {}, 5.0, 2.0, True, 0, "t", 13.0)
    # 2 and 3: mean 2.5, s² = 0.5, half-width 1.96 · 0.5
    assert r["lower"] == pytest.approx(2.5 - 0.979981992) and r["upper"] > 2.5
    social = DEFAULT_CATALOG.kpis["social_engagement_rate"]  # a sum of integer counts
    assert interval(social, 30.0, 1000.0)[0] is not None


def test_a_cost_per_count_carries_the_counts_exact_poisson_interval() -> None:
    """Spend is known, leads are counted: CPL's interval is the spend over the 95 % interval
    of the lead count (exact Garwood values: 10 -> 4.7954..18.3904, 1 -> 0.0253..5.5716)."""
    from metrics.records import poisson_interval

    assert [round(v, 4) for v in poisson_interval(10)] == [4.7954, 18.3904]
    assert [round(v, 4) for v in poisson_interval(1)] == [0.0253, 5.5716]
    assert [round(v, 2) for v in poisson_interval(100)] == [81.36, 121.63]
    lo, hi = poisson_interval(1000)  # beyond 100: Byar's approximation, continuous
    assert 938.9 < lo < 939.1 and 1063.9 < hi < 1064.0
    cpl = DEFAULT_CATALOG.kpis["cost_per_lead"]
    rec = make_record(cpl, "EUR", "24h", "a", "b", {}, 5000.0, 10.0, True, 0, "t")
    assert rec["value"] == 500
    assert round(rec["lower"], 2) == round(5000 / 18.3904, 2)
    assert round(rec["upper"], 2) == round(5000 / 4.7954, 2)
    none = make_record(cpl, "EUR", "24h", "a", "b", {}, 5000.0, 0.0, True, 0, "t")
    assert none["value"] is None and none["lower"] is None and none["upper"] is None
    assert {k for k, v in DEFAULT_CATALOG.kpis.items() if v.interval == "poisson"} == {
        "cost_per_lead", "cost_per_acquisition"}
