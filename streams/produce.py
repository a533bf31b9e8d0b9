"""Producers: JSONL files into their topics, and live synthetic traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import orjson
from aiokafka import AIOKafkaProducer

from metrics.events import FAMILY_TOPIC, TYPES
from streams.settings import Settings
from streams.topics import all_topics, ensure_topics

#: (event time ms, (topic, value)), in send order: kpi_engine.generator.Generator.messages()
Messages = Iterable[tuple[int, tuple[str, bytes]]]


def topic_for(raw: bytes, settings: Settings, invalid_topic: str) -> str:
    """The topic a JSONL line belongs to, from its `type`; unreadable lines go to
    ``invalid_topic`` so a worker still reports them in the DLQ."""
    try:
        type_ = orjson.loads(raw).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        return settings.topic(invalid_topic)
    spec = TYPES.get(type_) if isinstance(type_, str) else None
    if spec is None:
        return settings.topic(invalid_topic)
    return settings.topic(FAMILY_TOPIC[spec.family])


def _producer(bootstrap: str) -> AIOKafkaProducer:
    # input events may be up to 1 MiB (the contract's limit) plus framing
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1,
                            max_request_size=2 * 1024 * 1024)


async def send_all(bootstrap: str, messages: Iterable[tuple[str, bytes]]) -> int:
    producer = _producer(bootstrap)
    await producer.start()
    n = 0
    try:
        for topic, value in messages:
            await producer.send(topic, value)
            n += 1
        await producer.flush()
    finally:
        await producer.stop()
    return n


def produce_files(settings: Settings, paths: list[str], invalid_topic: str) -> int:
    def lines() -> Iterable[tuple[str, bytes]]:
        for p in paths:
            with open(p, "rb") as fh:
                for line in fh:
                    line = line.rstrip(b"\r\n")
                    if line:
                        yield topic_for(line, settings, invalid_topic), line

    async def run() -> int:
        await ensure_topics(settings.bootstrap, all_topics(settings), settings.partitions)
        return await send_all(settings.bootstrap, lines())

    return asyncio.run(run())


async def produce_generated(bootstrap: str, settings: Settings, messages: Messages, *,
                            realtime: bool, stop: asyncio.Event | None = None) -> int:
    """Send the generator's messages; in real time, each once the wall clock reaches its
    event time (history first, at once)."""
    producer = _producer(bootstrap)
    await producer.start()
    n = 0
    try:
        for ts, (topic, value) in messages:
            if stop is not None and stop.is_set():
                break
            if realtime:
                delay = ts / 1000 - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await producer.send(settings.topic(topic), value)
            n += 1
            if n % 1000 == 0:
                await asyncio.sleep(0)  # let the loop breathe during the history burst
        await producer.flush()
    finally:
        await producer.stop()
    return n


def produce_live(settings: Settings, messages: Messages, *, realtime: bool) -> int:
    async def run() -> int:
        await ensure_topics(settings.bootstrap, all_topics(settings), settings.partitions)
        return await produce_generated(settings.bootstrap, settings, messages, realtime=realtime)

    return asyncio.run(run())
