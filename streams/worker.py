"""A worker process: the shards it may own, and what they share (producer, state table,
exporter, dashboard, health). Independent of how Faust calls it: the Faust adapter
(streams/faust_app.py) hands it fetched batches, rebalances and ticks.

Workers of one group share the shards (streams/assignor.py): a shard's input partitions and
its state go to one worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import groupby
from operator import attrgetter
from typing import Any, Final

from metrics.catalog import Catalog
from metrics.constants import NEVER
from metrics.engine import KpiEngine
from metrics.events import ACCOUNTS
from streams.cycles import Cycles
from streams.dashboard import History, RateMeter, catalog_meta
from streams.dedup_disk import set_cache_mb
from streams.errors import BrokerError
from streams.exporter import Exposition, ShellStats, make_registry
from streams.feed import feed_of
from streams.gaps import BROKER_ERRORS
from streams.health import NO_SHARD_ACTIVE, SUMMED, BrokerWatch
from streams.heap import HeapTrimmer
from streams.kafka_client import client_kwargs
from streams.settings import Settings, local_state_dir
from streams.shard import Shard
from streams.shard_ports import Outputs, ShardIO, StateStore
from streams.topics import (
    ensure_all_topics,
    family_topic,
    input_topics,
    shard_topics,
    topic_sizes,
)

log = logging.getLogger("kpi_engine.worker")


TRAFFIC_EVERY_S: Final = 30.0

#: seconds between attempts to activate a shard whose activation failed (the broker away)
RETRY_ACTIVATION_S: Final = 2.0
#: the fewest seconds between two log lines of emits the broker cut short
TICK_ERROR_EVERY_S: Final = 30.0
_TOPIC: Final = attrgetter("topic")


class KpiShell:
    """State and I/O of one worker process, independent of how Faust calls it: the shards
    it may own, and what they share (producer, topics, exporter, dashboard)."""

    def __init__(self, settings: Settings, catalog: Catalog, io: ShardIO, state: StateStore,
                 traffic: dict[str, float] | None = None):
        self.io = io
        self.state = state
        self.settings = settings
        self.catalog = catalog
        self.topic_windows = settings.topic("kpi-windows")
        self.topic_updates = settings.topic("kpi-updates")
        self.topic_dlq = settings.topic("kpi-dlq")
        self.topic_late = settings.topic("kpi-late")
        self.history = History()
        self.event_rate = RateMeter()
        self.heap = HeapTrimmer()  # freed memory back to the OS once a backlog is through
        self.cycles = Cycles()  # reference cycles freed on a timer (streams/cycles.py)
        self.catalog_meta = catalog_meta(catalog)
        self.registry, self.emit_latency = make_registry(catalog, self.owned_parts,
                                                         settings.topic)
        self.exposition = Exposition(self.registry, settings.emit_interval)
        out = Outputs(self.topic_windows, self.topic_updates, self.topic_dlq, self.topic_late,
                      self.history, self.emit_latency.observe, settings.topic("kpi-alerts"))
        shard_of = shard_topics(settings, catalog)
        self.state_dir = local_state_dir(settings)
        set_cache_mb(settings.state_cache_mb)  # the stores the shards open share it
        self.shards = {name: Shard(name, catalog.restrict(fams),
                                   {t for t, n in shard_of.items() if n == name}, settings, io,
                                   state, out, self.state_dir, feed_of(settings, catalog, fams))
                       for name, fams in catalog.shards().items()}
        self.shard_of_topic = {t: self.shards[n] for t, n in shard_of.items()}
        self._assigned_at = time.monotonic()
        self.first_event_at: float | None = None  # Unix time
        self.last_batch_done_at: float | None = None
        #: shard -> messages in its topics' logs, what the assignor balances by when this
        #: worker leads a rebalance (streams/assignor.py, which holds the same dict);
        #: refreshed every TRAFFIC_EVERY_S
        self.traffic: dict[str, float] = {} if traffic is None else traffic
        self._traffic_at = -TRAFFIC_EVERY_S
        self._tick_failed_at = -TICK_ERROR_EVERY_S
        self._traffic_task: asyncio.Future[None] | None = None
        self.broker = BrokerWatch(settings.bootstrap) if settings.broker else None
        #: owned shards whose activation failed, with why; retried from ``tick``
        self.not_activated: dict[str, str] = {}
        self._retry_at = 0.0
        #: one activation of a shard at a time: each restores it from what it read
        self._activating = {name: asyncio.Lock() for name in self.shards}
        self._waiting: set[tuple[str, int]] = set()  # as the consumer last asked
        self._stage_awaits: list[Any] = []  # as last logged

    async def refresh_traffic(self) -> None:
        try:
            sizes = await topic_sizes(self.settings.bootstrap, input_topics(self.settings),
                                      client_kwargs(self.settings))
        except BROKER_ERRORS as exc:  # a weight, not a must: keep the last one
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
        live = self.io.assignment()
        by_shard = self._by_shard(live)
        # a recovery that ends as the next rebalance revokes its assignment starts nothing
        owned = names & {sh.name for sh in by_shard}
        if any(not self.shards[n].active for n in owned):
            await self._ensure_topics()
        self.not_activated = {n: e for n, e in self.not_activated.items() if n in owned}
        for name, sh in self.shards.items():
            if name in owned and not sh.active:
                await self._activate(sh)
            elif name not in owned and sh.active:
                await sh.deactivate()
        for sh, mine in by_shard.items():
            sh.sync_sources(mine)
        log.warning("owning %s", ", ".join(sh.name for sh in self.active) or "nothing")

    async def _ensure_topics(self) -> None:
        """Before a shard claims its state: a broker that came back empty has no topics, and
        the first write would create the state's changelog with the broker's default
        partition count, not one per shard."""
        if not self.settings.broker:  # no broker to ask (unit tests)
            return
        try:
            await ensure_all_topics(self.settings, self.catalog)
        except BrokerError as exc:  # the activation says what fails next
            log.error("topics not checked: %s", exc)

    async def _activate(self, sh: Shard) -> None:
        """Activate an owned shard. The broker refusing the claim leaves it for ``tick`` to
        retry, and /health says so meanwhile. Anything else propagates, and the caller
        stops the worker: state it cannot read (StateError) would count twice if it went
        on without it, and a bug must not leave a live worker that counts nothing."""
        async with self._activating[sh.name]:
            if not sh.active:  # else the emit timer's retry and a recovery both came
                await self._activate_now(sh)

    async def _activate_now(self, sh: Shard) -> None:
        try:
            await sh.activate(self.state.records(sh.name), self._assigned_at)
        except BROKER_ERRORS as exc:
            self.not_activated[sh.name] = f"{type(exc).__name__}: {exc}"
            self._retry_at = time.monotonic() + RETRY_ACTIVATION_S
            log.error("%s: could not activate (%s); retrying in %.0f s", sh.name,
                      self.not_activated[sh.name], RETRY_ACTIVATION_S)
        else:
            self.not_activated.pop(sh.name, None)

    async def _retry_activations(self) -> None:
        if not self.not_activated or time.monotonic() < self._retry_at:
            return
        by_shard = self._by_shard(self.io.assignment())
        for name in list(self.not_activated):
            sh = self.shards[name]
            if sh not in by_shard or sh.active:
                del self.not_activated[name]
                continue
            await self._activate(sh)
            if sh.active:
                sh.sync_sources(by_shard[sh])
                log.warning("%s: activated on retry", name)

    async def on_revoked(self, tps: set[tuple[str, int]]) -> None:
        for sh, mine in self._by_shard(tps).items():
            await sh.on_revoked(mine)

    async def handle(self, batch: list[Any]) -> None:
        t0 = time.time()
        parts: dict[Shard, list[Any]] = {}
        shard_of = self.shard_of_topic
        for topic, run in groupby(batch, _TOPIC):  # a partition's records come together
            sh = shard_of.get(topic)
            if sh is not None:
                part = parts.get(sh)
                if part is None:
                    parts[sh] = list(run)
                else:
                    part += run
        for sh, part in parts.items():
            await sh.handle(part)
        if self.first_event_at is None:
            self.first_event_at = t0
        self.last_batch_done_at = time.time()

    def waiting(self) -> set[tuple[str, int]]:
        """Input partitions the consumer leaves unread for now (``Shard.waiting``)."""
        now: set[tuple[str, int]] = set().union(*(sh.waiting() for sh in self.shards.values()))
        if now - self._waiting:  # their lag grows meanwhile: say why
            log.warning("%d input partitions wait in the broker until each of their families' "
                        "partitions has spoken or gone idle (%s)", len(now),
                        ", ".join(sorted(_names(list(now)))))
        self._waiting = now
        return now

    async def tick(self) -> None:
        await self._retry_activations()
        cut_off = self.broker is not None and self.broker.problem() is not None
        for sh in self.shards.values():
            if cut_off and sh.active:
                # what reaches the broker meanwhile comes once it is back: a wall-clock
                # idle advance now would make it late (clock.Watermark.resume)
                sh.resume_wall()
            try:
                await sh.tick()
            except BROKER_ERRORS as exc:
                # a send the broker refused (away, or back empty and not ready): the emit
                # timer must not stop the worker; what was not sent goes with the next tick
                now = time.monotonic()
                if now - self._tick_failed_at >= TICK_ERROR_EVERY_S:
                    self._tick_failed_at = now
                    log.warning("%s: emit cut short (%s: %s)", sh.name,
                                type(exc).__name__, exc)
        if self.settings.broker and time.monotonic() - self._traffic_at >= TRAFFIC_EVERY_S and (
                self._traffic_task is None or self._traffic_task.done()):  # (none: unit tests)
            # beside the emits, not in their way: reading sizes can wait on the cluster
            self._traffic_task = asyncio.ensure_future(self.refresh_traffic())
        self._log_stage_holding()
        now = time.monotonic()
        consumed = sum(sum(sh.engine.events_total.values()) for sh in self.active)
        self.event_rate.sample(now, consumed)
        # a backlog is through once what it closed is sent (with the commits after it)
        sent = not any(sh.pending_finals() for sh in self.active)
        self.heap.after(consumed, any(sh.catching_up() for sh in self.active), now, sent)

    def _log_stage_holding(self) -> None:
        """The accounts stage holds its copies in memory while an input partition feeding it
        has not delivered (it cannot leave them in the broker as the families do: they are
        other shards' output). Past ``Shard.max_held`` held, say which partitions it waits for."""
        for sh in self.active:
            if sh.feed_in is None:
                continue
            awaits = stage_awaits(sh) if sh.engine.held_total > sh.max_held else []
            if set(awaits) - set(self._stage_awaits):  # once, not as each one delivers
                log.warning("the accounts stage holds %d copies in memory until these input "
                            "partitions deliver or go idle (idle_timeout): %s",
                            sh.engine.held_total, ", ".join(_names(awaits)))
            self._stage_awaits = awaits

    def problems(self) -> list[str]:
        """Why this worker is not doing its job, if it is not: /health is 503 while any."""
        out = []
        broker = self.broker.problem() if self.broker is not None else None
        if broker is not None:
            out.append(broker)
        out += [f"shard {n} not activated: {why}" for n, why in sorted(self.not_activated.items())]
        if not self.active:
            out.append(f"{NO_SHARD_ACTIVE}: this worker counts nothing (waiting for an "
                       "assignment, or the group has more workers than shards)")
        return out

    def health(self) -> dict[str, Any]:
        """The shards this worker owns, summed; ``shards`` says which it owns, ``problems``
        why it is ``unavailable`` (HTTP 503) when it is."""
        problems = self.problems()
        out: dict[str, Any] = {"status": "unavailable" if problems else "ok",
                               "problems": problems,
                               "role": "active" if self.active else "standby",
                               "shards": {n: "active" if sh.active else "standby"
                                          for n, sh in self.shards.items()}}
        out.update(dict.fromkeys(SUMMED, 0))
        late_by_family: dict[str, int] = {}
        state: dict[str, int] = {}
        epochs: dict[str, list[int]] = {}
        loaded: dict[str, dict[str, Any]] = {}
        durable = True
        for sh in self.active:
            h = sh.health()
            epochs[sh.name] = h["state_epochs"]
            loaded[sh.name] = h["ids_loaded"]
            if sh.feed_in is not None:  # copies of counted input: not counted twice
                out["accounts_stage"] = {k: h[k] for k in SUMMED} | {
                    "watermark": sh.engine.watermark(ACCOUNTS),  # epoch ms
                    "awaiting": _names(stage_awaits(sh))}
            else:
                for k in SUMMED:
                    out[k] += h[k]
                late_by_family.update(h["late_by_family"])
            for k, v in h["state"].items():
                state[k] = state.get(k, 0) + v
            durable = durable and h["durable"]
        out |= {"late_by_family": late_by_family, "state": state, "durable": durable,
                "state_epochs": epochs,
                # input partitions left in the broker while their families hold events
                # (streams/shard.py: MAX_HELD)
                "waiting": sorted(_names(list(self._waiting))),
                # per shard, how its takeover loaded the event ids: from the local store
                # (and how many from the changelog), or rebuilt from the changelog
                "ids_loaded": loaded,
                "cycles": self.cycles.health(),
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
            family_topic(self.settings, f): round(wall_s - wm.value / 1000, 1)
            for sh in self.active for f, wm in sh.engine.watermarks.items()
            if wm.value != NEVER}
        return {"catalog": self.catalog_meta,
                "current": [r for r in self.current() if not r["dims"]],
                "history": self.history.as_json(),
                "health": health}

    def accounts_json(self, query: Any) -> list[dict[str, Any]]:
        """Each account's latest scores (as sent on `kpi-accounts`), when this worker owns
        the accounts stage; ``?rfm_segment=`` filters."""
        segment = query.get("rfm_segment")
        return sorted((r for sh in self.active if sh.feed_in is not None
                       for r in sh.feed_in.scores.latest.values()
                       if segment is None or r["rfm_segment"] == segment),
                      key=lambda r: r["account_id"])

    def kpis_json(self, query: Any) -> list[dict[str, Any]]:
        """Current values, filtered by ?window=&kpi= and any dimension (?channel=email)."""
        window = query.get("window")
        kpi = query.get("kpi")
        dims = {k: v for k, v in query.items() if k not in ("window", "kpi")}
        return [r for r in self.current()
                if (window is None or r["window"] == window)
                and (kpi is None or r["kpi"] == kpi)
                and all(r["dims"].get(k) == v for k, v in dims.items())]


def stage_awaits(sh: Shard) -> list[Any]:
    """The input partitions the accounts stage waits for before its event time is known."""
    return sorted(sh.engine.watermarks[ACCOUNTS].awaited(), key=str)


def _names(sources: list[Any]) -> list[str]:
    """Watermark sources as /health and the log name them: ``topic/partition``."""
    return [f"{s[0]}/{s[1]}" if isinstance(s, tuple) else str(s) for s in sources]
