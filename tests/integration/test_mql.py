"""MQLs through the real broker: the accounts stage scores accounts from the copies of
email, web, social and CRM events, sends a record on `kpi-mql` (key lead_id) when a lead's
account crosses the threshold, and publishes `mql_rate` on `kpi-windows` as replay does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from metrics.events import FAMILY_TOPIC, TYPES
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.helpers import DAY, SENTINEL
from tests.integration.conftest import WorkerProc, wait_for
from tests.integration.test_streaming_equals_replay import drain, produce
from tests.unit.trackers.test_lead_scoring import STORY, T0

pytestmark = pytest.mark.integration


def test_mql_records_and_rate(broker: EmbeddedBroker, isolated: Settings,
                              start_worker: Callable[[Settings], WorkerProc]) -> None:
    start_worker(isolated)
    topic_of = {fam: isolated.topic(t) for fam, t in FAMILY_TOPIC.items()}
    messages: list[tuple[str, bytes, int | None]] = [
        (topic_of[TYPES[e["type"]].family], orjson.dumps(e), None)
        for e in sorted(STORY, key=lambda e: e["ts"])]
    # every input partition moves on three days: the stage closes the days of the story
    messages += [(isolated.topic(FAMILY_TOPIC[fam]), orjson.dumps(
        {"event_id": f"sentinel-{fam}-{p}", "ts": T0 + 3 * DAY, **extra}), p)
        for fam, extra in SENTINEL.items() for p in range(isolated.partitions)]
    asyncio.run(produce(broker.bootstrap, messages))

    def mqls() -> dict[str, dict[str, object]]:
        got = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-mql"), quiet_s=1))
        return {m.key.decode(): orjson.loads(m.value) for m in got}

    wait_for(lambda: len(mqls()) == 2, 90, "two MQL records on kpi-mql")
    published = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-mql")))
    assert len(published) == 2  # once each
    got = {m.key.decode(): orjson.loads(m.value) for m in published}
    assert {k: (r["account_id"], r["mql_at"], r["score"], r["threshold"])
            for k, r in got.items()} == {
        "L1": ("a", "2026-03-03T11:00:00Z", 40.034, 40.0),
        "L3": ("a", "2026-03-03T11:00:00Z", 40.034, 40.0)}
    assert got["L1"]["created_at"] == "2026-03-02T10:30:00Z"

    def day1() -> list[dict[str, object]]:
        windows = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-windows"),
                                    quiet_s=1))
        return [r for m in windows if (r := orjson.loads(m.value))["kpi"] == "mql_rate"
                and r["window"] == "24h" and r["end"] == "2026-03-04T00:00:00Z"
                and r["dims"] == {}]

    wait_for(lambda: bool(day1()), 90, "mql_rate of day 1 on kpi-windows")
    rec = day1()[-1]
    assert (rec["numerator"], rec["denominator"]) == (1, 3)  # as replay has it
