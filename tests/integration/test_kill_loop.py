"""A kill loop (soak): a worker is killed -9 again and again, during consumption and during
its recovery, at least ten times, then left to finish. The finals equal `kpi-engine
replay`, nothing is lost and nothing is counted twice.

Its time budget is ``KPI_SOAK_BUDGET_S`` (default 180 s) for the kill loop; it kills more
often if the machine is fast, never fewer than ten times. The input arrives in waves, one
after each of the first ten kills, as live traffic would: a fast worker can't finish the
whole log before it has been killed ten times."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.integration.conftest import WorkerProc, consumed, wait_for
from tests.integration.test_crash_recovery import Scenario
from tests.integration.test_streaming_equals_replay import produce

pytestmark = [pytest.mark.integration, pytest.mark.soak]

MIN_KILLS = 10


def progress(worker: WorkerProc) -> int:
    try:
        return consumed(worker)
    except OSError:  # not serving yet
        return 0


def restored(worker: WorkerProc) -> bool:
    try:
        h = worker.health()
    except OSError:  # not serving yet
        return False
    return h["status"] == "ok" and set(h["shards"].values()) == {"active"}


def test_ten_and_more_kills_during_consumption_and_recovery_equal_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    budget_s = float(os.environ.get("KPI_SOAK_BUDGET_S", "180"))
    sc = Scenario.make(isolated, seed=57)
    n = len(sc.messages)
    settings = replace(isolated, snapshot_interval=0.2, emit_interval=0.2)
    # a third waits in the log; the rest comes in MIN_KILLS waves, one after each kill
    first = n // 3
    waves = [sc.messages[first + i * (n - first) // MIN_KILLS:
                         first + (i + 1) * (n - first) // MIN_KILLS] for i in range(MIN_KILLS)]
    asyncio.run(produce(broker.bootstrap, sc.messages[:first]))
    produced = first
    rnd = random.Random(57)
    kills: list[tuple[str, int]] = []  # (when, consumed at the kill)
    t0 = time.monotonic()
    worker = start_worker(settings)
    while len(kills) < MIN_KILLS or time.monotonic() - t0 < budget_s:
        if len(kills) % 2 == 0:
            # in recovery: the state table read back, the shards not yet all active
            time.sleep(rnd.uniform(0.0, 1.5))
            when = "recovery"
        else:
            # mid-consumption: a little further than the restored state reached (measured
            # once every shard is restored: until then the counts jump), watched closely,
            # as a worker committing only what changed consumes the rest in seconds
            wait_for(lambda w=worker: restored(w), 120,  # type: ignore[misc]
                     "the shards restored", worker)
            start = progress(worker)
            target = min(produced - 1, start + rnd.randint(n // 60, n // 25))
            deadline = time.monotonic() + 120
            while progress(worker) < target:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{target} not consumed:\n{worker.detail()}")
                time.sleep(0.01)
            when = "consuming"
        if progress(worker) >= n:
            break  # finished before the kill: the rest of the loop has nothing to kill
        kills.append((when, progress(worker)))
        worker.proc.kill()
        worker.proc.wait()
        if waves:
            wave = waves.pop(0)
            asyncio.run(produce(broker.bootstrap, wave))
            produced += len(wave)
        worker = start_worker(replace(settings, web_port=free_port()))
        if time.monotonic() - t0 > 3 * budget_s:
            raise AssertionError(f"the kill loop overran its budget: {kills}")
    assert len(kills) >= MIN_KILLS and not waves, kills
    assert {w for w, _ in kills} == {"recovery", "consuming"}
    windows = sc.check(worker, broker.bootstrap)
    print(f"\nkill loop: {len(kills)} SIGKILLs ({sum(w == 'recovery' for w, _ in kills)} in "
          f"recovery) over {n} messages in {time.monotonic() - t0:.0f} s; finals == replay "
          f"on {windows} windows, counts exact")
