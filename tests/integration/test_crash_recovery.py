"""Kill -9 mid-stream and restart, or stop the owner of the input and let another worker
take over: the closed windows still equal `kpi-engine replay`, nothing missing, nothing
counted twice (streams/state.py, streams/assignor.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import orjson
import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.settings import Settings
from metrics.events import FAMILY_TOPIC
from streams.broker import EmbeddedBroker, free_port
from tests.helpers import SENTINEL, SENTINEL_AFTER, assert_finals_equal, final_values, ms, replay
from tests.integration.conftest import WorkerProc, consumed, wait_for, wait_settled
from tests.integration.test_streaming_equals_replay import START, drain, produce

pytestmark = pytest.mark.integration


async def produce_paced(bootstrap: str, messages: list[tuple[str, bytes, int | None]],
                        consumed_so_far: Callable[[], int], per_s: int = 20_000,
                        lead: int = 15_000) -> None:
    """Produce in slices of 1,000, about per_s messages a second, at most `lead` messages
    ahead of the consumer (so a slow machine can't finish producing before the kill)."""
    for i in range(0, len(messages), 1000):
        t0 = time.monotonic()
        while True:
            try:
                if i - consumed_so_far() < lead:
                    break
            except OSError:  # the worker was killed: produce the rest unpaced
                break
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
                   messages, {fam: last_ts + SENTINEL_AFTER[fam] for fam in SENTINEL},
                   len(sentinels))

    def check(self, worker: WorkerProc, bootstrap: str) -> int:
        """Counted exactly once, and the finals equal replay's; returns windows compared."""
        wait_settled(worker, len(self.messages), 180)
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


def test_kill_9_mid_stream_and_restart_equals_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    sc = Scenario.make(isolated, seed=23)
    n = len(sc.messages)
    # the stream arrives in three parts (60 %, 25 %, 15 %). The first is produced at a
    # steady pace while the worker consumes, and the worker is killed -9 before it ends; the
    # second is produced while nobody consumes, and the worker is killed -9 again in it
    cuts = [0, int(n * 0.6), int(n * 0.85), n]
    parts = [sc.messages[a:b] for a, b in itertools.pairwise(cuts)]
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
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


def active(workers: list[WorkerProc]) -> WorkerProc | None:
    """The live worker that owns the input partitions (streams/assignor.py)."""
    for w in workers:
        if w.proc.poll() is None:
            try:
                if w.health()["role"] == "active":
                    return w
            except OSError:
                continue
    return None


def test_rebalance_stop_one_start_another_equals_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    """Two workers on 4 partitions; the owner is stopped mid-stream, a third worker joins,
    then the new owner is stopped too: the finals still equal replay's."""
    sc = Scenario.make(isolated, seed=31)
    n = len(sc.messages)
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    workers = [start_worker(replace(settings, web_port=free_port())) for _ in range(2)]
    wait_for(lambda: active(workers) is not None, 60, "one worker owning the input")
    owner = active(workers)
    assert owner is not None
    standby = next(w for w in workers if w is not owner)
    assert standby.health()["role"] == "standby"
    counted = 0  # by the owners stopped so far: the producer stays just ahead of the owner

    def progress() -> int:
        o = active(workers)
        return consumed(o) if o is not None else counted

    paced = threading.Thread(target=lambda: asyncio.run(produce_paced(
        broker.bootstrap, sc.messages, progress)))
    paced.start()
    handovers = []
    try:
        for fraction in (0.3, 0.65):
            wait_for(lambda o=owner, t=fraction * n: consumed(o) >= t,  # type: ignore[misc]
                     120, f"{fraction:.0%} consumed", owner)
            assert paced.is_alive(), "the stop must land while input still flows"
            counted = consumed(owner)
            t0 = time.monotonic()
            owner.stop()  # SIGTERM: the partitions go to the standby
            if fraction == 0.3:  # and a new worker joins mid-stream
                workers.append(start_worker(replace(settings, web_port=free_port())))
            wait_for(lambda o=owner: active(workers) not in (None, o),  # type: ignore[misc]
                     60, "a new owner")
            new_owner = active(workers)
            assert new_owner is not None
            # past where the old owner stopped (input was still flowing, so there is more)
            wait_for(lambda o=new_owner, c=counted:  # type: ignore[misc]
                     consumed(o) > c, 60, "the new owner past the stop point", new_owner)
            handovers.append(time.monotonic() - t0)
            owner = new_owner
    finally:
        paced.join()
    windows = sc.check(owner, broker.bootstrap)
    print(f"\nrebalances: finals == replay on {windows} windows; handover (stop to the new "
          f"owner past the stop point) {', '.join(f'{s:.1f} s' for s in handovers)}")
