"""Aggregate updates: the fields an update reads, and dimension values (twins of the
generated code are checked in test_codegen.py)."""

from __future__ import annotations

from metrics.constants import UNKNOWN
from metrics.plans import apply_update, dim_value, fields_read
from tests.helpers import DEFAULT_CATALOG


def test_dimension_values_fold_missing_and_combine_as_tuples() -> None:
    get = {"campaign_id": "c", "segment": None}.get
    assert dim_value(get, ["campaign_id"]) == "c"
    assert dim_value(get, ["segment"]) == UNKNOWN
    assert dim_value(get, ["campaign_id", "segment"]) == ("c", UNKNOWN)


def test_an_update_counts_totals_and_breakdowns() -> None:
    aggs = [a for a in DEFAULT_CATALOG.aggregates.values() if a.event == "email.sent"]
    read = fields_read(aggs, DEFAULT_CATALOG.breakdowns)
    assert "campaign_id" in read and len(read) == len(set(read))
    data = type("D", (), {"campaign_id": "c", "segment": "cfo", "contact_id": "p"})()
    pane: dict = {}  # type: ignore[type-arg]
    apply_update(aggs, DEFAULT_CATALOG.breakdowns, pane, data)
    assert pane[("email_sent", "", "")] == 1 and pane[("email_sent", "campaign_id", "c")] == 1
