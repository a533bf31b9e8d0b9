"""Live end to end: generator -> embedded broker -> worker -> real Prometheus (1 s scrape and
evaluation, the generated rules) -> real Alertmanager (the committed routing) -> a webhook.

The generator's `open-rate-drop` incident must make EmailOpenRateLow arrive at the webhook
firing, and then resolved once the incident is over. The test catalog is the default one
with a 3-minute email window (10 s hop) so the window recovers in three minutes rather than
five; rules come from the same generator as the committed ones, with `for:` shortened.
Not shorter: email rates count each open at its send, and the generator's opens trail
their sends by ~40 s, so a window of a minute reads about half its open rate while open.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpi_engine import alerting
from kpi_engine.generator import Generator, GeneratorConfig
from metrics.catalog import build_catalog
from streams.broker import EmbeddedBroker, free_port, port_is_open
from streams.produce import produce_generated
from streams.settings import Settings
from tests.integration.conftest import WorkerProc
from tests.tools import ROOT, require

pytestmark = pytest.mark.integration


@dataclass
class Webhook:
    """Collects Alertmanager notifications: (arrival wall time, path, alert)."""

    received: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, name: str, status: str) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return [(t, p, a) for t, p, a in self.received
                    if a["labels"].get("alertname") == name and a["status"] == status]


@pytest.fixture
def webhook() -> Iterator[tuple[Webhook, int]]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.lock:
                for alert in body["alerts"]:
                    hook.received.append((time.time(), self.path, alert))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook, port
    server.shutdown()
    server.server_close()
    thread.join()


def short_window_catalog(tmp_path: Path) -> str:
    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["families"]["email"]["windows"] = ["3m"]
    raw["hops"]["3m"] = "10s"
    build_catalog(raw)  # still valid
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def start_service(cmd: list[str], port: int, log: Path, procs: list[subprocess.Popen[bytes]]
                  ) -> None:
    with open(log, "wb") as fh:
        procs.append(subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 30
    while not port_is_open("127.0.0.1", port):
        assert procs[-1].poll() is None, f"{cmd[0]} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{cmd[0]} not listening:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def test_open_rate_drop_fires_and_resolves_through_alertmanager(
        broker: EmbeddedBroker, isolated: Settings, tmp_path: Path,
        start_worker: Callable[[Settings], WorkerProc],
        webhook: tuple[Webhook, int]) -> None:
    prometheus = require("prometheus")
    alertmanager = require("prometheus-alertmanager")
    hook, hook_port = webhook
    catalog_path = short_window_catalog(tmp_path)
    settings = replace(isolated, catalog=catalog_path, idle_timeout=5.0, emit_interval=1.0)
    worker = start_worker(settings)

    # Alertmanager with the committed routing; receivers pointed at the test's webhook
    am_cfg = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    for route in [am_cfg["route"], *am_cfg["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    for receiver in am_cfg["receivers"]:
        for wh in receiver["webhook_configs"]:
            path = wh["url"].split(":5001", 1)[1]
            wh["url"] = f"http://127.0.0.1:{hook_port}{path}"
    (tmp_path / "am.yml").write_text(yaml.safe_dump(am_cfg))
    am_port, prom_port = free_port(), free_port()

    rules = alerting.rules(build_catalog(yaml.safe_load(Path(catalog_path).read_text())),
                           for_override="5s")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": alerting.JOB, "static_configs": [
            {"targets": [f"127.0.0.1:{settings.web_port}"]}]}],
    }))
    procs: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    producer: threading.Thread | None = None
    try:
        start_service([alertmanager, f"--config.file={tmp_path / 'am.yml'}",
                       f"--storage.path={tmp_path / 'am-data'}",
                       f"--web.listen-address=127.0.0.1:{am_port}",
                       "--cluster.listen-address="], am_port, tmp_path / "am.log", procs)
        start_service([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                       f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                       f"--web.listen-address=127.0.0.1:{prom_port}",
                       "--rules.alert.resend-delay=1s"], prom_port, tmp_path / "prom.log",
                      procs)

        # live traffic whose first 3 minutes are already past: the 3 m window is in steady
        # state when the test starts watching; the incident runs from +40 s to +190 s
        backlog_s, incident_at, incident_for = 180, 40, 150
        t0 = time.time()
        gen = Generator(GeneratorConfig(
            rate=100, duration_s=backlog_s + 500, seed=11, history_days=0,
            start_ms=int(t0 * 1000) - backlog_s * 1000, incident="open-rate-drop",
            incident_at_s=backlog_s + incident_at, incident_for_s=incident_for))

        def produce() -> None:
            async def run() -> None:
                done = asyncio.Event()
                task = asyncio.create_task(produce_generated(
                    broker.bootstrap, settings, gen.messages(), realtime=True, stop=done))
                while not task.done():
                    if stop.is_set():
                        done.set()
                    await asyncio.sleep(0.2)
                await task
            asyncio.run(run())

        producer = threading.Thread(target=produce)
        producer.start()
        incident_start, incident_end = t0 + incident_at, t0 + incident_at + incident_for

        def total(alerts: list[tuple[float, str, dict[str, Any]]]
                  ) -> list[tuple[float, str, dict[str, Any]]]:
            # the total series, not a campaign's or a segment's
            return [x for x in alerts if "campaign_id" not in x[2]["labels"]
                    and "segment" not in x[2]["labels"]]

        def wait(what: str, until: float, check: Callable[[], bool]) -> None:
            while time.time() < until:
                if check():
                    return
                assert worker.proc.poll() is None, worker.log_path.read_text()[-3000:]
                time.sleep(0.5)
            got = [(round(t - t0), p, a["status"], a["labels"]) for t, p, a in hook.received]
            raise AssertionError(f"{what}: nothing by +{until - t0:.0f} s; webhook got "
                                 f"{got[:20]}\nworker health: {worker.health()}")

        wait("EmailOpenRateLow firing", incident_end + 45,
             lambda: bool(total(hook.alerts("EmailOpenRateLow", "firing"))))
        fired_at, path, alert = total(hook.alerts("EmailOpenRateLow", "firing"))[0]
        assert fired_at > incident_start, "fired before the incident began"
        assert path == "/marketing-ops"  # severity=warning takes the warning route
        assert alert["labels"]["window"] == "3m"
        assert alert["labels"]["severity"] == "warning"
        assert set(alert["annotations"]) == {"summary", "description", "dashboard_url",
                                             "runbook_url"}
        assert alert["annotations"]["runbook_url"].endswith("runbook.md#emailopenratelow")
        print(f"\nEmailOpenRateLow firing at the webhook {fired_at - incident_start:.1f} s "
              "after the incident began")

        wait("EmailOpenRateLow resolved", incident_end + 270,
             lambda: bool(total(hook.alerts("EmailOpenRateLow", "resolved"))))
        resolved_at = total(hook.alerts("EmailOpenRateLow", "resolved"))[0][0]
        assert resolved_at > incident_end, "resolved while the incident was still on"
        print(f"EmailOpenRateLow resolved {resolved_at - incident_end:.1f} s after it ended")
    finally:
        stop.set()
        if producer is not None:
            producer.join(timeout=30)
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
