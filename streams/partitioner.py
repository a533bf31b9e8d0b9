"""Kafka's default partitioner, compiled: the partition of a keyed record.

The partition is murmur2 of the key, as the Java client and aiokafka compute it, so every
producer of a keyed output topic puts a key on the same partition: a window's revisions
stay in order on ``kpi-windows``, and ``kpi-accounts`` and ``kpi-mql`` are compacted. (The
state changelog names its partitions itself: streams/faust_table.py.)

aiokafka's murmur2 is pure Python: when a backlog publishes its closed windows, it took
6.7 % of the worker's time (py-spy, 3 days of ``state_bench``). ``murmurhash2`` is the same
function in Rust: same seed, same result.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Final

from murmurhash2 import murmurhash2

#: Kafka's seed (org.apache.kafka.common.utils.Utils.murmur2)
SEED: Final = 0x9747B28C


def murmur2(key: bytes) -> int:
    """Kafka's murmur2 of ``key``, unsigned (aiokafka's ``murmur2``)."""
    return murmurhash2(key, SEED)


def kafka_partitioner(key: bytes | None, all_partitions: Sequence[int],
                      available: Sequence[int]) -> int:
    """aiokafka's ``DefaultPartitioner``: a key's partition, or a random one without."""
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[(murmur2(key) & 0x7FFFFFFF) % len(all_partitions)]
