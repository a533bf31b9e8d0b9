"""One frozen settings object, built once at the entrypoint from flags and KPI_ variables.

Precedence: command-line flag, then environment variable, then default. Nothing else in the
engine reads os.environ.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Final

import msgspec

from metrics.catalog_types import parse_duration_ms
from streams.errors import SettingsError

log = logging.getLogger("kpi_engine")


Port = Annotated[int, msgspec.Meta(gt=0, lt=65536)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
#: the least RocksDB cache a process works with (its memtables take half of it)
MIN_CACHE_MB: Final = 8


@dataclass(frozen=True)
class Settings:
    """Every setting, its type and range (checked by ``load_settings``), and its default.
    docs/configuration.md lists them with their flags and ``KPI_`` variables."""

    broker: str | None = None  # kafka://host:port[,host:port]; None: the embedded broker
    catalog: str | None = None  # None: the shipped default catalog
    topic_prefix: str = ""
    partitions: Annotated[int, msgspec.Meta(ge=1)] = 4
    web_host: str = "127.0.0.1"
    web_port: Port = 6066
    group_id: Annotated[str, msgspec.Meta(min_length=1)] = "kpi-engine"
    #: static group membership (KIP-345): a worker restarted under the same id takes its
    #: partitions back without waiting for its old session to expire; empty: dynamic
    instance_id: Annotated[str, msgspec.Meta(max_length=249)] = ""
    idle_timeout: NonNegative = 30.0  # seconds; 0 turns idle watermark advance off
    emit_interval: Positive = 1.0  # seconds
    snapshot_interval: NonNegative = 5.0  # seconds between durable state snapshots
    dedup_horizon_s: Positive = 7 * 86_400.0
    session_timeout_s: Positive = 6.0
    heartbeat_interval_s: Positive = 1.0
    data_dir: str = ""  # faust data dir; empty: a temporary directory
    #: processes of one worker (streams/processes.py): each uses a core of the host
    processes: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    #: RocksDB's memory for the worker's state, its processes together (each gets its share)
    state_cache_mb: Annotated[int, msgspec.Meta(ge=MIN_CACHE_MB)] = 64
    #: keys each table on disk keeps in memory (streams/table_disk.py)
    state_cache_keys: Annotated[int, msgspec.Meta(ge=100)] = 50_000
    log_level: str = "warning"
    # Kafka security (streams/kafka_client.py)
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str = "PLAIN"  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""  # CA bundle to verify the brokers (default: the system's)
    ssl_certfile: str = ""  # client certificate (mutual TLS)
    ssl_keyfile: str = ""
    ssl_key_password: str = field(default="", repr=False)
    ssl_check_hostname: bool = True
    # topics the engine creates
    replication_factor: Annotated[int, msgspec.Meta(ge=1)] = 1
    min_insync_replicas: Annotated[int, msgspec.Meta(ge=0)] = 0  # 0: the broker's default

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap(self) -> str:
        """host:port list for aiokafka, from the kafka:// URL."""
        if self.broker is None:
            raise SettingsError("no broker URL set")
        return ",".join(part.removeprefix("kafka://") for part in self.broker.split(","))


ENV_NAMES: Final = {f.name: f"KPI_{f.name.upper()}" for f in fields(Settings)}
#: KPI_ variables read elsewhere (the demo's children, the test harness), not settings
_OTHER_ENV: Final = frozenset({"KPI_SOAK_BUDGET_S"})
_RETIRED: Final = {"KPI_CURRENCY": "the reporting currency is the catalog's `currency:` "
                                   "(kpi-engine catalog check shows it)"}
_HINTS: Final = {"web_port": "not a TCP port (1..65535)"}
_DURATIONS: Final = frozenset(f.name for f in fields(Settings)
                              if f.name in ("idle_timeout", "emit_interval", "snapshot_interval",
                                            "dedup_horizon_s", "session_timeout_s",
                                            "heartbeat_interval_s"))


def load_settings(flags: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None means not given) over KPI_ environment variables over defaults,
    checked once: a wrong type, a value out of range or a setting that cannot work is a
    ``SettingsError`` naming the flag or variable."""
    flags = flags or {}
    env = os.environ if environ is None else environ
    for name, why in _RETIRED.items():
        if name in env:
            raise SettingsError(f"{name} is not a setting: {why}")
    unknown = sorted(k for k in env if k.startswith("KPI_") and k not in _OTHER_ENV
                     and k not in ENV_NAMES.values())
    if unknown:
        log.warning("ignoring unknown KPI_ variables: %s", ", ".join(unknown))
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for f in fields(Settings):
        if flags.get(f.name) is not None:
            raw, source[f.name] = flags[f.name], f"--{f.name.replace('_', '-')}"
        elif ENV_NAMES[f.name] in env:
            raw, source[f.name] = env[ENV_NAMES[f.name]], ENV_NAMES[f.name]
        else:
            continue
        if f.name in _DURATIONS and isinstance(raw, str) and raw[-1:].isalpha():
            try:
                raw = parse_duration_ms(raw) / 1000
            except ValueError as exc:
                raise SettingsError(f"{source[f.name]}: {exc}") from exc
        values[f.name] = raw
    try:
        s = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        what, _, at = str(exc).rpartition(" - at ")
        field_name = at.strip("`").removeprefix("$.")
        where = source.get(field_name, field_name)
        hint = _HINTS.get(field_name, what.replace("`", ""))
        raise SettingsError(f"{where}: {values.get(field_name)!r}: {hint}") from exc
    if s.broker is not None and not s.broker.strip():
        s = replace(s, broker=None)
    if s.log_level.lower() not in LOG_LEVELS:
        raise SettingsError(f"log_level: {s.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    check_kafka(s)
    check_state_memory(s)
    return s


KAFKA_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def check_kafka(s: Settings) -> None:
    """Refuse Kafka settings that cannot connect, naming the setting to fix."""
    if s.security_protocol not in KAFKA_PROTOCOLS:
        raise SettingsError(f"security_protocol: {s.security_protocol!r} is not one of "
                            f"{', '.join(KAFKA_PROTOCOLS)}")
    if s.sasl_mechanism not in SASL_MECHANISMS:
        raise SettingsError(f"sasl_mechanism: {s.sasl_mechanism!r} is not one of "
                            f"{', '.join(SASL_MECHANISMS)}")
    if s.security_protocol.startswith("SASL_") and not (s.sasl_username and s.sasl_password):
        raise SettingsError(f"security_protocol {s.security_protocol} needs sasl_username and "
                            "sasl_password (KPI_SASL_USERNAME, KPI_SASL_PASSWORD)")
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, name)
        if path and not Path(path).is_file():
            raise SettingsError(f"{name}: no such file: {path}")
    if bool(s.ssl_certfile) != bool(s.ssl_keyfile):
        raise SettingsError("ssl_certfile and ssl_keyfile go together (a client certificate "
                            "and its key)")
    if s.min_insync_replicas > s.replication_factor:
        raise SettingsError("min_insync_replicas: must not exceed replication_factor")


def check_state_memory(s: Settings) -> None:
    if s.state_cache_mb < MIN_CACHE_MB * s.processes:
        raise SettingsError(f"state_cache_mb: {s.state_cache_mb} MB for {s.processes} "
                            f"processes: at least {MIN_CACHE_MB} MB each")


def settings_environ(settings: Settings, environ: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """An environment (this process's, or ``environ``) whose KPI_ variables are exactly
    ``settings``: what a child process that loads its settings from it gets back."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items()
           if k not in ENV_NAMES.values()}
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[ENV_NAMES[f.name]] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the process exits (a kill -9 leaves it: the OS's
    temporary-file cleaning takes it then)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def local_state_dir(settings: Settings) -> Path:
    """Where a worker keeps its shards' local state (event ids, RocksDB): under the data
    directory, per consumer group, so that a restart finds it; without one, a fresh
    temporary folder (a restart then rebuilds it from the changelog)."""
    if settings.data_dir:
        return Path(settings.data_dir) / "kpi-state" / settings.group_id
    return scratch_dir("kpi-state-")


def malloc_tuned() -> bool:
    """The operator set glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``): the worker then
    leaves it as set (streams/heap.py: pin_mmap_threshold)."""
    return "MALLOC_MMAP_THRESHOLD_" in os.environ
