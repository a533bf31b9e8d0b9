"""A worker's own health: the broker probe, the thinned client log, offset resets said
as warnings, and a shard whose activation failed retried and reported (503) meanwhile, or
the worker stopped when its state is unreadable."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import replace

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from metrics.errors import StateError
from streams.broker import free_port
from streams.health import BrokerWatch, OffsetReset, Thinned, connect_error
from streams.settings import Settings
from streams.state import Snapshot, claim_key, encode
from streams.topics import input_topics
from streams.worker import KpiShell
from tests.helpers import DEFAULT_CATALOG, final_values
from tests.unit.test_shard import GEN, SETTINGS, TOPIC, FakeIO, FakeTable, batches, oracle


def record(msg: str, *args: object, level: int = logging.ERROR,
           name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_client_lines_pass_once_per_interval_and_count_the_rest() -> None:
    now = [0.0]
    f = Thinned(30.0, clock=lambda: now[0])
    passed = []
    for i in range(1000):
        now[0] = i * 0.03  # 30 s of retries, ~33 a second
        r = record("Unable connect to node with id %s: %s", 1, "refused")
        if f.filter(r):
            passed.append(r.getMessage())
    other = record("Unable to update metadata from %s", [1])
    assert f.filter(other), "another template has its own budget"
    now[0] = 31.0
    r = record("Unable connect to node with id %s: %s", 1, "refused")
    assert f.filter(r)
    assert passed == ["Unable connect to node with id 1: refused"]
    assert r.getMessage() == "Unable connect to node with id 1: refused (999 more like it in 31 s)"


def test_an_offset_reset_is_a_warning_naming_the_policy() -> None:
    f = OffsetReset("earliest", lambda: logging.WARNING)
    r = record("Fetch offset %s is out of range for partition %s, resetting offset", 1300,
               "TopicPartition(topic='web-events', partition=2)", level=logging.INFO)
    assert f.filter(r) and r.levelno == logging.WARNING
    assert "1300" in r.getMessage() and "auto_offset_reset=earliest" in r.getMessage()
    assert not f.filter(record("Fetching %s", 1, level=logging.INFO))
    assert f.filter(record("Failed fetch messages from %s", 1, level=logging.ERROR))


def test_the_broker_watch_says_when_and_why_it_is_away() -> None:
    now = [100.0]
    closed = free_port()  # nothing listens there
    watch = BrokerWatch(f"127.0.0.1:{closed}", timeout_s=1.0, clock=lambda: now[0])
    asyncio.run(watch.probe())
    now[0] = 112.0
    problem = watch.problem()
    assert problem is not None and problem.startswith(f"broker unreachable at 127.0.0.1:{closed} "
                                                      "for 12 s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # either server of the list will do
        watch.bootstrap = f"127.0.0.1:{closed},127.0.0.1:{port}"
        asyncio.run(watch.probe())
        assert watch.problem() is None
        assert asyncio.run(connect_error(f"127.0.0.1:{port}", 1.0)) is None


class FlakyTable(FakeTable):
    """The broker refuses the first writes (a shard's claim), then takes them."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        await super().write(records)


def shell(table: FakeTable) -> tuple[KpiShell, FakeIO]:
    settings = replace(SETTINGS, broker=None)
    io = FakeIO()
    io.tps = {(t, p) for t in input_topics(settings) for p in range(2)}
    return KpiShell(settings, DEFAULT_CATALOG, io, table), io


def test_a_worker_owning_nothing_is_unavailable() -> None:
    sh, _ = shell(FakeTable())
    health = sh.health()
    assert health["status"] == "unavailable" and health["role"] == "standby"
    assert any(p.startswith("no shard active") for p in health["problems"])


def test_a_failed_activation_is_reported_then_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.worker.RETRY_ACTIVATION_S", 0.0)
    table = FlakyTable(failures=2)
    sh, _ = shell(table)
    names = set(DEFAULT_CATALOG.shards())

    async def go() -> None:
        await sh.on_state_recovered(names)
        health = sh.health()
        assert health["status"] == "unavailable"
        failed = [p for p in health["problems"] if " not activated: " in p]
        assert len(failed) == 2 and "KafkaConnectionError" in failed[0]
        assert len(sh.active) == len(names) - 2
        await sh.tick()  # the retry: the broker takes the claims now
        assert len(sh.active) == len(names) and sh.not_activated == {}
        assert sh.health()["status"] == "ok" and sh.health()["problems"] == []

    asyncio.run(go())


class GatedTable(FakeTable):
    """The first write waits for ``gate``: a claim the broker is slow to take."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gated = False

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        if not self.gated:
            self.gated = True
            await self.gate.wait()
        await super().write(records)


def test_a_retried_activation_and_a_recovery_at_once_restore_the_shard_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The emit timer retries a failed activation while a rebalance's recovery activates
    the same shard (a broker coming back does both): one restores it, the other finds it
    active. Both restoring, each from the records it read and in an epoch of its own, the
    second threw away what the first counted and committed meanwhile."""
    monkeypatch.setattr("streams.worker.RETRY_ACTIVATION_S", 0.0)
    table = GatedTable()
    sh, _ = shell(table)
    restores: list[int] = []
    email = sh.shards["email"]
    real = email.restore

    def counted(*args: object, **kwargs: object) -> None:
        restores.append(1)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(email, "restore", counted)
    sh.not_activated = {"email": "KafkaConnectionError: broker away"}

    async def go() -> None:
        retry = asyncio.ensure_future(sh.tick())  # its claim waits at the gate
        for _ in range(3):
            await asyncio.sleep(0)
        recovery = asyncio.ensure_future(sh.on_state_recovered({"email"}))
        for _ in range(3):
            await asyncio.sleep(0)
        table.gate.set()
        await asyncio.gather(retry, recovery)

    asyncio.run(go())
    assert email.active and restores == [1]


def test_unreadable_state_stops_the_takeover_loudly() -> None:
    # the stored state was built with another catalog (here: another currency)
    other = replace(DEFAULT_CATALOG.restrict(("email",)), currency="USD")
    table = FakeTable()
    sh, _ = shell(table)
    email = sh.shards["email"]
    table.data.update(encode(Snapshot(1, email.engine.snapshot(), {}, {}, []), "email", other))
    table.data[claim_key("email")] = b"0"  # its owner claimed it (no claim: a late write)
    with pytest.raises(StateError, match="other windows, grace or currency"):
        asyncio.run(sh.on_state_recovered({"email"}))
    assert not email.active


def test_settings_without_a_broker_need_no_probe() -> None:
    assert shell(FakeTable())[0].broker is None
    assert KpiShell(replace(Settings(), broker="kafka://127.0.0.1:9"), DEFAULT_CATALOG,
                    FakeIO(), FakeTable()).broker is not None


def test_sends_the_broker_refuses_neither_stop_the_worker_nor_lose_finals() -> None:
    """A send the broker refuses (a topic not ready yet on a broker back empty) must not
    raise out of the emit timer's tick (Faust stops the worker on a timer's error), and
    closed windows whose send failed after their commit go out at a later tick."""
    table = FakeTable()
    sh, io = shell(table)
    email = sh.shards["email"]
    lines = [raw for _, (t, raw) in GEN.messages() if t == TOPIC]
    refusing = [True]
    send = io.send

    async def flaky_send(topic: str, key: bytes | None, value: bytes,
                         timestamp: float | None = None) -> None:
        if refusing[0] and topic == "kpi-windows":
            raise KafkaTimeoutError()
        await send(topic, key, value, timestamp)

    io.send = flaky_send  # type: ignore[method-assign]

    async def go() -> None:
        await sh.on_state_recovered({"email"})
        for b in batches(lines):
            await email.handle(b)
        assert email.outbox
        await email.snapshot(force=True)  # durable, committed, but the sends refused
        assert not email.outbox and email.resend and not io.windows()
        await sh.tick()  # refused again: no error out of the timer
        assert email.resend and not io.windows()
        refusing[0] = False
        await sh.tick()
        assert not email.resend and email.health()["pending_finals"] == 0

    asyncio.run(go())
    assert io.windows() and final_values(io.windows()) == {
        k: v for k, v in oracle(lines).items() if k in final_values(io.windows())}


def test_no_quiet_time_builds_up_while_the_broker_is_out_of_reach() -> None:
    """Ten minutes cut off from the broker are no quiet time for the idle advance: what
    reached the broker meanwhile comes once it is back, and would be late if event time
    had moved on with the wall clock."""
    table = FakeTable()
    settings = replace(SETTINGS, broker=None, idle_timeout=30.0)
    io = FakeIO()
    io.tps = {(t, p) for t in input_topics(settings) for p in range(2)}
    sh = KpiShell(settings, DEFAULT_CATALOG, io, table)
    email = sh.shards["email"]
    lines = [raw for _, (t, raw) in GEN.messages() if t == TOPIC]

    def quiet_for(ms: int) -> None:  # as if the last events came ms ago
        wm = email.engine.watermarks["email"]
        wm.last_wall -= ms
        for src in wm.seen_wall:
            wm.seen_wall[src] -= ms

    async def go() -> int:
        await sh.on_state_recovered({"email"})
        for b in batches(lines):
            await email.handle(b)
        await sh.tick()
        before = email.engine.watermark("email")
        sh.broker = BrokerWatch(f"127.0.0.1:{free_port()}", timeout_s=1.0)
        await sh.broker.probe()
        assert sh.broker.problem() is not None
        quiet_for(600_000)
        await sh.tick()
        assert email.engine.watermark("email") == before
        sh.broker = None  # back: really quiet from now on only
        quiet_for(600_000)
        await sh.tick()
        return email.engine.watermark("email") - before

    assert asyncio.run(go()) >= 600_000  # the test can see a jump
