"""What the live `/dashboard` page shows: the catalog's thresholds, current totals, a short
history of closed windows per KPI (the trend lines), and engine health.

The page (dashboard.html, self-contained: no CDN, no network beyond this worker) polls
`/dashboard/state` once a second, and `/kpis` for its breakdown table and funnel.
"""

from __future__ import annotations

from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from metrics.catalog_types import parse_duration_ms

if TYPE_CHECKING:
    from metrics.catalog import Catalog

TREND_POINTS: Final = 30  # closed windows kept per KPI and window for the trend line


def catalog_meta(catalog: Catalog) -> list[dict[str, Any]]:
    out = []
    for kpi in catalog.kpis.values():
        alert = kpi.alert
        out.append({
            "kpi": kpi.name,
            "description": kpi.description,
            "unit": catalog.unit_label(kpi),
            "windows": sorted(kpi.windows, key=parse_duration_ms),
            "window_s": {w: parse_duration_ms(w) // 1000 for w in kpi.windows},
            "dims": sorted({d for b in kpi.breakdowns for d in b.split("+")}),
            "alert": None if alert is None else {
                "op": alert.op, "threshold": alert.threshold,
                "min_denominator": alert.min_denominator, "window": alert.window,
                "severity": alert.severity},
        })
    return out


class History:
    """The latest revision of the total of the last closed windows, per KPI and window."""

    def __init__(self, points: int = TREND_POINTS):
        self.points = points
        self._series: dict[tuple[str, str], deque[tuple[str, float | None]]] = {}

    def add(self, records: list[dict[str, Any]]) -> None:
        for rec in records:
            if rec["dims"]:
                continue
            key = (rec["kpi"], rec["window"])
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = deque(maxlen=self.points)
            point = (rec["end"], rec["value"])
            # a revision replaces its window's point; windows close in end order
            for i, (end, _) in enumerate(series):
                if end == rec["end"]:
                    series[i] = point
                    break
            else:
                series.append(point)

    def as_json(self) -> dict[str, dict[str, list[tuple[str, float | None]]]]:
        out: dict[str, dict[str, list[tuple[str, float | None]]]] = {}
        for (kpi, window), series in self._series.items():
            out.setdefault(kpi, {})[window] = list(series)
        return out


class RateMeter:
    """Events per second over the last few samples of a monotonic counter."""

    def __init__(self, span: int = 5):
        self._samples: deque[tuple[float, int]] = deque(maxlen=span + 1)

    def sample(self, t: float, total: int) -> None:
        self._samples.append((t, total))

    @property
    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def page() -> bytes:
    return resources.files("streams").joinpath("dashboard.html").read_bytes()
