"""A shard's logic without a broker: batches in, DLQ/late copies, the outbox held until a
durable snapshot, commits no further than the snapshot, takeover by another worker from the
state table, re-reads after a hole, and replays skipped. The I/O is a recording fake of the
``ShardIO`` / ``StateStore`` interfaces the Faust adapter implements."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka.errors import UnknownError

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.records import window_key
from streams.durable import Abandoned
from streams.settings import Settings
from streams.shard import Shard
from streams.shard_ports import Outputs
from streams.state import EPOCH, Offsets, record_epoch
from tests.helpers import DEFAULT_CATALOG, final_values, replay

SETTINGS = replace(Settings(), snapshot_interval=0.0, idle_timeout=0.0)
EMAIL = DEFAULT_CATALOG.restrict(("email",))
TOPIC = "email-events"
T = TypeVar("T")


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    timestamp: float | None = None  # the record's, in seconds (Faust)


class FakeIO:
    def __init__(self, partitions: int = 2) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.stamps: list[float | None] = []  # the records' timestamps, as sent
        self.routed: list[tuple[str, int, int, str]] = []
        self.commits: list[Offsets] = []
        self.seeks: list[tuple[tuple[str, int], int]] = []
        self.refuse_commits = False
        self.lost = False
        self.starts: dict[tuple[str, int], int] = {}  # log start offsets (retention)
        self.positions: dict[tuple[str, int], int] = {}  # the consumer's next offsets
        self.highwaters: dict[tuple[str, int], int] = {}  # the log ends, as last fetched
        self.gaps: set[int] = set()  # offsets with no record (transaction markers)
        self.asked: list[tuple[tuple[str, int], int]] = []  # first_offset questions
        self.tps = {(TOPIC, p) for p in range(partitions)}

    async def send(self, topic: str, key: bytes | None, value: bytes,
                   timestamp: float | None = None) -> None:
        self.sent.append((topic, key, value))
        self.stamps.append(timestamp)

    async def flush(self) -> None:
        pass

    async def route(self, topic: str, msg: Any, reason: str) -> None:
        self.routed.append((topic, msg.partition, msg.offset, reason))

    async def commit(self, offsets: Offsets) -> bool:
        if self.refuse_commits:
            return False
        self.commits.append(dict(offsets))
        return True

    async def seek(self, tp: tuple[str, int], offset: int) -> None:
        self.seeks.append((tp, offset))

    def assignment(self) -> set[tuple[str, int]]:
        return set(self.tps)

    def highwater(self, tp: tuple[str, int]) -> int | None:
        return self.highwaters.get(tp)

    def membership_lost(self) -> bool:
        return self.lost

    async def log_start(self, tp: tuple[str, int]) -> int:
        return self.starts.get(tp, 0)

    async def position(self, tp: tuple[str, int]) -> int | None:
        return self.positions.get(tp)

    async def first_offset(self, tp: tuple[str, int], start: int) -> int | None:
        self.asked.append((tp, start))
        first = max(start, self.starts.get(tp, 0))
        while first in self.gaps:  # offsets the log has no record at
            first += 1
        return first

    def windows(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.sent if t == "kpi-windows"]


class FakeTable:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.forgotten: list[str] = []

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        self.data.update(records)

    async def delete(self, keys: list[bytes]) -> None:
        assert len(set(keys)) == len(keys), "a key deleted twice"
        for k in keys:
            self.data.pop(k, None)

    def records(self, shard: str) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in self.data.items() if k.startswith(f"{shard}|".encode())]

    def forget(self, shard: str) -> None:
        self.forgotten.append(shard)


class History:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, records: list[dict[str, Any]]) -> None:
        self.records += records


def new_shard(io: FakeIO, table: FakeTable, settings: Settings = SETTINGS) -> Shard:
    out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                  lambda s: None)
    return Shard("email", EMAIL, {TOPIC}, settings, io, table, out)


GEN = Generator(GeneratorConfig(rate=30, duration_s=1200, seed=9, history_days=0,
                                duplicates=0.02, invalid=0.02))
LINES = [raw for _, (topic, raw) in GEN.messages() if topic == TOPIC]


def traffic() -> list[bytes]:
    return list(LINES)


def oracle(lines: list[bytes]) -> dict[str, dict[str, Any]]:
    """Replay's windows: the worker's must equal them."""
    return final_values(replay(lines, EMAIL, now_ms=GEN.end_ms + 60_000))


def batches(lines: list[bytes], partitions: int = 2, size: int = 200) -> list[list[Msg]]:
    offsets = [0] * partitions
    msgs = []
    for i, raw in enumerate(lines):
        p = i % partitions
        msgs.append(Msg(TOPIC, p, offsets[p], raw))
        offsets[p] += 1
    return [msgs[i:i + size] for i in range(0, len(msgs), size)]


def one_batch(partitions: int, n: int) -> tuple[FakeIO, Shard, list[Msg]]:
    """A fresh shard on a fresh table, and the first n messages spread over partitions."""
    io = FakeIO(partitions=partitions)
    return io, new_shard(io, FakeTable()), batches(traffic()[:n], partitions=partitions,
                                                   size=n)[0]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_shard_counts_routes_and_publishes_finals_only_once_durable() -> None:
    lines = traffic()
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate(table.records("email"), 0.0)
        for b in batches(lines):
            await shard.handle(b)
        assert shard.outbox and not io.windows(), "finals wait for a durable snapshot"
        await shard.snapshot(force=True)

    run(go())
    assert io.windows() and not shard.outbox
    # bad input went to the DLQ with its reason, never into the counts
    reasons = {r for t, _, _, r in io.routed if t == "kpi-dlq"}
    assert reasons and all(r != "late" for r in reasons)
    assert sum(shard.stats.invalid.values()) == len([1 for t, *_ in io.routed if t == "kpi-dlq"])
    # commits reach exactly what the snapshot covers: the next offset per partition
    assert io.commits[-1] == {tp: off + 1 for tp, off in shard.applied.items()}
    # what went out equals replay's windows closed so far (revisions included)
    want = {k: v for k, v in oracle(lines).items()
            if k in final_values(io.windows())}
    assert want and final_values(io.windows()) == want


def test_a_shard_with_few_keys_in_memory_counts_as_replay() -> None:
    """``KPI_STATE_CACHE_KEYS``: each table on disk keeps at most that many keys in memory,
    the rest read back from RocksDB when their events come: the same windows."""
    lines = traffic()
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table, replace(SETTINGS, state_cache_keys=100))
    tables = shard.durable.tables
    assert tables is not None and tables.cache_keys == 100
    cached: list[int] = []

    async def go() -> None:
        await shard.activate(table.records("email"), 0.0)
        for b in batches(lines):
            await shard.handle(b)
            cached.append(max(len(t.cache) for t in tables.tables))
        await shard.snapshot(force=True)

    run(go())
    assert max(cached) == 100  # full, and never over
    assert max(len(t) for t in tables.tables) > 300  # most keys were on disk only
    want = {k: v for k, v in oracle(lines).items() if k in final_values(io.windows())}
    assert want and final_values(io.windows()) == want


def test_finals_of_a_commit_under_way_are_still_pending() -> None:
    """/health's pending_finals counts the closed windows of a commit still being written:
    a first commit after a whole log re-read takes seconds, and a reader told "none
    pending" then would miss them on kpi-windows (the kill loop's missing finals)."""
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)
    seen: list[int] = []
    write = table.write

    async def slow_write(records: list[tuple[bytes, bytes]]) -> None:
        seen.append(shard.health()["pending_finals"])  # while the commit is being written
        await write(records)

    table.write = slow_write  # type: ignore[method-assign]

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(traffic()):
            await shard.handle(b)
        waiting = len(shard.outbox)
        assert waiting and shard.health()["pending_finals"] == waiting
        seen.clear()
        await shard.snapshot(force=True)
        assert seen and min(seen) >= waiting  # (and the revisions the commit carries)

    run(go())
    assert shard.health()["pending_finals"] == 0 and io.windows()


def test_a_refused_commit_keeps_the_finals_for_the_next_snapshot() -> None:
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(traffic()):
            await shard.handle(b)
        io.refuse_commits = True
        await shard.snapshot(force=True)
        assert not io.windows() and shard.outbox
        io.refuse_commits = False
        await shard.snapshot(force=True)

    run(go())
    assert io.windows() and not shard.outbox


def test_a_restored_outbox_survives_a_snapshot_taken_before_it_is_sent() -> None:
    """A snapshot's closed windows whose offsets were never committed come back with it, to
    be sent at the next owner's first tick; a revoke before that tick snapshots again: the
    windows must stay in the state (they were lost there, and missing from kpi-windows,
    in the kill loop)."""
    io, table = FakeIO(), FakeTable()
    first = new_shard(io, table)
    parts = batches(traffic())

    async def go() -> tuple[set[str], list[dict[str, Any]]]:
        await first.activate([], 0.0)
        for b in parts[:-1]:
            await first.handle(b)
        io.refuse_commits = True  # the state is written, the offsets are not: not sent
        await first.snapshot(force=True)
        waiting = {key.decode() for _, key, _ in first.outbox}
        assert waiting and not io.windows()
        second = new_shard(FakeIO(), table)
        await second.activate(table.records("email"), 0.0)
        await second.handle(parts[-1])
        await second.deactivate()  # revoked before its first tick
        third_io = FakeIO()
        third = new_shard(third_io, table)
        await third.activate(table.records("email"), 0.0)
        await third.tick()
        return waiting, third_io.windows()

    waiting, sent = run(go())
    assert waiting <= {window_key(r) for r in sent}


class FailingTable(FakeTable):
    """A state table whose writes the broker refuses while ``failing``."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        if self.failing:
            from aiokafka.errors import UnknownError

            raise UnknownError("the changelog is gone")
        await super().write(records)


def test_a_refused_state_write_keeps_the_worker_and_the_finals_and_retries() -> None:
    """A broker back empty answers UnknownError to the changelog writes for a while: the
    emit timer must not crash the worker, and nothing is lost (issue 20's failure model)."""
    io, table = FakeIO(), FailingTable()
    shard = new_shard(io, table)
    lines = traffic()

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(lines):
            await shard.handle(b)
        table.failing = True
        seq = shard.snapshot_seq
        assert await shard.snapshot(force=True) is False  # no exception
        assert shard.outbox and not io.windows() and shard.snapshot_seq == seq
        table.failing = False
        assert await shard.snapshot(force=True) is True

    run(go())
    assert io.windows() and not shard.outbox
    # what was committed is the whole state: another owner restores it and finds the counts
    other = new_shard(FakeIO(), table)
    run(other.activate(table.records("email"), 0.0))
    assert other.engine.events_total == shard.engine.events_total


def test_a_commit_that_reached_a_broker_back_empty_is_passed_over() -> None:
    """A commit in flight when the broker went away lands on the one that came back empty:
    its manifest and chunks, and the parts it changed, but neither the owner's claim nor the
    parts an earlier commit wrote (the CI failure of stop 35: ``state record ...|pt|... is
    missing``). Its offsets are the old log's: the next owner counts from nothing, in an
    epoch above it, and deletes it with its first commit."""
    lines = traffic()
    parts = batches(lines)
    table = FakeTable()
    first = new_shard(FakeIO(), table)

    async def go() -> None:
        await first.activate([], 0.0)
        for b in parts[:len(parts) // 2]:
            await first.handle(b)
        await first.snapshot(force=True)
        before = dict(table.data)
        await first.handle(parts[len(parts) // 2])
        await first.snapshot(force=True)
        late = {k: v for k, v in table.data.items() if before.get(k) != v}
        assert any(b"|manifest|" in k for k in late) and not any(b"|claim" in k for k in late)
        assert set(before) - set(late), "an earlier commit's records the late one needs"
        table.data = late  # the broker came back empty, then the late write reached it

    run(go())
    io2 = FakeIO()
    second = new_shard(io2, table)

    async def again() -> None:
        await second.activate(table.records("email"), 0.0)
        assert second.applied == {} and second.snapshot_seq // EPOCH > first.snapshot_seq // EPOCH
        for b in parts:
            await second.handle(b)
        await second.snapshot(force=True)

    run(again())
    assert second.engine.events_total == first_run_counts(lines)
    old = first.snapshot_seq // EPOCH
    assert not [k for k in table.data if record_epoch(k, "email") == old], "orphans deleted"


def test_a_commit_whose_shard_is_lost_meanwhile_writes_no_manifest() -> None:
    """Lost while a commit's records were in flight (they may reach a broker that came back
    empty): the commit stops before its manifest, so nothing restorable points at them."""
    io = FakeIO()
    table = LosingTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(traffic()):
            await shard.handle(b)
        table.on_write = shard.lose
        assert await shard.snapshot(force=True) is False

    run(go())
    assert table.on_write is None, "the commit wrote its records"
    assert not [k for k in table.data if b"|manifest|" in k]
    assert any(b"|pt|" in k for k in table.data) and not io.windows()


async def lost_behind_a_batch(shard: Shard, then: Awaitable[T]) -> T:
    """The group drops the worker while a batch is under way (the shard's lock held), and
    ``then`` (a commit, an emit) comes after, waiting behind the loss; returns its result."""
    await shard._state_lock.acquire()  # a batch under way
    lost = asyncio.ensure_future(shard.lose())
    await asyncio.sleep(0)  # the loss waits for the batch...
    after = asyncio.ensure_future(then)
    await asyncio.sleep(0)  # ... and so does ``then``, behind it
    shard._state_lock.release()
    await lost
    return await after


def test_a_commit_waiting_for_a_batch_while_the_shard_is_lost_writes_nothing() -> None:
    """A timed commit that passed its checks and waits for the batch under way, while the
    group drops the worker: the loss closes the id store (its ids not yet persisted go) and
    the commit must not run after it. Run, it wrote the engine's state, whose events count
    those ids, without them: the next owner counted their duplicates as new events (the
    kill loop's 14 and 16 double counts)."""
    lines = traffic()
    parts = batches(lines)
    cut = len(parts) // 2
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> bool:
        await shard.activate([], 0.0)
        for b in parts[:cut]:
            await shard.handle(b)
        await shard.snapshot(force=True)
        for b in parts[cut:cut + 3]:  # ids remembered, not yet persisted
            await shard.handle(b)
        return await lost_behind_a_batch(shard, shard.snapshot(force=True))

    committed = run(go())
    manifests = [k for k in table.data if b"|manifest|" in k]
    assert len(manifests) == 1, manifests  # the first commit's only
    assert committed is False
    # the next owner reads the log from the one durable commit, then the producer sends
    # the batches of the lost commit again (a retry): those are duplicates, counted once
    ends = {m.partition: m.offset + 1 for b in parts for m in b}
    again = []
    for m in [m for b in parts[cut:cut + 3] for m in b]:
        again.append(replace(m, offset=ends[m.partition]))
        ends[m.partition] += 1
    other = new_shard(FakeIO(), table)

    async def take_over() -> None:
        await other.activate(table.records("email"), 0.0)
        for b in [*parts, again]:
            await other.handle(b)

    run(take_over())
    assert other.engine.events_total == first_run_counts(lines)


def test_an_emit_waiting_for_a_batch_while_the_shard_is_lost_shows_nothing() -> None:
    """The emit timer, the same way: once the shard is lost it closes no window, sends no
    open value and shows no KPI (its tables are closed, another worker owns its output)."""
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(traffic()):
            await shard.handle(b)
        await lost_behind_a_batch(shard, shard.tick())

    run(go())
    assert not io.sent and not shard.stats.kpis and not shard.outbox


class PausingIO(FakeIO):
    """Asked where a partition's log starts, it answers once ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__(partitions=3)
        self.hold, self.asking = asyncio.Event(), asyncio.Event()

    async def log_start(self, tp: tuple[str, int]) -> int:
        self.asking.set()
        await self.hold.wait()
        return await super().log_start(tp)


def test_a_handover_includes_the_batch_under_way() -> None:
    """A rebalance revokes the shard while a batch is under way that has applied nothing
    yet (it asks the broker where a partition's log starts, at its first message). The
    handover's commit waits for the batch and makes it durable. It used to check for news
    before the batch applied anything, find none, and leave the batch to the next owner to
    read again: correct, but a re-read of what was counted."""
    parts = batches(traffic())  # partitions 0 and 1; 2 speaks first in the batch under way
    io, table = PausingIO(), FakeTable()
    shard = new_shard(io, table)
    io.starts[(TOPIC, 2)] = 7
    first_of_2 = [Msg(TOPIC, 2, 7 + i, m.value) for i, m in enumerate(parts[4][:50])]

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in parts[:3]:
            await shard.handle(b)
        assert await shard.snapshot(force=True)
        batch = asyncio.ensure_future(shard.handle(first_of_2 + parts[3]))
        await io.asking.wait()  # the batch holds the shard's lock, nothing applied yet
        handover = asyncio.ensure_future(shard.on_revoked(io.assignment()))
        await asyncio.sleep(0)
        io.hold.set()
        await batch
        await handover

    run(go())
    assert not shard.active
    other = new_shard(FakeIO(partitions=3), table)
    run(other.activate(table.records("email"), 0.0))
    assert other.applied == {(TOPIC, 0): 399, (TOPIC, 1): 399, (TOPIC, 2): 56}
    assert other.engine.events_total == shard.engine.events_total


class SlowClaimTable(FakeTable):
    """A table whose first write (the activation's claim) waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.writing, self.release = asyncio.Event(), asyncio.Event()

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        if not self.release.is_set():
            self.writing.set()
            await self.release.wait()
        await super().write(records)


@pytest.mark.parametrize("when", ["while it claims", "before it starts"])
def test_an_activation_revoked_before_it_ends_stands_by(when: str) -> None:
    """A rebalance revokes the shard's partitions while its activation writes the claim (the
    emit timer's retry), or before a recovery that ended late activates it (the consumer
    lists a revoked partition until the next assignment). Active anyway, the shard showed the
    KPIs of the state it restored beside the new owner's, and a window its idle advance closed
    would make it commit: its state in its own epoch, the group's offsets back to its own."""
    table = SlowClaimTable()
    table.release.set()
    parts = batches(traffic())
    first = new_shard(FakeIO(), table)  # the previous owner: half the input, durable

    async def go() -> Shard:
        await first.activate([], 0.0)
        for b in parts[:len(parts) // 2]:
            await first.handle(b)
        assert await first.snapshot(force=True)
        await first.deactivate()
        table.release.clear()
        io = FakeIO()
        shard = new_shard(io, table)
        if when == "before it starts":
            await shard.on_revoked(io.assignment())
            table.release.set()
            await shard.activate(table.records("email"), 0.0)
        else:
            activating = asyncio.ensure_future(shard.activate(table.records("email"), 0.0))
            await table.writing.wait()
            await shard.on_revoked(io.assignment())  # still listed, as aiokafka does
            table.release.set()
            await activating
        assert not shard.active
        manifests = {k for k in table.data if b"|manifest|" in k}
        await shard.handle(parts[-1])
        await shard.tick()
        assert await shard.snapshot(force=True) is False
        assert not shard.stats.kpis and shard.health()["role"] == "standby"
        assert not io.commits and {k for k in table.data if b"|manifest|" in k} == manifests
        # assigned back (on_assigned), the next recovery activates it as usual
        shard.revoked -= io.assignment()
        await shard.activate(table.records("email"), 0.0)
        for b in parts:
            await shard.handle(b)
        return shard

    shard = run(go())
    assert shard.active and shard.engine.events_total == first_run_counts(traffic())


def test_a_standby_emit_does_not_wait_for_a_restore() -> None:
    """A standby's emit returns at once, not behind its lock: a restore holds that lock for
    seconds, and the worker's emit timer ticks the shards one after another."""
    shard = new_shard(FakeIO(), FakeTable())

    async def go() -> None:
        await shard._state_lock.acquire()  # a restore under way
        await asyncio.wait_for(shard.tick(), 1.0)

    run(go())


def test_a_commit_encoded_before_a_close_is_abandoned_unwritten() -> None:
    """The same rule where commits are written (``Durable.write``), whoever calls it: a
    commit encoded before its shard's close writes nothing."""
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(batches(traffic())[0])
        commit = shard.durable.prepare(shard.engine, shard.snapshot_seq + 1, shard.applied,
                                       {}, [], [], shard.baselines.snapshot())
        assert commit.changes.ids  # it carries ids: they go with the close
        before = dict(table.data)
        shard.durable.close()
        with pytest.raises(Abandoned):
            await shard.durable.write(commit)
        assert table.data == before

    run(go())


class LosingTable(FakeTable):
    """Runs ``on_write`` (once) while a write is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.on_write: Callable[[], Awaitable[None]] | None = None

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        hook, self.on_write = self.on_write, None
        if hook is not None:
            await hook()
        await super().write(records)


def test_another_worker_takes_over_from_the_state_table_without_loss_or_double() -> None:
    lines = traffic()
    parts = batches(lines)
    cut = len(parts) // 2
    table = FakeTable()
    io1, io2 = FakeIO(), FakeIO()
    first, second = new_shard(io1, table), new_shard(io2, table)

    async def go() -> None:
        await first.activate([], 0.0)
        for b in parts[:cut + 2]:
            await first.handle(b)
        await first.snapshot(force=True)
        durable = dict(first.applied)
        for b in parts[cut + 2:cut + 4]:  # counted after the snapshot, then the worker dies
            await first.handle(b)
        await second.activate(table.records("email"), 0.0)
        assert second.applied == durable and second.snapshot_seq > first.snapshot_seq
        # the new owner re-reads from the committed offsets: the whole log again
        for b in parts:
            await second.handle(b)
        await second.snapshot(force=True)
        assert second.replayed_skipped > 0

    run(go())
    sent = io1.windows() + io2.windows()
    want = oracle(lines)
    got = final_values(sent)
    assert got and all(got[k] == want[k] for k in got)
    assert second.engine.events_total == first_run_counts(lines)


def test_a_handover_keeps_how_far_each_partition_got() -> None:
    """Partitions 2 and 3 read to their end while the family waited for partition 1, then
    a revoke: the handover snapshot must carry how far each partition got. It carried none
    (the revoke forgot them first); the next owner registered them anew, and partitions
    with nothing left to read never spoke again: the watermark stood still and no window
    closed (the kill loop's missing finals)."""
    lines = traffic()
    msgs = batches(lines, partitions=4, size=len(lines))[0]
    part = {p: [m for m in msgs if m.partition == p] for p in range(4)}
    table = FakeTable()
    io1, io2 = FakeIO(partitions=4), FakeIO(partitions=4)
    first, second = new_shard(io1, table), new_shard(io2, table)

    async def go() -> None:
        await first.activate([], 0.0)
        for m in [*part[2], *part[3], *part[0][:len(part[0]) // 2], part[1][0]]:
            await first.handle([m])
        assert first.engine.windows["email"].started
        await first.on_revoked(set(io1.tps))  # the handover
        await second.activate(table.records("email"), 0.0)
        for i in range(0, len(msgs), 200):  # the log again from the committed offsets
            await second.handle(msgs[i:i + 200])
        await second.snapshot(force=True)

    run(go())
    # the same messages, read straight through by one owner
    io3 = FakeIO(partitions=4)
    straight = new_shard(io3, FakeTable())

    async def once() -> None:
        await straight.activate([], 0.0)
        for m in [*part[2], *part[3], *part[0], *part[1]]:
            await straight.handle([m])
        await straight.snapshot(force=True)

    run(once())
    got, want = final_values(io1.windows() + io2.windows()), final_values(io3.windows())
    assert len(want) > 100 and got == want
    assert second.engine.watermark("email") == straight.engine.watermark("email")
    assert second.engine.events_total == straight.engine.events_total


def test_a_state_taken_over_after_ten_minutes_down_moves_event_time_on_no_faster() -> None:
    """With an idle timeout, a family quiet for that long moves on with the wall clock. The
    state's last events came 10 minutes before the next owner took it over: those minutes
    down are no quiet time, or event time jumps 10 minutes at its first tick and closes
    windows the backlog still feeds."""
    settings = replace(SETTINGS, idle_timeout=30.0)
    lines = traffic()
    table = FakeTable()
    first = new_shard(FakeIO(), table, settings)
    second = new_shard(FakeIO(), table, settings)

    async def go() -> tuple[int, int]:
        await first.activate([], 0.0)
        for b in batches(lines)[:10]:
            await first.handle(b)
        wm = first.engine.watermarks["email"]
        wm.last_wall -= 600_000  # as if the last events came 10 minutes ago
        for src in wm.seen_wall:
            wm.seen_wall[src] -= 600_000
        await first.snapshot(force=True)
        before = first.engine.watermark("email")
        await second.activate(table.records("email"), 0.0)
        await second.tick()
        return before, second.engine.watermark("email")

    before, after = run(go())
    assert after == before


def test_a_partition_fetched_behind_the_others_is_not_idle() -> None:
    """Partitions filled unevenly: partition 1's records wait behind partition 0's fetches,
    and no batch of it came for longer than the idle timeout. Its consumer position is
    short of its log end, so it still holds the watermark: no window it feeds closes
    before its events are in. Taken for idle, it let partition 0's event time close them
    without it: finals published short, then revised (or its events late, past a day)."""
    settings = replace(SETTINGS, idle_timeout=30.0)
    msgs = batches(traffic(), partitions=2, size=len(LINES))[0]
    part = {p: [m for m in msgs if m.partition == p] for p in range(2)}
    seen: dict[bool, tuple[int, int]] = {}  # partition 1's event time, the watermark
    revised: dict[bool, int] = {}
    for behind in (False, True):
        io = FakeIO()
        shard = new_shard(io, FakeTable(), settings)

        async def go(shard: Shard, io: FakeIO, behind: bool) -> None:
            await shard.activate([], 0.0)
            await shard.handle(part[0][:50] + part[1][:50])
            await shard.handle(part[0][50:])
            await shard.tick()
            wm = shard.engine.watermarks["email"]
            wm.seen_wall[(TOPIC, 1)] -= 40_000  # its last batch came 40 s ago
            if behind:  # what the consumer knows of it: records past its position
                io.highwaters[(TOPIC, 1)] = len(part[1])
                io.positions[(TOPIC, 1)] = 50
            await shard.tick()
            seen[behind] = (wm.sources[(TOPIC, 1)], wm.value)
            await shard.handle(part[1][50:])
            await shard.snapshot(force=True)

        run(go(shard, io, behind))
        revised[behind] = sum(1 for r in io.windows() if r["revision"] > 0)
    # held back where partition 1 stood; taken for idle, moved on to partition 0's time
    assert seen[True][1] == seen[True][0] < seen[False][1]
    assert revised[False] > 50 and revised[True] == 0


def first_run_counts(lines: list[bytes]) -> dict[str, int]:
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)

    async def go() -> None:
        await shard.activate([], 0.0)
        for b in batches(lines):
            await shard.handle(b)

    run(go())
    return dict(shard.engine.events_total)


def test_a_gap_in_a_partition_is_read_again_from_where_the_state_stops() -> None:
    io, shard, msgs = one_batch(partitions=1, n=50)

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[:10])
        await shard.handle(msgs[15:20])  # offsets 10..14 never arrived
        assert io.seeks == [((TOPIC, 0), 10)]
        assert shard.applied[(TOPIC, 0)] == 9
        await shard.handle(msgs[10:20])  # read again: applied in order
        assert shard.applied[(TOPIC, 0)] == 19
        await shard.handle(msgs[5:12])  # already counted: skipped
        assert shard.applied[(TOPIC, 0)] == 19 and shard.replayed_skipped == 7

    run(go())


def test_a_partition_s_run_that_does_not_simply_follow_is_taken_message_by_message() -> None:
    """A batch's records of one partition are applied as one run when they simply follow
    the state; a run that straddles what is counted, or has a hole inside, is judged one
    message at a time: the counted part skipped, the rest up to the hole applied."""
    io, shard, msgs = one_batch(partitions=1, n=50)

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[:10])
        await shard.handle(msgs[5:15])  # 5..9 counted already, 10..14 new
        assert shard.applied[(TOPIC, 0)] == 14 and shard.replayed_skipped == 5
        await shard.handle(msgs[15:18] + msgs[20:25])  # 18, 19 missing inside the run
        assert shard.applied[(TOPIC, 0)] == 17 and io.seeks == [((TOPIC, 0), 18)]
        assert shard.stale_skipped == 5

    run(go())
    _, ref, _ = one_batch(partitions=1, n=50)

    async def straight() -> None:
        await ref.activate([], 0.0)
        await ref.handle(msgs[:18])

    run(straight())
    assert shard.engine.state_sizes() == ref.engine.state_sizes()
    assert shard.engine.duplicates_total == ref.engine.duplicates_total


def test_a_stale_batch_after_the_re_read_is_no_gap_and_a_real_gap_is_passed() -> None:
    """After the seek that re-reads a gap, the consumer's buffers can still hand over
    messages fetched before it: they do not follow either, and applying them would lose
    what lies between for good (the kill loop's lost events). Only a gap the broker
    confirms, its log's first record after the state's last, is passed over."""
    io, shard, msgs = one_batch(partitions=1, n=50)

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[:10])
        await shard.handle(msgs[15:18])  # 10..14 missing: read again from 10
        await shard.handle(msgs[18:20])  # still buffered from before the seek
        assert shard.applied[(TOPIC, 0)] == 9
        assert io.asked == [((TOPIC, 0), 10)]  # the broker has 10: a stale batch
        await shard.handle(msgs[10:20])  # the re-read
        assert shard.applied[(TOPIC, 0)] == 19
        # offsets 20-22 are transaction markers: no record there, the gap is the log's
        io.gaps = {20, 21, 22}
        await shard.handle(msgs[23:25])
        assert shard.applied[(TOPIC, 0)] == 19  # first read again from 20
        await shard.handle(msgs[23:25])  # the re-read brings 23 first: passed over
        assert shard.applied[(TOPIC, 0)] == 24
        assert io.asked[-1] == ((TOPIC, 0), 20)

    run(go())
    # none lost, none twice: the distinct ids of 0..19 and 23, 24, as a shard reading them
    # without any gap counts them
    ref_io, ref, _ = one_batch(partitions=1, n=50)

    async def straight() -> None:
        await ref.activate([], 0.0)
        await ref.handle(msgs[:20])
        await ref.handle([replace(m, offset=20 + i) for i, m in enumerate(msgs[23:25])])

    run(straight())
    assert shard.engine.state_sizes() == ref.engine.state_sizes()
    assert ref.applied[(TOPIC, 0)] == 21 and not ref_io.seeks


def test_a_partition_the_state_never_saw_is_read_from_its_log_start() -> None:
    """Faust drops a fetched batch it does not hand over and seeks back only to committed
    offsets: a partition with none (the state never saw it) must still be read from its
    log's start, not from wherever its first delivered message happens to be."""
    io, shard, msgs = one_batch(partitions=2, n=60)
    p1 = [m for m in msgs if m.partition == 1]

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle([m for m in msgs if m.partition == 0])
        await shard.handle(p1[4:])  # offsets 0..3 of partition 1 were dropped
        assert io.seeks == [((TOPIC, 1), 0)] and (TOPIC, 1) not in shard.applied
        await shard.handle(p1)
        assert shard.applied[(TOPIC, 1)] == p1[-1].offset

    run(go())
    assert sum(shard.engine.events_total.values()) + shard.engine.held_total + sum(
        shard.stats.invalid.values()) + shard.engine.duplicates_total == len(msgs)

    # a log whose start moved on (retention dropped offsets 0..6) is read from there
    io2, table2 = FakeIO(partitions=1), FakeTable()
    io2.starts[(TOPIC, 0)] = 7
    shard2 = new_shard(io2, table2)
    only = batches(traffic()[:20], partitions=1, size=20)[0]
    run(shard2.activate([], 0.0))
    run(shard2.handle(only[7:]))
    assert io2.seeks == [] and shard2.applied[(TOPIC, 0)] == 19


def test_a_broker_that_cannot_answer_never_stops_the_shard_nor_loses_a_message() -> None:
    """A broker back empty answers UnknownError while it elects leaders: the log start of a
    partition the state never saw can't be known, so its message waits (read again from
    where it is), and once the broker answers the partition is read from its log's start."""
    io, shard, msgs = one_batch(partitions=1, n=30)
    answers: list[BaseException | None] = [UnknownError(), None]
    real = io.log_start

    async def log_start(tp: tuple[str, int]) -> int:
        error = answers.pop(0)
        if error is not None:
            raise error
        return await real(tp)

    io.log_start = log_start  # type: ignore[method-assign]

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[3:])  # 0..2 dropped by the consumer, the broker away
        assert io.seeks == [((TOPIC, 0), 3)] and (TOPIC, 0) not in shard.applied
        await shard.handle(msgs[3:])  # read again: the broker says the log starts at 0
        assert io.seeks[-1] == ((TOPIC, 0), 0) and (TOPIC, 0) not in shard.applied
        await shard.handle(msgs)
        assert shard.applied[(TOPIC, 0)] == msgs[-1].offset

    run(go())
    assert sum(shard.engine.events_total.values()) + shard.engine.held_total + sum(
        shard.stats.invalid.values()) + shard.engine.duplicates_total == len(msgs)


def test_messages_the_consumer_passed_with_none_after_them_are_read_again() -> None:
    """Faust dropped the last messages of two partitions (none follows to reveal the gap):
    once the consumer's position stands still past the state's, the shard reads them again;
    a position on the move is left alone."""
    io, shard, msgs = one_batch(partitions=3, n=60)
    p0 = [m for m in msgs if m.partition == 0]

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(p0[:10])
        io.positions = {(TOPIC, 0): 20, (TOPIC, 1): 5, (TOPIC, 2): 0}  # 1: never handed over
        await shard.tick()
        assert io.seeks == []  # first sight: maybe on their way
        io.positions[(TOPIC, 2)] = 3  # moving
        await shard.tick()
        assert sorted(io.seeks) == [((TOPIC, 0), 10), ((TOPIC, 1), 0)]
        await shard.handle(p0[10:])
        assert shard.applied[(TOPIC, 0)] == p0[-1].offset
        io.positions[(TOPIC, 2)] = 6  # still moving
        await shard.tick()  # partition 1 as stale as before: read again once, not in a loop
        assert len(io.seeks) == 2

    run(go())


def test_a_re_read_dropped_again_is_read_again_and_a_gap_of_the_log_is_not() -> None:
    """The messages read again were dropped too (a rebalance stopped the flow; Faust seeks
    back only to committed offsets): the consumer read on past them and stands still again.
    They are read again once more, as the broker has them; a trailing gap of the log's own
    (no record there) is read again once only. Left unread, the kill loop's social family
    waited for good on its one partition that never spoke."""
    async def dropped_again(io: FakeIO, shard: Shard, msgs: list[Msg], gap: bool) -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[:10])
        if gap:
            io.gaps = set(range(10, 20))  # the log has no record from 10 to 19
        io.positions = {(TOPIC, 0): 20}
        await shard.tick()
        await shard.tick()
        assert io.seeks == [((TOPIC, 0), 10)]
        io.positions[(TOPIC, 0)] = 14  # reading on from 10 ...
        await shard.tick()
        io.positions[(TOPIC, 0)] = 20  # ... and what it read dropped: standing still
        await shard.tick()
        await shard.tick()
        await shard.tick()

    for gap in (False, True):
        io, shard, msgs = one_batch(partitions=1, n=30)
        run(dropped_again(io, shard, msgs, gap))
        assert io.seeks == [((TOPIC, 0), 10)] * (1 if gap else 2), gap
        # the broker asked once, not at every emit while the position stands still
        assert io.asked.count(((TOPIC, 0), 10)) == 1, (gap, io.asked)
    # a new tenure (a revoke and a takeover) reads again what the last one did
    io, shard, msgs = one_batch(partitions=1, n=30)

    async def takeover() -> None:
        await shard.activate([], 0.0)
        await shard.handle(msgs[:10])
        io.positions = {(TOPIC, 0): 20}
        await shard.tick()
        await shard.tick()
        shard.gaps.restart()
        await shard.tick()
        await shard.tick()

    run(takeover())
    assert io.seeks == [((TOPIC, 0), 10)] * 2


def test_a_standby_counts_nothing() -> None:
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)
    run(shard.handle(batches(traffic())[0]))
    assert shard.stale_skipped == 200 and not shard.engine.events_total


def test_open_values_go_out_when_they_change_and_an_idle_shard_sends_none() -> None:
    """`kpi-updates`: each tick sends the open values that changed since last sent. An
    idle shard neither recomputes nor sends them (its CPU at rest), and /kpis still shows
    every open value."""
    lines = traffic()[:2000]
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)
    computed = 0
    real = shard.engine.open_records

    def open_records() -> list[dict[str, Any]]:
        nonlocal computed
        computed += 1
        return real()

    shard.engine.open_records = open_records  # type: ignore[method-assign]

    def updates() -> dict[bytes, dict[str, Any]]:
        out = [(k, orjson.loads(v)) for t, k, v in io.sent if t == "kpi-updates"]
        assert len({k for k, _ in out}) == len(out), "one record per key per tick"
        io.sent.clear()
        return {k: v for k, v in out if k is not None}

    sent = orjson.dumps({"event_id": "one-more", "type": "email.sent",
                         "ts": orjson.loads(lines[-1])["ts"],
                         "campaign_id": "fresh-campaign", "contact_id": "k1"})

    async def go() -> None:
        await shard.activate(table.records("email"), 0.0)
        for b in batches(lines):
            await shard.handle(b)
        await shard.tick()
        first = updates()
        assert first and len(shard.stats.kpis) == len(first) and computed == 1
        await shard.tick()
        await shard.tick()
        assert updates() == {} and computed == 1  # idle: nothing recomputed, nothing sent
        assert len(shard.stats.kpis) == len(first)
        # one more send: only the series it changes go out again
        await shard.handle([Msg(TOPIC, 0, len(lines) // 2, sent)])
        await shard.tick()
        again = updates()
        assert computed == 2 and 0 < len(again) < len(first)
        assert any(b"campaign_id=fresh-campaign" in k for k in again)
        for key, rec in again.items():
            if key in first:
                assert (rec["numerator"], rec["denominator"]) != (
                    first[key]["numerator"], first[key]["denominator"]), key
        # an owner taking the shard (back) sends every open value once: another owner may
        # have sent newer ones meanwhile
        await shard.snapshot(force=True)
        await shard.activate(table.records("email"), 0.0)
        await shard.tick()
        assert len(updates()) == len(shard.stats.kpis) > 0

    run(go())


def test_a_backlog_read_faster_than_commits_waits_for_one_past_the_bound() -> None:
    """A backlog must not hold its closed windows and event ids in memory until the next
    timed commit: once they pass ``max_uncommitted``, the batch waits for a commit. The
    counts are the same as replay's."""
    lines = traffic()

    def backlog(bound: int | None) -> tuple[FakeIO, Shard, list[int]]:
        io, table = FakeIO(), FakeTable()
        # no timed commit within the run: only the bound can cause one
        shard = new_shard(io, table, replace(SETTINGS, snapshot_interval=3600.0))
        if bound is not None:
            shard.max_uncommitted = bound
        held = []

        async def go() -> None:
            await shard.activate(table.records("email"), 0.0)
            for b in batches(lines):
                await shard.handle(b)
                held.append(shard.uncommitted())
            await shard.snapshot(force=True)

        run(go())
        return io, shard, held

    io, _, held = backlog(None)
    assert len(io.commits) == 1 and max(held) > 2000  # the default bound: one final commit
    io, shard, held = backlog(500)
    assert max(held) <= 500 and len(io.commits) > 5
    assert io.commits[-1] == {tp: off + 1 for tp, off in shard.applied.items()}
    want = {k: v for k, v in oracle(lines).items() if k in final_values(io.windows())}
    assert want and final_values(io.windows()) == want


def test_timed_commits_wait_while_a_backlog_is_read_and_resume_after() -> None:
    """Behind a backlog (the partitions' lag above a quarter of the bound) the clock
    commits nothing: the bound does. Once caught up, timed commits resume."""
    *backlog, last = batches(traffic()[:3200])
    io, table = FakeIO(), FakeTable()
    shard = new_shard(io, table)  # a timed commit is due at every tick (interval 0)
    lag = {"n": 10**6}
    io.highwater = lambda tp: shard.applied.get(tp, 0) + lag["n"]  # type: ignore[method-assign]

    async def go() -> None:
        await shard.activate(table.records("email"), 0.0)
        for b in backlog:
            await shard.handle(b)
        before = len(io.commits)
        assert shard.catching_up()
        await shard.tick()
        assert len(io.commits) == before and shard.outbox  # no timed commit behind a backlog
        lag["n"] = 1
        await shard.handle(last)
        assert not shard.catching_up()
        await shard.tick()
        assert len(io.commits) == before + 1 and not shard.outbox

    run(go())


def test_an_input_record_reads_as_a_faust_message() -> None:
    """What the adapter hands the shards: Faust's message fields, timestamp in seconds."""
    from streams.shard_ports import InputRecord
    rec = InputRecord(TOPIC, 1, 7, 1_700_000_000_123, b"k", b"{}")
    assert (rec.topic, rec.partition, rec.offset, rec.key, rec.value) == (TOPIC, 1, 7, b"k",
                                                                          b"{}")
    assert rec.timestamp == 1_700_000_000.123
    assert InputRecord(TOPIC, 1, 7, None, None, None).timestamp is None


def test_a_family_waiting_for_a_partition_leaves_those_that_spoke_unread_past_the_bound(
        ) -> None:
    """Events read before each partition of a family has spoken are held (the family's
    event time is not known yet). Past ``max_held`` of them, the partitions that spoke are
    left to the broker until the last one speaks: what they bring next would only be held
    too. Then every partition is read on, and the windows are replay's."""
    lines = traffic()
    msgs = batches(lines, partitions=3, size=len(lines))[0]
    part = {p: [m for m in msgs if m.partition == p] for p in range(3)}
    io = FakeIO(partitions=3)
    shard = new_shard(io, FakeTable())
    shard.max_held = 100
    waits = []

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle(part[0][:60] + part[1][:30])  # partition 2 silent so far
        waits.append(shard.waiting())  # 90 held: under the bound
        await shard.handle(part[1][30:60])
        waits.append(shard.waiting())  # 120 held: over it
        await shard.handle(part[2][:10])  # the last one speaks: the family starts
        waits.append(shard.waiting())
        for p in range(3):
            await shard.handle(part[p][60 if p < 2 else 10:])
        await shard.snapshot(force=True)

    run(go())
    assert waits == [set(), {(TOPIC, 0), (TOPIC, 1)}, set()]
    assert shard.engine.held_total == 0
    assert final_values(io.windows()) == {k: v for k, v in oracle(lines).items()
                                          if k in final_values(io.windows())}
    e = shard.engine
    assert sum(e.late_total.values()) == 0  # every message taken once: none late, none lost
    assert sum(e.events_total.values()) + e.duplicates_total + sum(
        shard.stats.invalid.values()) == len(msgs)
