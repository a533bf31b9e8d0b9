"""One shard in a worker: its engine, its durable state and offsets, and its I/O.

A shard is a group of topic families no KPI spans (``Catalog.shards``); the worker that owns
its input partitions owns its state. The shard parses and validates each message, feeds its
engine, and routes what the engine can't use: invalid input to `kpi-dlq` with its reason and
source coordinates, late input to `kpi-late`. Closed windows wait in an outbox for the
snapshot that makes them durable, then go to `kpi-windows`; the emit timer publishes
open-window values to `kpi-updates`. Everything outside the engine goes through small
interfaces (streams/shard_ports.py), faked in tests/unit/test_shard.py."""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any, Final

import orjson

from metrics.alerts import AlertEvaluator, alert_key
from metrics.baselines import Baselines, BaselineState
from metrics.catalog import Catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event, Parser, event_parser
from metrics.records import window_message
from metrics.timestamps import wall_ms
from streams.dedup_disk import DiskDedup
from streams.durable import Abandoned, Commit, Durable
from streams.exporter import ShellStats
from streams.feed import FeedIn, FeedOut
from streams.gaps import BROKER_ERRORS, Gaps
from streams.settings import Settings, scratch_dir
from streams.shard_ports import Outputs, ShardIO, StateStore
from streams.shelf_disk import ShardStore
from streams.state import EPOCH, Offsets, Snapshot, claim_key, decode, orphaned, owner_epoch
from streams.topics import family_of
from streams.updates import OpenValues

log = logging.getLogger("kpi_engine.worker")

#: event ids a shard holds for its next commit before the consumer waits for one, a
#: closed-window record counting as ten (~40 MB; a commit every 5 s holds far fewer in steady
#: flow: at 50,000 the early commits cost a quarter of stream_bench's throughput)
MAX_UNCOMMITTED: Final = 200_000
#: events held before a family starts (~230 B each) beyond which its partitions that spoke
#: wait in the broker (``waiting``): a 6-day backlog held 170k-400k, which set the RSS
MAX_HELD: Final = 20_000
_TP: Final = attrgetter("topic", "partition")  # a record's partition


class Shard:
    """One shard's engine, durable state and I/O in this worker (owned or standing by)."""

    def __init__(self, name: str, catalog: Catalog, topics: set[str], settings: Settings,
                 io: ShardIO, state: StateStore, out: Outputs, state_dir: Path | None = None,
                 feed: FeedIn | FeedOut | None = None):
        self.io = io
        self.feed_in: FeedIn | None = feed if isinstance(feed, FeedIn) else None  # the stage's
        self.feed_out: FeedOut | None = feed if isinstance(feed, FeedOut) else None  # feeders
        self.state = state
        self.out = out
        self.settings = settings
        self.name = name
        self.catalog = catalog  # the whole catalog restricted to this shard's families
        self.topics = topics  # its families' input topics
        base = (state_dir or scratch_dir("kpi-state-")) / name.replace("+", "_")
        #: the shard's event ids and its large tracker tables, on disk (its families share)
        self.dedup = DiskDedup(base / "dedup")
        tables = ShardStore(base / "tables", settings.state_cache_keys)
        self.engine = KpiEngine(catalog, EngineConfig(
            dedup_horizon_ms=int(settings.dedup_horizon_s * 1000),
            idle_timeout_ms=int(settings.idle_timeout * 1000)), clock=wall_ms,
            dedup=lambda _: self.dedup, tables=tables.table, shelves=tables.shelf)
        #: what commits write and takeovers read back (streams/durable.py)
        self.durable = Durable(name, catalog, state, self.dedup, tables)
        #: breaches of the catalog's alerts, on the open values it emits (`kpi-alerts`)
        self.alerts = AlertEvaluator(catalog)
        #: seasonal baselines of the KPIs with an `anomaly:`, on the closed windows
        self.baselines = Baselines(catalog)
        self.stats = ShellStats()
        self._lag_by_tp: dict[tuple[str, int], int] = {}
        # durability (streams/state.py): what the engine applied, what a snapshot made durable
        self.applied: Offsets = {}
        self.snapshot_seq = 0
        self._snapshot_applied: Offsets = {}
        self._last_snapshot_at = time.monotonic()
        self.replayed_skipped = self.stale_skipped = 0
        # (batch start, key, JSON): held as sent, ~300 bytes, not as a ~1 KB dict each
        self.outbox: list[tuple[float, bytes, bytes]] = []
        self.resend: list[tuple[bytes, bytes]] = []  # (key, JSON)
        self.committing = 0  # closed windows of the commit under way, sent once it is durable
        self.max_uncommitted = MAX_UNCOMMITTED  # uncommitted() before a batch waits for one
        self.max_held = MAX_HELD  # events held before the consumer leaves some unread
        #: one batch, one emit or one snapshot at a time: a snapshot sees whole batches only
        self._state_lock = asyncio.Lock()
        #: input partitions registered as watermark sources, and those Faust revoked that
        #: the consumer has not yet given back (see ``sync_sources``)
        self.owned: set[tuple[str, int]] = set()
        self.revoked: set[tuple[str, int]] = set()
        self.active = False  # owns its input partitions (streams/assignor.py), or stands by
        self._snapshot_lock = asyncio.Lock()  # one snapshot at a time: seq and slot agree
        self.gaps = Gaps()  # what the broker said of the partitions' logs (streams/gaps.py)
        self.open_values = OpenValues()  # what goes to `kpi-updates` (streams/updates.py)

    def restore(self, records: list[tuple[bytes, bytes]], snap: Snapshot | None,
                epoch: int) -> None:
        self.gaps.restart()
        self.durable.restore(self.engine, records, snap)
        self.resume_wall()  # the time the state spent stored was no quiet time
        self.open_values.forget()  # another owner may have sent newer values since
        self.resend = snap.resend() if snap else []  # it may not have gone out before the crash
        self.applied = dict(snap.applied) if snap else {}
        self._snapshot_applied = dict(self.applied)
        self.stats.invalid = dict(snap.invalid) if snap else {}
        self.alerts.restore(snap.alerts if snap else [])
        self.baselines.restore(snap.baselines if snap else BaselineState())
        # this worker's tenure of the shard: snapshots numbered in a fresh epoch, the
        # previous owner's keys deleted once the first is durable (streams/state.py)
        self.snapshot_seq = epoch * EPOCH

    def resume_wall(self) -> None:
        """The idle advance's quiet counts from now (clock.Watermark.resume)."""
        now = wall_ms()
        for wm in self.engine.watermarks.values():
            wm.resume(now)

    async def activate(self, records: list[tuple[bytes, bytes]], t0: float) -> None:
        """This worker now owns the shard: continue from its latest durable state in the
        state table's ``records``, whoever wrote it (another worker may have owned the shard
        since this one last did), in an epoch of its own, claimed before counting anything."""
        snap = None
        if orphaned(records, self.name):
            log.warning("%s: a commit without its owner's claim (written to a broker that "
                        "came back empty) passed over: counting from nothing", self.name)
        else:
            snap = decode(records, self.name, self.catalog, on_skip=self.skip_record)
        epoch = owner_epoch(records, self.name, snap.seq if snap else 0)
        await self.state.write([(claim_key(self.name), str(epoch).encode())])
        async with self._state_lock:
            if not {tp for tp in self.io.assignment() if tp[0] in self.topics} - self.revoked:
                log.warning("%s: revoked before its activation ended; standing by", self.name)
                return
            # nothing durable yet: start from the empty state (this worker may have counted
            # before, as an owner whose work went to another)
            self.restore(records, snap, epoch)
            self.outbox = []
            # the restored engine has its own sources: the next batch re-syncs them
            self.owned = self.engine.sources()  # type: ignore[assignment]
            self.active = True
        if snap is not None:
            log.warning("%s: restored snapshot %d (%d partitions' offsets) in %.2f s",
                        self.name, snap.seq, len(snap.applied), time.monotonic() - t0)
        log.warning("%s: owning its input partitions", self.name)

    async def lose(self) -> None:
        """The group dropped this worker: another may own the shard already, or the broker
        may have come back without its data. Write nothing (a late snapshot would be a
        stale one, and on an emptied broker the only one), keep nothing in memory: whoever
        owns the shard next recovers from the changelog alone, as after a kill -9."""
        async with self._state_lock:
            self._go_quiet()
            self.outbox = []
            self.state.forget(self.name)
            self.durable.close()
        log.warning("%s: lost with the group membership; its state will be recovered from "
                    "the changelog", self.name)

    def skip_record(self, key: bytes | None, why: str) -> None:
        """A malformed record of this shard's state, passed over: logged and counted."""
        log.error("%s: state record %r skipped: %s", self.name,
                  key if key is None else key[:200], why)
        self.stats.state_skipped += 1

    async def deactivate(self) -> None:
        """Input partitions revoked: make the state durable for the next owner, go quiet."""
        await self.snapshot(force=True)
        async with self._state_lock:
            self._go_quiet()
            self.durable.close()
        log.warning("%s: standing by", self.name)

    def _go_quiet(self) -> None:
        """Stop counting and showing: what a shard handed over or lost no longer reports."""
        self.active = False
        self.stats.kpis = []
        self.stats.lag = {}
        self._lag_by_tp.clear()

    async def snapshot(self, force: bool = False) -> bool:
        """Write the engine state and the offsets it covers, then let commits reach them.
        Forced (a handover, the bound), it waits for the batch under way and includes it."""
        if not self.active or (not force and (
                (self.applied == self._snapshot_applied and not self.outbox) or self.catching_up()
                or time.monotonic() - self._last_snapshot_at < self.settings.snapshot_interval)):
            return False
        async with self._snapshot_lock:
            return await self._snapshot()

    async def _snapshot(self) -> bool:
        async with self._state_lock:
            # gone while this waited (its ids let go; a standby never writes), or nothing new
            if not self.active or (self.applied == self._snapshot_applied and not self.outbox):
                return False
            # DLQ and late copies of the input this snapshot covers are out before it counts
            await self.io.flush()
            if self.engine.revised:  # a commit carries the revisions of what it covers
                await self.publish_finals(self.engine.advance(), time.perf_counter())
            applied = dict(self.applied)
            outbox, self.outbox = self.outbox, []
            # under the lock: state and offsets agree; the restored outbox in it until sent
            pending = [v for _, v in self.resend] + [v for _, _, v in outbox]
            commit = self.durable.prepare(self.engine, self.snapshot_seq + 1, applied,
                                          dict(self.stats.invalid), pending,
                                          self.alerts.snapshot(), self.baselines.snapshot())
        self.committing = len(outbox)  # still pending (/health) until sent or back in the outbox
        try:
            return await self._commit(commit, applied, outbox)
        finally:
            self.committing = 0

    async def _commit(self, commit: Commit, applied: Offsets,
                      outbox: list[tuple[float, bytes, bytes]]) -> bool:
        try:
            await self.durable.write(commit)
        except (*BROKER_ERRORS, Abandoned) as exc:
            # the broker refused the state write (back empty, it answers UnknownError until
            # the changelog exists again), or the shard went: the closed windows wait
            self.outbox[:0] = outbox
            log.warning("%s: commit %d not written (%s: %s); retrying with the next",
                        self.name, commit.seq, type(exc).__name__, exc)
            return False
        self.snapshot_seq = commit.seq
        self._snapshot_applied = applied
        self._last_snapshot_at = time.monotonic()
        # the input consumed bypasses Faust's acks (durable_consumer): commit here. A group
        # refuses a member it replaced: its closed windows stay unsent (the newer owner has
        # them: the snapshot holds them for whoever restores it)
        if await self.io.commit(self.durable_next):
            try:
                await self._send_finals(outbox)
            except BROKER_ERRORS as exc:  # durable: the next tick sends them again
                log.warning("%s: %d closed windows not sent (%s: %s); sending them again",
                            self.name, len(outbox), type(exc).__name__, exc)
                self.resend += [(k, v) for _, k, v in outbox]
        else:
            log.warning("%s: offsets not committed; %d closed windows wait", self.name,
                        len(outbox))
            self.outbox[:0] = outbox
        return True

    def catching_up(self) -> bool:
        """Reading a backlog: its commits come from the bound (``max_uncommitted``), not the
        clock (a commit every 5 s rewrites what the backlog touched: a longer changelog)."""
        return sum(self._lag_by_tp.values()) > self.max_uncommitted // 4

    def uncommitted(self) -> int:
        """What waits for the next commit, in ids (a closed-window record weighs ten)."""
        return 10 * len(self.outbox) + self.dedup.uncommitted()

    def pending_finals(self) -> int:
        """Closed windows not yet on kpi-windows (they wait for a durable snapshot)."""
        return len(self.outbox) + len(self.resend) + self.committing

    def waiting(self) -> set[Any]:
        """The partitions the consumer leaves in the broker for now (over ``max_held`` held):
        those that spoke of a family whose watermark is not known yet (the accounts stage's
        sources are other shards' partitions: left alone)."""
        e = self.engine
        if not self.active or self.feed_in is not None or e.held_total <= self.max_held:
            return set()
        return {s for wm in e.watermarks.values() for s in wm.spoken()}

    @property
    def durable_next(self) -> Offsets:
        """Next offset to commit per input partition: what the last durable snapshot covers."""
        return {tp: off + 1 for tp, off in self._snapshot_applied.items()}

    def sync_sources(self, assignment: set[tuple[str, int]]) -> None:
        """Make the engine's watermark sources the consumer's live assignment.

        A batch must meet every partition of its family registered: one applied while some
        were missing (before the assignment signal ran, or between a revoke and the next
        assignment) lets one partition's event time close windows the others still feed.
        The consumer's assignment (not Faust's signals) changes before any message of a new
        partition is fetched. The accounts shard's sources are those feeding it instead.
        """
        current = {tp for tp in assignment - self.revoked if tp[0] in self.topics}
        if self.feed_in is not None:
            self.feed_in.register(self.engine)
            self.owned = current
            return
        if current == self.owned:
            return
        for tp in self.owned - current - self.revoked:
            # a revoked partition stays a source: the handover snapshot carries how far it
            # got. Forgotten, the next owner registered it anew, and a partition read to its
            # end never spoke again to let the watermark move (the kill loop's missing finals)
            self.engine.forget_source(tp)
        for tp in current - self.owned:
            self.engine.assign_source(family_of(self.settings, tp[0]), tp)  # type: ignore[arg-type]
        if current - self.owned:
            log.info("%s: %d input partitions assigned", self.name, len(current))
        self.owned = current

    async def on_revoked(self, tps: set[tuple[str, int]]) -> None:
        self.revoked |= tps
        self.sync_sources(self.owned)
        if self.active and tps:
            if self.io.membership_lost():
                await self.lose()
            else:  # the whole state goes to the next owner: hand it over
                await self.deactivate()

    async def handle(self, batch: list[Any]) -> None:
        """This shard's part of a fetched batch."""
        if not self.active:
            # fetched before a revoke, or before the shard's state is recovered: Faust holds
            # its partitions until then and seeks them to the committed offsets, so the
            # owner reads these again (waiting here would hold up the changelog's messages)
            self.stale_skipped += len(batch)
            return
        async with self._state_lock:
            if not self.active:
                return  # revoked meanwhile: the next owner reads it again
            # read under the lock: a rebalance may have run while this batch waited for it
            mine = {tp for tp in self.io.assignment() if tp[0] in self.topics}
            self.sync_sources(mine)
            rewind = await self._handle(batch)
            for tp, offset in rewind.items():
                if tp in mine:  # ours: fetch it again from where the state stops
                    await self.gaps.reread(self.io, tp, offset)
        if self.uncommitted() > self.max_uncommitted:
            # a backlog read faster than commits are written would hold ever more closed
            # windows and ids in memory: the consumer waits for a commit instead
            await self.snapshot(force=True)

    async def _handle(self, batch: list[Any]) -> dict[tuple[str, int], int]:
        """Apply one batch. Per partition the state holds a gapless prefix of the log: a
        message is applied only right after the last one applied. Returns, for partitions
        whose messages did not follow on (a batch fetched before a revoke, a restore or
        a rebalance), the offset to read them again from."""
        t0 = time.perf_counter()
        now = wall_ms()
        engine, stats, settings, io, out = self.engine, self.stats, self.settings, self.io, self.out
        currency = self.catalog.currency
        parsers: dict[str, Parser] = {}  # topic -> its family's parser, for this batch
        rejected: list[tuple[Any, str]] = []
        last_offsets: dict[tuple[str, int], int] = {}
        applied, owned = self.applied, self.owned
        stale: dict[tuple[str, int], int] = {}
        gaps = self.gaps
        fed, feeds = self.feed_in, self.feed_out  # the accounts stage (streams/feed.py)
        ingest = engine.ingest
        for tp, run in groupby(batch, _TP):  # a partition's records come together
            msgs = list(run)
            first, last = msgs[0].offset, applied.get(tp)
            if tp in stale or tp not in owned or first != (0 if last is None else last + 1) \
                    or msgs[-1].offset - first != len(msgs) - 1:  # not simply the next ones
                kept = []
                for m in msgs:
                    why = await gaps.admit(io, m, tp, applied, owned, stale)
                    if why == "apply":
                        kept.append(m)
                    elif why == "replayed":  # re-read after a restart: already in the state
                        self.replayed_skipped += 1
                    else:
                        self.stale_skipped += 1
                if not kept:
                    continue
                msgs = kept
            applied[tp] = last_offsets[tp] = msgs[-1].offset
            parse = parsers.get(tp[0])
            if parse is None:  # the accounts stage's copies come from several families
                parse = parsers[tp[0]] = event_parser(
                    now_ms=now, currency=currency,
                    topic_family=None if fed else family_of(settings, tp[0]))
            for msg in msgs:
                raw = msg.value if isinstance(msg.value, bytes) else b""
                if fed:  # the accounts stage: framed copies, or a feeding partition's progress
                    fed.take(engine, msg, raw, parse, rejected)
                    continue
                parsed = parse(raw)
                if type(parsed) is Event:
                    stamp = msg.timestamp  # seconds (Faust), the broker's record timestamp
                    ingest(parsed, tp, msg, round(stamp * 1000) if stamp else None)
                    if feeds:
                        feeds.add(tp, parsed, raw, stamp)
                else:
                    rejected.append((msg, parsed.reason))  # type: ignore[union-attr]
        if feeds:
            await feeds.send(io)
        late = engine.late_refs  # every event found late, held ones included
        engine.late_refs = []
        for msg, reason in rejected:
            stats.invalid[reason] = stats.invalid.get(reason, 0) + 1
            await io.route(out.topic_dlq, msg, reason)
        for msg in late:
            await io.route(out.topic_late, msg, "late")
        if engine.due:
            await self.publish_finals(engine.advance(), t0)
        self._update_lag(last_offsets)
        return stale

    async def publish_finals(self, records: list[dict[str, Any]], t0: float) -> None:
        """Closed windows wait in the outbox for the snapshot that makes them durable; anomalies
        go out now (`kpi-alerts`), and what the stage tells (`kpi-accounts`, `kpi-mql`)."""
        self.outbox += [(t0, *window_message(r)) for r in records]
        self.out.history.add(records)
        if records and self.baselines.kpis:
            for event in self.baselines.observe(records, records[0]["emitted_at"]):
                await self.io.send(self.out.topic_alerts, alert_key(event).encode(),
                                   orjson.dumps(event))
        if self.feed_in:  # new MQLs at once, account scores with closed windows
            await self.feed_in.send_stage(self.engine, self.io, records)

    async def _send_finals(self, outbox: list[tuple[float, bytes, bytes]]) -> None:
        send, topic = self.io.send, self.out.topic_windows
        for _, key, value in outbox:
            await send(topic, key, value)
        await self.io.flush()
        now = time.perf_counter()
        for t0 in {t0 for t0, _, _ in outbox}:
            self.out.emit_latency(now - t0)

    async def _mark_behind(self) -> None:
        """Partitions whose consumer position is short of the log end are not idle: a
        partition's records can wait behind the others' fetches (the consumer's position
        moves past transaction markers too, so a log ending on one still goes quiet)."""
        for tp in self.owned:
            if (end := self.io.highwater(tp)) is not None and \
                    (pos := await self.io.position(tp)) is not None and pos < end:
                for wm in self.engine.watermarks.values():
                    wm.busy(tp)

    async def tick(self) -> None:
        """Emit interval: idle watermark advance, then open-window values."""
        t0 = time.perf_counter()
        if self.resend:  # the restored snapshot's outbox, first of all
            await self._send_finals([(t0, k, v) for k, v in self.resend])
            self.resend = []
        if not self.active:  # a standby's: not waiting for its lock (held by a restore)
            return
        async with self._state_lock:
            if not self.active:  # handed over or lost while this waited
                return
            if self.engine.config.idle_timeout_ms > 0 and self.feed_in is None:
                await self._mark_behind()
            await self.publish_finals(self.engine.advance(), t0)
            await self.gaps.find_skipped(self.io, self.owned, self.applied)
        await self.snapshot()
        if not self.active:  # went during the commit: a standby shows nothing
            return
        current = self.stats.kpis = await self.open_values.emit(self.engine, self.io,
                                                                self.out.topic_updates)
        emitted_at = current[0]["emitted_at"] if current else ""
        now = {f: self.engine.watermark(f) for f in self.catalog.families}
        for event in self.alerts.observe(current, emitted_at, now,
                                         self.engine.publisher.partial_open):
            await self.io.send(self.out.topic_alerts, alert_key(event).encode(),
                               orjson.dumps(event))

    def _update_lag(self, last_offsets: dict[tuple[str, int], int]) -> None:
        for tp, offset in last_offsets.items():
            high = self.io.highwater(tp)
            if high is not None:  # None: not known yet after a rebalance: keep the last one
                self._lag_by_tp[tp] = max(0, high - offset - 1)
        by_topic: dict[str, int] = {}
        for tp, lag in self._lag_by_tp.items():
            by_topic[tp[0]] = by_topic.get(tp[0], 0) + lag
        self.stats.lag = by_topic

    def health(self) -> dict[str, Any]:
        e = self.engine
        return {
            "role": "active" if self.active else "standby",
            "events": sum(e.events_total.values()),
            "invalid": sum(self.stats.invalid.values()),
            "duplicates": e.duplicates_total,
            "late": sum(e.late_total.values()),
            "late_by_family": dict(e.late_total),
            "held": e.held_total,
            "replayed_skipped": self.replayed_skipped,
            "stale_skipped": self.stale_skipped,
            "state_skipped": self.stats.state_skipped,
            "snapshot_seq": self.snapshot_seq,
            "pending_finals": self.pending_finals(),
            "durable": self.applied == self._snapshot_applied,
            "state": e.state_sizes(),
            "ids_loaded": self.durable.ids_loaded,
            "state_epochs": sorted(self.durable.epochs),  # one once a commit is durable
        }
