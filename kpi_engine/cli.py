"""`kpi-engine` command line (CONTRACT.md §4). Kafka-facing commands import lazily."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from metrics.catalog import load_catalog
from metrics.errors import KpiEngineError

#: settings the Kafka-facing commands take as flags (the password only as KPI_SASL_PASSWORD:
#: a flag would show in the process list)
KAFKA_FLAGS = ("broker", "topic_prefix", "security_protocol", "sasl_mechanism",
               "sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
               "ssl_check_hostname", "replication_factor", "min_insync_replicas")


def _broker_flags(p: argparse.ArgumentParser, *, required: bool = False,
                  broker: bool = True) -> None:
    if broker:
        p.add_argument("--broker", required=required,
                       help="Kafka bootstrap URL, e.g. kafka://localhost:9092 (KPI_BROKER)")
    p.add_argument("--topic-prefix", dest="topic_prefix",
                   help="prefix of every topic name (KPI_TOPIC_PREFIX, default none)")
    g = p.add_argument_group("Kafka security and topic durability")
    g.add_argument("--security-protocol", dest="security_protocol",
                   choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                   help="(KPI_SECURITY_PROTOCOL, default PLAINTEXT)")
    g.add_argument("--sasl-mechanism", dest="sasl_mechanism",
                   choices=["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
                   help="(KPI_SASL_MECHANISM, default PLAIN); the password is read from "
                        "KPI_SASL_PASSWORD only")
    g.add_argument("--sasl-username", dest="sasl_username", help="(KPI_SASL_USERNAME)")
    g.add_argument("--ssl-cafile", dest="ssl_cafile",
                   help="CA bundle the brokers' certificates are checked against "
                        "(KPI_SSL_CAFILE, default: the system's)")
    g.add_argument("--ssl-certfile", dest="ssl_certfile",
                   help="client certificate for mutual TLS (KPI_SSL_CERTFILE)")
    g.add_argument("--ssl-keyfile", dest="ssl_keyfile",
                   help="its private key (KPI_SSL_KEYFILE; a passphrase from "
                        "KPI_SSL_KEY_PASSWORD)")
    g.add_argument("--no-ssl-check-hostname", dest="ssl_check_hostname",
                   action="store_const", const=False,
                   help="do not check the broker's hostname against its certificate "
                        "(KPI_SSL_CHECK_HOSTNAME=false)")
    g.add_argument("--replication-factor", dest="replication_factor", type=int,
                   help="copies of each topic the engine creates (KPI_REPLICATION_FACTOR, "
                        "default 1; 3 on a production cluster)")
    g.add_argument("--min-insync-replicas", dest="min_insync_replicas", type=int,
                   help="min.insync.replicas of the topics it creates "
                        "(KPI_MIN_INSYNC_REPLICAS, default: the broker's)")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


CATALOG_HELP = "KPI catalog file (KPI_CATALOG, default: the shipped metrics/catalog.yaml)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kpi-engine")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _web_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web-host", dest="web_host", help="HTTP bind address (KPI_WEB_HOST)")
    p.add_argument("--web-port", dest="web_port", type=int, help="HTTP port (KPI_WEB_PORT)")


def _gen_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=_positive, default=200.0,
                   help="events per second (default 200)")
    p.add_argument("--seed", type=int, default=1,
                   help="random seed: the same seed and start give the same traffic "
                        "(default 1)")
    p.add_argument("--incident", choices=["open-rate-drop", "bounce-spike"],
                   help="inject an incident that the default alerts catch")
    p.add_argument("--incident-at", dest="incident_at", type=float, default=0.0,
                   help="seconds after start when the incident begins (default 0)")
    p.add_argument("--incident-for", dest="incident_for", type=float,
                   help="incident length in seconds (default: until the end)")
    p.add_argument("--history-days", dest="history_days", type=int, default=30,
                   help="days of CRM and spend history emitted first (default 30)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpi-engine", description="Streaming KPI engine for B2B marketing.")
    parser.add_argument("--version", action="version", version=f"kpi-engine {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embedded broker + worker + generator + web, no setup")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    _gen_flags(p)
    _web_flags(p)
    p.add_argument("--catalog", help=CATALOG_HELP)

    p = sub.add_parser("worker", help="a production worker on a Kafka cluster")
    _broker_flags(p)
    _web_flags(p)
    p.add_argument("--catalog", help=CATALOG_HELP)
    p.add_argument("--group-id", dest="group_id",
                   help="consumer group: workers with the same one share the partitions and "
                        "the state (KPI_GROUP_ID, default kpi-engine)")
    p.add_argument("--partitions", type=int,
                   help="partitions when creating topics (KPI_PARTITIONS, default 4)")
    p.add_argument("--data-dir", dest="data_dir",
                   help="where local state (event ids, RocksDB) survives restarts "
                        "(KPI_DATA_DIR, default: a temporary folder, rebuilt from Kafka on "
                        "restart)")
    p.add_argument("--log-level", dest="log_level",
                   choices=["debug", "info", "warning", "error", "critical"],
                   help="(KPI_LOG_LEVEL, default warning)")

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
    dest.add_argument("--broker", help="Kafka bootstrap URL: send the traffic live, in real "
                                       "time from --start (default now)")
    _broker_flags(p, broker=False)

    p = sub.add_parser("produce", help="load JSONL events into their topics")
    p.add_argument("files", nargs="+")
    _broker_flags(p)
    p.add_argument("--invalid-topic", dest="invalid_topic", default="email-events",
                   help="topic for lines whose type can't be read (default email-events)")

    p = sub.add_parser("replay", help="offline: JSONL events in, KPI records out")
    p.add_argument("files", nargs="*", help="JSONL files, or - for stdin (default)")
    p.add_argument("--catalog", help=CATALOG_HELP)

    p = sub.add_parser("rules", help="generate the Prometheus alert rules and their tests")
    p.add_argument("--catalog", help=CATALOG_HELP)
    p.add_argument("--out", default="prometheus",
                   help="folder for rules/ and tests/ (default ./prometheus)")
    p.add_argument("--grafana-url", dest="grafana_url", default=None,
                   help="base of the dashboard_url annotations (default http://localhost:3000)")

    p = sub.add_parser("dashboards", help="generate the Grafana dashboards")
    p.add_argument("--catalog", help=CATALOG_HELP)
    p.add_argument("--out", default="grafana/dashboards",
                   help="folder for the dashboard JSON files (default ./grafana/dashboards)")

    p = sub.add_parser("provisioning", help="write Prometheus, Alertmanager and Grafana "
                       "configuration, rules and dashboards for a catalog")
    p.add_argument("--catalog", help=CATALOG_HELP)
    p.add_argument("--out", required=True,
                   help="folder to write prometheus/, alertmanager/ and grafana/ into")
    p.add_argument("--grafana-url", dest="grafana_url", default=None,
                   help="base of the dashboard_url annotations (default http://localhost:3000)")

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
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise KpiEngineError(f"--start: {text!r} is neither an ISO-8601 time with an offset "
                             "(2026-11-01T00:00:00Z) nor epoch milliseconds") from None
    if dt.tzinfo is None:
        raise KpiEngineError(f"--start needs a UTC offset: {text!r}")
    return int(dt.timestamp() * 1000)


#: exit codes besides 0: usage, settings, catalog or input errors; the broker unreachable
EXIT_USAGE, EXIT_BROKER, EXIT_INTERRUPTED = 2, 3, 130


def main(argv: Sequence[str] | None = None) -> int:
    from streams.errors import BrokerError

    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BrokerError as exc:
        print(f"kpi-engine: {exc}", file=sys.stderr)
        return EXIT_BROKER
    except KpiEngineError as exc:
        print(f"kpi-engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


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
    if args.command == "provisioning":
        from pathlib import Path

        from kpi_engine import provisioning

        written = provisioning.write(load_catalog(args.catalog), Path(args.out),
                                     args.grafana_url)
        print(f"wrote {len(written)} files under {args.out}", file=sys.stderr)
        return 0
    if args.command == "generate":
        return _generate(args, load_settings(_flags(args, *KAFKA_FLAGS)))
    if args.command == "produce":
        from streams.produce import produce_files

        missing = [f for f in args.files if not os.path.isfile(f)]
        if missing:  # before connecting: a typo should not wait for a broker
            raise KpiEngineError(f"no such file: {', '.join(missing)}")
        settings = load_settings(_flags(args, *KAFKA_FLAGS))
        n = produce_files(settings, args.files, invalid_topic=args.invalid_topic)
        print(f"produced {n} messages", file=sys.stderr)
        return 0
    if args.command == "worker":
        from streams.faust_app import run_worker

        settings = load_settings(_flags(args, *KAFKA_FLAGS, "web_host", "web_port", "catalog",
                                        "group_id", "partitions", "data_dir", "log_level"))
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
    from streams.progress import Progress

    start = _parse_start(args.start)
    if args.out not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):
            raise KpiEngineError(f"--out {args.out}: no such folder {folder}")
    if args.out is not None:
        gen = Generator(_gen_config(args, start))
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
        progress = Progress("generate", "messages")
        try:
            for _, (_topic, raw) in progress.wrap(gen.messages()):
                out.write(raw + b"\n")
        finally:
            if out is not sys.stdout.buffer:
                out.close()
        progress.done()
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
