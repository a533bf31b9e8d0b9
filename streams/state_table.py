"""The group's durable state as a Faust table, recovered by Faust from its changelog.

One table per consumer group, one changelog partition per shard (``Catalog.shards``). A
shard's snapshot (streams/state.py: chunks, then the manifest that commits them) is written
to its partition once per snapshot, never per event (ENGINEERING.md §2). The assignor gives
a shard's changelog partition to the worker that owns its input partitions, so when a worker
restarts or takes a shard over, Faust's recovery reads that partition before the input
resumes, and the shard continues from the newest manifest there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from faust.types import TP

#: called once recovery is complete, with the shards whose partitions this worker holds
Recovered = Callable[[set[str]], Awaitable[None]]


class StateTable(faust.Table[bytes, bytes]):
    def __init__(self, app: faust.App, *, topic: str, partitions: Mapping[str, int],
                 on_recovered: Recovered, **kwargs: Any) -> None:
        self.partition_of = dict(partitions)  # shard -> its changelog partition
        self.shard_at = {p: name for name, p in partitions.items()}
        self._topic = topic
        self._on_recovered = on_recovered
        self._sent: list[asyncio.Future[Any]] = []
        # recovery applies its buffer every 64 records: chunks are up to 512 KiB each
        super().__init__(app, name="kpi-state", key_type=bytes, value_type=bytes,
                         partitions=len(self.partition_of), beacon=app.tables.beacon,
                         recovery_buffer_size=64, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._topic  # created beforehand with one partition per shard

    def partition_for_key(self, key: Any) -> int:
        """A record's key starts with its shard's name (``{shard}|...``)."""
        return self.partition_of[bytes(key).split(b"|", 1)[0].decode()]

    def on_key_set(self, key: Any, value: Any) -> None:
        # keep the send's future: a snapshot counts only once the cluster has it
        self._sent.append(self.send_changelog(self.partition_for_key(key), key, value))

    def on_key_del(self, key: Any) -> None:
        self._sent.append(self.send_changelog(self.partition_for_key(key), key, None,
                                              value_serializer="raw"))

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        """Set the records in order and return once the changelog holds them all (raises
        if the cluster refused one)."""
        for key, value in records:
            self[key] = value
        await self._sent_out()

    async def delete(self, keys: list[bytes]) -> None:
        for key in keys:
            del self[key]
        await self._sent_out()

    async def _sent_out(self) -> None:
        sent, self._sent = self._sent, []
        await asyncio.gather(*sent)

    def records(self, shard: str) -> list[tuple[bytes, bytes]]:
        prefix = f"{shard}|".encode()
        return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        await super().on_recovery_completed(active_tps, standby_tps)
        await self._on_recovered({self.shard_at[tp.partition] for tp in active_tps})
