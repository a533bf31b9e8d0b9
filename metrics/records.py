"""KPI output records (CONTRACT.md §3) and their keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
