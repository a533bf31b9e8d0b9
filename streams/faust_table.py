"""The state table: the Faust table holding the shards' durable state (streams/state.py),
one changelog partition per shard. Part of the Faust seam with streams/faust_app.py: the two
modules are the only ones using Faust's API.

Its records are kept on local disk, not in memory, with the changelog offset they cover
(streams/table_copy.py), so that a restart reads only the changelog's tail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import faust
from faust.tables import TableManager
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


class PromptTableManager(TableManager):
    """Faust's table manager, less the fixed 1 s sleep its start begins with (time for an
    agent to define tables late). This app's one table is added before the app starts
    (streams/faust_app.py: make_app), so the sleep only delayed every start and every
    restart after a crash by a second. The rest is Faust's ``on_start`` as pinned (a test
    compares it)."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


class StateTable(faust.Table[bytes, bytes]):
    def __init__(self, app: faust.App, *, topic: str, partitions: Mapping[str, int],
                 on_recovered: Recovered, on_skip: OnSkip, copy: LocalCopy,
                 check: Check, **kwargs: Any) -> None:
        self.partition_of = dict(partitions)  # shard -> its changelog partition
        #: partition -> its shards (the accounts stage shares its partner's)
        self.shards_at: dict[int, set[str]] = {}
        for name, p in partitions.items():
            self.shards_at.setdefault(p, set()).add(name)
        self._topic = topic
        self._on_recovered = on_recovered
        self._on_skip = on_skip
        #: the table's records, on local disk, with the changelog offset they cover
        #: (streams/table_copy.py): Faust's in-memory store stays empty (the values are
        #: read at a takeover only); ``check`` reads that offset's record back from the log
        self.local, self._check = copy, check
        # recovery applies its buffer every 64 records: chunks are up to 512 KiB each
        super().__init__(app, name="kpi-state", key_type=bytes, value_type=bytes,
                         partitions=len(self.shards_at), beacon=app.tables.beacon,
                         recovery_buffer_size=64, **kwargs)

    def _changelog_topic_name(self) -> str:
        return self._topic  # created beforehand with one partition per shard

    def persisted_offset(self, tp: TP) -> int | None:
        return self.local.covered(tp.partition)  # recovery reads the log from there on

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP],
                           newly_assigned: set[TP], generation_id: int = 0) -> None:
        # before recovery asks where to read from: a partition's copy stays the table's
        # records if the log still holds the record it covers, else it goes
        mine = {tp.partition for tp in newly_assigned if tp.topic == self._topic}
        marks = {p: m for p in mine if (m := self.local.mark(p)) is not None and m[0] >= 0}
        good = await self._check(marks)
        for p in mine:
            for shard in sorted(self.shards_at.get(p, ())):
                if p in good:
                    log.warning("%s: state table from its local copy, the changelog read "
                                "from offset %d on", shard, marks[p][0])
                    continue
                if p in marks:
                    log.warning("%s: the local copy of the state table is not of this "
                                "changelog (its record at offset %d differs): dropped, the "
                                "changelog read whole", shard, marks[p][0])
                self.forget(shard)
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        batch = list(batch)
        self.local.read_from_log((e.message.partition, e.message.offset,
                                 e.key if isinstance(e.key, bytes) else None,
                                 e.message.value) for e in batch)
        # a record without a bytes key is none of ours: passed over, said and counted
        for event in batch:
            if isinstance(event.key, bytes):
                continue
            msg = event.message
            shards = sorted(self.shards_at.get(msg.partition, ()))
            why = f"no key, at {msg.topic}[{msg.partition}]@{msg.offset}"
            if not shards:
                log.error("state record skipped: %s", why)
            else:
                self._on_skip(shards[0], None, why)

    def partition_for_key(self, key: Any) -> int:
        """A record's key starts with its shard's name (``{shard}|...``)."""
        return self.partition_of[bytes(key).split(b"|", 1)[0].decode()]

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        """Set the records in order and return once the changelog holds them all (raises
        if the cluster refused one)."""
        await self._send(records)

    async def delete(self, keys: list[bytes]) -> None:
        await self._send([(key, None) for key in keys if self.local.has(key)])  # else gone

    async def _send(self, records: Sequence[tuple[bytes, bytes | None]]) -> None:
        # straight to the producer, not through the table's per-key send: Faust's buffer
        # hands the producer one record per event-loop turn, and a commit's thousands of
        # records then took ~40 s behind a backlog's batches (state_bench, 3 days); the
        # producer batches them here; the local copy takes what the broker acknowledged
        send, sent = self.app.producer.send, []
        for key, value in records:
            sent.append(await send(self._topic, key, value, self.partition_for_key(key),
                                   None, None))
        done = await asyncio.gather(*sent)
        self.local.written((m.topic_partition.partition, m.offset, key, value)
                          for m, (key, value) in zip(done, records, strict=True))

    def records(self, shard: str) -> list[tuple[bytes, bytes]]:
        return list(self.local.records(f"{shard}|".encode()))

    def forget(self, shard: str) -> None:
        # the copy only, not the table: deleting through the table would write tombstones
        self.local.drop(self.partition_of[shard], f"{shard}|".encode())

    async def on_recovery_completed(self, active_tps: set[TP], standby_tps: set[TP]) -> None:
        for tp in active_tps:
            if tp.topic == self._topic:
                self.local.start(tp.partition)  # read whole and found empty: covered from -1
        await super().on_recovery_completed(active_tps, standby_tps)
        await self._on_recovered({name for tp in active_tps if tp.topic == self._topic
                                  for name in self.shards_at.get(tp.partition, ())})
