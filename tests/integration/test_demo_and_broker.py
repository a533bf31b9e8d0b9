"""`kpi-engine demo` as a newcomer runs it, and the embedded broker's failure modes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import EmbeddedBroker
from streams.errors import BrokerError
from streams.tansu import is_tansu, log_ends
from streams.topics import ensure_topics
from tests.integration.conftest import running_demo

pytestmark = pytest.mark.integration


def test_demo_runs_counts_events_and_exits_cleanly() -> None:
    seen = 0.0
    kids: list[int] = []
    with running_demo("--duration", "20") as (proc, port):
        deadline = time.monotonic() + 19
        while time.monotonic() < deadline and not seen:
            kids = kids or _children(proc.pid)
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            seen = sum(float(v) for v in re.findall(
                r'^kpi_engine_events_total\{[^}]*\} ([0-9.e+]+)$', text, re.M))
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert seen > 0, "no kpi_engine_events_total during the demo"
    text = out.decode()
    for path in ("dashboard", "kpis", "accounts", "metrics", "health"):  # the banner's URLs
        assert f"http://127.0.0.1:{port}/{path}" in text
    assert "first events counted" in text
    # nothing left behind: the broker and worker stopped with the demo
    assert len(kids) >= 2
    assert not any(_alive(k) for k in kids)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)


def test_broker_refuses_a_taken_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match="already in use"):
            EmbeddedBroker(port=port).start()


def test_broker_starts_and_stops(tmp_path: object) -> None:
    b = EmbeddedBroker().start()
    try:
        with socket.create_connection(("127.0.0.1", b.port), timeout=2):
            pass
        assert b.url == f"kafka://127.0.0.1:{b.port}"
    finally:
        proc = b.proc
        b.stop()
    assert proc is not None and proc.poll() is not None


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def _wait_serving(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("demo never served /health")


def test_ctrl_c_stops_the_demo_cleanly() -> None:
    with running_demo(new_session=True) as (proc, port):
        _wait_serving(port)
        kids = _children(proc.pid)
        assert len(kids) >= 2  # broker and worker
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert b"Traceback" not in out
    assert b"stopping" in out
    assert not any(_alive(k) for k in kids), "a child outlived the demo"


def test_demo_killed_with_9_leaves_no_orphan() -> None:
    with running_demo() as (proc, port):
        _wait_serving(port)
        kids = _children(proc.pid)
        assert len(kids) >= 2
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.2)
    assert not any(_alive(k) for k in kids)


def test_log_end_on_the_embedded_broker_comes_from_a_fetch(broker: EmbeddedBroker) -> None:
    """Tansu answers ListOffsets(LATEST) with the newest batch's base offset + 1; a state
    recovery bounded by that would stop before the rest of the batch. ``log_ends`` reads the
    true end, and only Tansu is treated so (streams/tansu.py)."""
    topic = f"quirk-{time.monotonic_ns()}"

    async def run() -> tuple[dict[TopicPartition, int], dict[TopicPartition, int | None], bool]:
        await ensure_topics(broker.bootstrap, [topic], 2)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=100)
        await producer.start()
        try:  # one batch of five records in partition 0; partition 1 stays empty
            sent = [await producer.send(topic, b"x", partition=0) for _ in range(5)]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
        await consumer.start()
        try:
            listed = await consumer.end_offsets([TopicPartition(topic, 0),
                                                 TopicPartition(topic, 1)])
        finally:
            await consumer.stop()
        return listed, await log_ends(broker.bootstrap, listed), await is_tansu(broker.bootstrap)

    listed, true_ends, tansu = asyncio.run(run())
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    assert tansu
    assert listed[p0] < 5, "the quirk is gone: the workaround can go too"
    assert true_ends == {p0: 5, p1: 0}
