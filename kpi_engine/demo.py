"""`kpi-engine demo`: embedded broker, one worker, live synthetic traffic, web server.

The worker runs as a child process (Faust owns its event loop and signals); broker and worker
die with the demo even on SIGKILL (PR_SET_PDEATHSIG), and stop in order on Ctrl-C or after
--duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace

import orjson
from aiokafka.errors import KafkaError

from kpi_engine.generator import Generator, GeneratorConfig
from streams.broker import EmbeddedBroker, die_with_parent, port_is_open
from streams.errors import BrokerError
from streams.produce import produce_generated
from streams.settings import Settings, scratch_dir
from streams.topics import ensure_io_topics


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in (("KPI_BROKER", settings.broker), ("KPI_CATALOG", settings.catalog),
                        ("KPI_WEB_HOST", settings.web_host),
                        ("KPI_WEB_PORT", str(settings.web_port)),
                        ("KPI_TOPIC_PREFIX", settings.topic_prefix),
                        ("KPI_PARTITIONS", str(settings.partitions)),
                        ("KPI_GROUP_ID", settings.group_id),
                        ("KPI_IDLE_TIMEOUT", str(settings.idle_timeout)),
                        ("KPI_EMIT_INTERVAL", str(settings.emit_interval))):
        if value is not None:
            env[name] = value
    return env


def _events_counted(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(orjson.loads(resp.read())["events"])
    except (OSError, ValueError, KeyError):
        return None


def run_demo(settings: Settings, gen_cfg: GeneratorConfig, duration_s: float | None) -> int:
    if port_is_open(settings.web_host, settings.web_port):
        raise BrokerError(f"{settings.web_host}:{settings.web_port} is already in use: pass "
                          "--web-port or set KPI_WEB_PORT")
    t_start = time.monotonic()
    logdir = str(scratch_dir("kpi-engine-demo-"))
    broker = EmbeddedBroker(log_path=os.path.join(logdir, "broker.log")).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        settings = replace(settings, broker=broker.url)
        asyncio.run(ensure_io_topics(settings, broker.bootstrap))
        with open(os.path.join(logdir, "worker.log"), "wb") as wlog:
            worker = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "worker"],
                                      env=worker_env(settings),
                                      stdout=wlog, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                                      start_new_session=True)
        base = f"http://{settings.web_host}:{settings.web_port}"
        print("kpi-engine demo", flush=True)
        print(f"  broker     {broker.url} (embedded Tansu)", flush=True)
        print(f"  dashboard  {base}/dashboard", flush=True)
        print(f"  KPIs       {base}/kpis", flush=True)
        print(f"  accounts   {base}/accounts", flush=True)
        print(f"  metrics    {base}/metrics", flush=True)
        print(f"  health     {base}/health", flush=True)
        print(f"  logs       {logdir}", flush=True)
        incident = f", incident {gen_cfg.incident}" if gen_cfg.incident else ""
        print(f"  traffic    {gen_cfg.rate:g} events/s{incident}; Ctrl-C to stop", flush=True)
        gen_cfg.start_ms = time.time_ns() // 1_000_000
        if duration_s is not None:
            gen_cfg.duration_s = duration_s
        asyncio.run(_drive(settings, broker, Generator(gen_cfg), worker, base, t_start,
                           duration_s))
        return 0
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
        return 0
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        broker.stop()


async def _drive(settings: Settings, broker: EmbeddedBroker, gen: Generator,
                 worker: subprocess.Popen[bytes], base: str, t_start: float,
                 duration_s: float | None) -> None:
    loop = asyncio.get_running_loop()
    quit_ = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C: stop in order, no traceback
        loop.add_signal_handler(sig, quit_.set)
    stop = asyncio.Event()
    producing = asyncio.create_task(
        produce_generated(broker.bootstrap, settings, gen.messages(), realtime=True, stop=stop))
    deadline = None if duration_s is None else t_start + duration_s
    first_seen = False
    try:
        while not quit_.is_set() and (deadline is None or time.monotonic() < deadline):
            if worker.poll() is not None:
                raise BrokerError(f"the worker exited with code {worker.returncode}")
            if producing.done() and producing.exception() is not None:
                raise BrokerError(f"the traffic generator failed: {producing.exception()}")
            if not first_seen:
                n = await asyncio.to_thread(_events_counted, f"{base}/health")
                if n:
                    first_seen = True
                    print(f"  first events counted {time.monotonic() - t_start:.1f} s after "
                          f"start ({n} so far)", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(quit_.wait(), timeout=0.5)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(producing, timeout=10)
        except (TimeoutError, KafkaError) as exc:
            print(f"  traffic generator stopped: {exc!r}", flush=True)
    if quit_.is_set():
        print("  stopping", flush=True)
    n = await asyncio.to_thread(_events_counted, f"{base}/health")
    print(f"  done: {n} events counted", flush=True)
