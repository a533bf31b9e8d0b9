"""KPI output records (CONTRACT.md §3) and their keys."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from metrics.catalog import Kpi

_ISO_CACHE: dict[int, str] = {}


def iso_boundary(ts_ms: int) -> str:
    """iso_ms for window bounds, which repeat across every KPI record of a window."""
    text = _ISO_CACHE.get(ts_ms)
    if text is None:
        if len(_ISO_CACHE) > 100_000:
            _ISO_CACHE.clear()
        text = _ISO_CACHE[ts_ms] = iso_ms(ts_ms)
    return text


def iso_ms(ts_ms: int) -> str:
    """Epoch ms -> '2026-11-22T08:00:00Z' (with .mmm when not a whole second)."""
    dt = datetime.fromtimestamp(ts_ms / 1000, UTC)
    if ts_ms % 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def dims_text(dims: dict[str, str]) -> str:
    return ";".join(f"{k}={dims[k]}" for k in sorted(dims))


def window_key(rec: dict[str, Any]) -> str:
    """Key of a closed-window record on `kpi-windows`: {kpi}|{window}|{dims}|{end}."""
    return f"{rec['kpi']}|{rec['window']}|{dims_text(rec['dims'])}|{rec['end']}"


def update_key(rec: dict[str, Any]) -> str:
    """Key of an open-window record on `kpi-updates`: {kpi}|{window}|{dims}."""
    return f"{rec['kpi']}|{rec['window']}|{dims_text(rec['dims'])}"


def make_record(kpi: Kpi, unit: str, window: str, start: str, end: str, dims: dict[str, str],
                num: float, den: float, final: bool, revision: int, emitted_at: str
                ) -> dict[str, Any]:
    """A CONTRACT.md §3 record; ``start`` and ``end`` already in ISO form (iso_boundary).
    Whole numbers are written as ints (exact below 2**53; infinities and NaN stay floats).
    Runs for every output record: positional arguments, nothing called but for ratios,
    which carry their 95 % interval (``lower``, ``upper``: ``interval``)."""
    rec = {
        "kpi": kpi.name,
        "window": window,
        "start": start,
        "end": end,
        "dims": dims,
        "value": None if den == 0 else kpi.scale * num / den,
        "numerator": int(num) if num.is_integer() and -_EXACT < num < _EXACT else num,
        "denominator": int(den) if den.is_integer() and -_EXACT < den < _EXACT else den,
        "unit": unit,
        "final": final,
        "revision": revision,
        "emitted_at": emitted_at,
    }
    if unit == "ratio":
        rec["lower"], rec["upper"] = interval(kpi, num, den)
    return rec


Z95: Final = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def interval(kpi: Kpi, num: float, den: float) -> tuple[float | None, float | None]:
    """The KPI's 95 % confidence interval: Wilson score for a proportion of counts (exact
    at 0 and 1, never outside [0, 1], sound on small counts), None where the KPI is not a
    proportion, the denominator is 0 or the counts are not one (more successes than
    trials: a stateful count corrected later)."""
    if kpi.interval != "wilson" or den <= 0 or not 0 <= num <= den:
        return None, None
    z2 = Z95 * Z95
    p = num / den
    center = (p + z2 / (2 * den)) / (1 + z2 / den)
    half = Z95 * math.sqrt(p * (1 - p) / den + z2 / (4 * den * den)) / (1 + z2 / den)
    return max(0.0, center - half) * kpi.scale, min(1.0, center + half) * kpi.scale


_EXACT: Final = float(2**53)
