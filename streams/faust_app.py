"""The Faust seam: every use of Faust's API, private parts included, is in this module,
streams/faust_table.py (the state table) and streams/faust_assignor.py (the assignor).

faust-streaming is pinned to the tested versions (pyproject.toml). Each part is a seam Faust offers:

- ``durable_consumer``: the consumer class. Fetched input batches go straight to the shell
  (streams/worker.py), whole; offsets are committed only as far as a durable snapshot covers.
- ``StateTable`` (streams/faust_table.py, the seam's other module): a Faust table holding
  the shards' snapshots, recovered by Faust from its changelog (one partition per shard)
  and kept on local disk, so that a restart reads the changelog's tail only.
- ``shard_assignor`` (streams/faust_assignor.py): the partition assignor, handing whole
  shards (streams/assignor.py).
- ``FaustIO``: the producer and consumer as a shard uses them (streams/shard.py: ShardIO).
- ``make_app`` / ``run_worker``: the app, its agent, timer, signals and web pages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

import faust
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from aiokafka.protocol.commit import OffsetCommitRequest
from faust.auth import SASLCredentials, SSLCredentials
from faust.exceptions import NotReady, ProducerSendError
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustKafkaConsumer
from faust.types import TP
from prometheus_client import CONTENT_TYPE_LATEST

from metrics.catalog import Catalog, load_catalog
from metrics.errors import StateError
from streams.broker import refuse_busy_web_port
from streams.cycles import EVERY_S as CYCLES_EVERY_S
from streams.cycles import collect_on_clock
from streams.dashboard import page
from streams.errors import SettingsError
from streams.faust_assignor import shard_assignor
from streams.faust_table import PromptTableManager, StateTable
from streams.health import tame_client_logs
from streams.heap import pin_mmap_threshold
from streams.kafka_client import client_kwargs, first_offset, ssl_context
from streams.membership import MemberMemory
from streams.partitioner import kafka_partitioner
from streams.settings import Settings, local_state_dir, malloc_tuned, scratch_dir
from streams.shard_ports import InputRecord
from streams.table_copy import LocalCopy, log_matches
from streams.tansu import is_tansu, log_ends
from streams.topics import (
    create_topics,
    input_topics,
    placement_topics,
    state_partitions,
    state_topic,
    topic_sizes,
)
from streams.worker import KpiShell

log = logging.getLogger("kpi_engine.worker")

#: where a partition is read from when the group has no offset for it, or its offset is
#: gone (the broker lost its data, or retention passed it)
AUTO_OFFSET_RESET: Final = "earliest"
#: seconds between probes of the broker for /health
PROBE_EVERY_S: Final = 2.0
#: the most messages one fetch hands the shell
MAX_POLL_RECORDS: Final = 10_000
#: how long the broker may hold an empty fetch: the client's default (Faust fixes 1.5 s)
FETCH_MAX_WAIT_MS: Final = 500


class FaustIO:
    """``ShardIO`` over a Faust app's producer and consumer."""

    def __init__(self, app: faust.App, settings: Settings):
        self.app = app
        self.settings = settings

    async def send(self, topic: str, key: bytes | None, value: bytes,
                   timestamp: float | None = None) -> None:
        await self.app.producer.send(topic, key, value, None, timestamp, None)

    async def flush(self) -> None:
        await self.app.producer.flush()

    async def route(self, topic: str, msg: Any, reason: str) -> None:
        """Copy an input message, with its coordinates, to the DLQ or the late topic. A copy
        the cluster refuses as too large goes out truncated, saying so: bad input never
        stops the worker."""
        headers = _source_headers(msg, reason)
        send = self.app.producer.send
        try:
            await send(topic, msg.key, msg.value, None, None, headers)
        except ProducerSendError as exc:
            if not isinstance(exc.__cause__, MessageSizeTooLargeError):
                raise
            size = len(msg.value or b"")
            headers.append(("truncated_from", str(size).encode()))
            await send(topic, msg.key, (msg.value or b"")[:4096], None, None, headers)

    async def commit(self, offsets: dict[tuple[str, int], int]) -> bool:
        # the input consumed bypasses Faust's acks (see durable_consumer): commit directly
        consumer: Any = self.app.consumer
        return bool(await consumer._commit({TP(t, p): off for (t, p), off in offsets.items()}))

    async def seek(self, tp: tuple[str, int], offset: int) -> None:
        # on the consumer's own thread: Faust's seek() runs aiokafka's from this one, and it
        # dropped a partition's fetched records while that thread was draining them (a
        # KeyError in aiokafka's fetched_records crashed the worker; aiokafka is not
        # thread-safe)
        consumer: Any = self.app.consumer
        thread = consumer._thread
        await thread.call_thread(thread.seek, TP(*tp), offset)
        consumer._read_offset[TP(*tp)] = offset or None  # as Faust's seek(): read again

    def assignment(self) -> set[tuple[str, int]]:
        return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}

    def highwater(self, tp: tuple[str, int]) -> int | None:
        try:
            return self.app.consumer.highwater(TP(*tp))
        except Exception:  # not known yet after a rebalance
            return None

    async def position(self, tp: tuple[str, int]) -> int | None:
        try:
            # aiokafka waits for a partition's offset reset: never hold the emit on it
            return await asyncio.wait_for(self.app.consumer.position(TP(*tp)), 1.0)
        except Exception:  # not assigned any more, no position yet, or the broker away
            return None

    async def log_start(self, tp: tuple[str, int]) -> int:
        starts = await self.app.consumer.earliest_offsets(TP(*tp))
        return int(starts.get(TP(*tp)) or 0)

    async def first_offset(self, tp: tuple[str, int], start: int) -> int | None:
        return await first_offset(self.settings, tp, start)

    def membership_lost(self) -> bool:
        # aiokafka resets the generation when the coordinator no longer knows the member
        return bool(self._coordinator().generation == OffsetCommitRequest.DEFAULT_GENERATION_ID)

    def member_id(self) -> str:
        return str(self._coordinator().member_id)

    def _coordinator(self) -> Any:
        consumer: Any = self.app.consumer
        return consumer._thread._ensure_consumer()._coordinator


def _source_headers(msg: Any, error: str) -> list[tuple[str, bytes]]:
    return [("error", error.encode()), ("source_topic", msg.topic.encode()),
            ("source_partition", str(msg.partition).encode()),
            ("source_offset", str(msg.offset).encode())]


def durable_consumer(shell: KpiShell, tansu: bool = False,
                     member: MemberMemory | None = None) -> type:
    """Faust's aiokafka consumer with these changes, all through the consumer-class seam
    Faust offers:

    - fetched input batches go straight to the shell, whole: no per-message stream, task or
      ack (ENGINEERING.md §2 measured ~100 µs per event of that machinery); the state
      table's changelog messages take Faust's own path to its recovery;
    - input offsets are committed only as far as a durable snapshot covers them: a crash
      then re-reads what the restored state lacks, never less;
    - on the embedded broker only (``tansu``), a changelog's end comes from a fetch, not
      ListOffsets (streams/tansu.py), so recovery reads the newest snapshot whole;
    - with a ``member`` memory, the first join asks for the member id of the previous
      process (streams/membership.py);
    - an empty fetch is held ``FETCH_MAX_WAIT_MS``: with one fetch in flight per broker,
      input partitions resumed after a restore waited for Faust's 1.5 s one to return;
    - the partitions whose next records would only be held (``KpiShell.waiting``) are left
      out of the fetch, their records in the broker.
    """
    inputs = set(shell.shard_of_topic)

    class KpiConsumerThread(AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its start()
            return consumer

        async def on_start(self) -> None:
            await super().on_start()  # the coordinator exists now; it joins once subscribed
            previous = member.recall() if member is not None else None
            if previous is not None:
                self._consumer._coordinator.member_id = previous  # type: ignore[union-attr]

    class DurableConsumer(FaustKafkaConsumer):
        def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
            return KpiConsumerThread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:
            consumer_stopped = self._stopped.is_set
            fetcher_stopped = fetcher._stopped.is_set
            try:
                while not (consumer_stopped() or fetcher_stopped()):
                    batch = await self._fetch_batch(1.0)
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

        async def _fetch_batch(self, timeout: float) -> list[InputRecord]:
            """Faust's ``getmany`` a partition at a time, and light input records rather
            than Faust's messages (a quarter of the worker's Kafka path was that
            per-message bookkeeping). Its checks are kept where their answer can change:
            partitions still active, once per partition; flow and generation before each
            record of the state table's changelog, whose records still take Faust's own
            path to its recovery, with an await each (input records take none)."""
            records, active = await self._wait_next_records(timeout)
            if records is None or self.should_stop:
                return []
            if not self.flow_active:  # as Faust's getmany: back to the committed offsets
                try:
                    await self.perform_seek()
                except Exception as exc:  # a partition revoked meanwhile: Faust's warning too
                    log.warning("seek while the flow is suspended failed: %r", exc)
                return []
            app = self.app
            generation = app.consumer_generation_id
            buffered = self._buffered_partitions
            batch: list[InputRecord] = []
            read_offset = self._read_offset
            for tp, recs in records.items():
                if not recs or not (active is None or tp in active or tp in buffered):
                    continue
                if tp.topic in inputs:
                    topic, part = tp.topic, tp.partition
                    batch += [InputRecord(topic, part, r.offset, r.timestamp, r.key, r.value)
                              for r in recs]
                    read_offset[tp] = recs[-1].offset
                    continue
                for r in recs:  # the state changelog, while Faust recovers it
                    if not self.flow_active or app.consumer_generation_id != generation:
                        return batch  # a rebalance began (during a recovery callback)
                    await self.callback(self._to_message(tp, r))
                    read_offset[tp] = r.offset
            return batch

        async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
            # partitions whose next records would only be held are left in the broker
            wait = shell.waiting()
            if wait and active_partitions:
                active_partitions = {tp for tp in active_partitions if tp not in wait}
                if not active_partitions:  # aiokafka reads none as all of them
                    await asyncio.sleep(min(timeout, 0.1))
                    return {}
            return await super()._getmany(active_partitions, timeout)

        async def highwaters(self, *partitions: TP) -> Any:
            ends = await super().highwaters(*partitions)
            if tansu:
                return await log_ends(shell.settings.bootstrap, ends,
                                      client=client_kwargs(shell.settings))
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


def faust_credentials(s: Settings) -> Any:
    """Faust's ``broker_credentials`` for these settings (None for plaintext)."""
    ctx = ssl_context(s)
    if s.security_protocol.startswith("SASL_"):
        return SASLCredentials(username=s.sasl_username, password=s.sasl_password,
                               mechanism=s.sasl_mechanism, ssl_context=ctx)
    if ctx is not None:
        return SSLCredentials(ctx)
    return None


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
        datadir=settings.data_dir or str(scratch_dir("kpi-engine-")),
        # Tansu holds group joins for session_timeout / 2: keep it short (ENGINEERING.md)
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        web_host=settings.web_host,
        web_bind=settings.web_host,  # Faust binds 0.0.0.0 unless told: the contract's host
        web_port=settings.web_port,
        broker_credentials=faust_credentials(settings),
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset=AUTO_OFFSET_RESET,
        PartitionAssignor=shard_assignor(placement_topics(settings, catalog), traffic,
                                         state_topic(settings), state_partitions(catalog)),
        producer_acks=-1,  # all in-sync replicas: an output record survives its leader
        # input may be up to 1 MiB plus overhead and its DLQ copy must fit
        producer_max_request_size=4 * 1024 * 1024,
        # one batch in flight per partition: a shard's state partition takes a commit's
        # records 512 KiB at a time, not 16 KiB (aiokafka's default)
        producer_max_batch_size=512 * 1024,
        # murmur2 as Kafka's clients compute it, compiled (aiokafka's is pure Python)
        producer_partitioner=kafka_partitioner,
        # a backlog's batches stay small, parsed and applied 10k at a time (Faust's default,
        # no limit, handed over up to 50 MB of fetched records at once; 2,000 cost 15 % of
        # stream_bench's throughput in per-batch work)
        broker_max_poll_records=MAX_POLL_RECORDS,
        consumer_max_fetch_size=4 * 1024 * 1024,
        # static membership when named: a kill -9'd worker restarted under the same id is
        # assigned again at once, not after its old session times out (ENGINEERING.md §2)
        consumer_group_instance_id=settings.instance_id or None,
        TableManager=PromptTableManager,  # no fixed second's wait at every start
    )
    shells: list[KpiShell] = []  # the table's recovery callback needs the shell, made next

    async def on_recovered(names: set[str]) -> None:
        # runs in a task of Faust's recovery, whose errors nobody reads: a shard that cannot
        # be restored (unreadable state: StateError) or a bug stops the worker loudly, never
        # leaves it alive and standing by with /health ok
        try:
            await shells[0].on_state_recovered(names)
        except Exception as exc:
            log.critical("could not take over the assigned shards; stopping the worker: %s",
                         exc, exc_info=not isinstance(exc, StateError))
            await app.crash(exc)

    def on_skip(shard: str, key: bytes | None, why: str) -> None:
        shells[0].shards[shard].skip_record(key, why)

    async def check(marks: Mapping[int, tuple[int, int]]) -> set[int]:
        return await log_matches(settings.bootstrap, state_topic(settings), marks,
                                 client_kwargs(settings))

    table = StateTable(app, topic=state_topic(settings), partitions=state_partitions(catalog),
                       on_recovered=on_recovered, on_skip=on_skip, check=check,
                       copy=LocalCopy(local_state_dir(settings) / "state-table"))
    app.tables.add(table)
    io = FaustIO(app, settings)
    shell = KpiShell(settings, catalog, io, table, traffic)
    shells.append(shell)
    # a dynamic member rejoins under its previous id (static members need not)
    member = MemberMemory(local_state_dir(settings) / "member-id") \
        if settings.data_dir and not settings.instance_id else None
    app.transport.Consumer = durable_consumer(shell, tansu, member)  # type: ignore[misc]
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
        if member is not None:
            member.keep(io.member_id())
        await shell.on_assigned({(tp.topic, tp.partition) for tp in assigned
                                 if tp.topic in inputs})

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        await shell.on_revoked({(tp.topic, tp.partition) for tp in revoked
                                if tp.topic in inputs})

    @app.timer(settings.emit_interval)  # type: ignore[untyped-decorator]
    async def emit() -> None:
        try:
            await shell.tick()
        except NotReady:  # a commit under way as the worker stops: its producer is gone
            if not app.should_stop:
                raise

    @app.timer(CYCLES_EVERY_S)  # type: ignore[untyped-decorator]
    async def collect_cycles() -> None:
        shell.cycles.collect()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp wants the charset apart from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        return web.bytes(shell.exposition.text(), content_type=ctype)

    if shell.broker is not None:
        @app.timer(PROBE_EVERY_S)  # type: ignore[untyped-decorator]
        async def probe_broker() -> None:  # beside the emits: a stuck send can't delay it
            await shell.broker.probe()  # type: ignore[union-attr]

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        health = shell.health()
        return web.json(health, status=503 if health["problems"] else 200)

    @app.page("/dashboard")
    async def dashboard_view(web: Any, request: Any) -> Any:
        return web.bytes(page(), content_type="text/html")

    @app.page("/dashboard/state")
    async def dashboard_state_view(web: Any, request: Any) -> Any:
        return web.json(shell.dashboard_state())

    @app.page("/kpis")
    async def kpis_view(web: Any, request: Any) -> Any:
        return web.json({"kpis": shell.kpis_json(request.query)})

    @app.page("/accounts")
    async def accounts_view(web: Any, request: Any) -> Any:
        return web.json({"accounts": shell.accounts_json(request.query)})

    return app, shell


def run_worker(settings: Settings) -> int:
    catalog = load_catalog(settings.catalog)
    refuse_busy_web_port(settings.web_host, settings.web_port)
    if not malloc_tuned():
        pin_mmap_threshold()
    create_topics(settings, catalog)
    tansu = asyncio.run(is_tansu(settings.bootstrap, client_kwargs(settings)))
    sizes: dict[str, int] = {}
    try:  # weights for the first assignment, should this worker lead it
        sizes = asyncio.run(topic_sizes(settings.bootstrap, input_topics(settings),
                                        client_kwargs(settings)))
    except KafkaError as exc:
        log.warning("could not read the input topics' sizes: %s", exc)
    # the state loads when this worker owns shards
    app, shell = make_app(settings, catalog, tansu)
    shell.weigh(sizes)
    tame_client_logs(AUTO_OFFSET_RESET, debug=settings.log_level.lower() == "debug")
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    collect_on_clock()  # what is built so far stays; the timer above frees cycles from now
    worker.execute_from_commandline()
    return 0
