"""The worker process as an operator sees it: its HTTP server listens where the contract
says (127.0.0.1 unless ``KPI_WEB_HOST`` says otherwise; Faust alone binds every
interface), a busy port stops it at once with one line, and it leaves no temporary folder
behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from streams.broker import free_port
from streams.settings import Settings
from tests.integration.conftest import WorkerProc

pytestmark = pytest.mark.integration


def listening(port: int) -> set[str]:
    """Local addresses of the sockets listening on a TCP port (from /proc/net)."""
    out: set[str] = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] != "0A" or int(port_hex, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            out.add(socket.inet_ntop(family, raw))
    return out


def test_the_worker_listens_on_loopback_by_default_and_where_told(
        isolated: Settings, start_worker: Callable[[Settings], WorkerProc]) -> None:
    w = start_worker(isolated)
    assert listening(isolated.web_port) == {"127.0.0.1"}, w.detail()
    told = replace(isolated, web_host="0.0.0.0", web_port=free_port(),
                   group_id=isolated.group_id + "-b")
    w2 = start_worker(told)
    assert listening(told.web_port) == {"0.0.0.0"}, w2.detail()


def test_a_stopped_worker_leaves_no_temporary_folder_and_a_busy_port_is_one_line(
        isolated: Settings, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "KPI_BROKER": isolated.broker or "",
           "KPI_TOPIC_PREFIX": isolated.topic_prefix, "KPI_GROUP_ID": isolated.group_id,
           "KPI_WEB_PORT": str(isolated.web_port), "KPI_IDLE_TIMEOUT": "0"}
    env.pop("KPI_DATA_DIR", None)  # no data dir: its local state goes to a temporary folder
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "worker"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not listening(isolated.web_port):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # its shards' local state made
        assert any(scratch.iterdir()), "the worker made no temporary folder to clean"
        busy = subprocess.run([sys.executable, "-m", "kpi_engine.cli", "worker"], env=env,
                              capture_output=True, timeout=60)
        assert busy.returncode == 2
        assert busy.stderr.decode().strip() == (
            f"kpi-engine: --web-port {isolated.web_port}: 127.0.0.1:{isolated.web_port} is "
            "already in use (KPI_WEB_PORT)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert not list(scratch.iterdir()), list(scratch.iterdir())
