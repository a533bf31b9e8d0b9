"""Streaming throughput on the embedded broker, against the raw aiokafka limit, in one run.

    python benchmarks/stream_bench.py [N] [--workers K] [--processes P]
    (default 300,000 events, 1 worker of 1 process)

(a) raw: an aiokafka consumer reads the N events with getmany and decodes each with orjson;
(b) worker: a `kpi-engine worker` process consumes the same N events through the full
    default catalog (validation, dedup, windows, DLQ routing, closed windows published to
    kpi-windows). Its rate is N over the time from its first batch to the end of its last.
    With K workers in one group (they share the catalog's shards), from the first batch of
    any of them to the end of the last one's last batch. With P processes per worker
    (`kpi-engine worker --processes P`), the same span from the worker's merged /health.
    One process: also its CPU an event (all threads, from its last poll not counting yet),
    steadier than the rate on a shared VM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

# run from a clone, a benchmark measures the clone: its checkout before the one an
# editable install points to (which a script's imports would find otherwise)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kpi_engine
from kpi_engine.generator import Generator, GeneratorConfig
from streams.broker import EmbeddedBroker, free_port
from streams.produce import send_all
from streams.settings import Settings
from streams.topics import all_topics, ensure_topics, input_topics

#: the checkout whose code this run imported (this benchmark's, above): workers start there,
#: as ``python -m`` puts its working directory first on sys.path
CODE_ROOT: Final = Path(kpi_engine.__file__).resolve().parents[1]


async def raw_consume(bootstrap: str, topics: list[str], partitions: int, n: int) -> float:
    """No group (no join wait): partitions assigned by hand, timed from the assignment."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
        t0 = time.perf_counter()
        seen = 0
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batches.values():
                for m in msgs:
                    orjson.loads(m.value)
                seen += len(msgs)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()


def health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return dict(orjson.loads(resp.read()))


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """User + system CPU of these processes so far, all their threads (/proc)."""
    total = 0
    for p in procs:
        with open(f"/proc/{p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=300_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    n_target = args.n
    rate = 500
    gen = Generator(GeneratorConfig(rate=rate, duration_s=n_target / rate, seed=1,
                                    history_days=0))
    messages = [(t, raw) for _, (t, raw) in gen.messages()]
    n = len(messages)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        settings = Settings(broker=broker.url, web_port=free_port(), idle_timeout=0)
        asyncio.run(ensure_topics(broker.bootstrap, all_topics(settings), settings.partitions))
        asyncio.run(send_all(broker.bootstrap, messages))
        raw_rate = asyncio.run(raw_consume(broker.bootstrap, input_topics(settings),
                                           settings.partitions, n))
        ports = [settings.web_port] + [free_port() for _ in range(args.workers - 1)]
        workers, logs = [], []
        for i, port in enumerate(ports):
            env = dict(os.environ, KPI_BROKER=broker.url, KPI_WEB_PORT=str(port),
                       KPI_IDLE_TIMEOUT="0", KPI_PROCESSES=str(args.processes),
                       KPI_DATA_DIR=os.path.join(tmp, str(i)))
            logs.append(open(os.path.join(tmp, f"worker-{i}.log"), "wb"))  # noqa: SIM115
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "kpi_engine.cli", "worker"], env=env, cwd=CODE_ROOT,
                stdout=logs[-1],
                stderr=subprocess.STDOUT))
        cpu_from: float | None = None  # the workers' CPU seconds before their first batch
        try:
            while True:
                time.sleep(0.5)
                ended = [i for i, w in enumerate(workers) if w.poll() is not None]
                if ended:
                    logs[ended[0]].flush()
                    with open(logs[ended[0]].name, "rb") as log_file:
                        tail = log_file.read()[-3000:].decode(errors="replace")
                    sys.exit(f"worker {ended[0]} ended before counting the events:\n{tail}")
                cpu_now = cpu_seconds(workers)
                try:
                    hs = [health(port) for port in ports]
                except OSError:  # not up, or not ready (503): not counting yet
                    cpu_from = cpu_now
                    continue
                if all(h["first_batch_at"] is None for h in hs):
                    cpu_from = cpu_now
                counted = ("events", "invalid", "duplicates", "late", "held")
                done = sum(int(h[k]) for h in hs for k in counted)
                if done >= n:
                    break
            cpu = cpu_seconds(workers) - cpu_from if cpu_from is not None else None
            busy = [h for h in hs if h["first_batch_at"] is not None]
            span = max(h["last_batch_done_at"] for h in busy) - \
                min(h["first_batch_at"] for h in busy)
            worker_rate = n / span
            owned: list[Any] = [sorted(s for s, r in h["shards"].items() if r == "active")
                                for h in hs]
            if args.processes > 1:  # (shards, events, busy seconds) per process
                owned = [(p["shards"], p["events"], round(p["busy_s"] or 0, 2))
                         for h in hs for p in h["processes"]]
        finally:
            for w in workers:
                w.terminate()
            for w in workers:
                w.wait(timeout=30)
            for f in logs:
                f.close()
    print(f"events: {n:,}")
    print(f"(a) raw aiokafka getmany + orjson decode: {raw_rate:,.0f} events/s")
    label = "worker" if args.workers == 1 else f"{args.workers} workers"
    if args.processes > 1:
        label += f" of {args.processes} processes"
    print(f"(b) kpi-engine {label}, full catalog: {worker_rate:,.0f} events/s")
    if args.workers > 1 or args.processes > 1:
        print(f"    shards owned at the end: {owned}")
    print(f"ratio (b)/(a): {worker_rate / raw_rate:.3f}")
    if cpu is not None and args.processes == 1:  # less noisy than the rate on a shared VM
        print(f"worker CPU: {cpu * 1e6 / n:.1f} us an event ({cpu:.2f} s, all threads)")


if __name__ == "__main__":
    main()
