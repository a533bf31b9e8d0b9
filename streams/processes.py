"""``kpi-engine worker --processes N``: one worker on N cores of a host.

A worker's per-event path is CPU-bound Python, so one process uses one core whatever the
host has. Here the worker runs N processes, each a member of the worker's consumer group
owning whole shards (streams/assignor.py), as N workers would; this parent serves the
worker's address with their pages merged (streams/merged.py) and runs them as one: a stop
signal stops them all, and one of them ending ends the worker, so that whatever restarts
the worker restarts it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from metrics.catalog import load_catalog
from streams.broker import die_with_parent, free_port, refuse_busy_web_port
from streams.dashboard import page
from streams.merged import merge_dashboard, merge_health, merge_metrics
from streams.settings import Settings, settings_environ
from streams.topics import create_topics

log = logging.getLogger("kpi_engine.worker")

#: seconds a process has to answer a page before the worker says it is not answering
#: (below the 5 s a client such as a probe or the tests give the worker)
ASK_TIMEOUT_S: Final = 3.0
#: seconds the processes have to stop on a stop signal before they are killed
STOP_TIMEOUT_S: Final = 30.0
#: Prometheus text format, the version spelled out (aiohttp wants the charset apart)
METRICS_TYPE: Final = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def process_env(settings: Settings, index: int, port: int,
                environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of process ``index``: the worker's settings (flags included), its
    pages on a loopback port of its own, its own local state folder and static member id
    (two processes must not open one RocksDB, nor join under one id), and its share of the
    worker's RocksDB memory."""
    data_dir = settings.data_dir
    if data_dir:
        data_dir = os.path.join(data_dir, f"process-{index}")
        os.makedirs(data_dir, exist_ok=True)  # Faust makes its folder, not the parents
    instance_id = f"{settings.instance_id}-{index}" if settings.instance_id else ""
    return settings_environ(replace(settings, web_host="127.0.0.1", web_port=port,
                                    processes=1, data_dir=data_dir, instance_id=instance_id,
                                    state_cache_mb=settings.state_cache_mb // settings.processes),
                            environ)


class Processes:
    """The worker's processes and the web server in front of them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.ports = [free_port() for _ in range(settings.processes)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self._session: aiohttp.ClientSession | None = None
        self._metrics: tuple[float, bytes] | None = None  # when rendered, the text

    @property
    def names(self) -> list[str]:
        return [f"process {i} (pid {p.pid})" for i, p in enumerate(self.procs)]

    def start(self) -> None:
        for i, port in enumerate(self.ports):
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "kpi_engine.cli", "worker"],
                env=process_env(self.settings, i, port), stdin=subprocess.DEVNULL,
                # its own session: a terminal's Ctrl-C reaches this parent, which stops it
                preexec_fn=die_with_parent, start_new_session=True))
        log.warning("worker of %d processes: pids %s", len(self.procs),
                    ", ".join(str(p.pid) for p in self.procs))

    def ended(self) -> list[tuple[int, int]]:
        """(index, exit code) of the processes that have ended."""
        return [(i, p.returncode) for i, p in enumerate(self.procs) if p.poll() is not None]

    async def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for p in self.procs:
            if p.poll() is None:
                log.error("pid %d did not stop within %.0f s: killed", p.pid, STOP_TIMEOUT_S)
                p.kill()
                p.wait()

    async def ask(self, path: str, query: str = "") -> list[bytes | None]:
        """Each process's answer to ``path`` (whatever its status: a 503 /health still says
        why), None where it did not answer."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S))
        session = self._session

        async def one(port: int) -> bytes | None:
            url = f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
            try:
                async with session.get(url) as resp:
                    return await resp.read()
            except (TimeoutError, aiohttp.ClientError):
                return None

        return list(await asyncio.gather(*(one(port) for port in self.ports)))

    async def ask_json(self, path: str, query: str = "") -> list[Any]:
        out = []
        for body in await self.ask(path, query):
            try:
                out.append(None if body is None else orjson.loads(body))
            except orjson.JSONDecodeError:  # a process stopping mid-answer
                out.append(None)
        return out

    async def metrics(self, request: web.Request) -> web.Response:
        # rendered at most once per emit interval, as a single worker's is (Exposition)
        now = time.monotonic()
        if self._metrics is None or now - self._metrics[0] >= self.settings.emit_interval:
            answers = await self.ask("/metrics")
            silent = [n for n, body in zip(self.names, answers, strict=True) if body is None]
            if silent:
                # a failed scrape, not a partial one: without a process's counters the sums
                # would read as counters going back (a reset to rate()), then jumping up
                return web.Response(status=503, text=f"{', '.join(silent)}: not answering")
            self._metrics = (now, merge_metrics([b.decode() for b in answers if b]))
        return web.Response(body=self._metrics[1], content_type=METRICS_TYPE)

    async def health(self, request: web.Request) -> web.Response:
        parts = await self.ask_json("/health")
        health = merge_health(parts, self.names)
        # which process owns which shards (None: not answering)
        health["processes"] = [
            {"pid": p.pid, "web_port": port,
             "shards": None if h is None else sorted(
                 n for n, role in h["shards"].items() if role == "active"),
             "events": None if h is None else h["events"],
             "busy_s": None if h is None else h["busy_s"]}
            for p, port, h in zip(self.procs, self.ports, parts, strict=True)]
        return _json(health, 503 if health["problems"] else 200)

    async def dashboard_state(self, request: web.Request) -> web.Response:
        return _json(merge_dashboard(await self.ask_json("/dashboard/state"), self.names))

    async def kpis(self, request: web.Request) -> web.Response:
        parts = await self.ask_json("/kpis", request.query_string)
        return _json({"kpis": [r for p in parts if p is not None for r in p["kpis"]]})

    async def accounts(self, request: web.Request) -> web.Response:
        parts = await self.ask_json("/accounts", request.query_string)
        return _json({"accounts": sorted((r for p in parts if p is not None
                                          for r in p["accounts"]),
                                         key=lambda r: r["account_id"])})

    async def dashboard(self, request: web.Request) -> web.Response:
        return web.Response(body=page(), content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application()
        routes: dict[str, Callable[[web.Request], Any]] = {
            "/metrics": self.metrics, "/health": self.health, "/kpis": self.kpis,
            "/accounts": self.accounts, "/dashboard": self.dashboard,
            "/dashboard/state": self.dashboard_state}
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        return app

    async def run(self) -> int:
        """Until a stop signal (exit 0) or a process ending on its own (exit 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        code = 0
        try:
            self.start()  # before the pages are served: they name the processes
            await web.TCPSite(runner, self.settings.web_host, self.settings.web_port).start()
            while not stop.is_set():
                ended = self.ended()
                if ended:
                    log.error("%s: stopping the worker", "; ".join(
                        f"process {i} ended with code {rc}" for i, rc in ended))
                    code = 1
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            await self.stop()
            if self._session is not None:
                await self._session.close()
            await runner.cleanup()
        return code


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def run_processes(settings: Settings) -> int:
    """The worker as ``settings.processes`` processes behind one address."""
    refuse_busy_web_port(settings.web_host, settings.web_port)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    # once, here: a catalog that does not load stops the worker before any process starts,
    # and the processes find their topics made rather than all making them at once
    create_topics(settings, load_catalog(settings.catalog))
    return asyncio.run(Processes(settings).run())
