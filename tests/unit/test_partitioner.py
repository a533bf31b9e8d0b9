"""The compiled partitioner puts every key where Kafka's clients do."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from streams.partitioner import kafka_partitioner, murmur2

# org.apache.kafka.common.utils.UtilsTest.testMurmur2 (the Java client's own vectors)
JAVA = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_gives_the_java_clients_values() -> None:
    for key, signed in JAVA.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key


@given(st.binary(max_size=200))
def test_murmur2_equals_aiokafkas_for_any_key(key: bytes) -> None:
    assert murmur2(key) == aiokafka_murmur2(key)


def test_a_key_goes_to_the_partition_aiokafka_chooses() -> None:
    rng = random.Random(7)
    default = DefaultPartitioner()
    keys = [f"email_open_rate|campaign=c{rng.randrange(999)}|{rng.randrange(10**6)}".encode()
            for _ in range(2_000)]
    for n in (1, 3, 12, 20):
        parts = list(range(n))
        for key in keys:
            assert kafka_partitioner(key, parts, parts) == default(key, parts, parts)


def test_a_record_without_key_goes_to_an_available_partition() -> None:
    chosen = {kafka_partitioner(None, [0, 1, 2, 3], [1, 3]) for _ in range(200)}
    assert chosen == {1, 3}
    assert kafka_partitioner(None, [0, 1, 2], []) in {0, 1, 2}
