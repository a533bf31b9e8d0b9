"""Campaign scorecards: every email KPI a campaign's lifetime tally can answer, since its first
send (CONTRACT.md §2 "Email rates by send cohort").

They are the catalog's own KPIs, computed from the send-cohort tallies instead of a window:
records with ``window: "lifetime"``, ``dims: {"campaign_id": …}``, ``start`` the campaign's
first send and ``end`` its latest event, ``final: false``. They go out with the open values
(`kpi-updates`, `/kpis`, the gauges); no alert reads them (alerts read their own window).

A KPI qualifies when each of its aggregates is a send-cohort builtin or the plain count of
``email.sent`` (no filter, no sum): open, click-to-open, click-through, undelivered, bounce,
hard bounce and unsubscribe rates in the shipped catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from metrics.catalog import Aggregate, Catalog
from metrics.constants import TOTAL
from metrics.formulas import Index, Rows
from metrics.records import iso_ms, make_record
from metrics.trackers.cohorts import SLOTS, SendCohorts

WINDOW: Final = "lifetime"
DIM: Final = "campaign_id"


def _slot(agg: Aggregate) -> int | None:
    """The tally slot an aggregate reads, or None when a tally cannot answer it."""
    if agg.builtin is not None:
        return SLOTS.index(agg.builtin) if agg.builtin in SLOTS else None
    plain = agg.sum_field is None and agg.has_field is None and not agg.where
    return 0 if agg.event == "email.sent" and plain else None


class Scorecards:
    """The catalog's KPIs a campaign tally answers, and their lifetime records."""

    def __init__(self, catalog: Catalog, kpi_rows: dict[str, Callable[[Index], Rows]]):
        self.catalog = catalog
        self.kpi_rows = kpi_rows
        slots = {n: _slot(a) for n, a in catalog.aggregates.items()}
        #: aggregate -> its slot, for the aggregates the qualifying KPIs read
        self.slots: dict[str, int] = {}
        #: the qualifying KPIs: broken down by campaign, every aggregate from a tally
        self.kpis = [k for k in catalog.kpis.values()
                     if DIM in k.breakdowns and k.aggregates()
                     and all(slots.get(a) is not None for a in k.aggregates())]
        for k in self.kpis:
            self.slots.update({a: s for a in k.aggregates() if (s := slots[a]) is not None})

    def records(self, trackers: Mapping[str, object], emitted_at: str) -> list[dict[str, Any]]:
        """One record per qualifying KPI and campaign with a send (none without the
        send-cohort tracker)."""
        cohorts = trackers.get(SendCohorts.name)
        if not self.kpis or not isinstance(cohorts, SendCohorts):
            return []
        tallies = cohorts.scorecards()
        sent = {c: t for c, t in tallies.items() if t.first}
        idx: Index = {}
        for agg, slot in self.slots.items():
            idx[(agg, DIM)] = {c: t.counts[slot] for c, t in sent.items()}
            idx[(agg, TOTAL)] = {TOTAL: sum(t.counts[slot] for t in sent.values())}
        out: list[dict[str, Any]] = []
        for kpi in self.kpis:
            rows = self.kpi_rows[kpi.name](idx)
            unit = self.catalog.unit_label(kpi)
            for dkey, (num, den) in sorted(rows.items()):
                dims = dict(dkey)
                if set(dims) != {DIM}:
                    continue  # per campaign only: a total over campaigns is no scorecard
                t = sent[dims[DIM]]
                out.append(make_record(kpi, unit, WINDOW, iso_ms(t.first), iso_ms(t.last),
                                       dims, float(num), float(den), False, 0, emitted_at))
        return out
