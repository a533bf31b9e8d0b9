"""A malformed record in the state table's changelog is passed over, logged and counted,
and the shard restores and counts on; state the worker cannot use (built with another
catalog) stops the worker loudly instead of leaving it alive with a shard standing by."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from kpi_engine.generator import Generator, GeneratorConfig
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.table_copy import checksum, log_matches
from streams.topics import all_topics, ensure_topics, state_partitions, state_topic
from tests.helpers import DEFAULT_CATALOG
from tests.integration.conftest import WorkerProc, consumed, wait_for
from tests.integration.test_streaming_equals_replay import START, produce
from tests.tools import ROOT

pytestmark = pytest.mark.integration


def messages(settings: Settings) -> tuple[list[tuple[str, bytes, int | None]], int]:
    gen = Generator(GeneratorConfig(rate=20, duration_s=600, seed=12, history_days=0,
                                    start_ms=START))
    return ([(settings.topic(t), raw, None) for _, (t, raw) in gen.messages()],
            sum(gen.stats.events.values()))


def taken(w: WorkerProc) -> int:
    return consumed(w) + int(w.health()["held"])


def test_a_junk_state_record_is_skipped_and_counted_and_the_shard_counts_on(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    msgs, n_events = messages(settings)
    half = len(msgs) // 2
    worker = start_worker(settings)
    asyncio.run(produce(broker.bootstrap, msgs[:half]))
    wait_for(lambda: taken(worker) == half and worker.health()["durable"], 120,
             "the first half counted and durable", worker)
    worker.proc.kill()
    worker.proc.wait()
    web = state_partitions(DEFAULT_CATALOG)["web"]
    asyncio.run(produce(broker.bootstrap, [(state_topic(settings), b"x", web)]))  # no key
    asyncio.run(_produce_keyed(broker.bootstrap, state_topic(settings), web,
                               [(b"web|junk", b"x"), (b"web|manifest|junk", b"{}")]))
    worker = start_worker(replace(settings, web_port=free_port()))
    # the rest arrives while it recovers: partitions the first worker never saw a message
    # of (sparse spend traffic) get their first ones now, and none of them is lost
    asyncio.run(produce(broker.bootstrap, msgs[half:]))
    # the restored counts include the first half: all of it is counted once
    wait_for(lambda: taken(worker) >= len(msgs) and worker.health()["status"] == "ok"
             and worker.health()["durable"], 120, "the rest counted", worker)
    health = worker.health()
    assert set(health["shards"].values()) == {"active"}, health
    # restored from the snapshot, not from nothing: nothing counted twice, nothing lost
    assert health["events"] + health["held"] == n_events, health
    assert health["state_skipped"] == 3, health  # the keyless record and the two junk keys
    log = worker.log_path.read_text()
    assert "web: state record b'web|junk' skipped" in log
    metrics = worker.get("/metrics").decode()
    assert "kpi_engine_state_records_skipped_total 3.0" in metrics


async def _produce_keyed(bootstrap: str, topic: str, partition: int,
                         records: list[tuple[bytes, bytes | None]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


def test_state_built_with_another_catalog_stops_the_worker_loudly(
        broker: EmbeddedBroker, isolated: Settings, tmp_path: Path,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    msgs, _ = messages(settings)
    worker = start_worker(settings)
    asyncio.run(produce(broker.bootstrap, msgs[:500]))
    wait_for(lambda: taken(worker) == 500 and worker.health()["durable"], 120,
             "some input counted and durable", worker)
    worker.stop()
    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["currency"] = "USD"
    catalog = tmp_path / "usd.yaml"
    catalog.write_text(yaml.safe_dump(raw))
    try:
        worker = start_worker(replace(settings, web_port=free_port(), catalog=str(catalog)))
    except AssertionError as exc:  # it may stop before it serves /health
        assert "worker died" in str(exc) and "other windows, grace or currency" in str(exc)
        return
    try:
        code = worker.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError("the worker kept running on state it cannot use:\n"
                             + worker.detail()) from None
    assert code != 0
    assert "other windows, grace or currency" in worker.log_path.read_text()


def test_a_local_copy_of_another_changelog_is_dropped_and_nothing_is_skipped(
        broker: EmbeddedBroker, isolated: Settings, tmp_path: Path,
        start_worker: Callable[..., WorkerProc]) -> None:
    """A worker restarts on its data directory against a broker that does not have the
    state it copied (the broker came back without its data, or another cluster with the
    same names). Its copy of the state table covers an offset this changelog lacks: the
    copy is dropped, the changelog read whole, and the new broker's events are all counted
    once. Used as it was, the copied snapshot's offsets would skip them as already read."""
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    msgs, _ = messages(settings)
    worker = start_worker(settings)
    asyncio.run(produce(broker.bootstrap, msgs))
    wait_for(lambda: taken(worker) == len(msgs) and worker.health()["durable"], 120,
             "everything counted and durable", worker)
    worker.proc.kill()
    worker.proc.wait()
    with EmbeddedBroker(log_path=str(tmp_path / "other-broker.log")) as other:
        moved = replace(settings, broker=other.url, web_port=free_port())
        asyncio.run(ensure_topics(other.bootstrap, all_topics(moved), moved.partitions))
        half = len(msgs) // 2
        asyncio.run(produce(other.bootstrap, msgs[:half]))
        worker = start_worker(moved, data_dir=worker.data_dir)
        wait_for(lambda: taken(worker) == half and worker.health()["durable"], 120,
                 "the new broker's events counted", worker)
        health = worker.health()
        assert health["replayed_skipped"] == 0, health
        assert "local copy of the state table is not of this changelog" in \
            worker.log_path.read_text()
        worker.stop()


def test_the_changelog_confirms_only_the_record_a_copy_names(
        broker: EmbeddedBroker, isolated: Settings) -> None:
    topic = state_topic(isolated)
    asyncio.run(_produce_keyed(broker.bootstrap, topic, 0,
                               [(b"a|1", b"x"), (b"a|2", b"y"), (b"a|3", None)]))

    def matches(marks: dict[int, tuple[int, int]]) -> set[int]:
        return asyncio.run(log_matches(broker.bootstrap, topic, marks, {}, timeout_s=5))

    assert matches({0: (1, checksum(b"a|2", b"y"))}) == {0}
    assert matches({0: (2, checksum(b"a|3", None))}) == {0}  # a delete
    assert matches({0: (1, checksum(b"a|2", b"z"))}) == set()  # another value
    assert matches({0: (0, checksum(b"a|2", b"y"))}) == set()  # another offset
    assert matches({0: (3, checksum(b"a|3", None))}) == set()  # past the log's end
    assert matches({1: (0, checksum(b"a|1", b"x"))}) == set()  # an empty partition
