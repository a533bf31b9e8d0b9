"""Foundation: generated traffic through the real broker; the worker counts what the
generator says it sent, and every invalid message lands in the DLQ with its reason."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.events import (
    ACCOUNT_FEEDS,
    EVENT_TYPES,
    INVALID_REASONS,
    TOPIC_FAMILIES,
    Event,
    parse_event,
)
from metrics.feed import copied
from streams.broker import EmbeddedBroker
from streams.produce import send_all
from streams.settings import Settings
from streams.topics import ACCOUNTS_TOPIC, FAMILY_TOPICS
from tests.integration.conftest import WorkerProc, wait_for

pytestmark = pytest.mark.integration

_SAMPLE = re.compile(r'^(\w+)\{(.*)\} ([0-9.e+]+)$')


def scrape(worker: WorkerProc) -> dict[str, dict[str, float]]:
    """metric name -> label text -> value"""
    return parse_exposition(worker.get("/metrics").decode())


def parse_exposition(text: str) -> dict[str, dict[str, float]]:
    """metric name -> label text -> value"""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = float(m.group(3))
        elif line and not line.startswith("#"):
            name, value = line.split(" ")
            out.setdefault(name, {})[""] = float(value)
    return out


async def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 30
                     ) -> list[tuple[bytes, dict[str, bytes]]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[bytes, dict[str, bytes]]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(out) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                out += [(m.value, dict(m.headers)) for m in msgs]
    finally:
        await consumer.stop()
    return out


def stage_copies(messages: list[tuple[str, bytes]], settings: Settings) -> dict[str, int]:
    """What the accounts stage counts of these messages: a copy per valid event it reads,
    once per event id."""
    now = int(time.time() * 1000)
    seen: set[str] = set()
    out: Counter[str] = Counter()
    for topic, raw in messages:
        family = TOPIC_FAMILIES[topic.removeprefix(settings.topic_prefix)]
        ev = parse_event(raw, now_ms=now, topic_family=family)
        if type(ev) is Event and copied(ev) and ev.event_id not in seen:
            seen.add(ev.event_id)
            out[f"{ACCOUNTS_TOPIC}|{ACCOUNT_FEEDS[ev.type]}"] += 1
    return dict(out)


def test_worker_counts_equal_generator_ground_truth(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    gen = Generator(GeneratorConfig(rate=100, duration_s=120, seed=42, history_days=2,
                                    invalid=0.02, duplicates=0.01))
    messages = [(isolated.topic(topic), raw) for _, (topic, raw) in gen.messages()]
    truth = gen.stats
    n_invalid = sum(truth.invalid.values())
    assert n_invalid > 50 and truth.duplicates > 50  # the run really injects both

    worker = start_worker(isolated)
    asyncio.run(send_all(broker.bootstrap, messages))

    expected_valid = sum(truth.events.values())
    wait_for(lambda: worker.health()["events"] + worker.health()["invalid"]
             + worker.health()["duplicates"] >= len(messages), 60,
             "the worker to consume every message")

    # the accounts stage counts a copy of each valid order, deal stage and spend, and of
    # each touch naming its account and campaign, once
    copies = stage_copies(messages, isolated)
    assert sum(copies.values()) > 100
    assert copies[f"{ACCOUNTS_TOPIC}|account.page_view"] > 50
    wait_for(lambda: worker.health()["accounts_stage"]["events"] == sum(copies.values()), 60,
             "the accounts stage to count every copy", worker)

    m = scrape(worker)
    counted = {(re.search(r'topic="([^"]+)"', k).group(1).removeprefix(isolated.topic_prefix)  # type: ignore[union-attr]
                + "|" + re.search(r'type="([^"]+)"', k).group(1)): int(v)  # type: ignore[union-attr]
               for k, v in m["kpi_engine_events_total"].items()}
    # every type is exported, at 0 until its first event (issue 18: a rule on a series
    # that does not exist never evaluates)
    every_type = {f"{FAMILY_TOPICS[spec.family]}|{t}": 0 for t, spec in EVENT_TYPES.items()}
    assert counted == {**every_type, **truth.events, **copies}
    assert sum(counted.values()) == expected_valid + sum(copies.values())
    invalid = {re.search(r'reason="([^"]+)"', k).group(1): int(v)  # type: ignore[union-attr]
               for k, v in m.get("kpi_engine_events_invalid_total", {}).items()}
    assert invalid == {**dict.fromkeys(INVALID_REASONS, 0), **truth.invalid}
    assert m["kpi_engine_events_duplicate_total"][""] == truth.duplicates

    # the emit timer exports current KPI values next to the engine's health
    wait_for(lambda: "kpi_email_open_rate" in scrape(worker), 10, "KPI gauges", worker)
    total_5m = 'campaign_id="",segment="",window="5m"'  # the total: no dimension set
    assert scrape(worker)["kpi_email_open_rate_denominator"][total_5m] > 0

    dlq = asyncio.run(read_topic(broker.bootstrap, isolated.topic("kpi-dlq"), n_invalid))
    assert len(dlq) == n_invalid
    assert Counter(h["error"].decode() for _, h in dlq) == Counter(truth.invalid)
    for _, headers in dlq:
        assert headers["source_topic"].decode().startswith(isolated.topic_prefix)
        assert int(headers["source_partition"]) in range(isolated.partitions)
        assert int(headers["source_offset"]) >= 0
