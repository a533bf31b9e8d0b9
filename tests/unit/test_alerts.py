"""Breach events for `kpi-alerts`: significant (the whole interval beyond the threshold,
the guard met), firing after `for` in event time, resolved with hysteresis."""

from __future__ import annotations

from typing import Any

from metrics.alerts import AlertEvaluator, alert_key
from metrics.catalog import parse_duration_ms
from metrics.records import iso_ms, make_record
from tests.helpers import DEFAULT_CATALOG, ms

T0 = ms("2026-11-01T10:00:00+00:00")
MIN = 60_000
KPI = DEFAULT_CATALOG.kpis["email_open_rate"]  # below 0.15, >= 200 sent, 5m window
assert KPI.alert is not None
FOR = parse_duration_ms(KPI.alert.for_) // MIN  # minutes of breach before it fires


def rec(minute: int, opens: int, sent: int, **dims: str) -> dict[str, Any]:
    end = T0 + minute * MIN
    return make_record(KPI, "ratio", "5m", iso_ms(end - 5 * MIN), iso_ms(end), dims,
                       float(opens), float(sent), False, 0, iso_ms(end))


def run(ev: AlertEvaluator, series: list[tuple[int, int, int]], **dims: str
        ) -> list[dict[str, Any]]:
    out = []
    for minute, opens, sent in series:
        out += ev.observe([rec(minute, opens, sent, **dims)], "now")
    return out


def test_a_significant_drop_fires_after_for_and_resolves_when_the_value_is_back() -> None:
    ev = AlertEvaluator(DEFAULT_CATALOG)
    drop = [(m, 40, 1000) for m in range(0, FOR)]  # 4 %: the whole interval below 15 %
    assert run(ev, drop, campaign_id="c1") == []  # pending: not yet `for` long
    events = run(ev, [(FOR, 40, 1000)], campaign_id="c1")
    assert [e["state"] for e in events] == ["firing"]
    e = events[0]
    assert e["alert"] == "EmailOpenRateLow" and e["dims"] == {"campaign_id": "c1"}
    assert e["upper"] < 0.15 and e["threshold"] == 0.15 and e["direction"] == "below"
    assert e["since"] == "2026-11-01T10:00:00Z" and e["severity"] == "warning"
    assert alert_key(e) == "EmailOpenRateLow|campaign_id=c1"
    # 14 %: below the threshold, but not significantly: still firing (hysteresis) ...
    assert run(ev, [(FOR + 1, 140, 1000)], campaign_id="c1") == []
    # ... until the value is back above it
    (back,) = run(ev, [(FOR + 2, 200, 1000)], campaign_id="c1")
    assert back["state"] == "resolved" and back["value"] == 0.2


def test_an_insignificant_or_unguarded_dip_never_fires() -> None:
    ev = AlertEvaluator(DEFAULT_CATALOG)
    # 13 % of 250: below 15 % but the interval reaches above it
    assert run(ev, [(m, 33, 250) for m in range(30)]) == []
    # 2 % of 100: significant, but under the volume guard (200 sent)
    assert run(ev, [(m, 2, 100) for m in range(30)]) == []
    assert ev.firing() == []


def test_a_breach_interrupted_before_its_for_starts_over() -> None:
    ev = AlertEvaluator(DEFAULT_CATALOG)
    series = [(m, 40, 1000) for m in range(0, FOR)] + [(FOR, 300, 1000)] + \
             [(m, 40, 1000) for m in range(FOR + 1, 2 * FOR + 1)]
    assert run(ev, series) == []  # never `for` straight minutes
    assert [e["state"] for e in run(ev, [(2 * FOR + 1, 40, 1000)])] == ["firing"]


def test_an_above_alert_uses_the_lower_bound_and_money_ratios_their_value() -> None:
    ev = AlertEvaluator(DEFAULT_CATALOG)
    bounce = DEFAULT_CATALOG.kpis["email_bounce_rate"]  # above 0.15, for 5m
    recs = [make_record(bounce, "ratio", "5m", "a", iso_ms(T0 + m * MIN), {}, 300.0, 1000.0,
                        False, 0, "now") for m in range(6)]
    events = [e for r in recs for e in ev.observe([r], "now")]
    assert [e["state"] for e in events] == ["firing"] and events[0]["lower"] > 0.15
    romi = DEFAULT_CATALOG.kpis["romi"]  # below 0, no interval: the value decides
    assert romi.alert is not None and romi.alert.window == "30d"
    recs = [make_record(romi, "ratio", "30d", "a", iso_ms(T0 + h * 60 * MIN), {}, -500.0,
                        2000.0, False, 0, "now") for h in range(3)]
    events = [e for r in recs for e in ev.observe([r], "now")]
    assert [e["state"] for e in events] == ["firing"] and events[0]["lower"] is None
