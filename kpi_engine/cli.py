"""`kpi-engine` command line (CONTRACT.md §4). Kafka-facing commands import lazily."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import orjson

from metrics.errors import KpiEngineError
from streams.errors import EXIT_INTERRUPTED, EXIT_USAGE, report

if TYPE_CHECKING:
    from metrics.catalog import Catalog

#: settings the Kafka-facing commands take as flags (the password only as KPI_SASL_PASSWORD:
#: a flag would show in the process list)
KAFKA_FLAGS = ("broker", "topic_prefix", "security_protocol", "sasl_mechanism",
               "sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile",
               "ssl_check_hostname", "replication_factor", "min_insync_replicas")

F = TypeVar("F", bound=Callable[..., Any])


def load_catalog(path: str | Path | None) -> Catalog:
    """The catalog's modules are imported by the commands that read it, not by every one:
    the parent of a worker's processes (streams/processes.py) stays small."""
    from metrics.catalog import load_catalog as load

    return load(path)


def kafka_options(*, broker: bool = True) -> Callable[[F], F]:
    """The Kafka connection flags of the commands that talk to a cluster."""
    opts = [
        click.option("--topic-prefix", help="prefix of every topic name (KPI_TOPIC_PREFIX, "
                     "default none)"),
        click.option("--security-protocol",
                     type=click.Choice(["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
                     help="(KPI_SECURITY_PROTOCOL, default PLAINTEXT)"),
        click.option("--sasl-mechanism",
                     type=click.Choice(["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
                     help="(KPI_SASL_MECHANISM, default PLAIN); the password is read from "
                          "KPI_SASL_PASSWORD only"),
        click.option("--sasl-username", help="(KPI_SASL_USERNAME)"),
        click.option("--ssl-cafile", help="CA bundle the brokers' certificates are checked "
                     "against (KPI_SSL_CAFILE, default: the system's)"),
        click.option("--ssl-certfile", help="client certificate for mutual TLS "
                     "(KPI_SSL_CERTFILE)"),
        click.option("--ssl-keyfile", help="its private key (KPI_SSL_KEYFILE; a passphrase "
                     "from KPI_SSL_KEY_PASSWORD)"),
        click.option("--no-ssl-check-hostname", "ssl_check_hostname", flag_value=False,
                     default=None, help="do not check the broker's hostname against its "
                     "certificate (KPI_SSL_CHECK_HOSTNAME=false)"),
        click.option("--replication-factor", type=int,
                     help="copies of each topic the engine creates (KPI_REPLICATION_FACTOR, "
                          "default 1; 3 on a production cluster)"),
        click.option("--min-insync-replicas", type=int,
                     help="min.insync.replicas of the topics it creates "
                          "(KPI_MIN_INSYNC_REPLICAS, default: the broker's)"),
    ]
    if broker:
        opts.insert(0, click.option(
            "--broker", help="Kafka bootstrap URL, e.g. kafka://localhost:9092 (KPI_BROKER)"))
    return _apply(opts)


def _apply(opts: list[Callable[[F], F]]) -> Callable[[F], F]:
    def decorate(f: F) -> F:
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def _positive(_ctx: click.Context, _param: click.Parameter, value: float | None) -> Any:
    if value is not None and not value > 0:
        raise click.BadParameter(f"must be more than 0, got {value:g}")
    return value


CATALOG_HELP = "KPI catalog file (KPI_CATALOG, default: the shipped metrics/catalog.yaml)"
catalog_option = click.option("--catalog", help=CATALOG_HELP)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kpi-engine")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


web_options = _apply([
    click.option("--web-host", help="HTTP bind address (KPI_WEB_HOST, default 127.0.0.1)"),
    click.option("--web-port", type=int, help="HTTP port (KPI_WEB_PORT, default 6066)"),
])

generator_options = _apply([
    click.option("--rate", type=float, default=200.0, show_default=True, callback=_positive,
                 help="events per second"),
    click.option("--seed", type=int, default=1, show_default=True,
                 help="random seed: the same seed and start give the same traffic"),
    click.option("--incident", type=click.Choice(["open-rate-drop", "bounce-spike"]),
                 help="inject an incident that the default alerts catch"),
    click.option("--incident-at", type=float, default=0.0, show_default=True,
                 help="seconds after start when the incident begins"),
    click.option("--incident-for", type=float,
                 help="incident length in seconds (default: until the end)"),
    click.option("--history-days", type=int, default=30, show_default=True,
                 help="days of CRM and spend history emitted first"),
])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.version_option(_version(), "--version", prog_name="kpi-engine",
                      message="%(prog)s %(version)s", help="print the version and exit")
def cli() -> None:
    """Streaming KPI engine for B2B marketing."""


@cli.command()
@click.option("--duration", type=float, callback=_positive,
              help="stop after this many seconds (default: until Ctrl-C)")
@generator_options
@web_options
@catalog_option
def demo(**o: Any) -> int:
    """Embedded broker + worker + generator + web, no setup."""
    from kpi_engine.demo import run_demo
    from streams.settings import load_settings

    settings = load_settings(_pick(o, "web_host", "web_port", "catalog"))
    return run_demo(settings, _gen_config(o, start_ms=None), duration_s=o["duration"])


@cli.command()
@kafka_options()
@web_options
@catalog_option
@click.option("--group-id", help="consumer group: workers with the same one share the "
              "partitions and the state (KPI_GROUP_ID, default kpi-engine)")
@click.option("--instance-id", help="static group membership: a stable name per worker (one "
              "per host or pod), so a restarted worker takes its partitions back without "
              "waiting for its old session to expire (KPI_INSTANCE_ID, default: none)")
@click.option("--partitions", type=int,
              help="partitions when creating topics (KPI_PARTITIONS, default 4)")
@click.option("--data-dir", help="where local state (event ids, RocksDB) survives restarts "
              "(KPI_DATA_DIR, default: a temporary folder, rebuilt from Kafka on restart)")
@click.option("--processes", type=int,
              help="processes of this worker, one core each, behind its one web address: "
              "members of the group as that many workers would be (KPI_PROCESSES, default 1)")
@click.option("--log-level",
              type=click.Choice(["debug", "info", "warning", "error", "critical"]),
              help="(KPI_LOG_LEVEL, default warning)")
def worker(**o: Any) -> int:
    """A production worker on a Kafka cluster."""
    from streams.settings import load_settings

    settings = load_settings(_pick(o, *KAFKA_FLAGS, "web_host", "web_port", "catalog",
                                   "group_id", "instance_id", "partitions", "data_dir",
                                   "processes", "log_level"))
    if settings.processes > 1:  # a parent without Faust: its processes run the worker
        from streams.processes import run_processes
        return run_processes(settings)
    from streams.faust_app import run_worker
    return run_worker(settings)


@cli.command()
@generator_options
@click.option("--duration", type=float, default=60.0, show_default=True, callback=_positive,
              help="seconds of traffic")
@click.option("--start", help="event time of the live span (ISO-8601 or epoch ms); default "
              "2026-11-01T00:00:00Z for --out, now for --broker")
@click.option("--invalid", type=float, default=0.0, help="share of invalid messages")
@click.option("--duplicates", type=float, default=0.0, help="share sent twice")
@click.option("--late", type=float, default=0.0, help="share of far-late extras")
@click.option("--disorder", type=float, default=0.0, help="shuffle within N seconds")
@click.option("--stats", help="write the ground-truth counts as JSON to this file")
@click.option("--out", help="JSONL file ('-' for stdout); this or --broker")
@click.option("--broker", help="Kafka bootstrap URL: send the traffic live, in real time "
              "from --start (default now); this or --out")
@kafka_options(broker=False)
def generate(**o: Any) -> int:
    """Synthetic B2B traffic to a file or a broker."""
    from streams.settings import load_settings

    if (o["out"] is None) == (o["broker"] is None):
        raise click.UsageError("give one of --out or --broker")
    return _generate(o, load_settings(_pick(o, *KAFKA_FLAGS)))


@cli.command()
@click.argument("files", nargs=-1, required=True)
@kafka_options()
@click.option("--invalid-topic", default="email-events", show_default=True,
              help="topic for lines whose type can't be read")
def produce(**o: Any) -> int:
    """Load JSONL events into their topics."""
    from streams.produce import produce_files
    from streams.settings import load_settings

    missing = [f for f in o["files"] if not os.path.isfile(f)]
    if missing:  # before connecting: a typo should not wait for a broker
        raise KpiEngineError(f"no such file: {', '.join(missing)}")
    settings = load_settings(_pick(o, *KAFKA_FLAGS))
    n = produce_files(settings, list(o["files"]), invalid_topic=o["invalid_topic"])
    print(f"produced {n} messages", file=sys.stderr)
    return 0


@cli.command()
@click.argument("files", nargs=-1)
@catalog_option
def replay(files: tuple[str, ...], catalog: str | None) -> int:
    """Offline: JSONL events in, KPI records out.

    FILES are JSONL files, or - for stdin (the default)."""
    from kpi_engine.replay import run_replay

    return run_replay(list(files), load_catalog(catalog), sys.stdout.buffer, sys.stderr,
                      exit_when_done=True)


GRAFANA_URL_HELP = "base of the dashboard_url annotations (default http://localhost:3000)"


@cli.command()
@catalog_option
@click.option("--out", default="prometheus", show_default=True,
              help="folder for rules/ and tests/")
@click.option("--grafana-url", help=GRAFANA_URL_HELP)
def rules(catalog: str | None, out: str, grafana_url: str | None) -> int:
    """Generate the Prometheus alert rules and their tests."""
    from kpi_engine import alerting

    files = alerting.generated_files(load_catalog(catalog),
                                     grafana_url or alerting.DEFAULT_GRAFANA_URL)
    return _write(files, out)


@cli.command()
@catalog_option
@click.option("--out", default="grafana/dashboards", show_default=True,
              help="folder for the dashboard JSON files")
def dashboards(catalog: str | None, out: str) -> int:
    """Generate the Grafana dashboards."""
    from kpi_engine import dashboards as boards

    return _write(boards.generated_files(load_catalog(catalog)), out)


@cli.command()
@catalog_option
@click.option("--out", required=True,
              help="folder to write prometheus/, alertmanager/ and grafana/ into")
@click.option("--grafana-url", help=GRAFANA_URL_HELP)
def provisioning(catalog: str | None, out: str, grafana_url: str | None) -> int:
    """Write the Prometheus, Alertmanager and Grafana provisioning.

    Their configuration, with the catalog's alert rules, dashboards and runbook."""
    from kpi_engine import provisioning as prov

    written = prov.write(load_catalog(catalog), Path(out), grafana_url)
    print(f"wrote {len(written)} files under {out}", file=sys.stderr)
    return 0


@cli.group("catalog")
def catalog_group() -> None:
    """Catalog tools."""


@catalog_group.command()
@click.argument("file")
def check(file: str) -> int:
    """Validate a catalog file: every problem is listed."""
    catalog = load_catalog(file)
    print(f"{file}: OK, {len(catalog.kpis)} KPIs, {len(catalog.aggregates)} aggregates")
    return 0


@catalog_group.command()
@click.option("--catalog", help="catalog file (default: the shipped one)")
@click.option("--out", required=True, help="folder for one .py file per function")
def codegen(catalog: str | None, out: str) -> int:
    """Write the code generated for a catalog, for debugging."""
    return _dump_codegen(catalog, out)


def _pick(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {n: options.get(n) for n in names}


def _write(files: Any, out: str) -> int:
    from kpi_engine import alerting

    for path in alerting.write_files(files, Path(out)):
        print(f"wrote {path}", file=sys.stderr)
    return 0


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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="kpi-engine",
                      standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare command: its help
        print(exc.format_message(), file=sys.stderr)
        return EXIT_USAGE
    except click.BadParameter as exc:
        where = exc.param.opts[0] if exc.param is not None and exc.param.opts else ""
        print(f"kpi-engine: {where + ': ' if where else ''}{exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except click.ClickException as exc:  # usage: an unknown flag, a missing argument
        print(f"kpi-engine: {exc.format_message()} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except KpiEngineError as exc:
        return report(exc)
    except (click.Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return rv if isinstance(rv, int) else 0


def _dump_codegen(catalog_path: str | None, out: str) -> int:
    """Every function the engine generates for this catalog, one file each (their names are
    the file names tracebacks show)."""
    import re

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


def _gen_config(o: dict[str, Any], start_ms: int | None) -> Any:
    from kpi_engine.generator import GeneratorConfig

    cfg = GeneratorConfig(
        rate=o["rate"], duration_s=o.get("duration") or 10 * 365 * 86_400.0,
        seed=o["seed"], incident=o["incident"], incident_at_s=o["incident_at"],
        incident_for_s=o["incident_for"], history_days=o["history_days"],
        invalid=o.get("invalid", 0.0), duplicates=o.get("duplicates", 0.0),
        late=o.get("late", 0.0), disorder_s=o.get("disorder", 0.0))
    if start_ms is not None:
        cfg.start_ms = start_ms
    return cfg


def _generate(o: dict[str, Any], settings: Any) -> int:
    from kpi_engine.generator import Generator
    from streams.progress import Progress

    start = _parse_start(o["start"])
    if o["out"] not in (None, "-"):
        folder = os.path.dirname(os.path.abspath(o["out"]))
        if not os.path.isdir(folder):
            raise KpiEngineError(f"--out {o['out']}: no such folder {folder}")
    if o["out"] is not None:
        gen = Generator(_gen_config(o, start))
        out = sys.stdout.buffer if o["out"] == "-" else open(o["out"], "wb")  # noqa: SIM115
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
        gen = Generator(_gen_config(o, start))
        produce_live(settings, gen.messages(), realtime=realtime)
    stats = orjson.dumps(gen.stats.as_dict(), option=orjson.OPT_INDENT_2)
    if o["stats"]:
        with open(o["stats"], "wb") as fh:
            fh.write(stats)
    total = gen.stats.as_dict()["total_valid"]
    print(f"generated {total} valid events, {sum(gen.stats.invalid.values())} invalid, "
          f"{gen.stats.duplicates} duplicates, {sum(gen.stats.late.values())} late",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
