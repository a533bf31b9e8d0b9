"""Settings: precedence, validation, and the one place that reads the environment."""

from __future__ import annotations

import re
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


def test_every_setting_is_checked_once_with_the_variable_named() -> None:
    for env, words in [({"KPI_EMIT_INTERVAL": "-1"}, "KPI_EMIT_INTERVAL: '-1': Expected float > 0"),
                       ({"KPI_PARTITIONS": "0"}, "KPI_PARTITIONS"),
                       ({"KPI_SSL_CHECK_HOSTNAME": "maybe"}, "KPI_SSL_CHECK_HOSTNAME"),
                       ({"KPI_IDLE_TIMEOUT": "5 parsecs"}, "KPI_IDLE_TIMEOUT"),
                       ({"KPI_LOG_LEVEL": "loud"}, "log_level"),
                       ({"KPI_CURRENCY": "USD"}, "catalog's `currency:`"),
                       ({"KPI_SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_username"),
                       ({"KPI_SASL_MECHANISM": "MD5"}, "sasl_mechanism"),
                       ({"KPI_SSL_CAFILE": "/nonexistent/ca.pem"}, "no such file"),
                       ({"KPI_REPLICATION_FACTOR": "1", "KPI_MIN_INSYNC_REPLICAS": "2"},
                        "must not exceed"),
                       ({"KPI_STATE_CACHE_MB": "4"}, "KPI_STATE_CACHE_MB: '4': Expected int >= 8"),
                       ({"KPI_PROCESSES": "4", "KPI_STATE_CACHE_MB": "24"},
                        "state_cache_mb: 24 MB for 4 processes: at least 8 MB each")]:
        with pytest.raises(SettingsError, match=re.escape(words)):
            load_settings({}, env)
    s = load_settings({}, {"KPI_SSL_CHECK_HOSTNAME": "false", "KPI_REPLICATION_FACTOR": "3",
                           "KPI_MIN_INSYNC_REPLICAS": "2", "KPI_SNAPSHOT_INTERVAL": "10s",
                           "KPI_PROCESSES": "4", "KPI_STATE_CACHE_MB": "32"})
    assert (s.ssl_check_hostname, s.replication_factor, s.min_insync_replicas,
            s.snapshot_interval, s.state_cache_mb) == (False, 3, 2, 10.0, 32)


def test_secrets_never_show_in_the_settings_repr() -> None:
    s = load_settings({}, {"KPI_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "KPI_SASL_USERNAME": "svc", "KPI_SASL_PASSWORD": "hunter2-secret"})
    assert s.sasl_password == "hunter2-secret"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)


def test_every_setting_is_documented() -> None:
    from dataclasses import fields

    from streams.settings import ENV_NAMES

    doc = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"`{ENV_NAMES[f.name]}`" for f in fields(Settings)
               if f"`{ENV_NAMES[f.name]}`" not in doc]
    assert not missing, missing


def test_an_operators_malloc_threshold_is_left_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.settings import malloc_tuned

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert not malloc_tuned()
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert malloc_tuned()
