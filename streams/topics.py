"""Topic names and their creation. Every topic is created, with its partition count, before
anything produces: Tansu would otherwise auto-create it with 4 partitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from metrics.catalog import Catalog, load_catalog
from metrics.errors import KpiEngineError
from metrics.events import ACCOUNTS, TOPIC_FAMILIES
from streams.errors import BrokerError, report
from streams.kafka_client import client_kwargs, topic_configs
from streams.settings import Settings, load_settings

#: the accounts stage's internal topic (streams/feed.py): copies of other families' events
ACCOUNTS_TOPIC: Final = "kpi-account-events"
#: every topic a worker consumes
INPUT_TOPICS: Final = (*TOPIC_FAMILIES, ACCOUNTS_TOPIC)
#: topic (without prefix) -> the family it carries
_FAMILY_OF: Final = {**TOPIC_FAMILIES, ACCOUNTS_TOPIC: ACCOUNTS}
#: family -> the topic (without prefix) its events are read from
FAMILY_TOPICS: Final = {fam: topic for topic, fam in _FAMILY_OF.items()}
OUTPUT_TOPICS: Final = ("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", "kpi-alerts")
#: per-account scores (metrics/account_scores.py): compacted, the latest per account wins
SCORES_TOPIC: Final = "kpi-accounts"
MQL_TOPIC: Final = "kpi-mql"  # a record per lead becoming an MQL, key lead_id


def input_topics(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in INPUT_TOPICS]


def all_topics(settings: Settings) -> list[str]:
    return [settings.topic(t) for t in INPUT_TOPICS + OUTPUT_TOPICS]


def family_of(settings: Settings, topic: str) -> str | None:
    return _FAMILY_OF.get(topic.removeprefix(settings.topic_prefix))


def family_topic(settings: Settings, family: str) -> str:
    """The topic a family's events are read from."""
    return settings.topic(FAMILY_TOPICS[family])


def state_topic(settings: Settings) -> str:
    """The changelog of the group's state table (streams/faust_app.py: StateTable): one partition
    per shard, named the way Faust names a table's changelog."""
    return settings.topic(f"{settings.group_id}-kpi-state-changelog")


def stage_partner(catalog: Catalog) -> str | None:
    """The shard the accounts stage lives with (crm's): one worker owns both, and they share
    a partition of the state table's changelog. A catalog that gains the stage keeps every
    shard's partition, and so its state, and the changelog its partition count (a broker
    that came back empty and auto-creates it on a retried write gets it right too)."""
    shards = catalog.shards()
    if ACCOUNTS not in shards:
        return None
    others = sorted(n for n in shards if n != ACCOUNTS)
    return next((n for n in others if "crm" in shards[n]), others[0])


def state_partitions(catalog: Catalog) -> dict[str, int]:
    """Shard -> its partition of the state table's changelog (streams/faust_app.py: StateTable).
    The accounts stage shares its partner's (``stage_partner``)."""
    partner = stage_partner(catalog)
    out = {name: i for i, name in enumerate(sorted(n for n in catalog.shards()
                                                   if n != ACCOUNTS))}
    if partner is not None:
        out[ACCOUNTS] = out[partner]
    return out


def placement_topics(settings: Settings, catalog: Catalog) -> dict[str, str]:
    """Input topic -> the shard whose owner reads it: ``shard_topics``, the stage's topic
    going with its partner (what the assignor places)."""
    partner = stage_partner(catalog)
    return {t: partner if n == ACCOUNTS and partner else n
            for t, n in shard_topics(settings, catalog).items()}


def shard_topics(settings: Settings, catalog: Catalog) -> dict[str, str]:
    """Input topic -> the catalog shard (``Catalog.shards``) its family belongs to."""
    return {family_topic(settings, f): name
            for name, fams in catalog.shards().items() for f in fams}


async def ensure_topics(bootstrap: str, names: list[str], partitions: int,
                        timeout_s: float = 20.0, config: dict[str, str] | None = None,
                        client: Mapping[str, Any] | None = None, replication: int = 1,
                        grow: bool = False) -> None:
    """Create missing topics (``replication`` copies, ``config``); fail clearly when an
    existing one has another partition count than the inputs expect, or with ``grow``
    fewer: then add the missing ones. ``client``: the security settings of the connection
    (streams/kafka_client.py)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000,
                                **(client or {}))
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await admin.start()
            break
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
            await asyncio.sleep(0.5)
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in names if n not in existing]
        present = [n for n in names if n in existing]
        for meta in await admin.describe_topics(present) if present else []:
            have = len(meta.get("partitions") or ())
            if grow and have < partitions:
                try:
                    await admin.create_partitions({meta["topic"]: NewPartitions(partitions)})
                    continue
                except KafkaError as exc:  # the embedded broker can't: say what to do
                    raise BrokerError(
                        f"topic {meta['topic']} has {have} partitions, this catalog needs "
                        f"{partitions}, and the broker did not add them ({exc}): add them, "
                        "or use another --group-id") from exc
            if have != partitions:
                raise BrokerError(
                    f"topic {meta['topic']} has {have} partitions, this worker expects "
                    f"{partitions}: recreate it, or use another --topic-prefix / --group-id")
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(
                    [NewTopic(n, num_partitions=partitions, replication_factor=replication,
                              topic_configs=config or {}) for n in missing])
    finally:
        await admin.close()


async def ensure_io_topics(settings: Settings, bootstrap: str | None = None) -> None:
    """The input and output topics, as the settings say to create them."""
    await ensure_topics(bootstrap or settings.bootstrap, all_topics(settings),
                        settings.partitions, config=topic_configs(settings),
                        client=client_kwargs(settings), replication=settings.replication_factor)


async def ensure_all_topics(settings: Settings, catalog: Catalog,
                            bootstrap: str | None = None) -> None:
    """Every topic the worker uses, with its partition count."""
    target = bootstrap or settings.bootstrap
    await ensure_io_topics(settings, target)
    # the state table's changelog: one partition per shard (streams/faust_app.py: StateTable),
    # compacted where the cluster can (a snapshot's keys are fixed: streams/state.py)
    await ensure_topics(target, [state_topic(settings)],
                        len(set(state_partitions(catalog).values())),
                        config={"cleanup.policy": "compact", **topic_configs(settings)},
                        client=client_kwargs(settings),
                        replication=settings.replication_factor, grow=True)
    await ensure_topics(target, [settings.topic(SCORES_TOPIC), settings.topic(MQL_TOPIC)],
                        settings.partitions,
                        config={"cleanup.policy": "compact", **topic_configs(settings)},
                        client=client_kwargs(settings), replication=settings.replication_factor)


def create_topics(settings: Settings, catalog: Catalog, bootstrap: str | None = None) -> None:
    asyncio.run(ensure_all_topics(settings, catalog, bootstrap))


async def topic_sizes(bootstrap: str, topics: list[str],
                      client: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Messages in each topic's log (end offsets summed over its partitions): the traffic
    the assignor weighs shards by. The embedded broker's end offset can be short by its
    newest batch (ENGINEERING.md): close enough for a weight."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                request_timeout_ms=10_000, **(client or {}))
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic, for partitions_for_topic
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    out = dict.fromkeys(topics, 0)
    for tp, offset in ends.items():
        out[tp.topic] += offset
    return out


def main() -> int:
    """``python -m streams.topics``: the topics of the worker whose settings this process's
    KPI_ environment holds made, once, by the parent of its processes (streams/processes.py,
    which keeps Kafka's client and the catalog out of its own memory). Errors as the CLI
    reports them (``report``)."""
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level.upper(), format="[%(asctime)s] "
                            "[%(process)d] [%(levelname)s] %(message)s")
        create_topics(settings, load_catalog(settings.catalog))
    except KpiEngineError as exc:
        return report(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
