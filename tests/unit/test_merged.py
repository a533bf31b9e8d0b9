"""A worker's pages merged from its processes' (streams/merged.py), and the environment each
process starts with (streams/processes.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from streams.health import NO_SHARD_ACTIVE, SUMMED
from streams.merged import merge_dashboard, merge_health, merge_metrics
from streams.processes import process_env
from streams.settings import Settings, load_settings


def exposition(events: dict[str, int], gauges: dict[str, float], latencies: list[float]
               ) -> str:
    """A process's /metrics as the worker renders it: a counter, a gauge, a histogram."""
    registry = CollectorRegistry(auto_describe=False)
    hist = Histogram("kpi_engine_emit_latency_seconds", "Emit latency.", registry=registry,
                     buckets=(0.01, 0.1, 1))
    for v in latencies:
        hist.observe(v)

    class Families:
        def collect(self) -> list[Metric]:
            c = CounterMetricFamily("kpi_engine_events", "Valid events.", labels=["type"])
            for t, n in events.items():
                c.add_metric([t], n)
            g = GaugeMetricFamily("kpi_engine_watermark_seconds", "Watermark.",
                                  labels=["topic"])
            for t, v in gauges.items():
                g.add_metric([t], v)
            return [c, g]

    registry.register(Families())
    return generate_latest(registry).decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_counters_and_histograms_add_up_and_each_family_is_written_once() -> None:
    a = exposition({"email.open": 3, "email.send": 10}, {"email": 100.0}, [0.005, 0.5])
    b = exposition({"email.open": 0, "page.view": 7}, {"web": 200.0}, [0.05])
    out = merge_metrics([a, b])
    s = samples(out)
    assert s[("kpi_engine_events_total", (("type", "email.open"),))] == 3
    assert s[("kpi_engine_events_total", (("type", "email.send"),))] == 10
    assert s[("kpi_engine_events_total", (("type", "page.view"),))] == 7
    assert s[("kpi_engine_watermark_seconds", (("topic", "email"),))] == 100.0
    assert s[("kpi_engine_watermark_seconds", (("topic", "web"),))] == 200.0
    bucket = "kpi_engine_emit_latency_seconds_bucket"
    assert s[(bucket, (("le", "0.01"),))] == 1
    assert s[(bucket, (("le", "0.1"),))] == 2
    assert s[(bucket, (("le", "+Inf"),))] == 3
    assert s[("kpi_engine_emit_latency_seconds_count", ())] == 3
    assert abs(s[("kpi_engine_emit_latency_seconds_sum", ())] - 0.555) < 1e-9
    text = out.decode()
    for name in ("kpi_engine_events_total", "kpi_engine_watermark_seconds",
                 "kpi_engine_emit_latency_seconds"):
        assert text.count(f"# TYPE {name} ") == 1, text


def test_a_gauge_two_processes_show_keeps_the_larger_and_a_creation_time_the_earliest(
        ) -> None:
    """A shard changing hands inside the worker: both show its watermark for a moment."""
    a = exposition({}, {"email": 100.0}, [])
    b = exposition({}, {"email": 90.0}, [])
    s = samples(merge_metrics([a, b]))
    assert s[("kpi_engine_watermark_seconds", (("topic", "email"),))] == 100.0
    created = [samples(t.encode())[("kpi_engine_emit_latency_seconds_created", ())]
               for t in (a, b)]
    assert s[("kpi_engine_emit_latency_seconds_created", ())] == min(created)


def test_no_process_answering_is_an_empty_exposition() -> None:
    assert merge_metrics([]) == b""


def health(shards: dict[str, str], events: int = 0, problems: list[str] | None = None,
           first: float | None = None, last: float | None = None, **extra: Any
           ) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "ok", "problems": problems or [], "shards": shards}
    out.update(dict.fromkeys(SUMMED, 0))
    out |= {"events": events, "late_by_family": {}, "state": {"ids": events},
            "durable": True, "state_epochs": {}, "waiting": [], "ids_loaded": {},
            "cycles": {"automatic": False, "collections": 0, "full": 0, "freed": 0,
                       "seconds": 0.0},
            "first_batch_at": first, "last_batch_done_at": last}
    return out | extra


NAMES = ["process 0 (pid 1)", "process 1 (pid 2)"]


def test_health_sums_the_processes_and_a_shard_is_active_where_one_owns_it() -> None:
    a = health({"email": "active", "web": "standby"}, events=10, first=5.0, last=9.0,
               waiting=["email/1"], late_by_family={"email": 1})
    b = health({"email": "standby", "web": "active"}, events=32, first=4.0, last=8.0,
               problems=[], waiting=["web/0"], late_by_family={"web": 2},
               accounts_stage={"events": 5},
               cycles={"automatic": False, "collections": 3, "full": 1, "freed": 40,
                       "seconds": 0.25})
    a["cycles"] |= {"collections": 2, "freed": 7, "seconds": 0.125}
    out = merge_health([a, b], NAMES)
    assert out["cycles"] == {"automatic": False, "collections": 5, "full": 1, "freed": 47,
                             "seconds": 0.375}
    # one process collecting by itself (CPython's automatic collection) shows
    assert merge_health([a, b | {"cycles": b["cycles"] | {"automatic": True}}], NAMES
                        )["cycles"]["automatic"] is True
    assert out["status"] == "ok" and out["problems"] == []
    assert out["role"] == "active"
    assert out["shards"] == {"email": "active", "web": "active"}
    assert out["events"] == 42 and out["state"] == {"ids": 42}
    assert out["late_by_family"] == {"email": 1, "web": 2}
    assert out["waiting"] == ["email/1", "web/0"]
    assert out["accounts_stage"] == {"events": 5}
    assert (out["first_batch_at"], out["last_batch_done_at"], out["busy_s"]) == (4.0, 9.0, 5.0)


def test_a_process_owning_nothing_is_not_a_problem_while_another_owns_shards() -> None:
    idle = health({"email": "standby"}, problems=[f"{NO_SHARD_ACTIVE}: this worker counts "
                                                  "nothing"])
    busy = health({"email": "active"})
    assert merge_health([idle, busy], NAMES)["status"] == "ok"
    out = merge_health([idle, idle], NAMES)
    assert out["status"] == "unavailable" and out["role"] == "standby"
    assert len(out["problems"]) == 1 and out["problems"][0].startswith(NO_SHARD_ACTIVE)


def test_a_process_not_answering_or_in_trouble_makes_the_worker_unavailable() -> None:
    busy = health({"email": "active"})
    out = merge_health([busy, None], NAMES)
    assert out["status"] == "unavailable" and out["durable"] is False
    assert out["problems"] == ["process 1 (pid 2): not answering"]
    cut = health({"web": "active"}, problems=["broker unreachable"])
    out = merge_health([busy, cut], NAMES)
    assert out["problems"] == ["process 1 (pid 2): broker unreachable"]


def test_the_dashboard_poll_merges_current_values_trends_and_rates() -> None:
    def state(kpi: str, rate: float, lag: int, topic: str) -> dict[str, Any]:
        h = health({kpi: "active"}) | {"events_per_s": rate, "lag": lag,
                                       "watermark_delay_s": {topic: 1.5}}
        return {"catalog": [{"kpi": "email_open_rate"}, {"kpi": "web_bounce_rate"}],
                "current": [{"kpi": kpi}], "history": {kpi: {"1h": [["t", 0.5]]}},
                "health": h}
    out = merge_dashboard([state("email_open_rate", 10.0, 3, "email"),
                           state("web_bounce_rate", 5.5, 4, "web")], NAMES)
    assert [r["kpi"] for r in out["current"]] == ["email_open_rate", "web_bounce_rate"]
    assert set(out["history"]) == {"email_open_rate", "web_bounce_rate"}
    assert out["health"]["events_per_s"] == 15.5 and out["health"]["lag"] == 7
    assert out["health"]["watermark_delay_s"] == {"email": 1.5, "web": 1.5}
    assert len(out["catalog"]) == 2
    assert merge_dashboard([None, None], NAMES)["health"]["status"] == "unavailable"


def test_each_process_starts_with_the_workers_settings_on_a_loopback_port_of_its_own(
        tmp_path: Any) -> None:
    s = Settings(broker="kafka://b1:9092,b2:9092", topic_prefix="acme.", partitions=8,
                 web_host="0.0.0.0", web_port=7000, group_id="kpis", instance_id="host-a",
                 idle_timeout=12.5, data_dir=str(tmp_path), processes=2,
                 ssl_check_hostname=False, log_level="info", state_cache_mb=100,
                 state_cache_keys=2000)
    env = process_env(s, 1, 7301, environ={"PATH": "/bin", "KPI_BROKER": "kafka://old:1"})
    assert env["PATH"] == "/bin"
    loaded = load_settings(environ=env)
    assert loaded == replace(s, web_host="127.0.0.1", web_port=7301, processes=1,
                             instance_id="host-a-1", state_cache_mb=50,  # its share
                             data_dir=str(tmp_path / "process-1"))
    assert (tmp_path / "process-1").is_dir()  # Faust makes its folder, not the parents
    # no data dir or instance id: none made up for the process
    bare = load_settings(environ=process_env(replace(s, data_dir="", instance_id=""), 0,
                                             7300, environ={}))
    assert (bare.data_dir, bare.instance_id) == ("", "")
    assert load_settings(environ=process_env(replace(s, broker=None), 0, 7300,
                                             environ={"KPI_BROKER": "kafka://x:1"})
                         ).broker is None


def test_the_parent_of_the_processes_loads_no_kafka_client_faust_or_catalog() -> None:
    """The parent's memory counts in the worker's (48 MB with them, ~30 without): the CLI
    and streams/processes.py import them only where a command needs them."""
    code = ("import sys, kpi_engine.cli, streams.processes; "
            "print(' '.join(sorted(m for m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    heavy = ("faust", "aiokafka", "aiohttp", "yaml", "rocksdict", "metrics.catalog",
             "metrics.engine", "metrics.events")
    assert "streams.processes" in out
    assert [m for m in out if m.split(".")[0] in heavy or m in heavy] == []


def test_the_topics_child_stops_the_worker_on_a_catalog_that_does_not_load(
        tmp_path: Path) -> None:
    """The parent makes the topics in a child (`python -m streams.topics`); a catalog that
    does not load is its exit 2 and one line naming the file, before any broker is asked."""
    bad = tmp_path / "catalog.yaml"
    bad.write_text("kpis: [")
    env = {**os.environ, "KPI_CATALOG": str(bad), "KPI_BROKER": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "streams.topics"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kpi-engine: ") and str(bad) in done.stderr
