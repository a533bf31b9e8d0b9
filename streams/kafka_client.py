"""How every Kafka client of the engine connects: security (TLS, SASL) and durability
settings (checked by ``settings.check_kafka``), built from ``Settings`` for aiokafka
(produce, generate, topic creation, the assignor's size probe) and for Faust (the worker:
``faust_app.faust_credentials``, from the same TLS context).

Secrets (the SASL password, the key password) live in fields that ``repr`` leaves out, so
neither settings nor client configuration ever reach a log line.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.settings import Settings


def ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of an SSL or SASL_SSL connection (None for plaintext)."""
    if s.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=s.ssl_cafile or None)
    if s.ssl_certfile:
        ctx.load_cert_chain(s.ssl_certfile, s.ssl_keyfile or None,
                            password=s.ssl_key_password or None)
    ctx.check_hostname = s.ssl_check_hostname
    return ctx


def client_kwargs(s: Settings) -> dict[str, Any]:
    """Keyword arguments for every aiokafka client (producer, consumer, admin)."""
    out: dict[str, Any] = {"security_protocol": s.security_protocol}
    ctx = ssl_context(s)
    if ctx is not None:
        out["ssl_context"] = ctx
    if s.security_protocol.startswith("SASL_"):
        out.update(sasl_mechanism=s.sasl_mechanism, sasl_plain_username=s.sasl_username,
                   sasl_plain_password=s.sasl_password)
    return out


def topic_configs(s: Settings) -> dict[str, str]:
    """Configs of the topics the engine creates (besides their own, e.g. compaction)."""
    if s.min_insync_replicas:
        return {"min.insync.replicas": str(s.min_insync_replicas)}
    return {}


async def first_offset(s: Settings, tp: tuple[str, int], start: int, timeout_s: float = 5.0
                       ) -> int | None:
    """The offset of a partition's first record at or after ``start`` (its log start when
    ``start`` is below it), read by a fetch of its own; None when none came in time."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", request_timeout_ms=10_000,
                                **client_kwargs(s))
    await consumer.start()
    try:
        part = TopicPartition(*tp)
        consumer.assign([part])
        consumer.seek(part, start)
        got = await consumer.getmany(part, timeout_ms=round(timeout_s * 1000), max_records=1)
        msgs = got.get(part)
        return int(msgs[0].offset) if msgs else None
    finally:
        await consumer.stop()
