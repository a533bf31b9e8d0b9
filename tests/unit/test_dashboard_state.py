"""The /dashboard page's data: trend history of closed totals, event rate, catalog meta."""

from __future__ import annotations

from typing import Any

from streams.dashboard import History, RateMeter, catalog_meta, page
from tests.helpers import DEFAULT_CATALOG


def rec(end: str, value: float | None, dims: dict[str, str] | None = None,
        kpi: str = "email_open_rate", window: str = "5m") -> dict[str, Any]:
    return {"kpi": kpi, "window": window, "end": end, "value": value, "dims": dims or {}}


def test_history_keeps_the_last_totals_and_revisions_replace_their_window() -> None:
    h = History(points=3)
    h.add([rec("T1", 0.2), rec("T1", 0.9, {"campaign_id": "c"}), rec("T2", 0.21)])
    h.add([rec("T1", 0.19)])  # a revision of an older window
    assert h.as_json()["email_open_rate"]["5m"] == [("T1", 0.19), ("T2", 0.21)]
    h.add([rec("T3", 0.1), rec("T4", None)])
    assert h.as_json()["email_open_rate"]["5m"] == [("T2", 0.21), ("T3", 0.1), ("T4", None)]


def test_rate_meter_over_the_sampled_span() -> None:
    m = RateMeter(span=2)
    assert m.rate == 0.0
    m.sample(0.0, 0)
    m.sample(1.0, 100)
    m.sample(2.0, 300)
    assert m.rate == 150.0
    m.sample(3.0, 300)  # the oldest sample drops out
    assert m.rate == 100.0


def test_catalog_meta_carries_thresholds_and_windows_in_order() -> None:
    meta = {m["kpi"]: m for m in catalog_meta(DEFAULT_CATALOG)}
    assert set(meta) == set(DEFAULT_CATALOG.kpis)
    assert meta["email_open_rate"]["alert"] == {"op": "below", "threshold": 0.15,
                                                "min_denominator": 200.0, "window": "5m",
                                                "severity": "warning"}
    assert meta["romi"]["windows"] == ["24h", "7d", "30d"]
    assert meta["cost_per_lead"]["unit"] == "EUR"
    assert meta["leads"]["alert"] is None


def test_the_page_is_self_contained() -> None:
    html = page().decode()
    assert "/dashboard/state" in html and "/kpis" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<script src" not in html and "<link rel=\"stylesheet" \
        not in html
