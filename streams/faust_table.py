"""The state table: the Faust table holding the shards' durable state (streams/state.py),
one changelog partition per shard. Part of the Faust seam with streams/faust_app.py: the two
modules are the only ones using Faust's API.

Its records are also kept on local disk with the changelog offset they cover
(streams/table_copy.py), so that a restart reads only the changelog's tail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import faust
from faust.types import TP

from streams.table_copy import LocalCopy

log = logging.getLogger("kpi_engine.worker")


#: called once recovery is complete, with the shards whose partitions this worker holds
Recovered = Callable[[set[str]], Awaitable[None]]


#: told of a changelog record the table cannot hold (no key): (shard, key, why)
OnSkip = Callable[[str, bytes | None, str], None]
#: the partitions (of those given: partition -> covered offset, checksum) whose local copy
#: the changelog confirms (streams/table_copy.py: log_matches)
Check = Callable[[Mapping[int, tuple[int, int]]], Awaitable[set[int]]]


class StateTable(faust.Table[bytes, bytes]):
    def __init__(self, app: faust.App, *, topic: str, partitions: Mapping[str, int],
                 on_recovered: Recovered, on_skip: OnSkip, copy: LocalCopy,
                 check: Check, **kwargs: Any) -> None:
        self.partition_of = dict(partitions)  # shard -> its changelog partition
        self.shard_at = {p: name for name, p in partitions.items()}
        self._topic = topic
        self._on_recovered = on_recovered
        self._on_skip = on_skip
        #: the records on local disk, with the changelog offset they cover
        #: (streams/table_copy.py); ``check`` reads that offset's record back from the log
        self.local, self._check = copy, check
        # recovery applies its buffer every 64 records: chunks are up to 512 KiB each
        super().__init__(app, name="kpi-state", key_type=bytes, value_type=bytes,
                         partitions=len(self.partition_of), beacon=app.tables.beacon,
                         recovery_buffer_size=64, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._topic  # created beforehand with one partition per shard

    def persisted_offset(self, tp: TP) -> int | None:
        return self.local.covered(tp.partition)  # recovery reads the log from there on

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        # before recovery asks where to read from: a partition's copy is the table's
        # records again if the log still holds the record it covers, else it goes
        mine = {tp.partition for tp in newly_assigned if tp.topic == self._topic}
        marks = {p: m for p in mine if (m := self.local.mark(p)) is not None and m[0] >= 0}
        good = await self._check(marks)
        for p in mine:
            shard = self.shard_at[p]
            self.forget(shard, keep_copy=p in good)
            if p in good:
                self.data.update(self.local.records(f"{shard}|".encode()))
                log.warning("%s: state table from its local copy, the changelog read from "
                            "offset %d on", shard, marks[p][0])
            elif p in marks:
                log.warning("%s: the local copy of the state table is not of this changelog "
                            "(its record at offset %d differs): dropped, the changelog read "
                            "whole", shard, marks[p][0])
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        batch = list(batch)
        self.local.read_from_log((e.message.partition, e.message.offset,
                                 e.key if isinstance(e.key, bytes) else None,
                                 e.message.value) for e in batch)
        # a record without a bytes key is none of ours: pass it over, said and counted
        # (left in, it would break every read of the table)
        good = []
        for event in batch:
            if isinstance(event.key, bytes):
                good.append(event)
                continue
            msg = event.message
            shard = self.shard_at.get(msg.partition)
            why = f"no key, at {msg.topic}[{msg.partition}]@{msg.offset}"
            if shard is None:
                log.error("state record skipped: %s", why)
            else:
                self._on_skip(shard, None, why)
        super().apply_changelog_batch(good)

    def partition_for_key(self, key: Any) -> int:
        """A record's key starts with its shard's name (``{shard}|...``)."""
        return self.partition_of[bytes(key).split(b"|", 1)[0].decode()]

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        """Set the records in order and return once the changelog holds them all (raises
        if the cluster refused one)."""
        await self._send(records)

    async def delete(self, keys: list[bytes]) -> None:
        await self._send([(key, None) for key in keys if key in self.data])  # else gone

    async def _send(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        # straight to the producer, not through the table's per-key send: Faust's buffer
        # hands the producer one record per event-loop turn, and a commit's thousands of
        # records then took ~40 s behind a backlog's batches (state_bench, 3 days); the
        # producer batches them here, and the store follows what is sent
        send, data, sent = self.app.producer.send, self.data, []
        records = list(records)
        for key, value in records:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
            sent.append(await send(self._topic, key, value, self.partition_for_key(key),
                                   None, None))
        done = await asyncio.gather(*sent)
        self.local.written((m.topic_partition.partition, m.offset, key, value)
                          for m, (key, value) in zip(done, records, strict=True))

    def records(self, shard: str) -> list[tuple[bytes, bytes]]:
        prefix = f"{shard}|".encode()
        return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]

    def forget(self, shard: str, keep_copy: bool = False) -> None:
        # the store itself, not the table: deleting through the table would write tombstones
        for key, _ in self.records(shard):
            self.data.pop(key, None)
        if not keep_copy:
            self.local.drop(self.partition_of[shard], f"{shard}|".encode())

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        for tp in active_tps:
            if tp.topic == self._topic:
                self.local.start(tp.partition)  # read whole and found empty: covered from -1
        await super().on_recovery_completed(active_tps, standby_tps)
        await self._on_recovered({self.shard_at[tp.partition] for tp in active_tps})
