"""Integration fixtures: the real embedded broker and real worker processes.

Nothing here skips: a missing broker binary fails the run (CI=true or not), because a
skipped integration test is a failed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from streams.topics import all_topics, ensure_topics


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=str(log)) as b:
        yield b


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    settings: Settings
    base_url: str
    log_path: Path
    data_dir: Path

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=5) as resp:
            return bytes(resp.read())

    def health(self) -> dict[str, Any]:
        """/health's body, also when it is 503 (``problems`` says why)."""
        try:
            body = self.get("/health")
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            body = exc.read()
        return dict(orjson.loads(body))

    def detail(self) -> str:
        try:
            health = f"health: {self.health()}"
        except OSError as exc:
            health = f"health: unreachable ({exc})"
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return f"{health}\nworker {state}, log:\n{self.log_path.read_text()[-4000:]}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def isolated(broker: EmbeddedBroker) -> Settings:
    """Unique topics and group for one test, created before anything produces."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(broker=broker.url, topic_prefix=f"t{tag}.", group_id=f"g{tag}",
                        partitions=4, web_port=free_port(), idle_timeout=0,
                        session_timeout_s=4.0)
    asyncio.run(ensure_topics(broker.bootstrap, all_topics(settings), settings.partitions))
    return settings


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProc]]:
    started: list[WorkerProc] = []

    def start(settings: Settings, data_dir: Path | None = None) -> WorkerProc:
        """A worker process; on a data directory of its own unless given one (a restart
        on the same machine: its local state is there)."""
        data_dir = data_dir or tmp_path / f"data-{len(started)}"
        env = dict(os.environ)
        env.update({
            "KPI_BROKER": settings.broker or "", "KPI_TOPIC_PREFIX": settings.topic_prefix,
            "KPI_GROUP_ID": settings.group_id, "KPI_WEB_PORT": str(settings.web_port),
            "KPI_WEB_HOST": settings.web_host,
            "KPI_PARTITIONS": str(settings.partitions),
            "KPI_IDLE_TIMEOUT": str(settings.idle_timeout),
            "KPI_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
            "KPI_DATA_DIR": str(data_dir),
            "KPI_EMIT_INTERVAL": str(settings.emit_interval),
            "KPI_SNAPSHOT_INTERVAL": str(settings.snapshot_interval),
            "KPI_PROCESSES": str(settings.processes),
        })
        if settings.catalog is not None:
            env["KPI_CATALOG"] = settings.catalog
        if settings.instance_id:
            env["KPI_INSTANCE_ID"] = settings.instance_id
        log_path = tmp_path / f"worker-{len(started)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "worker"],
                                    env=env, stdout=log, stderr=subprocess.STDOUT)
        w = WorkerProc(proc, settings, f"http://127.0.0.1:{settings.web_port}", log_path,
                       data_dir)
        started.append(w)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"worker died: {log_path.read_text()[-3000:]}"
            try:
                w.health()
                return w
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"worker not serving /health: {log_path.read_text()[-3000:]}")

    yield start
    for w in started:
        w.stop()


@dataclass
class Group:
    """Workers of one consumer group seen as one: the shards they own, summed."""

    workers: list[WorkerProc]

    @property
    def settings(self) -> Settings:
        return self.workers[0].settings

    def live(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.proc.poll() is None]

    def owners(self) -> dict[str, list[WorkerProc]]:
        """shard -> the live workers that say they own it"""
        out: dict[str, list[WorkerProc]] = {}
        for w in self.live():
            for shard, role in w.health()["shards"].items():
                if role == "active":
                    out.setdefault(shard, []).append(w)
        return out

    def health(self) -> dict[str, Any]:
        total: dict[str, Any] = {"late_by_family": {}, "durable": True}
        for w in self.live():
            h = w.health()
            for k in ("events", "invalid", "duplicates", "late", "pending_finals",
                      "replayed_skipped"):
                total[k] = total.get(k, 0) + h[k]
            total["late_by_family"].update(h["late_by_family"])
            total["durable"] = total["durable"] and h["durable"]
            if "accounts_stage" in h:
                total["accounts_stage"] = h["accounts_stage"]
        return total

    def detail(self) -> str:
        return "\n".join(w.detail() for w in self.live())


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             worker: WorkerProc | Group | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except TimeoutError:  # a worker busy with a large batch answers late: ask again
            pass
        except OSError as exc:
            # a worker that exited fails now, with its exit code and log (a bare "connection
            # refused" says nothing in a CI report); one that is alive is asked again
            if worker is None or not exited(worker):
                raise
            last = exc
            break
        time.sleep(0.25)
    detail = "" if worker is None else "\n" + worker.detail()
    if last is not None:
        raise AssertionError(f"a worker exited while waiting for {what} ({last}){detail}")
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")


def exited(worker: WorkerProc | Group) -> bool:
    procs = [worker] if isinstance(worker, WorkerProc) else worker.workers
    return any(w.proc.poll() is not None for w in procs)


def consumed(w: WorkerProc | Group) -> int:
    h = w.health()
    return int(h["events"]) + int(h["invalid"]) + int(h["duplicates"]) + int(h["late"])


def wait_settled(worker: WorkerProc | Group, n: int, timeout_s: float,
                 stage_until: int | None = None) -> None:
    """Every one of n messages consumed, and every closed window it caused on kpi-windows:
    finals wait for the snapshot that makes them durable, a few seconds under load. With
    ``stage_until``, the accounts stage too, once its event time reached it (the stage
    reads copies the other shards send as they go: input consumed is not enough)."""
    def settled() -> bool:
        if consumed(worker) < n:
            return False
        h = worker.health()
        if stage_until is not None:
            stage = h.get("accounts_stage")
            if stage is None or stage["watermark"] < stage_until or stage["pending_finals"]:
                return False
        return h["pending_finals"] == 0 and bool(h["durable"])
    wait_for(settled, timeout_s, f"{n} messages consumed and their finals published", worker)


@contextlib.contextmanager
def running_demo(*args: str, new_session: bool = False
                 ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`kpi-engine demo` on a free web port; killed on the way out whatever the test did."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "demo", "--web-port",
                             str(port), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=new_session)
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
