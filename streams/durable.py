"""A shard's durable state: what a commit writes, and what a takeover reads back.

A commit writes only what changed since the previous one (streams/state.py has the record
layout):

- the event ids remembered since, as segments (one record per hour of event time);
- the engine's parts that changed: a pane, a closed window, a published window's rows, an
  hour of a tracker's table (metrics/snapshot.py), one record each;
- the engine's core (watermarks, running sums, counters: small) with the map of every
  part's current record, in the snapshot's chunks; then the manifest, the commit point.

Once the manifest is durable, the records it no longer needs go: a part's previous version,
a removed part, the segments of expired hours, and on a new tenure the former owners'
keys (but those the restored history still holds). Then the local id store (RocksDB)
takes the commit's ids, with a marker naming it.

A takeover restores the core, reads the parts the map names, and brings the local id store
in line: kept when its marker is part of the restored history (only later segments are
applied), rebuilt from every segment of the history otherwise.
"""

from __future__ import annotations

import logging
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from metrics.alerts import HeldBreach
from metrics.baselines import BaselineState
from metrics.catalog import Catalog
from metrics.engine import KpiEngine
from streams.dedup_disk import Changes, DiskDedup
from streams.part_map import PartMap
from streams.state import (
    EPOCH,
    Offsets,
    Snapshot,
    SourceRef,
    aggregate_fingerprints,
    decode_segment,
    encode,
    encode_segments,
    in_chain,
    key_epoch,
    part_key,
    parts_of,
    segment_key,
    segments,
    source_ref,
    superseded,
)
from streams.table_disk import DiskTables

log = logging.getLogger("kpi_engine.state")

_ENCODE: Final = msgspec.msgpack.Encoder().encode


@dataclass
class Commit:
    """One commit, encoded under the shard's lock and written after it."""

    seq: int
    changes: Changes  # the ids it makes durable
    records: list[tuple[bytes, bytes]]  # the core's chunks, then the manifest
    extra: list[tuple[bytes, bytes]]  # segments and changed parts, written first
    segments: dict[bytes, tuple[int, int]]  # its segments' keys -> (seq, hour)
    parts: PartMap  # part name -> (seq, crc32) after it
    chain: dict[int, int]
    tenure: int  # the shard's, when encoded: a close since then abandons it


class Abandoned(Exception):
    """A commit whose shard was lost while it was written (``Durable.write``)."""


class Durable:
    def __init__(self, name: str, catalog: Catalog, state: Any, dedup: DiskDedup,
                 tables: DiskTables | None = None):
        self.name = name
        self.catalog = catalog
        self.state = state  # streams/shard.py: StateStore
        self.dedup = dedup
        self.tables = tables  # the engine's tables on disk: filled from parts at takeover
        self.lineage = ""  # names the state's history (a local store of another is not it)
        self.chain: dict[int, int] = {}  # per epoch, the last commit whose segments it holds
        self.segments: dict[bytes, tuple[int, int]] = {}  # segment key -> (seq, hour)
        self.parts = PartMap()  # part name -> (seq, crc32)
        #: the next commit writes every part: nothing of this tenure is written yet (a
        #: format 3 state), or a write failed midway
        self.full_next = True
        self.epoch_clean = True  # the former owners' keys are gone
        self.ids_loaded: dict[str, Any] = {}  # how the last takeover loaded the ids
        #: the epochs whose snapshots (chunks, manifests) the table holds for the shard: kept
        #: as written, for /health, rather than found in every record on each call
        self.epochs: set[int] = set()
        self.tenure = 0  # counts closes: a commit in flight across one is not finished

    # ---- commit ---------------------------------------------------------------------------

    def prepare(self, engine: KpiEngine, seq: int, applied: Offsets, invalid: dict[str, int],
                outbox: list[bytes], alerts: list[HeldBreach],
                baselines: BaselineState) -> Commit:
        """Encode a commit; under the shard's lock (the engine's state is read live)."""
        changes = self.dedup.drain()
        core, changed, names = engine.durable(source_ref, self.full_next)
        parts = self.parts.kept(names)
        by_hour = changes.by_hour()
        extra = encode_segments(by_hour, changes.ids, self.name, seq)
        new_segments = {segment_key(self.name, seq, hour): (seq, hour) for hour in by_hour}
        for name, build in changed.items():  # one part's data at a time (Parts)
            value = zlib.compress(_ENCODE(build()), 1)
            extra.append((part_key(self.name, seq, name), value))
            parts.put(name, seq, zlib.crc32(value))
        chain = {**self.chain, seq // EPOCH: seq}
        snap = Snapshot(seq, core, applied, invalid, outbox, chain, self.lineage, parts=parts,
                        alerts=alerts, baselines=baselines)
        return Commit(seq, changes, encode(snap, self.name, self.catalog), extra, new_segments,
                      parts, chain, self.tenure)

    async def write(self, commit: Commit) -> None:
        """Write a prepared commit; once its manifest is durable, drop what it superseded."""
        self.full_next = True  # until this one is through
        state, seq, tenure = self.state, commit.seq, commit.tenure
        if self.tenure != tenure:
            # closed since it was encoded: its ids went with the close, and its state would
            # count their events (the next owner would count their duplicates again)
            raise Abandoned(f"commit {seq}: the shard was handed over before it was written")
        await state.write(commit.extra + commit.records[:-1])
        if self.tenure != tenure:
            # lost while its records were in flight: they may have reached a broker that came
            # back empty; without their manifest they are orphans the next owner deletes
            raise Abandoned(f"commit {seq}: the shard was lost while it was written")
        await state.write(commit.records[-1:])
        self.segments.update(commit.segments)
        doomed = [k for k, (_, hour) in self.segments.items() if hour < commit.changes.cutoff_h]
        # a part's previous record, or a part gone
        doomed += [part_key(self.name, old, n) for n, old in self.parts.replaced(commit.parts)]
        if not self.epoch_clean:
            doomed += superseded([k for k, _ in state.records(self.name)], self.name, seq,
                                 commit.chain, commit.parts)
        doomed = list(dict.fromkeys(doomed))  # a part's old record may be a former epoch's
        if doomed:
            await state.delete(doomed)
            for k in doomed:
                self.segments.pop(k, None)
        live = {s // EPOCH for s, _ in self.segments.values()}
        self.chain = {e: last for e, last in commit.chain.items()
                      if e in live or e == seq // EPOCH}
        self.parts = commit.parts
        self.epoch_clean = True
        self.epochs = {seq // EPOCH}  # the earlier epochs' snapshots went (``superseded``)
        self.full_next = False
        # the local store follows the changelog, never leads it (DiskDedup.marker)
        self.dedup.persist(commit.changes, (self.lineage, seq))

    def close(self) -> None:
        """Handed over, or lost: the local stores are closed (the tables' emptied)."""
        self.tenure += 1
        self.dedup.close()
        if self.tables is not None:
            self.tables.close()

    # ---- takeover -------------------------------------------------------------------------

    def restore(self, engine: KpiEngine, records: list[tuple[bytes, bytes]],
                snap: Snapshot | None) -> None:
        """Continue from ``snap`` (None: from nothing) and the table's ``records``."""
        self.dedup.open()
        # held events' refs, as source_ref made them
        engine.restore(snap.engine if snap else KpiEngine(engine.catalog,
                                                          engine.config).snapshot(),
                       ref=lambda r: None if r is None else SourceRef(*r))
        self.lineage = (snap.lineage if snap else "") or uuid.uuid4().hex
        self.chain = dict(snap.chain) if snap else {}
        self.parts = snap.parts if snap else PartMap()
        self.full_next = snap is None or snap.format == 3
        self.epoch_clean = False
        self.epochs = {e for k, _ in records if (e := key_epoch(k, self.name)) is not None}
        values = dict(records)
        if self.parts:
            engine.load_parts(parts_of(self.name, self.parts, values))
        if snap is not None and snap.aggregates is not None:
            dropped = engine.retain(snap.aggregates, aggregate_fingerprints(self.catalog))
            if dropped:
                log.warning("%s: aggregates redefined or removed since the state was written, "
                            "their values dropped: %s", self.name, ", ".join(sorted(dropped)))
        self._load_ids(records, values, snap)

    def _load_ids(self, records: list[tuple[bytes, bytes]], values: dict[bytes, bytes],
                  snap: Snapshot | None) -> None:
        t0 = time.monotonic()
        store = self.dedup
        found = segments(records, self.name)
        self.segments = {k: v for k, v in found.items() if in_chain(v[0], self.chain)}
        if snap is None or snap.format == 3:
            # nothing durable yet, or a format 3 snapshot: its ids were loaded by restore()
            # (DiskDedup.restore) and go out as segments with the first commit
            if snap is None:
                store.reset()
            self.ids_loaded = {"from": "empty" if snap is None else "format 3 snapshot",
                               "segments": 0, "ids": len(store)}
            return
        marker = store.marker()
        since = -1
        if marker is not None and marker[0] == self.lineage and in_chain(marker[1], self.chain):
            since = marker[1]
        else:
            store.reset()
        cutoff_h = snap.engine.dedup[self.name].cutoff_h
        todo = sorted((seq, hour, key) for key, (seq, hour) in self.segments.items()
                      if seq > since and hour >= cutoff_h)
        n = store.apply((decode_segment(key, values[key]) for _, _, key in todo), cutoff_h,
                        (self.lineage, snap.seq))
        self.ids_loaded = {"from": "local store" if since >= 0 else "changelog",
                           "segments": len(todo), "ids": n}
        log.warning("%s: event ids from the %s, %d applied from %d changelog segments in "
                    "%.2f s", self.name, self.ids_loaded["from"], n, len(todo),
                    time.monotonic() - t0)
