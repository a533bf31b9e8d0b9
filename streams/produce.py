"""Producers: JSONL files into their topics, and live synthetic traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from metrics.events import FAMILY_TOPIC, TYPES
from streams.kafka_client import client_kwargs
from streams.progress import Progress
from streams.settings import Settings
from streams.topics import ensure_io_topics

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


def _producer(bootstrap: str, client: Mapping[str, Any] | None) -> AIOKafkaProducer:
    # input events may be up to 1 MiB (the contract's limit) plus framing; acks from every
    # in-sync replica: a produced event is not lost with its partition leader
    return AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                            max_request_size=2 * 1024 * 1024, **(client or {}))


async def send_all(bootstrap: str, messages: Iterable[tuple[str, bytes]],
                   client: Mapping[str, Any] | None = None,
                   progress: Progress | None = None) -> int:
    producer = _producer(bootstrap, client)
    await producer.start()
    n = 0
    try:
        for topic, value in messages:
            await producer.send(topic, value)
            n += 1
            if progress is not None:
                progress.add()
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
        await ensure_io_topics(settings)
        progress = Progress("produce", "messages")
        n = await send_all(settings.bootstrap, lines(), client_kwargs(settings), progress)
        progress.done()
        return n

    return asyncio.run(run())


async def produce_generated(bootstrap: str, settings: Settings, messages: Messages, *,
                            realtime: bool, stop: asyncio.Event | None = None,
                            progress: Progress | None = None) -> int:
    """Send the generator's messages; in real time, each once the wall clock reaches its
    event time (history first, at once)."""
    producer = _producer(bootstrap, client_kwargs(settings))
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
            if progress is not None:
                progress.add()
            if n % 1000 == 0:
                await asyncio.sleep(0)  # let the loop breathe during the history burst
        await producer.flush()
    finally:
        await producer.stop()
    return n


def produce_live(settings: Settings, messages: Messages, *, realtime: bool) -> int:
    async def run() -> int:
        await ensure_io_topics(settings)
        progress = Progress("generate", "messages sent")
        n = await produce_generated(settings.bootstrap, settings, messages, realtime=realtime,
                                    progress=progress)
        progress.done()
        return n

    return asyncio.run(run())
