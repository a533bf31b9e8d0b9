"""The poison corpus, on the embedded broker: nesting 1,000 and 500,000 deep, a 10 MB value,
NaN and Infinity, lone surrogates, invalid UTF-8, tombstones, events on the wrong topic,
times before 2000, and 100,000 random payloads, interleaved with good events. Every bad
message lands in kpi-dlq with its coordinates and a reason code; every good one is counted;
the worker stays up."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from metrics.events import reason_codes
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.integration.conftest import WorkerProc, wait_for
from tests.integration.test_streaming_equals_replay import drain

pytestmark = pytest.mark.integration

RANDOM_PAYLOADS = 100_000


def corpus(now_ms: int) -> list[tuple[str, bytes | None, str | None]]:
    """(topic, value, reason): reason None for a good event. Topics without the prefix."""
    good = {"type": "email.sent", "ts": now_ms - 60_000, "campaign_id": "c", "contact_id": "p"}
    pills: list[tuple[str, bytes | None, str]] = [
        ("email-events", b'{"a":' * 1000 + b"1" + b"}" * 1000, "too_deep"),
        ("email-events", b"[" * 500_000 + b"]" * 500_000, "too_deep"),
        ("email-events", orjson.dumps({**good, "event_id": "big", "pad": "x" * 10_000_000}),
         "too_large"),
        ("email-events", b'{"event_id":"n","type":"email.sent","ts":NaN,"campaign_id":"c",'
                         b'"contact_id":"p"}', "not_json"),
        ("web-events", b'{"event_id":"i","type":"order.placed","ts":1793491200000,'
                       b'"cart_id":"k","amount":Infinity}', "not_json"),
        ("email-events", b'{"event_id":"\\ud800","type":"email.sent","ts":1793491200000,'
                         b'"campaign_id":"c","contact_id":"p"}', "not_json"),
        ("email-events", b'{"event_id":"\xed\xa0\x80","type":"email.sent"}', "not_json"),
        ("email-events", b'{"event_id":"\xff\xfe","type":"email.sent"}', "not_json"),
        ("email-events", None, "not_json"),  # a tombstone
        ("web-events", orjson.dumps({**good, "event_id": "wrong"}), "wrong_topic"),
        ("email-events", orjson.dumps({**good, "event_id": "zero", "ts": 0}), "ancient_ts"),
        ("email-events", orjson.dumps({**good, "event_id": "y1", "ts": "0001-01-01T00:00:00Z"}),
         "ancient_ts"),
    ]
    rnd = random.Random(20)
    out: list[tuple[str, bytes | None, str | None]] = []
    n = 0

    def add_good() -> None:
        nonlocal n
        out.append(("email-events", orjson.dumps({**good, "event_id": f"g{n}",
                                                  "contact_id": f"p{n}"}), None))
        n += 1

    for topic, value, reason in pills:
        add_good()
        out.append((topic, value, reason))
        add_good()
    topics = ("email-events", "web-events", "crm-events", "social-events", "spend-events")
    for i in range(RANDOM_PAYLOADS):
        size = rnd.choice((0, 1, 2, 8, 40, 200, 1000))
        out.append((topics[i % 5], rnd.randbytes(size), ""))  # "": any reason code
        if i % 100 == 0:
            add_good()
    return out


async def produce_all(bootstrap: str, messages: list[tuple[str, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        # a tombstone needs a key (the broker's rule, not the worker's)
        futures = [await producer.send(t, v, key=None if v is not None else b"tombstone")
                   for t, v in messages]
        await producer.flush()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_the_poison_corpus_lands_in_the_dlq_and_every_good_event_counts(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    items = corpus(time.time_ns() // 1_000_000)
    bad = [(t, v, r) for t, v, r in items if r is not None]
    n_good = len(items) - len(bad)
    worker = start_worker(replace(isolated, idle_timeout=1.0))
    t0 = time.monotonic()
    asyncio.run(produce_all(broker.bootstrap, [(isolated.topic(t), v) for t, v, _ in items]))

    def through() -> bool:
        h = worker.health()
        return int(h["invalid"]) + int(h["events"]) + int(h["held"]) >= len(items)

    wait_for(through, 300, "the whole corpus", worker)
    took = time.monotonic() - t0
    health = worker.health()
    assert health["events"] + health["held"] == n_good, health  # nothing good was lost
    assert health["invalid"] == len(bad), health
    assert health["duplicates"] == 0 and health["late"] == 0, health
    dlq = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-dlq"), quiet_s=3,
                            timeout_s=300))
    assert len(dlq) == len(bad)
    codes = set(reason_codes())
    by_value: dict[Any, list[str]] = {}
    seen: set[tuple[str, int, int]] = set()
    for m in dlq:
        h = {k: v.decode() for k, v in m.headers}
        assert h["error"] in codes, h
        coords = (h["source_topic"], int(h["source_partition"]), int(h["source_offset"]))
        assert coords not in seen
        seen.add(coords)
        value = m.value
        if "truncated_from" in h:  # the 10 MB value: its copy is cut to what the cluster takes
            assert int(h["truncated_from"]) > 10_000_000 and len(value) == 4096
            value = ("truncated", h["truncated_from"])
        by_value.setdefault(value, []).append(h["error"])
    for _topic, value, reason in bad:
        if not reason:
            continue
        key: Any = value
        if value is not None and len(value) > 4 * 1024 * 1024:
            key = ("truncated", next(t for t in by_value if isinstance(t, tuple))[1])
        assert reason in by_value.get(key, []), (reason, (value or b"")[:80])
    counts = Counter(r for rs in by_value.values() for r in rs)
    assert worker.proc.poll() is None  # and the worker is alive
    print(f"\npoison corpus: {len(items)} messages ({len(bad)} bad) through in {took:.1f} s; "
          f"DLQ reasons {dict(counts.most_common(6))}")
