"""Tracker facts land on every aggregate built on their builtin, under each breakdown."""

from __future__ import annotations

from metrics.facts import FactRouter
from metrics.windows import FamilyWindows
from tests.helpers import DEFAULT_CATALOG


def test_a_fact_lands_on_its_total_and_each_breakdown_value() -> None:
    router = FactRouter(DEFAULT_CATALOG)
    keys = router.keys_of("cohort_opened", (("campaign_id", "c1"), ("segment", "cfo")))
    names = {k[0] for k in keys}
    assert names == {a.name for a in DEFAULT_CATALOG.aggregates.values()
                     if a.builtin == "cohort_opened"}
    assert ("cohort_opened", "", "") in keys or any(k[1] == "" for k in keys)
    assert any(k[2] == "c1" for k in keys) and any(k[2] == "cfo" for k in keys)
    assert router.keys_of("no_such_builtin", ()) == []


def test_facts_at_the_frontier_go_to_panes_and_a_retraction_cancels() -> None:
    router = FactRouter(DEFAULT_CATALOG)
    fw = FamilyWindows(DEFAULT_CATALOG.families["email"])
    fw.start(0)
    dims = (("campaign_id", "c"), ("segment", "s"))
    router.apply(fw, [(60_000, "cohort_opened", dims, 1)])
    pane = fw.panes[60_000]
    assert pane and all(v == 1 for v in pane.values())
    router.apply(fw, [(60_000, "cohort_opened", dims, -1)])
    assert all(v == 0 for v in fw.panes[60_000].values())
