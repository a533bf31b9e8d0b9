"""KPI output records (CONTRACT.md §3) and their keys."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final

import orjson

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


def window_message(rec: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of a closed-window record on `kpi-windows`, to be held until sent."""
    return window_key(rec).encode(), held_json(rec)


def held_json(rec: dict[str, Any]) -> bytes:
    """A record's JSON to be held, copied out of orjson's buffer: orjson shrinks a ~1 KB
    block to the record's ~300 bytes, and thousands of those held between other objects
    left the heap full of holes no later block fits (a 6-day backlog's worker grew from
    ~600 MB to 960 MB)."""
    return bytes(memoryview(orjson.dumps(rec)))


def update_key(rec: dict[str, Any]) -> str:
    """Key of an open-window record on `kpi-updates`: {kpi}|{window}|{dims}."""
    return f"{rec['kpi']}|{rec['window']}|{dims_text(rec['dims'])}"


def make_record(kpi: Kpi, unit: str, window: str, start: str, end: str, dims: dict[str, str],
                num: float, den: float, final: bool, revision: int, emitted_at: str,
                squares: float | None = None) -> dict[str, Any]:
    """A CONTRACT.md §3 record; ``start`` and ``end`` already in ISO form (iso_boundary).
    Whole numbers are written as ints (exact below 2**53; infinities and NaN stay floats).
    Runs for every output record: positional arguments, nothing called but for ratios and
    costs per count, which carry their 95 % interval (``lower``, ``upper``: ``interval``)."""
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
    if kpi.interval == "normal":
        rec["lower"], rec["upper"] = mean_interval(num, den, squares, kpi.scale)
    elif unit == "ratio" or kpi.interval:
        rec["lower"], rec["upper"] = interval(kpi, num, den)
    return rec


Z95: Final = 1.959963984540054  # the normal quantile of a two-sided 95 % interval


def interval(kpi: Kpi, num: float, den: float) -> tuple[float | None, float | None]:
    """The KPI's 95 % confidence interval: Wilson score for a proportion of counts (exact
    at 0 and 1, never outside [0, 1], sound on small counts); for a cost per counted thing
    (``poisson``: spend / leads), the known cost over the count's Poisson interval. None
    where neither applies, the denominator is 0 or the counts are not a proportion (more
    successes than trials: a stateful count corrected later)."""
    if kpi.interval == "poisson" and den > 0 and num >= 0:
        low, high = poisson_interval(den)
        return num / high * kpi.scale, num / low * kpi.scale
    if kpi.interval != "wilson" or den <= 0 or not 0 <= num <= den:
        return None, None
    z2 = Z95 * Z95
    p = num / den
    center = (p + z2 / (2 * den)) / (1 + z2 / den)
    half = Z95 * math.sqrt(p * (1 - p) / den + z2 / (4 * den * den)) / (1 + z2 / den)
    return max(0.0, center - half) * kpi.scale, min(1.0, center + half) * kpi.scale


def mean_interval(total: float, n: float, squares: float | None, scale: float = 1.0
                  ) -> tuple[float | None, float | None]:
    """95 % interval of a mean from the sum, count and sum of squares of what it averages:
    mean ± z·s/√n with s² the sample variance. None below two values or without squares."""
    if squares is None or n < 2:
        return None, None
    mean = total / n
    var = max(0.0, (squares - total * mean) / (n - 1))  # rounding can dip below 0
    half = Z95 * math.sqrt(var / n)
    return (mean - half) * scale, (mean + half) * scale


def poisson_interval(count: float) -> tuple[float, float]:
    """95 % interval of a Poisson mean from one observed count > 0: exact (Garwood) up to
    100, Byar's approximation beyond (within 0.1 % of exact there)."""
    n = round(count)
    if n < 1:
        return 0.0, _exact_upper(0)
    if n <= 100:
        return _exact_interval(n)
    x, z, x1 = float(n), Z95, n + 1.0
    return (x * (1 - 1 / (9 * x) - z / (3 * math.sqrt(x))) ** 3,
            x1 * (1 - 1 / (9 * x1) + z / (3 * math.sqrt(x1))) ** 3)


@lru_cache(maxsize=128)
def _exact_interval(n: int) -> tuple[float, float]:
    # the means at which seeing n or more (lower), n or fewer (upper) has 2.5 % chance
    return _solve(lambda m: _poisson_cdf(n - 1, m) - 0.975, 0.0, float(n)), _exact_upper(n)


def _exact_upper(n: int) -> float:
    return _solve(lambda m: _poisson_cdf(n, m) - 0.025, float(n), n + 10 * math.sqrt(n) + 10)


def _poisson_cdf(k: int, mean: float) -> float:
    term = total = math.exp(-mean)
    for i in range(1, k + 1):
        term *= mean / i
        total += term
    return total


def _solve(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The root of a decreasing ``f`` between ``lo`` and ``hi``, by bisection."""
    for _ in range(60):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_EXACT: Final = float(2**53)
