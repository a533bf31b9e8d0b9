"""The worker's closed windows equal `kpi-engine replay` on the same events, record for
record (last revision per key), and every poison pill lands in the DLQ."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.events import FAMILY_TOPIC
from streams.broker import EmbeddedBroker
from streams.produce import topic_for
from streams.settings import Settings
from tests.helpers import (
    HOUR,
    SENTINEL,
    SENTINEL_AFTER,
    assert_finals_equal,
    final_values,
    ms,
    replay,
)
from tests.integration.conftest import WorkerProc, wait_for, wait_settled
from tests.unit.test_events import REJECTIONS

pytestmark = pytest.mark.integration

START = ms("2026-09-01T00:00:00+00:00")  # far enough back for +31 d sentinels


async def produce(bootstrap: str, messages: list[tuple[str, bytes, int | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_request_size=2 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, partition=partition)
                   for topic, value, partition in messages]
        await producer.flush()
        await asyncio.gather(*futures)  # every message really landed
    finally:
        await producer.stop()


async def drain(bootstrap: str, topic: str, quiet_s: float = 4.0, timeout_s: float = 120
                ) -> list[Any]:
    """Every message of a topic, once nothing new has arrived for quiet_s."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time()
        while loop.time() - last_new < quiet_s and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for msgs in batches.values():
                out += msgs
                last_new = loop.time()
    finally:
        await consumer.stop()
    return out


def test_streaming_finals_equal_replay(broker: EmbeddedBroker, isolated: Settings,
                                       start_worker: Callable[[Settings], WorkerProc]) -> None:
    gen = Generator(GeneratorConfig(rate=40, duration_s=900, seed=7, start_ms=START,
                                    history_days=2, invalid=0.005, duplicates=0.01,
                                    late=0.003, late_after_s=120, disorder_s=60))
    stream = [(topic, raw) for _, (topic, raw) in gen.messages()]
    assert sum(gen.stats.late.values()) > 5 and gen.stats.duplicates > 50
    last_ts = max(ms(orjson.loads(raw)["ts"].replace("Z", "+00:00")) for _, raw in stream
                  if raw.startswith(b"{") and b'"ts":"2026' in raw)
    sentinels: list[tuple[str, bytes, int | None]] = []
    for fam, extra in SENTINEL.items():
        for p in range(isolated.partitions):
            ev = {"event_id": f"sentinel-{fam}-{p}", "ts": last_ts + SENTINEL_AFTER[fam],
                  **extra}
            sentinels.append((FAMILY_TOPIC[fam], orjson.dumps(ev), p))
    messages = [(isolated.topic(t), raw, None) for t, raw in stream] + \
        [(isolated.topic(t), raw, p) for t, raw, p in sentinels]

    worker = start_worker(isolated)
    t0 = time.monotonic()
    asyncio.run(produce(broker.bootstrap, messages))
    # the stage closes the windows of the cutoff once past them by its grace (1 h)
    wait_settled(worker, len(messages), 120, last_ts + SENTINEL_AFTER["accounts"] + HOUR)
    consumed_s = time.monotonic() - t0
    published = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-windows")))
    streaming = final_values(orjson.loads(m.value) for m in published)
    for m in published[:50]:
        rec = orjson.loads(m.value)
        assert m.key.decode() == (f"{rec['kpi']}|{rec['window']}|"
                                  f"{';'.join(f'{k}={v}' for k, v in sorted(rec['dims'].items()))}"
                                  f"|{rec['end']}")

    oracle = final_values(replay([raw for _, raw, _ in
                                  [(t, r, None) for t, r in stream] + sentinels]))
    cutoff = {fam: last_ts + SENTINEL_AFTER[fam] for fam in SENTINEL_AFTER}
    windows = assert_finals_equal(oracle, streaming, cutoff)
    health = worker.health()
    assert health["late"] == sum(gen.stats.late.values())
    assert health["duplicates"] == gen.stats.duplicates
    print(f"\nstreaming == replay on {windows} windows; {len(messages)} messages "
          f"consumed in {consumed_s:.1f} s")


def test_every_poison_pill_lands_in_the_dlq(broker: EmbeddedBroker, isolated: Settings,
                                            start_worker: Callable[[Settings], WorkerProc]
                                            ) -> None:
    good = {"event_id": "", "type": "email.sent", "ts": "2026-11-01T00:00:00Z",
            "campaign_id": "c", "contact_id": "p"}
    email = isolated.topic("email-events")
    messages: list[tuple[str, bytes, int | None]] = []
    offsets: Counter[str] = Counter()
    expected: dict[tuple[str, int], tuple[str, bytes]] = {}  # (topic, offset) -> pill

    def add(topic: str, value: bytes, reason: str | None = None) -> None:
        if reason is not None:
            expected[(topic, offsets[topic])] = (reason, value)
        messages.append((topic, value, 0))
        offsets[topic] += 1

    for i, (_case, data, reason) in enumerate(REJECTIONS):
        pill = data if isinstance(data, bytes) else data.encode()
        if reason == "future_ts":  # the unit table's clock is fixed; the worker's is real
            pill = orjson.dumps({**good, "event_id": "future", "ts": time.time_ns() // 10**6
                                 + 86_400_000})
        add(email, orjson.dumps({**good, "event_id": f"before-{i}"}))
        # each pill goes to its own type's topic (unreadable ones to email-events)
        add(topic_for(pill[:1000] if len(pill) > 1000 else pill, isolated, "email-events"),
            pill, reason)
        add(email, orjson.dumps({**good, "event_id": f"after-{i}"}))
    add(isolated.topic("web-events"), orjson.dumps({**good, "event_id": "w"}), "wrong_topic")
    # only partition 0 carries events: let the silent partitions stop holding the watermark
    worker = start_worker(replace(isolated, idle_timeout=1.0))
    asyncio.run(produce(broker.bootstrap, messages))
    wait_for(lambda: worker.health()["invalid"] >= len(expected), 30, "all poison pills",
             worker)
    wait_for(lambda: worker.health()["events"] >= 2 * len(REJECTIONS), 30, "the good events",
             worker)
    dlq = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-dlq"), quiet_s=2))
    got = {}
    for m in dlq:
        h = {k: v.decode() for k, v in m.headers}
        assert h["source_partition"] == "0"
        got[(h["source_topic"], int(h["source_offset"]))] = (h["error"], m.value)
    assert got.keys() == expected.keys()
    for coords, (reason, value) in expected.items():
        assert got[coords] == (reason, value), coords
    assert worker.health()["events"] == 2 * len(REJECTIONS)  # nothing good was lost
    assert worker.proc.poll() is None  # and the worker is alive
