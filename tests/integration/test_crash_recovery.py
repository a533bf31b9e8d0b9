"""Kill -9 mid-stream and restart, or let workers leave and join a group that shares the
shards: the closed windows still equal `kpi-engine replay`, nothing missing, nothing
counted twice (streams/state.py, streams/assignor.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson
import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.events import ACCOUNTS, FAMILY_TOPIC
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.state import EPOCH, key_epoch
from streams.topics import ACCOUNTS_TOPIC, state_partitions, state_topic
from tests.helpers import (
    DEFAULT_CATALOG,
    HOUR,
    SENTINEL,
    SENTINEL_AFTER,
    assert_finals_equal,
    final_values,
    ms,
    replay,
)
from tests.integration.conftest import Group, WorkerProc, consumed, wait_for, wait_settled
from tests.integration.test_streaming_equals_replay import START, drain, produce

pytestmark = pytest.mark.integration


async def produce_paced(bootstrap: str, messages: list[tuple[str, bytes, int | None]],
                        consumed_so_far: Callable[[], int], per_s: int = 20_000,
                        lead: int = 15_000, stall_s: float = 60.0) -> None:
    """Produce in slices of 1,000, about per_s messages a second, at most `lead` messages
    ahead of the consumer (so a slow machine can't finish producing before the kill). A
    consumer stalled for `stall_s` gets the rest unpaced: a failing test fails, not hangs."""
    paced = True
    for i in range(0, len(messages), 1000):
        t0 = time.monotonic()
        while paced:
            try:
                if i - consumed_so_far() < lead:
                    break
            except OSError:  # the worker was killed: produce the rest unpaced
                break
            if time.monotonic() - t0 > stall_s:
                paced = False
            await asyncio.sleep(0.05)
        await produce(bootstrap, messages[i:i + 1000])
        await asyncio.sleep(max(0.0, 1000 / per_s - (time.monotonic() - t0)))


@dataclass
class Scenario:
    """A seeded stream with invalid, duplicate, late and out-of-order events, and sentinels
    that close every window holding data; checks a run against replay."""

    gen: Generator
    lines: list[bytes]
    messages: list[tuple[str, bytes, int | None]]
    cutoff: dict[str, int]
    sentinels: int

    @classmethod
    def make(cls, settings: Settings, seed: int) -> Scenario:
        gen = Generator(GeneratorConfig(rate=150, duration_s=1200, seed=seed, start_ms=START,
                                        history_days=2, invalid=0.005, duplicates=0.01,
                                        late=0.003, late_after_s=120, disorder_s=60))
        stream = [(topic, raw) for _, (topic, raw) in gen.messages()]
        last_ts = max(ms(orjson.loads(raw)["ts"].replace("Z", "+00:00")) for _, raw in stream
                      if raw.startswith(b"{") and b'"ts":"2026' in raw)
        sentinels = [(FAMILY_TOPIC[fam], orjson.dumps(
            {"event_id": f"sentinel-{fam}-{p}", "ts": last_ts + SENTINEL_AFTER[fam],
             **extra}), p) for fam, extra in SENTINEL.items() for p in range(settings.partitions)]
        messages: list[tuple[str, bytes, int | None]] = [
            (settings.topic(t), raw, None) for t, raw in stream]
        messages += [(settings.topic(t), raw, p) for t, raw, p in sentinels]
        return cls(gen, [raw for _, raw in stream] + [raw for _, raw, _ in sentinels],
                   messages, {fam: last_ts + SENTINEL_AFTER[fam] for fam in SENTINEL_AFTER},
                   len(sentinels))

    def check(self, worker: WorkerProc | Group, bootstrap: str) -> int:
        """Counted exactly once, and the finals equal replay's; returns windows compared."""
        # the stage closes the windows of the cutoff once past them by its grace (1 h)
        wait_settled(worker, len(self.messages), 180, self.cutoff[ACCOUNTS] + HOUR)
        health = worker.health()
        st = self.gen.stats
        counts = {k: health[k] for k in ("events", "duplicates", "late_by_family", "invalid")}
        assert counts == {"events": sum(st.events.values()) + self.sentinels,
                          "duplicates": st.duplicates,
                          "late_by_family": {f: st.late.get(t, 0)
                                             for f, t in FAMILY_TOPIC.items()},
                          "invalid": sum(st.invalid.values())}, health
        published = asyncio.run(drain(bootstrap, worker.settings.topic("kpi-windows")))
        return assert_finals_equal(final_values(replay(self.lines)),
                                   final_values(orjson.loads(m.value) for m in published),
                                   self.cutoff)


@pytest.mark.parametrize("instance_id", ["", "worker-a"], ids=["dynamic", "static-membership"])
def test_kill_9_mid_stream_and_restart_equals_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc], instance_id: str) -> None:
    """Also under static membership (--instance-id): the restarted worker replaces its
    killed self in the group, and nothing is lost or counted twice."""
    sc = Scenario.make(isolated, seed=23)
    n = len(sc.messages)
    # the stream arrives in three parts (60 %, 25 %, 15 %). The first is produced at a
    # steady pace while the worker consumes, and the worker is killed -9 before it ends; the
    # second is produced while nobody consumes, and the worker is killed -9 again in it
    cuts = [0, int(n * 0.6), int(n * 0.85), n]
    parts = [sc.messages[a:b] for a, b in itertools.pairwise(cuts)]
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2,
                       instance_id=instance_id)
    restored = 0
    recovery_s: list[float] = []
    worker = start_worker(settings)
    first = worker
    paced = threading.Thread(target=lambda: asyncio.run(produce_paced(
        broker.bootstrap, parts[0], lambda: consumed(first))))
    paced.start()
    try:
        for i, part in enumerate(parts[1:]):
            target = (0.3, 0.72)[i] * n
            seq0 = worker.health()["snapshot_seq"]
            wait_for(lambda w=worker, t=target, s=seq0: consumed(w) >= t  # type: ignore[misc]
                     and w.health()["snapshot_seq"] > s, 120, f"{target:.0f} consumed",
                     worker)
            if i == 0:
                assert paced.is_alive(), "the first kill must land while input still flows"
            at_kill = consumed(worker)
            worker.proc.kill()  # SIGKILL: no commit, no goodbye, output maybe still buffered
            worker.proc.wait()
            paced.join()
            asyncio.run(produce(broker.bootstrap, part))
            t0 = time.monotonic()
            worker = start_worker(replace(settings, web_port=free_port()))
            # recovered: back past where it died (the restored state is behind that point,
            # and the new part lies beyond it)
            wait_for(lambda w=worker, c=at_kill: consumed(w) > c,  # type: ignore[misc]
                     60, "the restarted worker past where it died", worker)
            recovery_s.append(time.monotonic() - t0)
            restored += "restored snapshot" in worker.log_path.read_text()
    finally:
        paced.join()
    windows = sc.check(worker, broker.bootstrap)
    assert restored == 2, "each restart must resume from a durable snapshot"
    print(f"\nkill -9 twice: finals == replay on {windows} windows; recovery "
          f"(restart to past the kill point) {', '.join(f'{s:.1f} s' for s in recovery_s)}; "
          f"{worker.health()['replayed_skipped']} re-read messages skipped")


def test_state_is_a_faust_table_each_shard_recovered_from_its_changelog_partition(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[..., WorkerProc]) -> None:
    """Each shard's snapshots go to its own partition of the group's state-table changelog.
    A worker killed -9 once its state is durable, then restarted on the same machine, gets
    every shard back from the newest manifest in that shard's partition: the table from its
    local copy, the changelog read from the offset the copy covers on (Faust's recovery).
    It counts on: the finals equal replay's, nothing counted twice. Later tenures, each on
    a machine of its own, read the changelog whole."""
    sc = Scenario.make(isolated, seed=41)
    half = len(sc.messages) // 2
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    worker = start_worker(settings)
    asyncio.run(produce(broker.bootstrap, sc.messages[:half]))
    wait_settled(worker, half, 120)
    worker.proc.kill()
    worker.proc.wait()

    shards = sorted(DEFAULT_CATALOG.shards())
    partition_of = state_partitions(DEFAULT_CATALOG)  # the accounts stage shares crm's
    newest: dict[str, int] = {}
    last: dict[str, int] = {}  # shard -> the last offset of its changelog partition
    for m in asyncio.run(drain(broker.bootstrap, state_topic(settings), quiet_s=2.0)):
        shard, _, rest = m.key.decode().partition("|")
        for s in shards:
            if partition_of[s] == m.partition:
                last[s] = max(last.get(s, 0), m.offset)
        assert partition_of[shard] == m.partition, f"{m.key!r} in partition {m.partition}"
        if rest.startswith("manifest|"):
            newest[shard] = max(newest.get(shard, 0), orjson.loads(m.value)["seq"])
    assert set(newest) == set(shards) and all(seq >= 1 for seq in newest.values()), newest

    member_file = worker.data_dir / "kpi-state" / settings.group_id / "member-id"
    member_before = member_file.read_text()
    worker = start_worker(replace(settings, web_port=free_port()), data_dir=worker.data_dir)
    restored: dict[str, int] = {}
    read_from: dict[str, int] = {}

    def all_restored() -> bool:
        for line in worker.log_path.read_text().splitlines():
            line = line.split("] ")[-1]
            if ": restored snapshot " in line:
                shard, _, rest = line.partition(": restored snapshot ")
                restored[shard] = int(rest.split()[0])
            if ": state table from its local copy, the changelog read from offset " in line:
                read_from[line.split(":")[0]] = int(line.split()[-2])
        return len(restored) == len(shards)

    wait_for(all_restored, 60, "every shard restored", worker)
    assert restored == newest
    # the restarted process rejoined the group under the killed one's member id
    # (streams/membership.py): the coordinator did not wait out the old session
    assert member_file.read_text() == member_before
    # every shard's table came from the copy, which covered its changelog partition up to
    # a record the first worker wrote: the changelog was read from there on, not whole
    assert set(read_from) == set(shards), read_from
    assert all(0 < read_from[s] <= last[s] for s in shards), (read_from, last)
    asyncio.run(produce(broker.bootstrap, sc.messages[half:]))
    windows = sc.check(worker, broker.bootstrap)
    # the restarted worker's tenure is a fresh epoch; once it was durable, the keys the
    # first worker left were deleted: one epoch per shard remains in the table
    latest: dict[bytes, bytes | None] = {}
    for m in asyncio.run(drain(broker.bootstrap, state_topic(settings), quiet_s=2.0)):
        latest[m.key] = m.value
    epochs: dict[str, set[int]] = {}
    for key, value in latest.items():
        shard = key.decode().partition("|")[0]
        epoch = key_epoch(key, shard)
        if value is not None and epoch is not None:
            epochs.setdefault(shard, set()).add(epoch)
    assert epochs == {s: {newest[s] // EPOCH + 1} for s in shards}, epochs
    second = newest[shards[0]] // EPOCH + 1
    assert worker.health()["state_epochs"] == {s: [second] for s in shards}

    # Faust's recovery reads the table whole, also when its newest records are a batch of
    # tombstones: the embedded broker's ListOffsets ends at a batch's first record
    # (streams/tansu.py). A third tenure snapshots once per shard (a poison pill each moves
    # the offsets) and deletes the second's keys; a fourth worker recovers the third's only.
    def next_tenure(w: WorkerProc) -> WorkerProc:
        w.proc.kill()
        w.proc.wait()
        w = start_worker(replace(settings, web_port=free_port()))
        wait_for(lambda: len(w.health()["state_epochs"]) == len(shards), 60,
                 "every shard owned", w)
        return w

    worker = next_tenure(worker)
    asyncio.run(produce(broker.bootstrap, [(settings.topic(t), b"not json", 0)
                                           for t in (*FAMILY_TOPIC.values(), ACCOUNTS_TOPIC)]))
    wait_for(lambda: worker.health()["state_epochs"] == {s: [second + 1] for s in shards}
             and worker.health()["durable"], 60, "the third tenure's clean-up", worker)
    worker = next_tenure(worker)
    assert worker.health()["state_epochs"] == {s: [second + 1] for s in shards}
    print(f"\nrestart from the state table: newest snapshot of each shard {newest}; "
          f"finals == replay on {windows} windows")


def shared_by(group: Group, n_live: int) -> bool:
    """Every shard owned by exactly one live worker, and the shards spread over all n_live
    workers (up to one per shard)."""
    try:
        owners = group.owners()
    except OSError:  # a worker between start and serving
        return False
    shards = set(group.live()[0].health()["shards"])
    return (set(owners) == shards and all(len(o) == 1 for o in owners.values())
            and len({id(o[0]) for o in owners.values()}) == min(n_live, len(shards)))


def test_workers_share_the_shards_and_leave_join_and_die_mid_stream_equals_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    """Two workers on 4 partitions share the four shards. Mid-stream one is stopped and a
    third joins; then a fourth joins and takes a shard from a running worker; then the
    owner of the email shard is killed -9. Shards change hands each time, and the finals
    equal replay's."""
    sc = Scenario.make(isolated, seed=31)
    n = len(sc.messages)
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    group = Group([start_worker(replace(settings, web_port=free_port())) for _ in range(2)])
    wait_for(lambda: shared_by(group, 2), 60, "two workers sharing the shards", group)
    first = {shard: o[0] for shard, o in group.owners().items()}
    seen = 0  # the group's progress so far: it dips while a shard's state changes hands

    def progress() -> int:
        nonlocal seen
        with contextlib.suppress(OSError):
            seen = max(seen, consumed(group))
        return seen

    paced = threading.Thread(target=lambda: asyncio.run(produce_paced(
        broker.bootstrap, sc.messages, progress)))
    paced.start()
    handovers = []
    try:
        for fraction, change in ((0.3, "stop and join"), (0.55, "join"), (0.8, "kill -9")):
            wait_for(lambda t=fraction * n: progress() >= t,  # type: ignore[misc]
                     120, f"{fraction:.0%} consumed", group)
            assert paced.is_alive(), "the change must land while input still flows"
            at_change = progress()
            t0 = time.monotonic()
            if change == "stop and join":
                group.workers[0].stop()  # SIGTERM: its shards go to the others
            if change == "kill -9":
                # no last snapshot, no goodbye: its shards wait for the session timeout
                victim = group.owners()["email"][0]
                victim.proc.kill()
                victim.proc.wait()
            else:
                group.workers.append(start_worker(replace(settings, web_port=free_port())))
            n_live = len(group.live())
            wait_for(lambda k=n_live: shared_by(group, k), 60,  # type: ignore[misc]
                     f"{n_live} workers sharing the shards", group)
            # past where the group was (input was still flowing, so there is more)
            wait_for(lambda c=at_change: consumed(group) > c,  # type: ignore[misc]
                     60, "the group past the change", group)
            handovers.append(time.monotonic() - t0)
    finally:
        paced.join()
    last = {shard: o[0] for shard, o in group.owners().items()}
    assert all(last[s] is not first[s] for s in first if first[s] is group.workers[0])
    assert last["email"] is not victim
    assert len(group.live()) == 2 and len(set(map(id, last.values()))) == 2
    windows = sc.check(group, broker.bootstrap)
    print(f"\nshards shared by 2, 2, 3 then 2 workers: finals == replay on {windows} "
          f"windows; handover (change to the group past it) "
          f"{', '.join(f'{s:.1f} s' for s in handovers)}")
