"""A family waiting for one of its partitions' first event holds what the others bring, to
judge it once its event time is known. A backlog on one partition is held only so far: the
rest waits in the broker, not in the worker's memory, and is counted once the family starts,
every event once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest

from metrics.events import FAMILY_TOPIC
from metrics.records import iso_ms
from streams.broker import EmbeddedBroker
from streams.faust_app import MAX_POLL_RECORDS
from streams.settings import Settings
from streams.shard import MAX_HELD
from tests.integration.conftest import WorkerProc, wait_for
from tests.integration.test_streaming_equals_replay import produce

pytestmark = pytest.mark.integration


def views(topic: str, start_ms: int, first: int, n: int, partition: int,
          **extra: str) -> list[tuple[str, bytes, int | None]]:
    return [(topic, orjson.dumps({
        "event_id": f"v{i}", "type": "page.viewed", "ts": iso_ms(start_ms + i * 1000),
        "session_id": f"s{i // 5}", "page": "/pricing", **extra}), partition)
        for i in range(first, first + n)]


def test_a_backlog_on_one_partition_is_held_only_so_far_and_then_counted_once(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    settings = isolated  # 4 partitions, no idle timeout: a silent partition never goes quiet
    topic = settings.topic(FAMILY_TOPIC["web"])
    start = int(time.time() * 1000) - 2 * 86_400_000
    n = 3 * MAX_HELD
    worker = start_worker(settings)
    asyncio.run(produce(broker.bootstrap, views(topic, start, 0, n, 0)))
    wait_for(lambda: worker.health()["held"] > MAX_HELD, 60, "a backlog held", worker)
    time.sleep(3)  # the consumer would have read on by now (it reads ~50k events/s)
    held = worker.health()["held"]
    # over the bound by one fetch at most; before, all of the partition's backlog was held
    assert MAX_HELD < held <= MAX_HELD + MAX_POLL_RECORDS, worker.detail()
    assert worker.health()["events"] == 0
    assert worker.health()["waiting"] == [f"{topic}/0"]  # why its lag grows
    assert "1 input partitions wait in the broker" in worker.log_path.read_text()
    # the family's other partitions speak (an hour ahead): it starts, and the partition
    # left in the broker is read on from where it stopped
    later = start + n * 1000 + 3_600_000
    asyncio.run(produce(broker.bootstrap, [m for p in (1, 2, 3)
                                           for m in views(topic, later, n + p, 1, p)]))
    wait_for(lambda: worker.health()["events"] == n + 3, 60, "every event counted", worker)
    health = worker.health()
    assert (health["held"], health["late"], health["duplicates"]) == (0, 0, 0), health
    assert health["waiting"] == []
    # its cycles are freed by its timer only (streams/cycles.py), not as allocations pile up
    assert health["cycles"]["automatic"] is False, health["cycles"]


def test_the_accounts_stage_names_the_partitions_it_holds_its_copies_for(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    """The stage's input is other shards' copies: it cannot leave them in the broker, so it
    holds them until every input partition feeding it has delivered (or gone idle). With no
    idle timeout and partitions that never deliver, it says which ones, in /health and in
    the log (docs/operations.md)."""
    settings = isolated  # no idle timeout
    topic = settings.topic(FAMILY_TOPIC["web"])
    start = int(time.time() * 1000) - 2 * 86_400_000
    worker = start_worker(settings)
    # page views naming an account are copied to the stage, held ones too
    asyncio.run(produce(broker.bootstrap, views(topic, start, 0, MAX_HELD + 5_000, 0,
                                                account_id="acme")))
    wait_for(lambda: worker.health().get("accounts_stage", {}).get("held", 0) > MAX_HELD, 60,
             "the stage holding copies", worker)
    stage = worker.health()["accounts_stage"]
    assert stage["events"] == 0
    awaiting = stage["awaiting"]
    assert f"{topic}/0" not in awaiting  # it delivered
    assert {f"{topic}/{p}" for p in (1, 2, 3)} <= set(awaiting), stage
    assert settings.topic(FAMILY_TOPIC["email"]) + "/0" in awaiting
    wait_for(lambda: "the accounts stage holds" in worker.log_path.read_text(), 30,
             "the log line", worker)
    line = next(ln for ln in worker.log_path.read_text().splitlines()
                if "the accounts stage holds" in ln)
    assert f"{topic}/1" in line and f"{topic}/0," not in line, line
