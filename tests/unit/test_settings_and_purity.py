"""Settings precedence, and the rule that the KPI core imports no Kafka or Prometheus."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kpi_engine.settings import Settings, load_settings
from metrics.errors import SettingsError

ROOT = Path(__file__).resolve().parents[2]
PURE = ["events", "catalog", "windows", "trackers", "engine", "records", "errors"]
FORBIDDEN = {"faust", "mode", "aiokafka", "kafka", "prometheus_client", "streams"}


def test_flags_override_env_override_defaults() -> None:
    env = {"KPI_BROKER": "kafka://envhost:9092", "KPI_WEB_PORT": "7000",
           "KPI_IDLE_TIMEOUT": "45s"}
    s = load_settings({"web_port": 7100, "broker": None}, env)
    assert s.broker == "kafka://envhost:9092"  # flag not given: env wins
    assert s.web_port == 7100  # flag given: flag wins
    assert s.idle_timeout == 45.0
    assert load_settings({}, {}) == Settings()
    assert Settings().web_port == 6066 and Settings().web_host == "127.0.0.1"


def test_bad_settings_fail_clearly() -> None:
    with pytest.raises(SettingsError, match="KPI_WEB_PORT"):
        load_settings({}, {"KPI_WEB_PORT": "http"})
    with pytest.raises(SettingsError, match="not a TCP port"):
        load_settings({"web_port": 70000}, {})


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().web_port = 1  # type: ignore[misc]


def test_bootstrap_strips_the_scheme() -> None:
    s = Settings(broker="kafka://a:1,kafka://b:2")
    assert s.bootstrap == "a:1,b:2"


@pytest.mark.parametrize("module", PURE)
def test_core_imports_no_kafka_or_prometheus(module: str) -> None:
    tree = ast.parse((ROOT / "metrics" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_only_settings_reads_the_environment() -> None:
    for path in [*ROOT.glob("metrics/*.py"), *ROOT.glob("streams/*.py"),
                 *ROOT.glob("kpi_engine/*.py")]:
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text() or path.name in {"demo.py"}, path
