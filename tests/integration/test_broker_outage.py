"""The broker goes away for longer than the session timeout and comes back empty (the
embedded broker keeps nothing on disk: a restart loses every topic, offset and group).
While it is away /health is 503 and says why, and the client's retry lines are thinned;
once it is back the worker rejoins, its shards become active again from what the broker
holds (nothing), and every event produced after the return is counted, once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.topics import all_topics, ensure_topics
from tests.integration.conftest import WorkerProc, consumed, wait_for
from tests.integration.test_streaming_equals_replay import START, produce

pytestmark = pytest.mark.integration


def stream(settings: Settings, seed: int) -> tuple[list[tuple[str, bytes, int | None]], int]:
    """Messages, and how many of them are events the worker counts."""
    gen = Generator(GeneratorConfig(rate=20, duration_s=300, seed=seed, history_days=0,
                                    start_ms=START + seed * 3_600_000, duplicates=0.01,
                                    invalid=0.005))
    msgs: list[tuple[str, bytes, int | None]] = [
        (settings.topic(t), raw, None) for _, (t, raw) in gen.messages()]
    return msgs, sum(gen.stats.events.values())


def taken(worker: WorkerProc) -> int:
    """Messages the worker has taken in: counted, rejected, or held for their family's
    first window (a stream that ends leaves a few held)."""
    return consumed(worker) + int(worker.health()["held"])


def settled(worker: WorkerProc, n: int) -> bool:
    h = worker.health()
    return taken(worker) == n and h["pending_finals"] == 0 and bool(h["durable"])


def test_broker_lost_and_back_empty(tmp_path: Path,
                                    start_worker: Callable[[Settings], WorkerProc]) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "broker.log")).start()
    try:
        settings = Settings(broker=broker.url, topic_prefix="o.", group_id="outage",
                            partitions=4, web_port=free_port(), idle_timeout=0,
                            session_timeout_s=4.0, snapshot_interval=0.2, emit_interval=0.2)
        asyncio.run(ensure_topics(broker.bootstrap, all_topics(settings), 4))
        worker = start_worker(settings)
        before, _ = stream(settings, 1)
        asyncio.run(produce(broker.bootstrap, before))
        wait_for(lambda: settled(worker, len(before)), 120, "the first part counted", worker)
        assert worker.health()["status"] == "ok"

        broker.stop()
        down_at = time.monotonic()
        wait_for(lambda: worker.health()["status"] == "unavailable", 15,
                 "/health to say the broker is away", worker)
        health = worker.health()
        assert any(p.startswith(f"broker unreachable at {broker.bootstrap}")
                   for p in health["problems"]), health
        with pytest.raises(OSError, match="503"):
            worker.get("/health")
        time.sleep(max(0.0, 20 - (time.monotonic() - down_at)))  # well past the session

        broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "broker2.log")).start()
        asyncio.run(ensure_topics(broker.bootstrap, all_topics(settings), 4))
        after, events_after = stream(settings, 2)
        asyncio.run(produce(broker.bootstrap, after))
        # the state left with the old broker: the worker counts what the new one holds
        wait_for(lambda: worker.health()["status"] == "ok" and settled(worker, len(after)),
                 90, "the worker active again and through the new input", worker)
        health = worker.health()
        assert set(health["shards"].values()) == {"active"}, health
        assert health["events"] + health["held"] == events_after, health

        log = worker.log_path.read_text()
        retries = log.count("Unable connect to node")
        # ~60 a second unthinned (1,757 lines in 30 s were measured); one per 30 s now
        assert 1 <= retries <= 4, f"{retries} connection-error lines"
        assert "lost with the group membership" in log
        assert "broker reachable again" in log
    finally:
        broker.stop()

