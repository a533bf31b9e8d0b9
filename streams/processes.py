"""``kpi-engine worker --processes N``: one worker on N cores of a host.

A worker's per-event path is CPU-bound Python, so one process uses one core whatever the
host has. Here the worker runs N processes, each a member of the worker's consumer group
owning whole shards (streams/assignor.py), as N workers would; this parent serves the
worker's address with their pages merged (streams/merged.py) and runs them as one: a stop
signal stops them all, and one of them ending ends the worker, so that whatever restarts
the worker restarts it whole.

The parent counts in the worker's memory, so it holds no more than that job needs: the
standard library's HTTP server and client, no Kafka client, no Faust, no catalog (a
short-lived child makes the topics, ``python -m streams.topics``). ~30 MB where the same
parent on aiohttp with the catalog loaded held 48.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from http.client import HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from prometheus_client import CONTENT_TYPE_LATEST

from streams.broker import die_with_parent, free_port, refuse_busy_web_port
from streams.dashboard import page
from streams.merged import merge_dashboard, merge_health, merge_metrics
from streams.settings import Settings, settings_environ

log = logging.getLogger("kpi_engine.worker")

#: seconds a process has to answer a page before the worker says it is not answering
#: (below the 5 s a client such as a probe or the tests give the worker)
ASK_TIMEOUT_S: Final = 3.0
#: seconds the processes have to stop on a stop signal before they are killed
STOP_TIMEOUT_S: Final = 30.0
#: Prometheus text format, the version spelled out
METRICS_TYPE: Final = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
JSON_TYPE: Final = "application/json"

#: a page's answer: status, content type, body
Answer = tuple[int, str, bytes]


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
        # direct to the processes on loopback, whatever proxy the environment names
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._asks = ThreadPoolExecutor(max_workers=4 * settings.processes,
                                        thread_name_prefix="ask")
        self._metrics: tuple[float, bytes] | None = None  # when rendered, the text
        self._metrics_lock = threading.Lock()  # one rendering at a time, as one worker
        self.pages: dict[str, Callable[[str], Answer]] = {
            "/metrics": self.metrics, "/health": self.health, "/kpis": self.kpis,
            "/accounts": self.accounts, "/dashboard": self.dashboard,
            "/dashboard/state": self.dashboard_state}

    @property
    def names(self) -> list[str]:
        return [f"process {i} (pid {p.pid})" for i, p in enumerate(self.procs)]

    def start(self) -> None:
        # from the main thread: a child's parent-death signal follows the thread that
        # started it, and this one lives as long as the worker
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

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(p.poll() is None for p in self.procs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for p in self.procs:
            if p.poll() is None:
                log.error("pid %d did not stop within %.0f s: killed", p.pid, STOP_TIMEOUT_S)
                p.kill()
                p.wait()

    def ask(self, path: str, query: str = "") -> list[bytes | None]:
        """Each process's answer to ``path`` (whatever its status: a 503 /health still says
        why), None where it did not answer."""
        def one(port: int) -> bytes | None:
            url = f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
            try:
                with self._opener.open(url, timeout=ASK_TIMEOUT_S) as resp:
                    return bytes(resp.read())
            except urllib.error.HTTPError as exc:
                with exc:
                    return bytes(exc.read())
            except (OSError, HTTPException):  # refused, reset, timed out; cut short
                return None

        return list(self._asks.map(one, self.ports))

    def ask_json(self, path: str, query: str = "") -> list[Any]:
        out = []
        for body in self.ask(path, query):
            try:
                out.append(None if body is None else orjson.loads(body))
            except orjson.JSONDecodeError:  # a process stopping mid-answer
                out.append(None)
        return out

    def metrics(self, query: str) -> Answer:
        # rendered at most once per emit interval, as a single worker's is (Exposition)
        with self._metrics_lock:
            now = time.monotonic()
            if self._metrics is None or now - self._metrics[0] >= self.settings.emit_interval:
                answers = self.ask("/metrics")
                silent = [n for n, body in zip(self.names, answers, strict=True)
                          if body is None]
                if silent:
                    # a failed scrape, not a partial one: without a process's counters the
                    # sums would read as counters going back (a reset to rate()), then up
                    return 503, "text/plain", f"{', '.join(silent)}: not answering".encode()
                self._metrics = (now, merge_metrics([b.decode() for b in answers if b]))
            return 200, METRICS_TYPE, self._metrics[1]

    def health(self, query: str) -> Answer:
        parts = self.ask_json("/health")
        health = merge_health(parts, self.names)
        # which process owns which shards (None: not answering)
        health["processes"] = [
            {"pid": p.pid, "web_port": port,
             "shards": None if h is None else sorted(
                 n for n, role in h["shards"].items() if role == "active"),
             "events": None if h is None else h["events"],
             "busy_s": None if h is None else h["busy_s"],
             "cycles": None if h is None else h["cycles"]}
            for p, port, h in zip(self.procs, self.ports, parts, strict=True)]
        return 503 if health["problems"] else 200, JSON_TYPE, orjson.dumps(health)

    def dashboard_state(self, query: str) -> Answer:
        merged = merge_dashboard(self.ask_json("/dashboard/state"), self.names)
        return 200, JSON_TYPE, orjson.dumps(merged)

    def kpis(self, query: str) -> Answer:
        parts = self.ask_json("/kpis", query)
        return 200, JSON_TYPE, orjson.dumps(
            {"kpis": [r for p in parts if p is not None for r in p["kpis"]]})

    def accounts(self, query: str) -> Answer:
        parts = self.ask_json("/accounts", query)
        return 200, JSON_TYPE, orjson.dumps(
            {"accounts": sorted((r for p in parts if p is not None for r in p["accounts"]),
                                key=lambda r: r["account_id"])})

    def dashboard(self, query: str) -> Answer:
        return 200, "text/html; charset=utf-8", page()

    def answer(self, target: str) -> Answer:
        url = urlsplit(target)
        handler = self.pages.get(url.path)
        if handler is None:
            return 404, "text/plain", b"404: Not Found"
        return handler(url.query)

    def server(self) -> ThreadingHTTPServer:
        """The worker's address, a thread per request (a slow process's page holds only the
        requests that wait for it)."""
        processes = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus scrapes

            def do_GET(self) -> None:
                try:
                    status, ctype, body = processes.answer(self.path)
                except Exception:  # a bug in a merge: one 500, the worker goes on
                    log.exception("GET %s", self.path)
                    status, ctype, body = 500, "text/plain", b"500: Internal Server Error"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # no access log, as the processes' own pages

        server = ThreadingHTTPServer((self.settings.web_host, self.settings.web_port), Handler)
        server.daemon_threads = True
        return server

    def run(self) -> int:
        """Until a stop signal (exit 0) or a process ending on its own (exit 1)."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        server = self.server()
        serving = threading.Thread(target=server.serve_forever, name="web", daemon=True)
        code = 0
        try:
            self.start()  # before the pages are served: they name the processes
            serving.start()
            while not stop.wait(0.5):
                ended = self.ended()
                if ended:
                    log.error("%s: stopping the worker", "; ".join(
                        f"process {i} ended with code {rc}" for i, rc in ended))
                    code = 1
                    break
        finally:
            self.stop()
            if serving.is_alive():
                server.shutdown()  # (it waits for serve_forever, which must have started)
            server.server_close()
            self._asks.shutdown(wait=False, cancel_futures=True)
        return code


def run_processes(settings: Settings) -> int:
    """The worker as ``settings.processes`` processes behind one address."""
    refuse_busy_web_port(settings.web_host, settings.web_port)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    # once, here: a catalog that does not load stops the worker before any process starts,
    # and the processes find their topics made rather than all making them at once
    made = subprocess.run([sys.executable, "-m", "streams.topics"],
                          env=settings_environ(settings), stdin=subprocess.DEVNULL, check=False)
    if made.returncode:
        return made.returncode
    return Processes(settings).run()
