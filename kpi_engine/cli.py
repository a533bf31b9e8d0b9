"""`kpi-engine` command line (CONTRACT.md §4). Kafka-facing commands import lazily."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from metrics.catalog import load_catalog
from metrics.errors import KpiEngineError


def _broker_flags(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--broker", required=required,
                   help="Kafka bootstrap URL, e.g. kafka://localhost:9092 (env KPI_BROKER)")
    p.add_argument("--topic-prefix", dest="topic_prefix", help="prefix of every topic name")


def _web_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web-host", dest="web_host", help="HTTP bind address (KPI_WEB_HOST)")
    p.add_argument("--web-port", dest="web_port", type=int, help="HTTP port (KPI_WEB_PORT)")


def _gen_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--incident", choices=["open-rate-drop", "bounce-spike"])
    p.add_argument("--incident-at", dest="incident_at", type=float, default=0.0,
                   help="seconds after start when the incident begins (default 0)")
    p.add_argument("--incident-for", dest="incident_for", type=float,
                   help="incident length in seconds (default: until the end)")
    p.add_argument("--history-days", dest="history_days", type=int, default=30,
                   help="days of CRM and spend history emitted first (default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpi-engine", description="Streaming KPI engine for B2B marketing.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embedded broker + worker + generator + web, no setup")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    _gen_flags(p)
    _web_flags(p)
    p.add_argument("--catalog")

    p = sub.add_parser("worker", help="a production worker on a Kafka cluster")
    _broker_flags(p)
    _web_flags(p)
    p.add_argument("--catalog")
    p.add_argument("--group-id", dest="group_id")
    p.add_argument("--partitions", type=int, help="partitions when creating topics")
    p.add_argument("--data-dir", dest="data_dir")
    p.add_argument("--log-level", dest="log_level")

    p = sub.add_parser("generate", help="synthetic B2B traffic to a file or a broker")
    _gen_flags(p)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    p.add_argument("--start", help="event time of the live span (ISO-8601 or epoch ms); "
                   "default 2026-11-01T00:00:00Z for --out, now for --broker")
    p.add_argument("--invalid", type=float, default=0.0, help="share of invalid messages")
    p.add_argument("--duplicates", type=float, default=0.0, help="share sent twice")
    p.add_argument("--late", type=float, default=0.0, help="share of far-late extras")
    p.add_argument("--disorder", type=float, default=0.0, help="shuffle within N seconds")
    p.add_argument("--stats", help="write the ground-truth counts as JSON to this file")
    dest = p.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="JSONL file ('-' for stdout)")
    dest.add_argument("--broker")
    p.add_argument("--topic-prefix", dest="topic_prefix")

    p = sub.add_parser("produce", help="load JSONL events into their topics")
    p.add_argument("files", nargs="+")
    _broker_flags(p)
    p.add_argument("--invalid-topic", dest="invalid_topic", default="email-events",
                   help="topic for lines whose type can't be read (default email-events)")

    p = sub.add_parser("replay", help="offline: JSONL events in, KPI records out")
    p.add_argument("files", nargs="*", help="JSONL files, or - for stdin (default)")
    p.add_argument("--catalog")

    p = sub.add_parser("rules", help="generate the Prometheus alert rules and their tests")
    p.add_argument("--catalog")
    p.add_argument("--out", default="prometheus",
                   help="folder for rules/ and tests/ (default ./prometheus)")
    p.add_argument("--grafana-url", dest="grafana_url", default=None,
                   help="base of the dashboard_url annotations (default http://localhost:3000)")

    p = sub.add_parser("dashboards", help="generate the Grafana dashboards")
    p.add_argument("--catalog")
    p.add_argument("--out", default="grafana/dashboards",
                   help="folder for the dashboard JSON files (default ./grafana/dashboards)")

    p = sub.add_parser("catalog", help="catalog tools")
    csub = p.add_subparsers(dest="catalog_command", required=True)
    c = csub.add_parser("check", help="validate a catalog file")
    c.add_argument("file")
    c = csub.add_parser("codegen", help="write the code generated for a catalog, for debugging")
    c.add_argument("--catalog", help="catalog file (default: the shipped one)")
    c.add_argument("--out", required=True, help="folder for one .py file per function")
    return parser


def _parse_start(text: str | None) -> int | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise KpiEngineError(f"--start needs a UTC offset: {text!r}")
    return int(dt.timestamp() * 1000)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KpiEngineError as exc:
        print(f"kpi-engine: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dump_codegen(catalog_path: str | None, out: str) -> int:
    """Every function the engine generates for this catalog, one file each (their names are
    the file names tracebacks show)."""
    import re
    from pathlib import Path

    from metrics import codegen
    from metrics.engine import KpiEngine

    KpiEngine(load_catalog(catalog_path))
    folder = Path(out)
    if not folder.is_dir():
        raise KpiEngineError(f"--out {out}: no such folder")
    sources = codegen.sources()
    for name, source in sources.items():
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("<>"))
        (folder / f"{stem}.py").write_text(f"# {name}\n{source}", encoding="utf-8")
    print(f"{len(sources)} generated functions written to {folder}")
    return 0


def _flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    return {n: getattr(args, n, None) for n in names}


def _dispatch(args: argparse.Namespace) -> int:
    from streams.settings import load_settings

    if args.command == "replay":
        from kpi_engine.replay import run_replay

        catalog = load_catalog(args.catalog)
        return run_replay(args.files, catalog, sys.stdout.buffer, sys.stderr,
                          exit_when_done=True)
    if args.command == "catalog" and args.catalog_command == "codegen":
        return _dump_codegen(args.catalog, args.out)
    if args.command == "catalog":
        catalog = load_catalog(args.file)
        print(f"{args.file}: OK, {len(catalog.kpis)} KPIs, {len(catalog.aggregates)} aggregates")
        return 0
    if args.command in ("rules", "dashboards"):
        return _generate_files(args)
    if args.command == "generate":
        return _generate(args, load_settings(_flags(args, "broker", "topic_prefix")))
    if args.command == "produce":
        from streams.produce import produce_files

        settings = load_settings(_flags(args, "broker", "topic_prefix"))
        n = produce_files(settings, args.files, invalid_topic=args.invalid_topic)
        print(f"produced {n} messages", file=sys.stderr)
        return 0
    if args.command == "worker":
        from streams.faust_app import run_worker

        settings = load_settings(_flags(args, "broker", "topic_prefix", "web_host", "web_port",
                                        "catalog", "group_id", "partitions", "data_dir",
                                        "log_level"))
        return run_worker(settings)
    if args.command == "demo":
        from kpi_engine.demo import run_demo

        settings = load_settings(_flags(args, "web_host", "web_port", "catalog"))
        return run_demo(settings, _gen_config(args, start_ms=None), duration_s=args.duration)
    raise AssertionError(args.command)


def _generate_files(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kpi_engine import alerting, dashboards

    catalog = load_catalog(args.catalog)
    if args.command == "rules":
        files = alerting.generated_files(catalog, args.grafana_url or
                                         alerting.DEFAULT_GRAFANA_URL)
    else:
        files = dashboards.generated_files(catalog)
    for path in alerting.write_files(files, Path(args.out)):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _gen_config(args: argparse.Namespace, start_ms: int | None) -> Any:
    from kpi_engine.generator import GeneratorConfig

    cfg = GeneratorConfig(
        rate=args.rate, duration_s=getattr(args, "duration", None) or 10 * 365 * 86_400.0,
        seed=args.seed, incident=args.incident, incident_at_s=args.incident_at,
        incident_for_s=args.incident_for, history_days=args.history_days,
        invalid=getattr(args, "invalid", 0.0), duplicates=getattr(args, "duplicates", 0.0),
        late=getattr(args, "late", 0.0), disorder_s=getattr(args, "disorder", 0.0))
    if start_ms is not None:
        cfg.start_ms = start_ms
    return cfg


def _generate(args: argparse.Namespace, settings: Any) -> int:
    from kpi_engine.generator import Generator

    start = _parse_start(args.start)
    if args.out is not None:
        gen = Generator(_gen_config(args, start))
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
        try:
            for _, (_topic, raw) in gen.messages():
                out.write(raw + b"\n")
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    else:
        from streams.produce import produce_live

        realtime = start is None
        if realtime:  # live traffic: event time is now
            start = time.time_ns() // 1_000_000
        gen = Generator(_gen_config(args, start))
        produce_live(settings, gen.messages(), realtime=realtime)
    stats = orjson.dumps(gen.stats.as_dict(), option=orjson.OPT_INDENT_2)
    if args.stats:
        with open(args.stats, "wb") as fh:
            fh.write(stats)
    total = gen.stats.as_dict()["total_valid"]
    print(f"generated {total} valid events, {sum(gen.stats.invalid.values())} invalid, "
          f"{gen.stats.duplicates} duplicates, {sum(gen.stats.late.values())} late",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
