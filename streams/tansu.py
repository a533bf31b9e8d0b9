"""The embedded broker's one quirk that touches state recovery, and its workaround.

Tansu answers ListOffsets(LATEST) with the newest batch's base offset + 1, not the log end
(ENGINEERING.md §1). Faust takes a changelog's end from ListOffsets, so its table recovery
would stop before the rest of the newest batch: the latest snapshot's manifest, written in
the same batch as its chunks, would be lost. The high watermark of a Fetch response is
right, so on Tansu the end is read from a fetch of the newest batch. The workaround applies
only when the cluster says it is Tansu; a Kafka cluster's ListOffsets is used as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

TANSU_CLUSTER_ID: Final = "tansu_cluster"  # the id Tansu reports unless told otherwise

K = TypeVar("K")


async def is_tansu(bootstrap: str, client: Mapping[str, Any] | None = None) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                **(client or {}))
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    return bool(cluster.get("cluster_id") == TANSU_CLUSTER_ID)


async def log_ends(bootstrap: str, ends: Mapping[K, int | None], timeout_s: float = 10.0,
                   client: Mapping[str, Any] | None = None) -> dict[K, int | None]:
    """The true log end of each partition, from ListOffsets answers (``ends``, keyed by
    any (topic, partition) named tuple): a fetch from the newest batch's first record
    returns the partition's high watermark."""
    out: dict[K, int | None] = dict(ends)
    probe = {tp: TopicPartition(tp[0], tp[1])  # type: ignore[index]
             for tp, end in ends.items() if end}
    if not probe:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                request_timeout_ms=10_000, **(client or {}))
    await consumer.start()
    try:
        consumer.assign(list(probe.values()))
        for tp, ktp in probe.items():
            consumer.seek(ktp, ends[tp] - 1)  # type: ignore[operator]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        todo = set(probe)
        while todo and loop.time() < deadline:
            await consumer.getmany(timeout_ms=100, max_records=1)
            for tp in list(todo):
                high = consumer.highwater(probe[tp])
                if high is not None:
                    # the fetch's answer, even below ListOffsets': on a broker that came
                    # back empty, ListOffsets names offsets no fetch returns (measured)
                    out[tp] = high
                    todo.discard(tp)
        if todo:
            raise TimeoutError(f"no high watermark for {sorted(map(str, todo))} within "
                               f"{timeout_s:.0f} s")
    finally:
        await consumer.stop()
    return out
