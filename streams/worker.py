"""The Faust worker: a thin shell around the pure KPI engine.

The consumer hands whole fetched batches to the shell (``durable_consumer``), which splits
them by shard (``Catalog.shards``: groups of topic families no KPI spans). Each shard the
worker owns has its own engine, durable state and offsets. It parses and validates each
message, feeds its engine, and routes what the engine can't use: invalid input to `kpi-dlq`
with its reason and source coordinates, late input to `kpi-late`. Closed windows go to
`kpi-windows`; a timer publishes open-window values to `kpi-updates` once per emit interval
and lets quiet families' watermarks move with the wall clock. Workers of one group share the
shards (streams/assignor.py).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from typing import Any, Final

import faust
import orjson
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError
from faust.transport.drivers.aiokafka import Consumer as FaustKafkaConsumer
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kpi_engine.replay import tune_gc
from kpi_engine.settings import Settings
from metrics.catalog import Catalog, load_catalog
from metrics.engine import NEVER, EngineConfig, KpiEngine
from metrics.errors import SettingsError
from metrics.events import FAMILY_TOPIC, Event, Parser, event_parser
from metrics.exporter import ShellStats, make_registry
from metrics.records import update_key, window_key
from streams.assignor import shard_assignor
from streams.dashboard import History, RateMeter, catalog_meta, page
from streams.state import (
    EPOCH,
    Offsets,
    Snapshot,
    claim_key,
    decode,
    encode,
    follows,
    key_epoch,
    owner_epoch,
    source_ref,
    superseded,
)
from streams.state_table import StateTable
from streams.tansu import is_tansu, log_ends
from streams.topics import (
    create_topics,
    family_of,
    input_topics,
    shard_topics,
    state_partitions,
    state_topic,
    topic_sizes,
)

log = logging.getLogger("kpi_engine.worker")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Shard:
    """One shard's engine, durable state and I/O in this worker (owned or standing by)."""

    def __init__(self, shell: KpiShell, name: str, catalog: Catalog, topics: set[str]):
        self.shell = shell
        self.app = shell.app
        self.settings = settings = shell.settings
        self.name = name
        self.catalog = catalog  # the whole catalog restricted to this shard's families
        self.topics = topics  # its families' input topics
        self.engine = KpiEngine(catalog, EngineConfig(
            dedup_horizon_ms=int(settings.dedup_horizon_s * 1000),
            idle_timeout_ms=int(settings.idle_timeout * 1000)), clock=wall_ms)
        self.stats = ShellStats()
        self._lag_by_tp: dict[Any, int] = {}
        # durability (streams/state.py): what the engine applied, what a snapshot made durable
        self.applied: Offsets = {}
        self.snapshot_seq = 0
        self._epoch_clean = True
        self._snapshot_applied: Offsets = {}
        self._last_snapshot_at = time.monotonic()
        self.replayed_skipped = 0
        self.outbox: list[tuple[float, dict[str, Any]]] = []  # (batch start, record)
        self.resend: list[dict[str, Any]] = []
        #: one batch, one emit or one snapshot at a time: a snapshot sees whole batches only
        self._state_lock = asyncio.Lock()
        #: input partitions registered as watermark sources, and those Faust revoked that
        #: the consumer has not yet given back (see ``sync_sources``)
        self.owned: set[tuple[str, int]] = set()
        self.revoked: set[tuple[str, int]] = set()
        self.stale_skipped = 0
        #: owns the shard's input partitions (streams/assignor.py); a standby holds no state
        self.active = False
        self._snapshot_lock = asyncio.Lock()  # one snapshot at a time: seq and slot agree
        self._hole_at: dict[tuple[str, int], int] = {}  # offset a partition was re-read from

    def restore(self, snap: Snapshot, epoch: int) -> None:
        self.engine.restore(snap.engine)
        self.resend = snap.outbox  # it may not have gone out before the crash
        self.applied = dict(snap.applied)
        self._snapshot_applied = dict(snap.applied)
        self.stats.invalid = dict(snap.invalid)
        # this worker's tenure of the shard: snapshots numbered in a fresh epoch, the
        # previous owner's keys deleted once the first is durable (streams/state.py)
        self.snapshot_seq = epoch * EPOCH
        self._epoch_clean = False

    async def activate(self, records: list[tuple[bytes, bytes]], t0: float) -> None:
        """This worker now owns the shard: continue from its latest durable state in the
        state table's ``records``, whoever wrote it (another worker may have owned the shard
        since this one last did), in an epoch of its own, claimed before counting anything."""
        snap = decode(records, self.name, self.catalog)
        epoch = owner_epoch(records, self.name, snap.seq if snap else 0)
        await self.shell.state.write([(claim_key(self.name), str(epoch).encode())])
        async with self._state_lock:
            # nothing durable yet: start from the empty state (this worker may have counted
            # before, as an owner whose work went to another)
            self.restore(snap or Snapshot(
                0, KpiEngine(self.catalog, self.engine.config).snapshot(), {}, {}, []), epoch)
            self.outbox = []
            # the restored engine has its own sources: the next batch re-syncs them
            self.owned = {src for wm in self.engine.watermarks.values() for src in wm.sources}
            self.active = True
        if snap is not None:
            log.warning("%s: restored snapshot %d (%d partitions' offsets) in %.2f s",
                        self.name, snap.seq, len(snap.applied), time.monotonic() - t0)
        log.warning("%s: owning its input partitions", self.name)

    async def deactivate(self) -> None:
        """Input partitions revoked: make the state durable for the next owner, go quiet."""
        await self.snapshot(force=True)
        async with self._state_lock:
            self.active = False
            self.stats.kpis = []
            self.stats.lag = {}
            self._lag_by_tp.clear()
        log.warning("%s: standing by", self.name)

    async def snapshot(self, force: bool = False) -> bool:
        """Write the engine state and the offsets it covers, then let commits reach them."""
        if not self.active or (self.applied == self._snapshot_applied and not self.outbox):
            return False
        if not force and time.monotonic() - self._last_snapshot_at < \
                self.settings.snapshot_interval:
            return False
        async with self._snapshot_lock:
            return await self._snapshot()

    async def _snapshot(self) -> bool:
        if not self.active:  # a standby must never overwrite the owner's state
            return False
        async with self._state_lock:
            # DLQ and late copies of the input this snapshot covers are out before it counts
            await self.app.producer.flush()
            applied = dict(self.applied)
            outbox, self.outbox = self.outbox, []
            snap = Snapshot(self.snapshot_seq + 1, self.engine.snapshot(source_ref), applied,
                            dict(self.stats.invalid), [r for _, r in outbox])
            # serialised under the lock: the state and the offsets agree
            records = encode(snap, self.name, self.catalog)
        # the chunks, then the manifest that commits them (streams/state_table.py)
        state = self.shell.state
        await state.write(records[:-1])
        await state.write(records[-1:])
        if not self._epoch_clean:
            await state.delete(superseded([k for k, _ in state.records(self.name)],
                                          self.name, snap.seq))
            self._epoch_clean = True
        self.snapshot_seq = snap.seq
        self._snapshot_applied = applied
        self._last_snapshot_at = time.monotonic()
        # the input consumed bypasses Faust's acks (see durable_consumer): commit here. The
        # group refuses a commit from a member it has replaced: then this worker's closed
        # windows stay unsent (a newer owner publishes its own), else they wait for the next
        # snapshot. The snapshot holds them either way, for whoever restores it.
        consumer: Any = self.app.consumer
        if await consumer._commit({TP(t, p): off for (t, p), off in self.durable_next.items()}):
            await self._send_finals(outbox)
        else:
            log.warning("%s: offsets not committed; %d closed windows wait", self.name,
                        len(outbox))
            self.outbox[:0] = outbox
        return True

    @property
    def durable_next(self) -> Offsets:
        """Next offset to commit per input partition: what the last durable snapshot covers."""
        return {tp: off + 1 for tp, off in self._snapshot_applied.items()}

    def sync_sources(self, assignment: set[tuple[str, int]]) -> None:
        """Make the engine's watermark sources the consumer's live assignment.

        A batch must meet every partition of its family registered: one applied while some
        were missing (before the assignment signal ran, or between a revoke and the next
        assignment) lets one partition's event time close windows the others still feed.
        Faust's signals alone don't guarantee that order, the consumer's assignment does:
        it changes before any message of a new partition is fetched.
        """
        current = {tp for tp in assignment - self.revoked if tp[0] in self.topics}
        if current == self.owned:
            return
        for tp in self.owned - current:
            self.engine.forget_source(tp)
        for tp in current - self.owned:
            self.engine.assign_source(family_of(self.settings, tp[0]), tp)  # type: ignore[arg-type]
        if current - self.owned:
            log.info("%s: %d input partitions assigned", self.name, len(current))
        self.owned = current

    async def on_revoked(self, tps: set[tuple[str, int]]) -> None:
        self.revoked |= tps
        self.sync_sources(self.owned)
        if self.active and tps:  # the whole state goes to the next owner: hand it over
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
            consumer: Any = self.app.consumer
            # read under the lock: a rebalance may have run while this batch waited for it
            mine = {(tp.topic, tp.partition) for tp in consumer.assignment()
                    if tp.topic in self.topics}
            self.sync_sources(mine)
            rewind = await self._handle(batch)
            for tp, offset in rewind.items():
                if tp in mine:  # ours: fetch it again from where the state stops
                    log.warning("re-reading %s[%d] from %d", *tp, offset)
                    self._hole_at[tp] = offset
                    await consumer.seek(TP(*tp), offset)

    async def _handle(self, batch: list[Any]) -> dict[tuple[str, int], int]:
        """Apply one batch. Per partition the state holds a gapless prefix of the log: a
        message is applied only right after the last one applied. Returns, for partitions
        whose messages did not follow on (a batch fetched before a revoke, a restore or
        a rebalance), the offset to read them again from."""
        t0 = time.perf_counter()
        now = wall_ms()
        engine, stats, settings, shell = self.engine, self.stats, self.settings, self.shell
        currency = self.catalog.currency
        parsers: dict[str, Parser] = {}  # topic -> its family's parser, for this batch
        rejected: list[tuple[Any, str]] = []
        last_offsets: dict[Any, int] = {}
        applied = self.applied
        owned = self.owned
        stale: dict[tuple[str, int], int] = {}
        hole_at = self._hole_at
        for msg in batch:
            tp = (msg.topic, msg.partition)
            last = applied.get(tp)
            if tp in stale:
                self.stale_skipped += 1
                continue
            if tp not in owned:
                # fetched before a revoke: its owner reads it from the committed offset,
                # which never passes what a snapshot holds
                self.stale_skipped += 1
                stale[tp] = msg.offset if last is None else last + 1
                continue
            where = follows(msg.offset, last, hole_at.get(tp))
            if where == "replayed":  # re-read after a restart: already in the state
                self.replayed_skipped += 1
                continue
            if where == "hole":
                self.stale_skipped += 1
                stale[tp] = last + 1  # type: ignore[operator]
                continue
            applied[tp] = msg.offset
            raw = msg.value if isinstance(msg.value, bytes) else b""
            parse = parsers.get(msg.topic)
            if parse is None:
                parse = parsers[msg.topic] = event_parser(
                    now_ms=now, currency=currency, topic_family=family_of(settings, msg.topic))
            parsed = parse(raw)
            if type(parsed) is Event:
                engine.ingest(parsed, (msg.topic, msg.partition), msg)
            else:
                reason: str = parsed.reason  # type: ignore[union-attr]
                stats.invalid[reason] = stats.invalid.get(reason, 0) + 1
                rejected.append((msg, reason))
            last_offsets[msg.tp] = msg.offset
        late = engine.late_refs  # every event found late, held ones included
        engine.late_refs = []
        for msg, reason in rejected:
            await shell.route(shell.topic_dlq, msg, reason)
        for msg in late:
            await shell.route(shell.topic_late, msg, "late")
        if engine.due:
            await self.publish_finals(engine.advance(), t0)
        self._update_lag(last_offsets)
        return stale

    async def publish_finals(self, records: list[dict[str, Any]], t0: float) -> None:
        """Closed windows wait in the outbox for the snapshot that makes them durable."""
        self.outbox += [(t0, rec) for rec in records]
        self.shell.history.add(records)

    async def _send_finals(self, outbox: list[tuple[float, dict[str, Any]]]) -> None:
        send = self.app.producer.send
        for _, rec in outbox:
            await send(self.shell.topic_windows, window_key(rec).encode(), orjson.dumps(rec),
                       None, None, None)
        await self.app.producer.flush()
        now = time.perf_counter()
        for t0 in {t0 for t0, _ in outbox}:
            self.shell.emit_latency.observe(now - t0)

    async def tick(self) -> None:
        """Emit interval: idle watermark advance, then open-window values."""
        t0 = time.perf_counter()
        if self.resend:  # the restored snapshot's outbox, first of all
            await self._send_finals([(t0, r) for r in self.resend])
            self.resend = []
        if not self.active:
            return
        async with self._state_lock:
            await self.publish_finals(self.engine.advance(), t0)
        await self.snapshot()
        current = self.engine.open_records()
        self.stats.kpis = current
        send = self.app.producer.send
        for rec in current:
            await send(self.shell.topic_updates, update_key(rec).encode(), orjson.dumps(rec),
                       None, None, None)

    def _update_lag(self, last_offsets: dict[Any, int]) -> None:
        consumer = self.app.consumer
        for tp, offset in last_offsets.items():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not known yet after a rebalance: keep the last figure
                continue
            if high is not None:
                self._lag_by_tp[tp] = max(0, high - offset - 1)
        by_topic: dict[str, int] = {}
        for tp, lag in self._lag_by_tp.items():
            by_topic[tp.topic] = by_topic.get(tp.topic, 0) + lag
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
            "snapshot_seq": self.snapshot_seq,
            # closed windows not yet on kpi-windows (they wait for a durable snapshot)
            "pending_finals": len(self.outbox) + len(self.resend),
            "durable": self.applied == self._snapshot_applied,
            "state": e.state_sizes(),
            # the epochs whose snapshots the state table holds for this shard: one, once
            # this owner's first snapshot is durable (streams/state.py)
            "state_epochs": sorted({ep for k, _ in self.shell.state.records(self.name)
                                    if (ep := key_epoch(k, self.name)) is not None}),
        }


TRAFFIC_EVERY_S: Final = 30.0

#: health fields summed over the shards a worker owns
_SUMMED: Final = ("events", "invalid", "duplicates", "late", "held", "replayed_skipped",
                  "stale_skipped", "snapshot_seq", "pending_finals")


class KpiShell:
    """State and I/O of one worker process, independent of how Faust calls it: the shards
    it may own, and what they share (producer, topics, exporter, dashboard)."""

    def __init__(self, app: faust.App, settings: Settings, catalog: Catalog,
                 traffic: dict[str, float] | None = None):
        self.app = app
        self.settings = settings
        self.catalog = catalog
        self.topic_windows = settings.topic("kpi-windows")
        self.topic_updates = settings.topic("kpi-updates")
        self.topic_dlq = settings.topic("kpi-dlq")
        self.topic_late = settings.topic("kpi-late")
        self.history = History()
        self.event_rate = RateMeter()
        self.catalog_meta = catalog_meta(catalog)
        shard_of = shard_topics(settings, catalog)
        self.shards = {name: Shard(self, name, catalog.restrict(fams),
                                   {t for t, n in shard_of.items() if n == name})
                       for name, fams in catalog.shards().items()}
        self.shard_of_topic = {t: self.shards[n] for t, n in shard_of.items()}
        self.state = StateTable(app, topic=state_topic(settings),
                                partitions=state_partitions(catalog),
                                on_recovered=self.on_state_recovered)
        app.tables.add(self.state)
        self._assigned_at = time.monotonic()
        self.registry, self.emit_latency = make_registry(catalog, self.owned_parts,
                                                         settings.topic)
        self.first_event_at: float | None = None  # Unix time
        self.last_batch_done_at: float | None = None
        #: shard -> messages in its topics' logs, what the assignor balances by when this
        #: worker leads a rebalance (streams/assignor.py, which holds the same dict);
        #: refreshed every TRAFFIC_EVERY_S
        self.traffic: dict[str, float] = {} if traffic is None else traffic
        self._traffic_at = -TRAFFIC_EVERY_S
        self._traffic_task: asyncio.Future[None] | None = None

    async def refresh_traffic(self) -> None:
        try:
            sizes = await topic_sizes(self.settings.bootstrap, input_topics(self.settings))
        except KafkaError as exc:  # a weight, not a must: keep the last one
            log.warning("could not read the input topics' sizes: %s", exc)
            self._traffic_at = time.monotonic()
            return
        self.weigh(sizes)

    def weigh(self, sizes: dict[str, int]) -> None:
        """Each shard's traffic from its topics' sizes."""
        traffic = dict.fromkeys(self.shards, 0.0)
        for topic, n in sizes.items():
            sh = self.shard_of_topic.get(topic)
            if sh is not None:
                traffic[sh.name] += n
        self.traffic.update(traffic)  # in place: the assignor reads this dict
        self._traffic_at = time.monotonic()

    @property
    def active(self) -> list[Shard]:
        return [sh for sh in self.shards.values() if sh.active]

    def owned_parts(self) -> list[tuple[KpiEngine, ShellStats]]:
        """What the exporter shows: the shards this worker owns (a standby's are stale)."""
        return [(sh.engine, sh.stats) for sh in self.active]

    def _by_shard(self, tps: set[tuple[str, int]]) -> dict[Shard, set[tuple[str, int]]]:
        out: dict[Shard, set[tuple[str, int]]] = {}
        for tp in tps:
            sh = self.shard_of_topic.get(tp[0])
            if sh is not None:
                out.setdefault(sh, set()).add(tp)
        return out

    async def on_assigned(self, tps: set[tuple[str, int]]) -> None:
        """The shards' state comes next, from Faust's recovery (``on_state_recovered``)."""
        self._assigned_at = time.monotonic()
        for sh, mine in self._by_shard(tps).items():
            sh.revoked -= mine

    async def on_state_recovered(self, names: set[str]) -> None:
        """Faust has read the changelog partitions of the shards this worker now owns (the
        input stays paused until this returns): each continues from its latest durable
        state, whoever wrote it."""
        live = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
        by_shard = self._by_shard(live)
        # a recovery that ends as the next rebalance revokes its assignment starts nothing
        owned = names & {sh.name for sh in by_shard}
        for name, sh in self.shards.items():
            if name in owned and not sh.active:
                await sh.activate(self.state.records(name), self._assigned_at)
            elif name not in owned and sh.active:
                await sh.deactivate()
        for sh, mine in by_shard.items():
            sh.sync_sources(mine)
        log.warning("owning %s", ", ".join(sh.name for sh in self.active) or "nothing")

    async def on_revoked(self, tps: set[tuple[str, int]]) -> None:
        for sh, mine in self._by_shard(tps).items():
            await sh.on_revoked(mine)

    async def handle(self, batch: list[Any]) -> None:
        t0 = time.time()
        parts: dict[Shard, list[Any]] = {}
        shard_of = self.shard_of_topic
        for msg in batch:
            sh = shard_of.get(msg.topic)
            if sh is not None:
                part = parts.get(sh)
                if part is None:
                    parts[sh] = [msg]
                else:
                    part.append(msg)
        for sh, part in parts.items():
            await sh.handle(part)
        if self.first_event_at is None:
            self.first_event_at = t0
        self.last_batch_done_at = time.time()

    async def route(self, topic: str, msg: Any, reason: str) -> None:
        """Copy an input message, with its coordinates, to the DLQ or the late topic. A copy
        the cluster refuses as too large goes out truncated, saying so: bad input never
        stops the worker."""
        headers = _source_headers(msg, reason)
        try:
            await self.app.producer.send(topic, msg.key, msg.value, None, None, headers)
        except ProducerSendError as exc:
            if not isinstance(exc.__cause__, MessageSizeTooLargeError):
                raise
            size = len(msg.value or b"")
            headers.append(("truncated_from", str(size).encode()))
            await self.app.producer.send(topic, msg.key, (msg.value or b"")[:4096], None, None,
                                         headers)

    async def tick(self) -> None:
        for sh in self.shards.values():
            await sh.tick()
        if time.monotonic() - self._traffic_at >= TRAFFIC_EVERY_S and (
                self._traffic_task is None or self._traffic_task.done()):
            # beside the emits, not in their way: reading sizes can wait on the cluster
            self._traffic_task = asyncio.ensure_future(self.refresh_traffic())
        self.event_rate.sample(time.monotonic(), sum(
            sum(sh.engine.events_total.values()) for sh in self.active))

    def health(self) -> dict[str, Any]:
        """The shards this worker owns, summed; ``shards`` says which it owns."""
        out: dict[str, Any] = {"status": "ok", "role": "active" if self.active else "standby",
                               "shards": {n: "active" if sh.active else "standby"
                                          for n, sh in self.shards.items()}}
        out.update(dict.fromkeys(_SUMMED, 0))
        late_by_family: dict[str, int] = {}
        state: dict[str, int] = {}
        epochs: dict[str, list[int]] = {}
        durable = True
        for sh in self.active:
            h = sh.health()
            epochs[sh.name] = h["state_epochs"]
            for k in _SUMMED:
                out[k] += h[k]
            late_by_family.update(h["late_by_family"])
            for k, v in h["state"].items():
                state[k] = state.get(k, 0) + v
            durable = durable and h["durable"]
        out |= {"late_by_family": late_by_family, "state": state, "durable": durable,
                "state_epochs": epochs,
                # seconds from receiving the first batch to finishing the latest one, and
                # both moments (Unix time: a benchmark spans the workers of a group)
                "busy_s": (self.last_batch_done_at - self.first_event_at
                           if self.first_event_at and self.last_batch_done_at else None),
                "first_batch_at": self.first_event_at,
                "last_batch_done_at": self.last_batch_done_at}
        return out

    def current(self) -> list[dict[str, Any]]:
        """Latest open-window records of the shards this worker owns."""
        return [r for sh in self.active for r in sh.stats.kpis]

    def dashboard_state(self) -> dict[str, Any]:
        """Everything the /dashboard page draws, in one poll."""
        wall_s = time.time()
        health = self.health()
        health["events_per_s"] = round(self.event_rate.rate, 1)
        health["lag"] = sum(n for sh in self.active for n in sh.stats.lag.values())
        health["watermark_delay_s"] = {
            self.settings.topic(FAMILY_TOPIC[f]): round(wall_s - wm.value / 1000, 1)
            for sh in self.active for f, wm in sh.engine.watermarks.items()
            if wm.value != NEVER}
        return {"catalog": self.catalog_meta,
                "current": [r for r in self.current() if not r["dims"]],
                "history": self.history.as_json(),
                "health": health}

    def kpis_json(self, query: Any) -> list[dict[str, Any]]:
        """Current values, filtered by ?window=&kpi= and any dimension (?channel=email)."""
        window = query.get("window")
        kpi = query.get("kpi")
        dims = {k: v for k, v in query.items() if k not in ("window", "kpi")}
        return [r for r in self.current()
                if (window is None or r["window"] == window)
                and (kpi is None or r["kpi"] == kpi)
                and all(r["dims"].get(k) == v for k, v in dims.items())]


def _source_headers(msg: Any, error: str) -> list[tuple[str, bytes]]:
    return [("error", error.encode()), ("source_topic", msg.topic.encode()),
            ("source_partition", str(msg.partition).encode()),
            ("source_offset", str(msg.offset).encode())]


def durable_consumer(shell: KpiShell, tansu: bool = False) -> type:
    """Faust's aiokafka consumer with these changes, all through the consumer-class seam
    Faust offers:

    - fetched input batches go straight to the shell, whole: no per-message stream, task or
      ack (ENGINEERING.md §2 measured ~100 µs per event of that machinery); the state
      table's changelog messages take Faust's own path to its recovery;
    - input offsets are committed only as far as a durable snapshot covers them: a crash
      then re-reads what the restored state lacks, never less;
    - on the embedded broker only (``tansu``), a changelog's end comes from a fetch, not
      ListOffsets (streams/tansu.py), so recovery reads the newest snapshot whole.
    """
    inputs = set(shell.shard_of_topic)

    class DurableConsumer(FaustKafkaConsumer):
        async def _drain_messages(self, fetcher: Any) -> None:
            consumer_stopped = self._stopped.is_set
            fetcher_stopped = fetcher._stopped.is_set
            set_read_offset = self._read_offset.__setitem__
            callback = self.callback
            try:
                while not (consumer_stopped() or fetcher_stopped()):
                    batch = []
                    async for tp, message in self.getmany(timeout=1.0):
                        if tp.topic in inputs:
                            batch.append(message)
                        else:  # the state changelog, while Faust recovers it
                            await callback(message)
                        set_read_offset(tp, message.offset)
                    if batch:
                        await shell.handle(batch)
                    else:
                        await asyncio.sleep(0)
            except self.consumer_stopped_errors:
                if not self.transport.app.should_stop:
                    raise
            except asyncio.CancelledError:
                if not self.transport.app.should_stop:
                    raise
            except Exception as exc:
                # a bug, not bad input (that is a DLQ record): stop the worker loudly rather
                # than leave a live process that no longer consumes
                log.exception("KPI consumer failed; stopping the worker")
                await self.transport.app.crash(exc)
                raise

        async def highwaters(self, *partitions: TP) -> Any:
            ends = await super().highwaters(*partitions)
            if tansu:
                return await log_ends(shell.settings.bootstrap, ends)
            return ends

        async def _commit(self, offsets: Any) -> bool:
            # a shard's owner commits its partitions; a standby's offsets are stale
            clamped = {}
            for tp, off in offsets.items():
                sh = shell.shard_of_topic.get(tp.topic)
                durable = sh.durable_next.get((tp.topic, tp.partition)) \
                    if sh is not None and sh.active else None
                if durable is not None:
                    clamped[tp] = min(off, durable)
            if not clamped:
                return True
            return bool(await super()._commit(clamped))

    return DurableConsumer


def make_app(settings: Settings, catalog: Catalog, tansu: bool = False
             ) -> tuple[faust.App, KpiShell]:
    if settings.broker is None:
        raise SettingsError("the worker needs --broker or KPI_BROKER (kafka://host:port); "
                            "`kpi-engine demo` runs one on an embedded broker")
    traffic: dict[str, float] = {}  # the shell measures it, the assignor weighs shards by it
    app = faust.App(
        settings.group_id,
        broker=settings.broker,
        store="memory://",
        datadir=settings.data_dir or tempfile.mkdtemp(prefix="kpi-engine-"),
        # Tansu holds group joins for session_timeout / 2: keep it short (ENGINEERING.md)
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        web_host=settings.web_host,
        web_port=settings.web_port,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        PartitionAssignor=shard_assignor(shard_topics(settings, catalog), traffic,
                                         state_topic(settings), state_partitions(catalog)),
        producer_acks=1,
        # input may be up to 1 MiB plus overhead and its DLQ copy must fit
        producer_max_request_size=4 * 1024 * 1024,
        consumer_max_fetch_size=4 * 1024 * 1024,
    )
    shell = KpiShell(app, settings, catalog, traffic)
    app.transport.Consumer = durable_consumer(shell, tansu)  # type: ignore[misc]
    source = app.topic(*input_topics(settings), key_type=bytes, value_type=bytes,
                       key_serializer="raw", value_serializer="raw")

    # The agent subscribes the worker to the input topics (assignment, rebalances); the
    # messages themselves reach KpiShell.handle in whole batches from DurableConsumer.
    @app.agent(source, name="kpi-engine-process")
    async def process(stream: Any) -> None:
        async for _ in stream:  # pragma: no cover - DurableConsumer hands nothing over
            pass

    inputs = set(input_topics(settings))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        await shell.on_assigned({(tp.topic, tp.partition) for tp in assigned
                                 if tp.topic in inputs})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        await shell.on_revoked({(tp.topic, tp.partition) for tp in revoked
                                if tp.topic in inputs})

    @app.timer(settings.emit_interval)  # type: ignore[untyped-decorator]
    async def emit() -> None:
        await shell.tick()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        return web.bytes(generate_latest(shell.registry), content_type=ctype)

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        return web.json(shell.health())

    @app.page("/dashboard")
    async def dashboard_view(web: Any, request: Any) -> Any:
        return web.bytes(page(), content_type="text/html")

    @app.page("/dashboard/state")
    async def dashboard_state_view(web: Any, request: Any) -> Any:
        return web.json(shell.dashboard_state())

    @app.page("/kpis")
    async def kpis_view(web: Any, request: Any) -> Any:
        return web.json({"kpis": shell.kpis_json(request.query)})

    return app, shell


def run_worker(settings: Settings) -> int:
    catalog = load_catalog(settings.catalog)
    tune_gc()
    create_topics(settings, catalog)
    tansu = asyncio.run(is_tansu(settings.bootstrap))
    sizes: dict[str, int] = {}
    try:  # weights for the first assignment, should this worker lead it
        sizes = asyncio.run(topic_sizes(settings.bootstrap, input_topics(settings)))
    except KafkaError as exc:
        log.warning("could not read the input topics' sizes: %s", exc)
    # the state loads when this worker owns shards
    app, shell = make_app(settings, catalog, tansu)
    shell.weigh(sizes)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
    return 0
