"""Settings: precedence, validation, and the one place that reads the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.errors import SettingsError
from streams.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


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


def test_only_settings_reads_the_environment() -> None:
    for path in [*ROOT.glob("metrics/**/*.py"), *ROOT.glob("streams/*.py"),
                 *ROOT.glob("kpi_engine/*.py")]:
        if path.name != "settings.py":
            assert "os.environ" not in path.read_text() or path.name in {"demo.py"}, path
