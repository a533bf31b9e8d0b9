"""`kpi-alerts` live (issue 18): `kpi-engine demo --incident open-rate-drop` puts a firing
email_open_rate breach on the topic within 4 minutes, `bounce-spike` a bounce breach, and
the generator's normal traffic fires nothing. Each runs the real demo: embedded broker,
worker, real-time traffic."""

from __future__ import annotations

import asyncio
import re
import select
import subprocess
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from tests.integration.conftest import running_demo

pytestmark = pytest.mark.integration

WITHIN_S = 240.0


def broker_of(proc: subprocess.Popen[bytes]) -> str:
    """The demo's embedded broker, from the URLs it prints."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        line = proc.stdout.readline().decode()
        m = re.search(r"broker\s+kafka://(\S+)", line)
        if m:
            return m.group(1)
    raise AssertionError("the demo printed no broker URL")


async def watch_alerts(bootstrap: str, until_s: float, stop_on: str | None
                       ) -> list[tuple[float, dict[str, Any]]]:
    """Breach events on kpi-alerts (with the seconds since the call) until ``until_s``,
    or until a firing ``stop_on`` alert arrives."""
    t0 = time.monotonic()
    consumer = AIOKafkaConsumer("kpi-alerts", bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[float, dict[str, Any]]] = []
    try:
        while time.monotonic() - t0 < until_s:
            batches = await consumer.getmany(timeout_ms=1000)
            for msgs in batches.values():
                for msg in msgs:
                    event = orjson.loads(msg.value)
                    out.append((time.monotonic() - t0, event))
                    if event["alert"] == stop_on and event["state"] == "firing":
                        return out
    finally:
        await consumer.stop()
    return out


def run_demo(incident: str | None, until_s: float, stop_on: str | None
             ) -> list[tuple[float, dict[str, Any]]]:
    args = ["--rate", "100", "--history-days", "0", "--duration", str(until_s + 60)]
    if incident:
        args += ["--incident", incident]
    with running_demo(*args) as (proc, _):
        bootstrap = broker_of(proc)
        return asyncio.run(watch_alerts(bootstrap, until_s, stop_on))


@pytest.mark.parametrize(("incident", "alert"), [("open-rate-drop", "EmailOpenRateLow"),
                                                 ("bounce-spike", "EmailBounceRateHigh")])
def test_an_incident_puts_a_firing_breach_on_kpi_alerts_within_4_minutes(
        incident: str, alert: str) -> None:
    events = run_demo(incident, WITHIN_S, alert)
    firing = [(t, e) for t, e in events if e["alert"] == alert and e["state"] == "firing"]
    assert firing, f"no firing {alert} within {WITHIN_S:.0f} s: {events}"
    t, e = firing[0]
    assert t <= WITHIN_S
    # significant: the whole interval beyond the threshold, the fields the contract names
    beyond = e["upper"] < e["threshold"] if e["direction"] == "below" else \
        e["lower"] > e["threshold"]
    assert beyond, e
    assert set(e) == {"alert", "kpi", "window", "dims", "value", "lower", "upper",
                      "threshold", "direction", "severity", "state", "since", "emitted_at"}


def test_normal_traffic_puts_nothing_on_kpi_alerts() -> None:
    events = run_demo(None, 150.0, None)
    assert not [e for _, e in events if e["state"] == "firing"], events
