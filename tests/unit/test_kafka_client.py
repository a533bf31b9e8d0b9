"""Kafka client configuration from the settings: TLS, SASL (PLAIN, SCRAM), acks and topic
durability, for aiokafka and for Faust; secrets never logged."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from faust.auth import SASLCredentials, SSLCredentials

from streams.faust_app import faust_credentials
from streams.kafka_client import client_kwargs, ssl_context, topic_configs
from streams.settings import load_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate signed by it, made with openssl."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
        "-subj", "/CN=kpi-engine")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "client.pem", "-days", "2")
    return d


def test_plaintext_by_default() -> None:
    s = load_settings({}, {})
    assert client_kwargs(s) == {"security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None and ssl_context(s) is None
    assert topic_configs(s) == {} and s.replication_factor == 1


def test_mutual_tls_with_a_ca_and_a_client_certificate(pki: Path) -> None:
    s = load_settings({}, {"KPI_SECURITY_PROTOCOL": "SSL",
                           "KPI_SSL_CAFILE": str(pki / "ca.pem"),
                           "KPI_SSL_CERTFILE": str(pki / "client.pem"),
                           "KPI_SSL_KEYFILE": str(pki / "client.key")})
    kw = client_kwargs(s)
    assert kw["security_protocol"] == "SSL" and "sasl_mechanism" not in kw
    ctx = kw["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(c["subject"] == ((("commonName", "test-ca"),),) for c in ctx.get_ca_certs())
    creds = faust_credentials(s)
    assert isinstance(creds, SSLCredentials) and creds.context is not None
    off = load_settings({}, {"KPI_SECURITY_PROTOCOL": "SSL",
                             "KPI_SSL_CAFILE": str(pki / "ca.pem"),
                             "KPI_SSL_CHECK_HOSTNAME": "false"})
    ctx_off = ssl_context(off)
    assert ctx_off is not None and not ctx_off.check_hostname


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_for_aiokafka_and_faust(pki: Path, mechanism: str) -> None:
    s = load_settings({"sasl_mechanism": mechanism},
                      {"KPI_SECURITY_PROTOCOL": "SASL_SSL", "KPI_SASL_USERNAME": "svc",
                       "KPI_SASL_PASSWORD": "s3cret-pw", "KPI_SSL_CAFILE": str(pki / "ca.pem")})
    kw = client_kwargs(s)
    assert (kw["security_protocol"], kw["sasl_mechanism"], kw["sasl_plain_username"],
            kw["sasl_plain_password"]) == ("SASL_SSL", mechanism, "svc", "s3cret-pw")
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    creds = faust_credentials(s)
    assert isinstance(creds, SASLCredentials)
    assert (creds.mechanism.value, creds.username, creds.protocol.value) == (
        mechanism, "svc", "SASL_SSL")
    assert "s3cret" not in repr(s)


def test_sasl_without_tls() -> None:
    s = load_settings({}, {"KPI_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                           "KPI_SASL_MECHANISM": "SCRAM-SHA-256", "KPI_SASL_USERNAME": "u",
                           "KPI_SASL_PASSWORD": "p"})
    assert "ssl_context" not in client_kwargs(s)
    creds = faust_credentials(s)
    assert isinstance(creds, SASLCredentials) and creds.protocol.value == "SASL_PLAINTEXT"


def test_topics_created_with_the_replication_and_min_insync_asked() -> None:
    s = load_settings({}, {"KPI_REPLICATION_FACTOR": "3", "KPI_MIN_INSYNC_REPLICAS": "2"})
    assert s.replication_factor == 3
    assert topic_configs(s) == {"min.insync.replicas": "2"}


@pytest.mark.parametrize(("flag", "expected"), [(None, None), ("worker-a", "worker-a")])
def test_instance_id_makes_the_group_membership_static(flag: str | None,
                                                      expected: str | None) -> None:
    """--instance-id reaches the aiokafka consumer Faust builds (group.instance.id): a worker
    restarted under it takes its partitions back without waiting for its old session."""
    import asyncio

    from click.testing import CliRunner

    from kpi_engine.cli import cli
    from metrics.catalog import load_catalog
    from streams.faust_app import make_app

    seen: dict[str, object] = {}

    async def build() -> None:
        settings = load_settings({"broker": "kafka://127.0.0.1:1", "instance_id": flag}, {})
        app, _ = make_app(settings, load_catalog())
        faust_consumer: Any = app.consumer
        consumer = faust_consumer._thread._create_worker_consumer(app.transport)
        seen["id"] = consumer._group_instance_id
        await consumer.stop()

    asyncio.run(build())
    assert seen["id"] == expected
    # the flag is the worker's (and documented in its help)
    assert "--instance-id" in CliRunner().invoke(cli, ["worker", "--help"]).output
