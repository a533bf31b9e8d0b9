"""Kill -9 mid-stream, restart, and the closed windows still equal `kpi-engine replay`:
nothing missing, nothing counted twice (streams/state.py)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.settings import Settings
from metrics.events import FAMILY_TOPIC
from streams.broker import EmbeddedBroker, free_port
from tests.helpers import DEFAULT_CATALOG, final_values, ms, replay
from tests.integration.conftest import WorkerProc, consumed, wait_for, wait_settled
from tests.integration.test_streaming_equals_replay import (
    SENTINEL,
    SENTINEL_AFTER,
    START,
    drain,
    produce,
)

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


def test_kill_9_mid_stream_and_restart_equals_replay(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    gen = Generator(GeneratorConfig(rate=150, duration_s=1200, seed=23, start_ms=START,
                                    history_days=2, invalid=0.005, duplicates=0.01,
                                    late=0.003, late_after_s=120, disorder_s=60))
    stream = [(topic, raw) for _, (topic, raw) in gen.messages()]
    last_ts = max(ms(orjson.loads(raw)["ts"].replace("Z", "+00:00")) for _, raw in stream
                  if raw.startswith(b"{") and b'"ts":"2026' in raw)
    sentinels = [(FAMILY_TOPIC[fam], orjson.dumps(
        {"event_id": f"sentinel-{fam}-{p}", "ts": last_ts + SENTINEL_AFTER[fam], **extra}), p)
        for fam, extra in SENTINEL.items() for p in range(isolated.partitions)]
    messages = [(isolated.topic(t), raw, None) for t, raw in stream] + \
        [(isolated.topic(t), raw, p) for t, raw, p in sentinels]
    n = len(messages)
    # the stream arrives in three parts (60 %, 25 %, 15 %). The first is produced at a
    # steady pace while the worker consumes, and the worker is killed -9 before it ends; the
    # second is produced while nobody consumes, and the worker is killed -9 again in it
    cuts = [0, int(n * 0.6), int(n * 0.85), n]
    parts = [messages[a:b] for a, b in itertools.pairwise(cuts)]
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
            worker.proc.kill()  # SIGKILL: no commit, no goodbye, output maybe still buffered
            worker.proc.wait()
            paced.join()
            asyncio.run(produce(broker.bootstrap, part))
            t0 = time.monotonic()
            worker = start_worker(replace(settings, web_port=free_port()))
            # recovered: counting again beyond what the restored state holds
            restored_count = consumed(worker)
            wait_for(lambda w=worker, c=restored_count: consumed(w) > c,  # type: ignore[misc]
                     60, "the restarted worker counting", worker)
            recovery_s.append(time.monotonic() - t0)
            restored += "restored snapshot" in worker.log_path.read_text()
    finally:
        paced.join()
    wait_settled(worker, n, 180)
    health = worker.health()
    assert restored == 2, "each restart must resume from a durable snapshot"
    # counted exactly once, across two crashes
    counts = {k: health[k] for k in ("events", "duplicates", "late", "invalid")}
    assert counts == {"events": sum(gen.stats.events.values()) + len(sentinels),
                      "duplicates": gen.stats.duplicates,
                      "late": sum(gen.stats.late.values()),
                      "invalid": sum(gen.stats.invalid.values())}, health

    published = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-windows")))
    streaming = final_values(orjson.loads(m.value) for m in published)
    oracle = final_values(replay([raw for _, raw in stream] + [raw for _, raw, _ in sentinels]))
    cutoff = {fam: last_ts + SENTINEL_AFTER[fam] for fam in SENTINEL}

    def comparable(rec: dict[str, Any]) -> bool:
        fam = DEFAULT_CATALOG.kpis[rec["kpi"]].families[0]
        return ms(rec["end"].replace("Z", "+00:00")) <= cutoff[fam]

    expected = {k: r for k, r in oracle.items() if comparable(r)}
    got = {k: r for k, r in streaming.items() if comparable(r)}
    assert len(expected) > 5000
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    assert not missing and not extra, (missing, extra)
    diff = [k for k in expected if expected[k] != got[k]][:5]
    assert not diff, [(k, expected[k], got[k]) for k in diff]
    print(f"\nkill -9 twice: finals == replay on {len(expected)} windows; recovery "
          f"(restart to counting again) {', '.join(f'{s:.1f} s' for s in recovery_s)}; "
          f"{health['replayed_skipped']} re-read messages skipped")
