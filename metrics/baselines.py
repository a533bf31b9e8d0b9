"""Seasonal baselines and anomaly alerts, for KPIs without a fixed threshold (a catalog
KPI's `anomaly:`), published on `kpi-alerts` beside the threshold breaches.

Per KPI, dimension value and hour of the week (the *slot* of a window's end), a weighted
mean and variance of the windows ending on that hour in earlier weeks: what this hour of
this weekday usually reads. Each slot learns once a week, from the window ending exactly on
its hour, so a change under way never widens the band it is judged against. Its weight is
the running average's (1/n) until it falls to ``alpha``: the first weeks count equally,
then recent weeks more. A closed window is anomalous when its value lies outside the band
``mean ± band × sd`` of its slot (once the slot has ``min_samples`` weeks behind it, and the
volume guard met), sd the larger of the slot's and the average over the series' hours (a
few weeks' spread of one hour is too thin to trust alone). The breach fires once the
window ends have stayed outside for the alert's `for` (event time) and resolves at the
first window back inside. A lasting change of level becomes the new normal at the pace
``alpha`` sets.

Evaluated on a window's first publication (revision 0): its revisions leave the baseline
alone, so a window counts once. The baselines and breaches under way are part of the shard's
committed state (``snapshot``/``restore``).
"""

from __future__ import annotations

import math
from typing import Any, Final

import msgspec

from metrics.alerts import camel
from metrics.catalog import Catalog, Kpi, parse_duration_ms
from metrics.constants import DAY_MS, HOUR_MS
from metrics.records import dims_text, iso_ms
from metrics.timestamps import parse_ts

Record = dict[str, Any]
WEEK_MS: Final = 7 * DAY_MS


def anomaly_name(kpi: Kpi) -> str:
    """leads -> LeadsAnomaly."""
    return camel(kpi.name) + "Anomaly"


def slot_of(end_ms: int) -> int:
    """The hour of the week a window ending at ``end_ms`` belongs to (its last hour)."""
    return int((end_ms - 1) % WEEK_MS // HOUR_MS)


class Slot(msgspec.Struct, array_like=True, gc=False):
    """An exponentially weighted mean and variance, and how many windows made them."""
    n: int
    mean: float
    var: float


class Held(msgspec.Struct, array_like=True, gc=False):
    """An anomaly under way: its first window end outside the band, whether it fired, and
    on which side of the band it is."""
    since: int
    firing: bool
    below: bool


class BaselineState(msgspec.Struct, gc=False):
    #: (kpi, dims text, slot) -> its baseline
    slots: list[tuple[str, str, int, Slot]] = []
    #: (kpi, dims text) -> the anomaly under way
    held: list[tuple[str, str, Held]] = []


class Baselines:
    """The anomaly alerts of a catalog's KPIs, on their closed windows."""

    def __init__(self, catalog: Catalog):
        self.kpis = {k.name: k for k in catalog.kpis.values() if k.anomaly is not None}
        self.for_ms = {n: parse_duration_ms(k.anomaly.for_) for n, k in self.kpis.items()
                       if k.anomaly is not None}
        self.slots: dict[tuple[str, str, int], Slot] = {}
        self.held: dict[tuple[str, str], Held] = {}

    def band(self, kpi: Kpi, dims: str, end_ms: int) -> tuple[float, float, float] | None:
        """(baseline, low, high) of the slot a window ending at ``end_ms`` falls in, once
        it has enough history."""
        a = kpi.anomaly
        assert a is not None
        s = self.slots.get((kpi.name, dims, slot_of(end_ms)))
        if s is None or s.n < a.min_samples:
            return None
        spreads = [o.var for (k, d, _), o in self.slots.items()
                   if k == kpi.name and d == dims and o.n >= 2]
        pooled = sum(spreads) / len(spreads) if spreads else 0.0
        half = a.band * math.sqrt(max(s.var, pooled))
        return s.mean, s.mean - half, s.mean + half

    def observe(self, records: list[Record], emitted_at: str) -> list[Record]:
        """Anomaly events (firing, resolved) the closed windows in ``records`` cause."""
        out: list[Record] = []
        for rec in records:
            kpi = self.kpis.get(rec["kpi"])
            if kpi is None or not rec["final"] or rec["revision"]:
                continue
            a = kpi.anomaly
            assert a is not None
            if rec["window"] != a.window or rec["value"] is None or (
                    rec["dims"] and not a.by_dims):
                continue
            end = parse_ts(rec["end"]) or 0
            dims = dims_text(rec["dims"])
            value = float(rec["value"])
            band = self.band(kpi, dims, end)
            guarded = not kpi.denominator or rec["denominator"] >= a.min_denominator
            outside = band is not None and guarded and not band[1] <= value <= band[2]
            held = self.held.get((kpi.name, dims))
            if outside and band is not None:
                if held is None:
                    held = self.held[(kpi.name, dims)] = Held(end, False, value < band[1])
                if not held.firing and end - held.since >= self.for_ms[kpi.name]:
                    held.firing = True
                    out.append(_event(kpi, rec, band, "firing", held, emitted_at))
            elif held is not None and (band is None or guarded):
                del self.held[(kpi.name, dims)]
                if held.firing:
                    out.append(_event(kpi, rec, band, "resolved", held, emitted_at))
            if end % HOUR_MS == 0:  # once a week per slot: the window ending on its hour
                self._learn(kpi, dims, end, value)
        return out

    def _learn(self, kpi: Kpi, dims: str, end: int, value: float) -> None:
        a = kpi.anomaly
        assert a is not None
        key = (kpi.name, dims, slot_of(end))
        s = self.slots.get(key)
        if s is None:
            self.slots[key] = Slot(1, value, 0.0)
            return
        s.n += 1
        w = max(a.alpha, 1 / s.n)  # the running mean's weight first, then alpha's
        d = value - s.mean
        s.mean += w * d
        s.var = (1 - w) * (s.var + w * d * d)

    def snapshot(self) -> BaselineState:
        return BaselineState([(k, d, n, s) for (k, d, n), s in sorted(self.slots.items())],
                             [(k, d, h) for (k, d), h in sorted(self.held.items())])

    def restore(self, state: BaselineState) -> None:
        """Continue from a committed state; the KPIs the catalog no longer watches drop."""
        self.slots = {(k, d, n): s for k, d, n, s in state.slots if k in self.kpis}
        self.held = {(k, d): h for k, d, h in state.held if k in self.kpis}


def _event(kpi: Kpi, rec: Record, band: tuple[float, float, float] | None, state: str,
           held: Held, emitted_at: str) -> Record:
    a = kpi.anomaly
    assert a is not None
    base, low, high = band if band is not None else (None, None, None)
    below = held.below  # the side it left by, also when it resolves
    return {"alert": anomaly_name(kpi), "kind": "anomaly", "kpi": kpi.name,
            "window": rec["window"], "dims": rec["dims"], "value": rec["value"],
            "lower": rec.get("lower"), "upper": rec.get("upper"),
            "threshold": low if below else high, "direction": "below" if below else "above",
            "baseline": base, "band_lower": low, "band_upper": high,
            "severity": a.severity, "state": state, "since": iso_ms(held.since),
            "emitted_at": emitted_at}
