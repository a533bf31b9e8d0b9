"""Rules, dashboards and configs generated from the catalog: fresh, valid for the real tools
(promtool, amtool, docker-compose, Grafana's official schema), and naming only metrics the
exporter really exports."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kpi_engine import alerting, dashboards
from kpi_engine.generator import Generator, GeneratorConfig
from metrics.alerts import alert_name
from metrics.catalog import build_catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, parse_event
from streams.exporter import ShellStats, make_registry
from tests.helpers import DEFAULT_CATALOG
from tests.tools import ROOT, require

PROM = ROOT / "prometheus"
GRAFANA = ROOT / "grafana"


def run(*cmd: str, cwd: Path = ROOT) -> str:
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


# ---- generated files are fresh -----------------------------------------------------------


def test_committed_rules_equal_a_fresh_generation() -> None:
    for rel, text in alerting.generated_files(DEFAULT_CATALOG).items():
        path = PROM / rel
        assert path.read_text("utf-8") == text, f"{path} is stale: run `kpi-engine rules`"


def test_committed_dashboards_equal_a_fresh_generation() -> None:
    files = dashboards.generated_files(DEFAULT_CATALOG)
    on_disk = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == set(files), "dashboards on disk differ: run `kpi-engine dashboards`"
    for name, text in files.items():
        path = GRAFANA / "dashboards" / name
        assert path.read_text("utf-8") == text, f"{path} is stale: run `kpi-engine dashboards`"


def test_the_cli_writes_what_the_tests_compare(tmp_path: Path) -> None:
    run(str(ROOT / ".venv/bin/kpi-engine") if (ROOT / ".venv/bin/kpi-engine").exists()
        else "kpi-engine", "rules", "--out", str(tmp_path / "p"))
    assert (tmp_path / "p" / alerting.RULES_FILE).read_text() == \
        (PROM / alerting.RULES_FILE).read_text()


def test_every_catalog_threshold_has_one_alert_with_guard_and_annotations() -> None:
    doc = yaml.safe_load((PROM / alerting.RULES_FILE).read_text())
    rules = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    with_alert = [k for k in DEFAULT_CATALOG.kpis.values() if k.alert is not None]
    assert len(with_alert) >= 10
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for kpi in with_alert:
        assert kpi.alert is not None
        rule = rules[alert_name(kpi)]
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
        assert f"_denominator{{window=\"{kpi.alert.window}\"}} >= " in rule["expr"]
        assert rule["labels"]["severity"] == kpi.alert.severity
        assert set(rule["annotations"]) == {"summary", "description", "dashboard_url",
                                            "runbook_url"}
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert f"### {rule['alert']}" in runbook and anchor == rule["alert"].lower()
        assert rule["for"] == kpi.alert.for_
    # significant breaches, as kpi-alerts: the whole interval below (its upper bound) ...
    assert rules["EmailOpenRateLow"]["expr"].startswith(
        'kpi_email_open_rate_upper{window="5m"} < 0.15')
    # ... or above (its lower bound); a money ratio has no interval: its value
    assert rules["EmailBounceRateHigh"]["expr"].startswith(
        'kpi_email_bounce_rate_lower{window="5m"} > 0.15')
    assert rules["RomiLow"]["expr"].startswith('kpi_romi{window="30d"} < 0')
    for name in ("KpiEngineDown", "KpiEngineNoEvents", "KpiEngineWatermarkStalled",
                 "KpiEngineDlqRateHigh", "KpiEngineLateRateHigh", "KpiEngineConsumerLagHigh"):
        assert name in rules


def test_alert_window_must_be_one_of_the_kpis_windows() -> None:
    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["kpis"]["email_open_rate"]["alert"]["window"] = "7d"
    with pytest.raises(Exception, match=r"alert\.window"):
        build_catalog(raw)
    raw["kpis"]["email_open_rate"]["alert"]["window"] = "1h"
    kpi = build_catalog(raw).kpis["email_open_rate"]
    assert kpi.alert is not None and kpi.alert.window == "1h"
    assert 'window="1h"' in alerting.kpi_alert_expr(build_catalog(raw), kpi)


# ---- promtool and amtool ---------------------------------------------------------------


def test_promtool_checks_the_config_and_rules() -> None:
    promtool = require("promtool")
    out = run(promtool, "check", "config", "prometheus.yml", cwd=PROM)
    assert "SUCCESS" in out
    out = run(promtool, "check", "rules", *sorted(str(p) for p in (PROM / "rules").glob("*.yml")))
    assert "19 rules found" in out or "rules found" in out


def test_promtool_unit_tests_cover_every_alert_firing_and_silent() -> None:
    promtool = require("promtool")
    tests = sorted(str(p.relative_to(PROM)) for p in (PROM / "tests").glob("*.yml"))
    out = run(promtool, "test", "rules", *tests, cwd=PROM)
    assert out.count("SUCCESS") == len(tests)
    # every alert appears in a test that expects it firing and in one that expects silence
    firing: set[str] = set()
    silent: set[str] = set()
    for t in tests:
        for case in yaml.safe_load((PROM / t).read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (firing if check["exp_alerts"] else silent).add(check["alertname"])
    doc = yaml.safe_load((PROM / alerting.RULES_FILE).read_text())
    names = {r["alert"] for g in doc["groups"] for r in g["rules"]}
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_promtool_would_catch_a_broken_rule(tmp_path: Path) -> None:
    promtool = require("promtool")
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n- name: g\n  rules:\n  - alert: X\n"
                   "    expr: kpi_x{window=\"5m\" < 1\n")
    res = subprocess.run([promtool, "check", "rules", str(bad)], capture_output=True)
    assert res.returncode != 0


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = require("amtool")
    out = run(amtool, "check-config", "alertmanager/alertmanager.yml")
    assert "SUCCESS" in out
    cfg = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    routed = {m for r in cfg["route"]["routes"] for m in r["matchers"]}
    assert routed == {f'severity="{s}"' for s in ("critical", "warning", "info")}
    # one worker down mutes its own warnings, not every worker's
    (inhibit,) = cfg["inhibit_rules"]
    assert inhibit["equal"] == ["instance"]


def test_docker_compose_file_is_valid() -> None:
    compose = require("docker-compose")
    out = run(compose, "-f", "docker-compose.yml", "config")
    doc = yaml.safe_load(out)
    assert {"kafka", "worker", "generator", "prometheus", "alertmanager", "grafana"} <= \
        set(doc["services"])
    for name, svc in doc["services"].items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag"
    assert doc["services"]["worker"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert doc["services"]["generator"]["profiles"] == ["traffic"]
    # Kafka's log on its volume (the image's default, /tmp/kraft-combined-logs, is lost on
    # restart), and no obsolete top-level version key
    kafka = doc["services"]["kafka"]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert any((v["target"] if isinstance(v, dict) else v.split(":")[1]) ==
               "/var/lib/kafka/data" for v in kafka["volumes"])
    assert "version" not in yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# ---- Grafana -----------------------------------------------------------------------------


@cache
def grafana_schema() -> dict[str, Any]:
    gen = require(str(ROOT / "tools/grafana-schema/node_modules/.bin/ts-json-schema-generator"))
    types = ROOT / "tools/grafana-schema/node_modules/@grafana/schema/dist/types/raw/dashboard/x"
    out = subprocess.run([gen, "--path", str(types / "types.gen.d.ts"), "--type", "Dashboard",
                          "--no-type-check"], capture_output=True, check=True, timeout=120)
    return dict(json.loads(out.stdout))


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in (GRAFANA / "dashboards").glob("*.json")}


def test_every_dashboard_validates_against_grafanas_schema() -> None:
    schema = grafana_schema()
    validator = jsonschema.Draft7Validator(schema)
    boards = load_dashboards()
    assert len(boards) == 4
    for name, doc in boards.items():
        error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
        assert error is None, f"{name}: {'/'.join(map(str, error.path))}: {error.message[:300]}"


def test_the_schema_check_would_catch_a_bad_dashboard() -> None:
    validator = jsonschema.Draft7Validator(grafana_schema())
    doc = load_dashboards()["overview.json"]
    doc["panels"][1]["gridPos"] = {"x": 0}  # h, w, y missing
    doc["refresh"] = 10  # a string in the schema
    assert len(list(validator.iter_errors(doc))) >= 2


def test_dashboards_fixed_uids_datasource_by_uid_variables_and_links() -> None:
    boards = load_dashboards()
    assert {d["uid"] for d in boards.values()} == {"kpi-overview", "kpi-email-web",
                                                    "kpi-pipeline-roi", "kpi-accounts"}
    prov = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    ds_uid = prov["datasources"][0]["uid"]
    for name, doc in boards.items():
        variables = {v["name"]: v for v in doc["templating"]["list"]}
        # the overview's tiles are totals: no campaign or channel selector that drives nothing
        # the attribution model where a KPI has it (the accounts stage's)
        expected = ["datasource", "window"] + (
            [] if name == "overview.json" else ["campaign", "channel"]) + (
            ["model"] if name == "accounts.json" else [])
        assert list(variables) == expected, name
        # the data source is a variable, defaulting to the provisioned Prometheus
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["current"]["value"] == ds_uid
        window = variables["window"]
        assert {"5m", "1h", "24h"} <= {o["value"] for o in window["options"]}
        for var in ("campaign", "channel", "model"):
            if var in variables:
                # "All" must not match the total series (its label is empty): ".+"
                assert variables[var]["allValue"] == ".+"
                # values from every KPI metric, not one KPI's (CRM- and spend-only
                # campaigns can be chosen)
                query = variables[var]["query"]["query"]
                assert query.startswith('label_values({__name__=~"kpi_.+"')
        assert doc["links"] and doc["links"][0]["type"] == "dashboards"
        for panel in doc["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == "${datasource}"
                assert "[1m]" not in t["expr"] and "[5m]" not in t["expr"], t["expr"]
    # ratio panels draw the total's 95 % interval as a band
    rate_panel = next(p for p in boards["email-web.json"]["panels"]
                      if p.get("title") == "email_open_rate by campaign_id")
    assert any("kpi_email_open_rate_lower" in t["expr"] for t in rate_panel["targets"])
    assert rate_panel["fieldConfig"]["overrides"][0]["properties"][0]["id"] == \
        "custom.fillBelowTo"
    assert any(p["type"] == "table" and "ALERTS" in p["targets"][0]["expr"]
               for p in boards["overview.json"]["panels"])
    # the campaign scorecards: one row per campaign, a column per lifetime email rate
    card = next(p for p in boards["email-web.json"]["panels"]
                if p.get("title", "").startswith("Campaign scorecards"))
    assert card["type"] == "table"
    assert all('window="lifetime", campaign_id=~"$campaign"' in t["expr"]
               for t in card["targets"])
    columns = set(card["transformations"][1]["options"]["renameByName"].values())
    assert {"sent", "email_open_rate", "email_bounce_rate", "email_unsubscribe_rate"} <= columns
    # every KPI has a tile on the overview, with its threshold, linking to its breakdowns
    tiles = {p["title"]: p for p in boards["overview.json"]["panels"] if p["type"] == "stat"}
    assert set(tiles) == set(DEFAULT_CATALOG.kpis)
    steps = tiles["email_open_rate"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[1]["value"] == 0.15
    assert "/d/kpi-email-web/" in tiles["email_open_rate"]["links"][0]["url"]
    # breakdown panels filter by the campaign / channel variables
    exprs = dashboards.panel_exprs(boards["email-web.json"])
    assert any('campaign_id=~"$campaign"' in e for e in exprs)
    assert any('channel=~"$channel"' in e for e in dashboards.panel_exprs(
        boards["pipeline-roi.json"]))
    # a combined breakdown: its dimensions filtered together, the KPI's other one empty
    panel = next(p for p in boards["accounts.json"]["panels"]
                 if p.get("title") == "attributed_revenue by model+campaign_id")
    assert panel["targets"][0]["expr"] == (
        'kpi_attributed_revenue_eur{window="$window", model=~"$model", '
        'campaign_id=~"$campaign", channel=""}')
    assert panel["targets"][0]["legendFormat"] == "{{model}} {{campaign_id}}"


def _substitute(expr: str) -> str:
    return (expr.replace("$window", "5m").replace("$campaign", ".+")
            .replace("$channel", ".+").replace("$model", ".+")
            .replace("$__rate_interval", "1m"))


def test_every_panel_query_passes_promtool(tmp_path: Path) -> None:
    promtool = require("promtool")
    rules = []
    for doc in load_dashboards().values():
        for i, expr in enumerate(dashboards.panel_exprs(doc)):
            if expr.startswith("label_values("):  # a Grafana function, not PromQL
                m = re.fullmatch(r"label_values\((.+), (\w+)\)", expr)
                assert m, expr
                expr = m.group(1)  # a series selector
            rules.append({"record": f"panel:{doc['uid'].replace('-', '_')}:{i}",
                          "expr": _substitute(expr)})
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    out = run(promtool, "check", "rules", str(path))
    assert f"{len(rules)} rules found" in out


# ---- every metric named is exported ------------------------------------------------------


def exported_names() -> set[str]:
    """Metric names a worker exports once traffic of every kind went through it."""
    gen = Generator(GeneratorConfig(rate=60, duration_s=900, seed=3, history_days=31,
                                    invalid=0.01, late=0.01, duplicates=0.01))
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    stats = ShellStats()
    now = gen.end_ms + 60_000
    # the generator's history has CRM and spend only: an MQL 30.5 days back (a lead whose
    # account converts four times) gives lead_velocity a previous window to compare with
    day = 86_400_000
    at = gen.cfg.start_ms - 30 * day - day // 2
    mql = [orjson.dumps({"event_id": f"mql-{i}", "ts": at + i, "account_id": "acct-mql",
                         **({"type": "lead.created", "lead_id": "lead-mql", "channel": "web"}
                            if i == 0 else {"type": "goal.converted", "session_id": "s",
                                            "goal": "demo"})}) for i in range(5)]
    for _, (_topic, raw) in itertools.chain(((0, ("", m)) for m in mql), gen.messages()):
        ev = parse_event(raw, now_ms=now, currency="EUR")
        if type(ev) is Event:
            engine.ingest(ev)
        else:
            stats.invalid[ev.reason] = stats.invalid.get(ev.reason, 0) + 1  # type: ignore[union-attr]
        if engine.due:
            engine.advance()
    stats.kpis = engine.open_records()
    stats.lag = {"email-events": 0}
    registry, _ = make_registry(DEFAULT_CATALOG, lambda: [(engine, stats)])
    text = generate_latest(registry).decode()
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert not {k.name for k in DEFAULT_CATALOG.kpis.values()} - {
        r["kpi"] for r in stats.kpis}, "the traffic must exercise every KPI"
    return names


def test_every_metric_a_rule_or_panel_names_is_exported() -> None:
    names = exported_names()
    texts = [(PROM / alerting.RULES_FILE).read_text()]
    texts += [orjson.dumps(dashboards.panel_exprs(d)).decode() for d in load_dashboards().values()]
    used = {m for t in texts for m in re.findall(r"\b(kpi_[a-z0-9_]+)", t)}
    used -= {"kpi_engine", "kpi_prometheus"}  # job name and datasource uid, not metrics
    assert len(used) > 40
    missing = sorted(used - names)
    assert not missing, f"named in rules or dashboards but never exported: {missing}"
