"""The state table's local copy: its records on disk (RocksDB), with the changelog offset
they cover, so that a restart reads the changelog's tail only, not every record ever
written to it.

The embedded broker never compacts (ENGINEERING.md): after 3 days of backlog a shard's
changelog held 115k records (79 MB) of which the table kept a few thousand, and a restart
read them all (~50 s). Per changelog partition the copy keeps:

- the records, as the table holds them (a delete removes its key);
- the offset it *covers*: every record of the log up to it is in the copy (records after
  it may be too), with a checksum of the record at that offset. Faust's recovery reads from
  there (``persisted_offset``).

Before the copy of a partition is used, the record at its covered offset is read back from
the log (``log_matches``): a copy of another log (another broker, one that came back
without its data, a reused data directory) or a damaged file is dropped, and the partition
is read whole, as it always was.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.dedup_disk import store_options

log = logging.getLogger("kpi_engine.state")

_MARK: Final = struct.Struct(">qI")  # covered offset, checksum of the record there
#: our own writes are covered once the offsets between them are (another writer's record
#: in between, e.g. a former owner's late one, stops it: the tail is read again on restart);
#: at most this many wait above the covered offset
MAX_PENDING: Final = 100_000

#: partition, offset, key (None: a record not the table's, passed over), value (None: delete)
Record = tuple[int, int, bytes | None, bytes | None]


def checksum(key: bytes | None, value: bytes | None) -> int:
    return zlib.crc32((key or b"") + (b"\x00" if value is None else b"\x01" + value))


def _mark_key(partition: int) -> bytes:
    return b"\x00covered|%d" % partition  # table keys start with a shard's name, never \0


class LocalCopy:
    """One worker's copy of the state table (all its partitions), in one RocksDB."""

    def __init__(self, path: Path):
        self.path = path
        self._db: rocksdict.Rdict | None = None
        #: partition -> (offset -> checksum) of own writes above the covered offset
        self._pending: dict[int, dict[int, int]] = {}

    @property
    def db(self) -> rocksdict.Rdict:
        if self._db is None:
            self.path.mkdir(parents=True, exist_ok=True)
            # the process's cache and memtable budget (KPI_STATE_CACHE_MB), not a block cache
            # of its own beside it; written once per commit, read at a restart: small
            # memtables (RocksDB's default, 2 x 64 MB, would count against the bound)
            opts = store_options()
            opts.set_write_buffer_size(4 * 1024 * 1024)
            opts.set_max_write_buffer_number(2)
            try:
                self._db = rocksdict.Rdict(str(self.path), options=opts)
            except Exception as exc:  # damaged, or held by another process: start empty
                log.warning("local state copy unusable (%s): the changelog is read whole", exc)
                self.path = self.path.with_name(self.path.name + "-" + str(id(self)))
                self._db = rocksdict.Rdict(str(self.path), options=opts)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def mark(self, partition: int) -> tuple[int, int] | None:
        """(covered offset, checksum of the record there), None when nothing is."""
        raw = self.db.get(_mark_key(partition))
        return None if raw is None else _MARK.unpack(raw)

    def covered(self, partition: int) -> int | None:
        mark = self.mark(partition)
        return None if mark is None else mark[0]

    def records(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """The records whose key starts with ``prefix`` (a shard's ``{name}|``)."""
        for key, value in self.db.items(from_key=prefix):
            if not (isinstance(key, bytes) and key.startswith(prefix)):  # raw mode: bytes
                break
            yield key, value

    def has(self, key: bytes) -> bool:
        return self.db.get(key) is not None

    def drop(self, partition: int, prefix: bytes) -> None:
        """Forget a partition: its records and what they cover."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        batch.delete_range(prefix, prefix[:-1] + bytes([prefix[-1] + 1]))
        batch.delete(_mark_key(partition))
        self.db.write(batch)
        self._pending.pop(partition, None)

    def start(self, partition: int) -> None:
        """Recovery found the partition empty: the copy covers it from its first record on
        (offset -1 covers nothing, and needs no check)."""
        if self.mark(partition) is None:
            self.db.put(_mark_key(partition), _MARK.pack(-1, 0))

    def read_from_log(self, records: Iterable[Record]) -> None:
        """Records the changelog's recovery applied, in log order: what the log holds up to
        the last of them (offsets skipped are ones the log no longer has: compacted)."""
        self._apply(records, contiguous=False)

    def written(self, records: Iterable[Record]) -> None:
        """Records this worker wrote, the broker having acknowledged each at its offset."""
        self._apply(records, contiguous=True)

    def _apply(self, records: Iterable[Record], contiguous: bool) -> None:
        batch = rocksdict.WriteBatch(raw_mode=True)
        marks: dict[int, tuple[int, int]] = {}
        for partition, offset, key, value in records:
            if key is not None:  # else none of the table's: covered, not kept
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
            crc = checksum(key, value)
            if not contiguous:
                marks[partition] = (offset, crc)
                self._pending.pop(partition, None)
            else:
                self._pending.setdefault(partition, {})[offset] = crc
        if contiguous:
            for partition in list(self._pending):
                mark = self._advance(partition)
                if mark is not None:
                    marks[partition] = mark
        for partition, mark in marks.items():
            batch.put(_mark_key(partition), _MARK.pack(*mark))
        self.db.write(batch)

    def _advance(self, partition: int) -> tuple[int, int] | None:
        pending = self._pending.get(partition)
        mark = self.mark(partition)
        if not pending or mark is None:  # nothing covered yet: recovery reads it whole
            self._pending.pop(partition, None)
            return None
        offset, crc = mark
        moved = False
        while offset + 1 in pending:
            offset += 1
            crc = pending.pop(offset)
            moved = True
        for stale in [o for o in pending if o <= offset]:
            del pending[stale]
        if len(pending) > MAX_PENDING:
            pending.clear()
        return (offset, crc) if moved else None


async def log_matches(bootstrap: str, topic: str, marks: Mapping[int, tuple[int, int]],
                      client: Mapping[str, Any], timeout_s: float = 10.0) -> set[int]:
    """The partitions whose record at the covered offset is, in the log, the one the copy
    names. One unanswered, or beyond the log's end, does not match."""
    if not marks:
        return set()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                request_timeout_ms=int(timeout_s * 1000), **client)
    ok: set[int] = set()
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        tps = {p: TopicPartition(topic, p) for p in marks}
        consumer.assign(list(tps.values()))
        for p, (offset, _) in marks.items():
            consumer.seek(tps[p], offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        todo = set(marks)
        while todo and loop.time() < deadline:
            got = await consumer.getmany(*(tps[p] for p in todo), timeout_ms=200)
            for tp, msgs in got.items():
                offset, crc = marks[tp.partition]
                first = next((m for m in msgs if m.offset >= offset), None)
                if first is not None and tp.partition in todo:
                    todo.discard(tp.partition)
                    if first.offset == offset and checksum(first.key, first.value) == crc:
                        ok.add(tp.partition)
            for p in list(todo):  # the fetch's high watermark: the log ends before it
                high = consumer.highwater(tps[p])
                if high is not None and high <= marks[p][0]:
                    todo.discard(p)
    except Exception as exc:  # any failure: the copy is then not used
        log.warning("could not check the local state copy against the changelog: %s", exc)
    finally:
        await consumer.stop()
    return ok
