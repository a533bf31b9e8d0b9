"""One frozen settings object, built once at the entrypoint from flags and KPI_ variables.

Precedence: command-line flag, then environment variable, then default. Nothing else in the
engine reads os.environ.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from metrics.catalog import parse_duration_ms
from streams.errors import SettingsError


@dataclass(frozen=True)
class Settings:
    broker: str | None = None  # kafka://host:port[,host:port]; None: the embedded broker
    catalog: str | None = None  # None: the shipped default catalog
    topic_prefix: str = ""
    partitions: int = 4
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    group_id: str = "kpi-engine"
    currency: str = "EUR"
    idle_timeout: float = 30.0  # seconds; 0 turns idle watermark advance off
    emit_interval: float = 1.0  # seconds
    snapshot_interval: float = 5.0  # seconds between durable state snapshots
    dedup_horizon_s: float = 7 * 86_400.0
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    data_dir: str = ""  # faust data dir; empty: a temporary directory
    log_level: str = "warning"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap(self) -> str:
        """host:port list for aiokafka, from the kafka:// URL."""
        if self.broker is None:
            raise SettingsError("no broker URL set")
        return ",".join(part.removeprefix("kafka://") for part in self.broker.split(","))


_ENV_NAMES = {f.name: f"KPI_{f.name.upper()}" for f in fields(Settings)}


def _coerce(name: str, raw: Any, target: Any) -> Any:
    if raw is None:
        return None
    try:
        if target in (int, "int"):
            return int(raw)
        if target in (float, "float"):
            if isinstance(raw, str) and raw and raw[-1].isalpha():
                return parse_duration_ms(raw) / 1000
            return float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot read {raw!r}: {exc}") from exc
    return str(raw)


def load_settings(flags: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None means not given) over KPI_ environment variables over defaults."""
    flags = flags or {}
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if flags.get(f.name) is not None:
            values[f.name] = _coerce(f.name, flags[f.name], f.type)
        elif _ENV_NAMES[f.name] in env:
            values[f.name] = _coerce(_ENV_NAMES[f.name], env[_ENV_NAMES[f.name]], f.type)
    s = Settings(**values)
    if s.broker is not None and not s.broker.strip():
        s = Settings(**{**values, "broker": None})
    if not 0 < s.web_port < 65536:
        raise SettingsError(f"web_port: {s.web_port} is not a TCP port")
    if s.partitions < 1:
        raise SettingsError("partitions: must be at least 1")
    return s


def local_state_dir(settings: Settings) -> Path:
    """Where a worker keeps its shards' local state (event ids, RocksDB): under the data
    directory, per consumer group, so that a restart finds it; without one, a fresh
    temporary folder (a restart then rebuilds it from the changelog)."""
    if settings.data_dir:
        return Path(settings.data_dir) / "kpi-state" / settings.group_id
    return Path(tempfile.mkdtemp(prefix="kpi-state-"))
