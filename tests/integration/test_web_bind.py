"""The worker's HTTP server listens where the contract says: 127.0.0.1 unless
``KPI_WEB_HOST`` says otherwise (Faust alone binds every interface)."""

from __future__ import annotations

import socket
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
