"""Means carry a 95 % interval (issue 18): mean ± z·s/√n from the window's sum, count and
sum of squares (the KPI's `spread`), checked against hand computation."""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from metrics.catalog import build_catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.errors import CatalogError
from metrics.events import Event, parse_event
from metrics.records import Z95
from tests.helpers import DEFAULT_CATALOG, ms, replay
from tests.tools import ROOT

T0 = ms("2026-11-02T10:00:00+00:00")
DAY = 86_400_000


def total(records: list[dict[str, Any]], kpi: str, window: str) -> dict[str, Any]:
    (rec,) = [r for r in records if r["kpi"] == kpi and r["window"] == window
              and r["dims"] == {} and r["final"]][-1:]
    return rec


def normal(values: list[float]) -> tuple[float, float]:
    n, mean = len(values), sum(values) / len(values)
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean - Z95 * s / math.sqrt(n), mean + Z95 * s / math.sqrt(n)


def views(durations: list[float]) -> list[dict[str, Any]]:
    return [{"event_id": f"p{i}", "type": "page.viewed", "ts": T0 + i * 1000,
             "session_id": f"s{i}", "page": "/", "duration_s": d}
            for i, d in enumerate(durations)]


@pytest.mark.parametrize("generated", [True, False])
def test_time_on_page_carries_the_normal_interval_of_its_mean(generated: bool) -> None:
    """The generated code and its interpreted twin agree."""
    durations = [10, 20, 30, 40, 12.5]
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0, generated=generated))
    records: list[dict[str, Any]] = []
    for raw in views(durations):
        ev = parse_event(orjson.dumps(raw), now_ms=T0 + DAY)
        assert isinstance(ev, Event)
        engine.ingest(ev)
    records += engine.flush()
    rec = total(records, "web_avg_time_on_page_seconds", "1h")
    low, high = normal(durations)
    assert rec["value"] == pytest.approx(22.5)
    assert rec["lower"] == pytest.approx(low, rel=1e-9)
    assert rec["upper"] == pytest.approx(high, rel=1e-9)
    assert low == pytest.approx(22.5 - 1.959963984540054 * math.sqrt(156.25 / 5), rel=1e-12)


def test_one_value_has_no_interval() -> None:
    rec = total(replay(views([30]), now_ms=T0 + DAY), "web_avg_time_on_page_seconds", "1h")
    assert rec["value"] == 30 and rec["lower"] is None and rec["upper"] is None


def deal(i: int, lead_days_before: float, amounts: list[int], at: int = T0
         ) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"event_id": f"l{i}", "type": "lead.created",
                                  "ts": at - round(lead_days_before * DAY), "lead_id": f"L{i}",
                                  "channel": "web"}]
    for j, amount in enumerate(amounts):  # won, lost, won again...: the last one decides
        out.append({"event_id": f"d{i}-{j}", "type": "deal.stage_changed",
                    "ts": at + j * 60_000, "deal_id": f"D{i}", "lead_id": f"L{i}",
                    "stage": "won" if amount else "lost", "amount": amount or 0})
    return out


def test_deal_size_and_cycle_intervals_follow_the_deals_last_stage() -> None:
    # deal 2 is won at 1000, lost, then won again at 5000: one win of 5000
    events = deal(1, 10, [2000]) + deal(2, 20, [1000, 0, 5000]) + deal(3, 25, [3000])
    events.sort(key=lambda e: e["ts"])
    records = replay(events, now_ms=T0 + 40 * DAY)
    size = total(records, "avg_deal_size", "24h")
    assert (size["numerator"], size["denominator"]) == (10_000, 3)
    low, high = normal([2000, 5000, 3000])
    assert size["lower"] == pytest.approx(low) and size["upper"] == pytest.approx(high)
    cycle = total(records, "sales_cycle_days", "24h")
    days = [10, 20 + 2 / 1440, 25]  # deal 2 was won (again) 2 minutes after its first win
    assert cycle["value"] == pytest.approx(sum(days) / 3)
    low, high = normal(days)
    assert cycle["lower"] == pytest.approx(low, rel=1e-6)
    assert cycle["upper"] == pytest.approx(high, rel=1e-6)


def test_average_order_value_is_revenue_per_order_with_its_interval() -> None:
    """avg_order_value (issue 17): web order revenue / orders, a resent order counted once,
    a cart without an order not at all."""
    amounts = [120.0, 480.5, 2_999.99, 75.25]
    events: list[dict[str, Any]] = [{"event_id": "cart-x", "type": "cart.created",
                                     "ts": T0, "cart_id": "x"}]
    for i, amount in enumerate(amounts):
        order = {"event_id": f"o{i}", "type": "order.placed", "ts": T0 + i * 60_000,
                 "cart_id": f"c{i}", "amount": amount, "account_id": f"acct-{i % 2}"}
        events += [{"event_id": f"cart{i}", "type": "cart.created", "ts": T0 + i * 60_000 - 1,
                    "cart_id": f"c{i}"}, order]
    events.append(dict(events[-1]))  # the same event id again: a duplicate
    events.sort(key=lambda e: e["ts"])
    rec = total(replay(events, now_ms=T0 + DAY), "avg_order_value", "1h")
    assert rec["denominator"] == 4 and rec["unit"] == "EUR"
    assert rec["numerator"] == pytest.approx(3_675.74)
    assert rec["value"] == pytest.approx(3_675.74 / 4)
    low, high = normal(amounts)
    assert rec["lower"] == pytest.approx(low, rel=1e-9)
    assert rec["upper"] == pytest.approx(high, rel=1e-9)


def test_a_spread_needs_a_mean() -> None:
    import yaml

    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["kpis"]["email_open_rate"]["spread"] = "web_time_on_page_sq"
    with pytest.raises(CatalogError, match=r"email_open_rate\.spread"):
        build_catalog(raw)
    assert DEFAULT_CATALOG.kpis["avg_deal_size"].interval == "normal"


def test_a_breakdowns_interval_reads_its_own_sum_of_squares() -> None:
    """Per page, the interval of the mean time on page is that page's: a page whose views
    all last 10 s has a 10 s interval, however spread the other page's are. (It read the
    total's sum of squares: here a nonsense interval below zero.)"""
    a, b = [10.0, 10.0, 10.0, 10.0], [100.0, 200.0, 300.0, 400.0]
    events = views(a + b)
    for e in events[len(a):]:
        e["page"] = "/b"
    records = replay(events, now_ms=T0 + DAY)
    rows = {r["dims"].get("page"): r for r in records
            if r["kpi"] == "web_avg_time_on_page_seconds" and r["window"] == "1h"
            and r["final"]}
    assert (rows["/"]["lower"], rows["/"]["upper"]) == (10.0, 10.0)
    assert (rows["/b"]["lower"], rows["/b"]["upper"]) == pytest.approx(normal(b))
    assert (rows[None]["lower"], rows[None]["upper"]) == pytest.approx(normal(a + b))
