"""The catalog's model: durations, the formula grammar, metric names."""

from __future__ import annotations

import pytest

from metrics.catalog_types import Term, metric_name, parse_duration_ms, parse_formula
from tests.helpers import DEFAULT_CATALOG


def test_durations_and_formulas_parse_and_refuse_clearly() -> None:
    assert parse_duration_ms("5m") == 300_000 and parse_duration_ms("7d") == 7 * 86_400_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("5 minutes")
    assert parse_formula("a * (b - c@total)") == ((Term(1, "a"),),
                                                  (Term(1, "b"), Term(-1, "c", True)))
    for bad in ("a +", "(a", "a b", "A", ""):
        with pytest.raises(ValueError):
            parse_formula(bad)


def test_money_metrics_carry_the_currency() -> None:
    kpis = DEFAULT_CATALOG.kpis
    assert metric_name(DEFAULT_CATALOG, kpis["cost_per_lead"]) == "kpi_cost_per_lead_eur"
    assert metric_name(DEFAULT_CATALOG, kpis["email_open_rate"]) == "kpi_email_open_rate"
