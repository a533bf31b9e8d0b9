"""`kpi-engine replay` and `kpi-engine catalog check` as a user runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import yaml

from kpi_engine.cli import main
from metrics.catalog import load_catalog
from metrics.errors import CatalogError

CLI = [sys.executable, "-m", "kpi_engine.cli"]
DEFAULT = Path(__file__).resolve().parents[2] / "metrics" / "catalog.yaml"


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, timeout=120)


def test_replay_prints_final_records_and_reports_invalid_lines(tmp_path: Path) -> None:
    lines = [
        b'{"event_id":"a","type":"email.sent","ts":"2026-11-01T00:00:00Z",'
        b'"campaign_id":"c","contact_id":"p1"}',
        b"this is not json",
        b'{"event_id":"b","type":"email.opened","ts":"2026-11-01T00:01:00Z",'
        b'"campaign_id":"c","contact_id":"p1"}',
        b'{"event_id":"b","type":"email.opened","ts":"2026-11-01T00:01:00Z",'
        b'"campaign_id":"c","contact_id":"p1"}',
        b'{"event_id":"c","type":"email.bounced","ts":"2026-11-01T00:01:00Z",'
        b'"campaign_id":"c","contact_id":"p2"}',
    ]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = run("replay", str(path))
    assert res.returncode == 0, res.stderr
    records = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert records and all(r["final"] for r in records)
    open_1h = [r for r in records if r["kpi"] == "email_open_rate" and r["window"] == "1h"
               and r["dims"] == {} and r["end"] == "2026-11-01T01:00:00Z"]
    assert [(r["numerator"], r["denominator"], r["value"]) for r in open_1h] == [(1, 1, 1.0)]
    err = res.stderr.decode()
    assert "line 2: invalid: not_json" in err
    assert "line 5: invalid: missing_field:bounce" in err
    assert "2 events counted, 2 invalid, 1 duplicate, 0 late" in err


def test_replay_reads_stdin() -> None:
    res = run("replay", "-", stdin=b'{"event_id":"a","type":"survey.answered",'
                                    b'"ts":"2026-11-01T00:00:00Z","score":10}\n')
    assert res.returncode == 0
    nps = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert {r["value"] for r in nps if r["kpi"] == "nps"} == {100.0}


def test_replay_reports_deep_nesting_and_ancient_time_and_goes_on(tmp_path: Path) -> None:
    """The two inputs that once crashed replay (nesting ~1,000 deep) or made it walk decades
    of empty windows (a first ``"ts": 0``) are reported by reason; the rest is counted."""
    view = (b'{"event_id":"%s","type":"page.viewed","ts":%s,"session_id":"s","page":"/p"}')
    lines = [view % (b"a", b"0"), b'{"a":' * 1000 + b"1" + b"}" * 1000,
             b"[" * 500_000 + b"]" * 500_000,
             view % (b"b", b'"2026-11-01T00:00:00Z"'),
             view % (b"c", b'"0001-01-01T00:00:00Z"')]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = run("replay", str(path))
    assert res.returncode == 0, res.stderr
    err = res.stderr.decode()
    for line, reason in ((1, "ancient_ts"), (2, "too_deep"), (3, "too_deep"), (5, "ancient_ts")):
        assert f"line {line}: invalid: {reason}" in err
    assert "1 events counted, 4 invalid" in err
    records = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert {r["end"][:4] for r in records} == {"2026"}


def test_replay_exits_2_when_input_cannot_be_read(tmp_path: Path) -> None:
    res = run("replay", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 2
    assert b"cannot read" in res.stderr


def test_catalog_check_accepts_the_default() -> None:
    res = run("catalog", "check", str(DEFAULT))
    assert res.returncode == 0
    assert b"OK, 36 KPIs" in res.stdout


def test_catalog_check_lists_every_problem(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEFAULT.read_text())
    doc["kpis"]["email_open_rate"]["numerator"] = "email_unique_openz"
    doc["kpis"]["email_click_rate"]["dims"] = ["network"]
    doc["kpis"]["nps"]["unit"] = "percent"
    doc["families"]["web"]["grace"] = "soon"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    res = run("catalog", "check", str(path))
    assert res.returncode == 2
    err = res.stderr.decode()
    assert "kpis.email_open_rate.numerator: unknown aggregate 'email_unique_openz'" in err
    assert "kpis.email_click_rate.dims: 'network'" in err
    assert "kpis.nps.unit" in err
    assert "families.web.grace: not a duration: 'soon'" in err


def test_catalog_every_contract_kpi_is_present() -> None:
    contract = {"email_open_rate", "email_click_rate", "email_bounce_rate",
                "email_hard_bounce_rate", "email_unsubscribe_rate", "email_open_share",
                "web_bounce_rate", "web_avg_time_on_page_seconds", "web_conversion_rate",
                "web_cart_abandonment_rate", "social_engagement_rate", "leads",
                "funnel_stage_conversion_rate", "lead_to_customer_rate", "deal_win_rate",
                "avg_deal_size", "sales_cycle_days", "sales_velocity", "revenue_share",
                "cost_per_lead", "cost_per_acquisition", "romi", "nps",
                # v2
                "email_click_through_rate", "email_undelivered_rate",
                "web_visitor_conversion_rate", "spend_category_share", "avg_order_value"}
    assert contract <= set(load_catalog().kpis)


def test_catalog_rejects_unreadable_and_non_yaml(tmp_path: Path) -> None:
    bad = tmp_path / "x.yaml"
    bad.write_text("kpis: [unclosed")
    for path in (bad, tmp_path / "none.yaml"):
        try:
            load_catalog(path)
        except CatalogError as exc:
            assert str(path) in str(exc)
        else:
            raise AssertionError("accepted")


def test_catalog_codegen_writes_every_generated_function(tmp_path: Path) -> None:
    assert main(["catalog", "codegen", "--out", str(tmp_path)]) == 0
    files = {p.name.split("_")[1] for p in tmp_path.glob("*.py")}
    assert {"update", "expand", "ingest", "kpi", "check", "finish"} <= files
    for p in tmp_path.glob("generated_ingest_*.py"):
        compile(p.read_text(), str(p), "exec")  # each file is valid Python
    assert main(["catalog", "codegen", "--out", str(tmp_path / "missing")]) == 2


def test_user_mistakes_get_one_line_and_exit_2_before_any_connection(tmp_path: Path) -> None:
    cases = [
        (("generate", "--start", "yesterday", "--out", str(tmp_path / "x.jsonl")),
         "--start: 'yesterday' is neither an ISO-8601 time"),
        (("generate", "--out", str(tmp_path / "missing" / "x.jsonl"), "--duration", "1"),
         "no such folder"),
        # port 1: nothing listens, so reaching the check before connecting is what passes
        (("produce", str(tmp_path / "nope.jsonl"), "--broker", "kafka://127.0.0.1:1"),
         "no such file"),
        (("generate", "--rate", "-5", "--out", str(tmp_path / "x.jsonl")),
         "--rate: must be more than 0"),
    ]
    for args, words in cases:
        res = run(*args)
        err = res.stderr.decode()
        assert res.returncode == 2, (args, err)
        assert words in err, (args, err)
        assert "Traceback" not in err
    res = subprocess.run([*CLI, "worker", "--broker", "kafka://127.0.0.1:1"],
                         capture_output=True, timeout=60,
                         env={"KPI_EMIT_INTERVAL": "-1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and res.stderr.decode().strip() == (
        "kpi-engine: KPI_EMIT_INTERVAL: '-1': Expected float > 0.0"), res.stderr


def test_version() -> None:
    res = run("--version")
    assert res.returncode == 0 and res.stdout.decode().startswith("kpi-engine ")


def test_every_flag_has_help() -> None:
    import click

    from kpi_engine.cli import cli

    def walk(cmd: click.Command, prog: str) -> list[tuple[str, click.Option]]:
        out = [(prog, p) for p in cmd.params if isinstance(p, click.Option)]
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                out += walk(sub, f"{prog} {name}")
        return out

    flags = walk(cli, "kpi-engine")
    assert len(flags) > 60  # every command's options were found
    bare = [f"{prog} {opt.opts[0]}" for prog, opt in flags if not opt.help]
    assert not bare, bare


def test_usage_mistakes_name_the_flag_and_exit_2() -> None:
    for args, words in ((["generate", "--out", "x", "--broker", "kafka://h:1"],
                         "give one of --out or --broker"),
                        (["generate"], "give one of --out or --broker"),
                        (["worker", "--log-level", "loud"], "--log-level"),
                        (["demo", "--duration", "0"], "--duration: must be more than 0"),
                        (["nonsense"], "No such command")):
        res = run(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert words in res.stderr.decode(), (args, res.stderr)
        assert b"Traceback" not in res.stderr


def test_catalog_check_reports_an_alert_problem_beside_broken_formulas(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEFAULT.read_text())
    doc["kpis"]["email_open_rate"]["numerator"] = "nothing_here"
    doc["kpis"]["email_open_rate"]["alert"]["below"] = "high"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    err = run("catalog", "check", str(path)).stderr.decode()
    assert "kpis.email_open_rate.numerator: unknown aggregate 'nothing_here'" in err
    assert "kpis.email_open_rate.alert: below must be a number" in err
