"""The Prometheus exposition of KPI values (CONTRACT.md §6), on a fresh registry."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from metrics.engine import EngineConfig, KpiEngine
from streams.exporter import Exposition, ShellStats, make_registry
from tests.helpers import DEFAULT_CATALOG


def rec(kpi: str, dims: dict[str, str], num: float, den: float, window: str = "1h"
        ) -> dict[str, Any]:
    return {"kpi": kpi, "window": window, "dims": dims, "numerator": num,
            "denominator": den, "value": None if den == 0 else num / den}


Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def samples(records: list[dict[str, Any]]) -> Samples:
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig())
    return scrape(make_registry(DEFAULT_CATALOG, lambda: [(engine, ShellStats(kpis=records))])[0])


def scrape(registry: CollectorRegistry) -> Samples:
    """metric name -> labels set (sorted, empty ones left out) -> value"""
    out: Samples = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if v))
            out.setdefault(s.name, {})[labels] = s.value
    return out


def test_one_gauge_per_kpi_with_window_dims_and_denominator() -> None:
    m = samples([rec("email_open_rate", {}, 3, 10),
                 rec("email_open_rate", {"campaign_id": "c1"}, 2, 4)])
    assert m["kpi_email_open_rate"][(("window", "1h"),)] == 0.3
    assert m["kpi_email_open_rate"][(("campaign_id", "c1"), ("window", "1h"))] == 0.5
    assert m["kpi_email_open_rate_denominator"][(("window", "1h"),)] == 10


def test_money_kpis_carry_the_currency_and_null_values_are_not_exported() -> None:
    m = samples([rec("cost_per_lead", {}, 500, 2), rec("email_click_rate", {}, 0, 0)])
    assert m["kpi_cost_per_lead_eur"][(("window", "1h"),)] == 250
    assert "kpi_email_click_rate" not in m
    assert m["kpi_email_click_rate_denominator"][(("window", "1h"),)] == 0


def test_cardinality_is_capped_and_the_rest_summed_into_other() -> None:
    cap = DEFAULT_CATALOG.max_series
    records = [rec("email_open_rate", {"campaign_id": f"c{i:03d}"}, i, 10 * i + 10)
               for i in range(cap + 20)]
    m = samples(records)["kpi_email_open_rate_denominator"]
    assert len(m) == cap + 1
    kept = {dict(k)["campaign_id"] for k in m}
    assert "c000" not in kept and f"c{cap + 19:03d}" in kept  # largest denominators kept
    folded = [r for r in records if r["dims"]["campaign_id"] not in kept]
    other = (("campaign_id", "_other"), ("window", "1h"))
    assert m[other] == sum(r["denominator"] for r in folded)
    value = samples(records)["kpi_email_open_rate"][other]
    assert value == sum(r["numerator"] for r in folded) / sum(r["denominator"] for r in folded)


def test_engine_health_metrics_are_exported() -> None:
    m = samples([])
    assert m["kpi_engine_events_duplicate_total"][()] == 0


def test_labelled_counters_exist_at_zero_before_anything_happens() -> None:
    """A rule on kpi_engine_events_invalid_total{reason} or a panel on events by type
    evaluates from the first scrape, not from the first bad event (issue 18)."""
    m = samples([])
    invalid = m["kpi_engine_events_invalid_total"]
    for reason in ("not_json", "unknown_type", "future_ts", "too_large", "currency"):
        assert invalid[(("reason", reason),)] == 0
    events = m["kpi_engine_events_total"]
    assert events[(("topic", "email-events"), ("type", "email.opened"))] == 0
    assert events[(("topic", "crm-events"), ("type", "deal.stage_changed"))] == 0
    assert m["kpi_engine_events_late_total"][(("topic", "spend-events"),)] == 0


def test_a_worker_owning_several_shards_exports_their_sum() -> None:
    """One engine per shard (streams/worker.py): series of different shards sit side by
    side, and counters they share (duplicates, invalid reasons, lag) add up."""
    parts = []
    for i, (name, fams) in enumerate(sorted(DEFAULT_CATALOG.shards().items())):
        engine = KpiEngine(DEFAULT_CATALOG.restrict(fams), EngineConfig())
        engine.duplicates_total = i + 1
        fam = fams[0]
        engine.late_total[fam] = 10 * (i + 1)
        engine.watermarks[fam].value = 1_000 * (i + 1)
        stats = ShellStats(invalid={"not_json": 1, name: 2}, lag={f"{fam}-events": i},
                           kpis=[rec("email_open_rate", {}, 3, 10)] if fam == "email" else [])
        parts.append((engine, stats))
    m = scrape(make_registry(DEFAULT_CATALOG, lambda: parts)[0])
    assert m["kpi_engine_events_duplicate_total"][()] == 1 + 2 + 3 + 4 + 5
    assert m["kpi_engine_events_invalid_total"][(("reason", "not_json"),)] == 5
    assert m["kpi_engine_events_invalid_total"][(("reason", "web"),)] == 2
    # the accounts stage's lateness under its internal topic
    assert m["kpi_engine_events_late_total"] == {
        (("topic", "kpi-account-events"),): 10, (("topic", "crm-events"),): 20,
        (("topic", "email-events"),): 30, (("topic", "social-events"),): 40,
        (("topic", "spend-events"),): 0, (("topic", "web-events"),): 50}
    assert m["kpi_engine_watermark_seconds"][(("topic", "web-events"),)] == 5.0
    assert m["kpi_engine_consumer_lag"][(("topic", "social-events"),)] == 3
    assert m["kpi_email_open_rate"][(("window", "1h"),)] == 0.3


def test_the_exposition_renders_once_per_interval_however_many_scrape() -> None:
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig())
    stats = ShellStats(kpis=[rec("email_open_rate", {}, 1, 4)])
    collected = []

    def parts() -> list[tuple[KpiEngine, ShellStats]]:
        collected.append(1)
        return [(engine, stats)]

    now = [100.0]
    cache = Exposition(make_registry(DEFAULT_CATALOG, parts)[0], 1.0, clock=lambda: now[0])
    first = cache.text()
    stats.kpis = [rec("email_open_rate", {}, 3, 4)]
    assert all(cache.text() == first for _ in range(200)) and len(collected) == 1
    now[0] += 1.0  # the next emit interval: the new value shows
    assert open_rates(cache.text()) == [0.75] and len(collected) == 2
    assert open_rates(first) == [0.25]


def open_rates(text: bytes) -> list[float]:
    return [s.value for fam in text_string_to_metric_families(text.decode())
            if fam.name == "kpi_email_open_rate" for s in fam.samples]


def test_ratio_kpis_export_their_interval_beside_the_value() -> None:
    def with_bounds(r: dict[str, Any]) -> dict[str, Any]:
        from metrics.records import interval

        r["lower"], r["upper"] = interval(DEFAULT_CATALOG.kpis[r["kpi"]], r["numerator"],
                                          r["denominator"])
        return r

    m = samples([with_bounds(rec("email_open_rate", {}, 2132, 10000))])
    lbl = (("window", "1h"),)
    assert round(m["kpi_email_open_rate_lower"][lbl], 4) == 0.2053
    assert round(m["kpi_email_open_rate_upper"][lbl], 4) == 0.2213
    assert "kpi_cost_per_lead_eur_lower" not in samples([rec("cost_per_lead", {}, 500, 2)])
