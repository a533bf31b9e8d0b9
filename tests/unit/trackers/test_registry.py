"""One registry: the catalog's builtins, the engine's trackers and their state all come
from it."""

from __future__ import annotations

from metrics import catalog
from metrics.engine import KpiEngine
from metrics.trackers.registry import BUILTINS, MICRO_BUILTINS, TRACKERS
from tests.helpers import DEFAULT_CATALOG


def test_the_catalog_knows_exactly_the_registered_builtins() -> None:
    assert catalog.BUILTINS is BUILTINS
    assert set(BUILTINS) == {b for t in TRACKERS for b in t.builtins}
    assert {"won_amount", "won_amount_sq", "cycle_days_sum", "cycle_days_sq",
            "account_won_amount", "attributed_amount", "attributed_spend"} == MICRO_BUILTINS


def test_the_engine_runs_the_trackers_its_catalog_uses() -> None:
    from metrics.trackers.registry import TRACKER_OF

    engine = KpiEngine(DEFAULT_CATALOG)
    used = {TRACKER_OF[a.builtin].name for a in DEFAULT_CATALOG.aggregates.values()
            if a.builtin is not None}
    assert set(engine.trackers) == used
    # the default catalog counts email by send cohort: the unique-opener trackers are idle
    assert used == {t.name for t in TRACKERS} - {"unique_opens", "unique_clicks"}
    email_only = KpiEngine(DEFAULT_CATALOG.restrict(("email",)))
    assert set(email_only.trackers) == {"send_cohorts"}
    assert set(email_only.state_sizes()) >= {"send_cohorts", "dedup_ids"}
