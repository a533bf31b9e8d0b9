"""What the worker's state costs as it grows: RSS, CPU under a trickle, restart after kill -9.

    python benchmarks/state_bench.py [--days 1 3 6] [--ids 10000000] [--trickle-s 30]

For each number of days: the embedded broker gets that many days of the generator's
default mix (``kpi-engine generate --rate 4 --duration <days>``), a worker (its own data
directory) consumes it all; then

- RSS: the worker's resident memory once everything is counted (and its peak);
- trickle: once the backlog's closed windows are out and durable, 20 events/s for
  ``--trickle-s`` seconds of wall time, the worker's CPU time over that span as a share of
  one core (what its state costs when traffic is light: commits, emits), and at rest;
- restart: kill -9, start a worker on the same data directory, and time until it counts a
  new event (the local store reused); then the same with an empty data directory (the state
  rebuilt from the changelog).

``--ids N`` adds a run holding N event ids: N minimal ``email.sent`` events over 6 days.
``--instance-id NAME`` starts every worker under that static group membership name, so a
restarted worker is assigned its shards without waiting for the killed one's session.
``--processes P`` runs the worker as P processes (``kpi-engine worker --processes``): RSS
and CPU are then summed over the worker and its processes (the peak: the sum of their
peaks, an upper bound), and kill -9 hits every one of them at once. Each process's RSS and
PSS are shown too: summed RSS counts the pages they share (the interpreter, the libraries)
once per process, summed PSS once in all.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

# run from a clone, a benchmark measures the clone: its checkout before the one an
# editable install points to (which a script's imports would find otherwise)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kpi_engine
from kpi_engine.generator import Generator, GeneratorConfig
from metrics.records import iso_ms
from streams.broker import EmbeddedBroker, free_port
from streams.produce import send_all
from streams.settings import Settings
from streams.topics import all_topics, ensure_topics

DAY_S = 86_400
T0_MS = 1_767_225_600_000  # 2026-01-01

#: the checkout whose code this run imported (this benchmark's, above): workers start there,
#: as ``python -m`` puts its working directory first on sys.path
CODE_ROOT: Final = Path(kpi_engine.__file__).resolve().parents[1]


def health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            return dict(orjson.loads(resp.read()))
    except OSError:
        return None


def counted(h: dict[str, Any]) -> int:
    return sum(int(h[k]) for k in ("events", "invalid", "duplicates", "late", "held"))


def tree(pid: int) -> list[int]:
    """A process and its descendants."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return [pid]
    return [pid] + [p for kid in kids for p in tree(int(kid))]


def proc_stat(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, peak RSS bytes) of a process and its descendants, summed."""
    out = (0.0, 0, 0)
    for p in tree(pid):
        cpu, rss, peak = one_stat(p)
        out = (out[0] + cpu, out[1] + rss, out[2] + peak)
    return out


def one_stat(pid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS bytes, peak RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (cpu, int(status["VmRSS"].split()[0]) * 1024,
            int(status["VmHWM"].split()[0]) * 1024)


def pss(pid: int) -> int:
    """A process's proportional set size: pages it shares with others (the interpreter,
    the libraries: every process of a worker maps them) counted once across them, where
    adding the processes' RSS counts them once per process."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    port: int
    log: Any

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if sig == signal.SIGKILL:  # the host's crash: every process of the worker at once
            for pid in tree(self.proc.pid)[1:]:
                os.kill(pid, sig)
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)
        self.log.close()


#: ``--instance-id``: every worker started under this name (static group membership)
INSTANCE_ID: list[str] = []
#: ``--processes``: the worker's processes
PROCESSES: list[int] = [1]


def start_worker(broker: EmbeddedBroker, data_dir: Path, log_path: Path) -> Worker:
    port = free_port()
    env = dict(os.environ, KPI_BROKER=broker.url, KPI_WEB_PORT=str(port),
               KPI_IDLE_TIMEOUT="0", KPI_DATA_DIR=str(data_dir),
               KPI_PROCESSES=str(PROCESSES[0]))
    if INSTANCE_ID:
        env["KPI_INSTANCE_ID"] = INSTANCE_ID[0]
    log = open(log_path, "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "worker"], env=env,
                            cwd=CODE_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return Worker(proc, port, log)


def wait_counted(w: Worker, n: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = health(w.port)
        if h is not None and counted(h) >= n:
            return h
        if w.proc.poll() is not None:
            raise RuntimeError("the worker died")
        time.sleep(0.2)
    raise TimeoutError(f"not {n} counted within {timeout} s")


def settle(w: Worker, timeout: float = 600) -> None:
    """Until the worker has published and made durable all it counted (the closed windows
    of a backlog go out for a while after the last event is counted)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while time.monotonic() < deadline:
        h = health(w.port)
        calm = calm + 1 if h and h["durable"] and not h["pending_finals"] else 0
        if calm >= 3:
            return
        time.sleep(1)
    raise TimeoutError("the worker did not settle")


def trickle_line(i: int, ts_ms: int) -> tuple[str, bytes]:
    return "email-events", orjson.dumps({
        "event_id": f"trickle-{i}", "type": "email.sent", "ts": iso_ms(ts_ms),
        "campaign_id": "trickle", "contact_id": f"t{i}"})


async def trickle(bootstrap: str, seconds: float, start_ms: int, first: int) -> int:
    """20 events/s of wall time, event time moving on with it."""
    sent = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        batch = [trickle_line(first + sent + j, start_ms + (sent + j) * 50) for j in range(20)]
        await send_all(bootstrap, batch)
        sent += 20
        await asyncio.sleep(max(0.0, t0 + sent / 20 - time.monotonic()))
    return sent


def restart_time(broker: EmbeddedBroker, old: Worker, data_dir: Path, log: Path, n: int,
                 next_ms: int, tag: int) -> tuple[float, Worker]:
    """kill -9, start again, and time until one new event is counted."""
    old.stop(signal.SIGKILL)
    t0 = time.monotonic()
    w = start_worker(broker, data_dir, log)
    asyncio.run(send_all(broker.bootstrap, [trickle_line(10_000_000 + tag, next_ms)]))
    wait_counted(w, n + 1, 600)
    return time.monotonic() - t0, w


def minimal_ids(n: int, days: float) -> list[tuple[str, bytes]]:
    step = int(days * DAY_S * 1000 / n)
    return [("email-events",
             b'{"event_id":"m%d","type":"email.sent","ts":"%s","campaign_id":"c%d",'
             b'"contact_id":"k%d"}' % (i, iso_ms(T0_MS + i * step).encode(), i % 50, i))
            for i in range(n)]


def measure(label: str, messages: Iterable[tuple[str, bytes]], end_ms: int, trickle_s: float,
            tmp: Path) -> None:
    with EmbeddedBroker() as broker:
        settings = Settings(broker=broker.url)
        asyncio.run(ensure_topics(broker.bootstrap, all_topics(settings), settings.partitions))
        t = time.monotonic()
        # streamed from the generator: held as a list, 14 days of traffic took 21 GB here
        n = asyncio.run(send_all(broker.bootstrap, messages))
        produced_s = time.monotonic() - t
        data, log = tmp / label / "data", tmp / label / "worker.log"
        data.mkdir(parents=True)
        w = start_worker(broker, data, log)
        t = time.monotonic()
        h = wait_counted(w, n, 3600)
        consumed_s = time.monotonic() - t
        settle(w)
        _, rss, peak = proc_stat(w.proc.pid)
        # the worker's, then its processes'
        each = [(one_stat(p)[1], pss(p)) for p in tree(w.proc.pid)]
        cpu0 = proc_stat(w.proc.pid)[0]
        time.sleep(10)
        idle = (proc_stat(w.proc.pid)[0] - cpu0) / 10
        cpu0 = proc_stat(w.proc.pid)[0]
        t = time.monotonic()
        sent = asyncio.run(trickle(broker.bootstrap, trickle_s, end_ms, 0))
        wall = time.monotonic() - t
        cpu = (proc_stat(w.proc.pid)[0] - cpu0) / wall
        _, rss_after, _ = proc_stat(w.proc.pid)
        total = n + sent
        before = wait_counted(w, total, 120)
        settle(w)
        local_s, w = restart_time(broker, w, data, log, total, end_ms + 3_600_000, 1)
        _, rss_local, _ = proc_stat(w.proc.pid)
        fresh = tmp / label / "fresh"
        changelog_s, w = restart_time(broker, w, fresh, log, total + 1, end_ms + 3_700_000, 2)
        _, rss_rebuilt, peak_rebuilt = proc_stat(w.proc.pid)
        h = health(w.port) or {}
        w.stop()
    # after two kill -9: every event counted once, the duplicates the same as before
    exact = (counted(h) == counted(before) + 2 and h["events"] == before["events"] + 2
             and h["duplicates"] == before["duplicates"])
    ids = h.get("state", {}).get("dedup_ids")
    mb = 1024 * 1024
    print(f"{label}: {n:,} events (produced in {produced_s:.0f} s, consumed in "
          f"{consumed_s:.0f} s: {n / consumed_s:,.0f} events/s); ids held: {ids}")
    print(f"  RSS after consuming: {rss / mb:,.0f} MB (peak {peak / mb:,.0f} MB); after the "
          f"trickle: {rss_after / mb:,.0f} MB")
    if len(each) > 1:
        print(f"  after consuming, per process (the parent first): RSS "
              f"{', '.join(f'{r / mb:,.0f}' for r, _ in each)} MB; PSS "
              f"{', '.join(f'{p / mb:,.0f}' for _, p in each)} MB, "
              f"{sum(p for _, p in each) / mb:,.0f} MB in all")
    print(f"  trickle of 20 events/s for {wall:.0f} s: {cpu * 100:.1f} % of a core (at rest: "
          f"{idle * 100:.1f} %)")
    print(f"  restart after kill -9 to counting: {local_s:.1f} s with the local store "
          f"(RSS {rss_local / mb:,.0f} MB), {changelog_s:.1f} s rebuilt from the changelog "
          f"(RSS {rss_rebuilt / mb:,.0f} MB, peak {peak_rebuilt / mb:,.0f} MB)")
    print(f"  counts after the two kills: {'exact' if exact else 'WRONG'} "
          f"({h['events']:,} events, {h['duplicates']:,} duplicates)")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, nargs="*", default=[1, 3, 6])
    ap.add_argument("--ids", type=int, default=0, help="also a run holding this many ids")
    ap.add_argument("--trickle-s", type=float, default=30)
    ap.add_argument("--instance-id", default="",
                    help="static group membership: the workers' KPI_INSTANCE_ID")
    ap.add_argument("--processes", type=int, default=1, help="the worker's KPI_PROCESSES")
    args = ap.parse_args()
    PROCESSES[:] = [args.processes]
    INSTANCE_ID[:] = [args.instance_id] if args.instance_id else []
    with tempfile.TemporaryDirectory() as tmp:
        for days in args.days:
            gen = Generator(GeneratorConfig(rate=4, duration_s=days * DAY_S, seed=1,
                                            history_days=0, start_ms=T0_MS))
            msgs = ((t, raw) for _, (t, raw) in gen.messages())
            measure(f"{days:g} days", msgs, gen.end_ms, args.trickle_s, Path(tmp))
        if args.ids:
            measure(f"{args.ids:,} ids", minimal_ids(args.ids, 6), T0_MS + 6 * DAY_S * 1000,
                    args.trickle_s, Path(tmp))


if __name__ == "__main__":
    main()
