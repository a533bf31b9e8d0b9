"""`kpi-engine worker --processes 2` through the real broker: one worker on two cores, whose
address serves what its processes count, merged; a process killed -9 ends the worker, and
the worker restarted on its data directory counts every event once (streams/processes.py,
streams/merged.py)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest

from metrics.catalog import load_catalog
from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.integration.conftest import WorkerProc, consumed, wait_for
from tests.integration.test_crash_recovery import Scenario, produce_paced
from tests.integration.test_streaming_equals_replay import produce
from tests.integration.test_worker_counts import parse_exposition, scrape
from tests.integration.test_worker_process import listening
from tests.tools import require

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for this purpose: its parent has not reaped it yet
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def processes(worker: WorkerProc) -> list[dict[str, Any]]:
    return list(worker.health()["processes"])


def both_own_shards(worker: WorkerProc) -> bool:
    """Each process owns shards, each shard one process (while a rebalance is under way,
    the previous owner shows a shard until the next owner has recovered it)."""
    procs = processes(worker)
    owned = [set(p["shards"] or ()) for p in procs]
    return (len(procs) == 2 and all(owned) and not owned[0] & owned[1]
            and owned[0] | owned[1] == set(load_catalog(None).shards()))


def get_json(worker: WorkerProc, path: str) -> Any:
    return orjson.loads(worker.get(path))


def test_a_worker_of_two_processes_counts_once_across_a_kill_9_and_serves_one_address(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[..., WorkerProc]) -> None:
    sc = Scenario.make(isolated, seed=31)
    n = len(sc.messages)
    first, rest = sc.messages[:int(n * 0.7)], sc.messages[int(n * 0.7):]
    settings = replace(isolated, processes=2, snapshot_interval=0.2, emit_interval=0.2)
    worker = start_worker(settings)
    wait_for(lambda: both_own_shards(worker), 60, "both processes to own shards", worker)
    procs = processes(worker)
    # each process frees its cycles on its own clock (streams/cycles.py)
    assert [p["cycles"]["automatic"] for p in procs] == [False, False]
    # each process serves its own pages on loopback only; the worker's address is the one
    for p in procs:
        assert listening(p["web_port"]) == {"127.0.0.1"}
    assert listening(settings.web_port) == {"127.0.0.1"}

    # a process killed -9 mid-stream: the worker ends (exit 1) and takes the other with it
    paced = threading.Thread(target=lambda: asyncio.run(produce_paced(
        broker.bootstrap, first, lambda: consumed(worker))))
    paced.start()
    try:
        wait_for(lambda: consumed(worker) >= 0.3 * n and worker.health()["snapshot_seq"] > 2,
                 120, "a third consumed", worker)
        assert paced.is_alive(), "the kill must land while input still flows"
        victim = next(p for p in procs if "email" in p["shards"])
        other = next(p for p in procs if p is not victim)
        os.kill(victim["pid"], signal.SIGKILL)
        assert worker.proc.wait(timeout=60) == 1, worker.detail()
        assert not alive(other["pid"]) and not alive(victim["pid"])
        assert re.search(r"process \d ended with code -9", worker.log_path.read_text())
    finally:
        paced.join()
    asyncio.run(produce(broker.bootstrap, rest))

    # restarted on its data directory: each process finds its local state in process-<i>
    worker = start_worker(replace(settings, web_port=free_port()), data_dir=worker.data_dir)
    assert sorted(os.listdir(worker.data_dir)) == ["process-0", "process-1"]
    windows = sc.check(worker, broker.bootstrap)  # counts exact, finals == replay
    assert windows > 100

    # /metrics: one exposition, the processes' counters summed
    health = worker.health()
    wait_for(lambda: "kpi_web_bounce_rate" in scrape(worker)
             and "kpi_email_open_rate" in scrape(worker), 20, "both processes' KPIs", worker)
    text = worker.get("/metrics").decode()
    assert text.count("# TYPE kpi_engine_events_total counter") == 1
    # Prometheus's own parser and linter accept the merged exposition
    check = subprocess.run([require("promtool"), "check", "metrics"], input=text.encode(),
                           capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    m = scrape(worker)
    assert sum(m["kpi_engine_events_total"].values()) == \
        health["events"] + health["accounts_stage"]["events"]
    assert m["kpi_engine_events_duplicate_total"][""] == health["duplicates"]
    assert sum(m["kpi_engine_events_invalid_total"].values()) == health["invalid"]
    def latencies() -> list[float]:
        return [scrape_port(p["web_port"])["kpi_engine_emit_latency_seconds_count"][""]
                for p in processes(worker)]
    before = latencies()
    time.sleep(2 * settings.emit_interval)  # past the parent's cached rendering
    merged = scrape(worker)["kpi_engine_emit_latency_seconds_count"][""]
    assert sum(before) <= merged <= sum(latencies())
    assert merged > max(before), "the histogram is the processes' summed, not one's"

    # /kpis and /dashboard/state: both processes' KPIs; filters reach each process
    kpis = get_json(worker, "/kpis")["kpis"]
    names = {r["kpi"] for r in kpis}
    assert {"email_open_rate", "web_bounce_rate"} <= names
    only = get_json(worker, "/kpis?kpi=email_open_rate&window=1h")["kpis"]
    assert only and {(r["kpi"], r["window"]) for r in only} == {("email_open_rate", "1h")}
    # every field a single worker's /health and /dashboard/state carry, the merged ones do
    port = processes(worker)[0]["web_port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard/state", timeout=5) as r:
        one = orjson.loads(r.read())
    state = get_json(worker, "/dashboard/state")
    assert set(one) == set(state) and set(one["health"]) <= set(state["health"])
    assert set(one["health"]) - {"events_per_s", "lag", "watermark_delay_s"} <= \
        set(worker.health())
    current = {r["kpi"] for r in state["current"]}
    assert {"email_open_rate", "web_bounce_rate"} <= current
    accounts = get_json(worker, "/accounts")["accounts"]
    assert accounts and [a["account_id"] for a in accounts] == \
        sorted(a["account_id"] for a in accounts)
    assert b"<html" in worker.get("/dashboard").lower()

    # a stop signal stops every process, and the worker exits 0
    pids = [p["pid"] for p in processes(worker)]
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0, worker.detail()
    assert not any(alive(pid) for pid in pids)


def scrape_port(port: int) -> dict[str, dict[str, float]]:
    """A process's own /metrics, on its loopback port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return parse_exposition(resp.read().decode())


def test_the_processes_stop_when_the_worker_is_killed_9(
        isolated: Settings, start_worker: Callable[..., WorkerProc]) -> None:
    """No orphan keeps counting (and holding shards) behind a worker that is gone."""
    worker = start_worker(replace(isolated, processes=2))
    wait_for(lambda: both_own_shards(worker), 60, "both processes to own shards", worker)
    pids = [p["pid"] for p in processes(worker)]
    assert worker.get("/metrics").count(b"# TYPE kpi_engine_events_total counter") == 1
    # the parent serves the pages without aiohttp, Kafka's client or RocksDB in its memory
    with open(f"/proc/{worker.proc.pid}/maps") as f:
        mapped = f.read()
    assert not re.findall(r"/(aiohttp|aiokafka|rocksdict|yaml)/\S*\.so", mapped)
    with open(f"/proc/{pids[0]}/maps") as f:  # where a process does map them
        assert re.findall(r"/(aiohttp|rocksdict)/\S*\.so", f.read())
    # a process that does not answer fails the scrape (no partial sums) and /health
    time.sleep(2 * isolated.emit_interval)  # past the cached rendering
    os.kill(pids[1], signal.SIGSTOP)
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            worker.get("/metrics")
        assert failed.value.code == 503
        assert f"(pid {pids[1]}): not answering" in failed.value.read().decode()
        health = worker.health()
        assert health["status"] == "unavailable"
        assert health["problems"] == [f"process 1 (pid {pids[1]}): not answering"]
    finally:
        os.kill(pids[1], signal.SIGCONT)
    worker.proc.kill()
    worker.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in pids), 40, "the processes to stop")
