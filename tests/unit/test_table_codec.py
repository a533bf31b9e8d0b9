"""The bytes of a table on disk (streams/table_codec.py)."""

from __future__ import annotations

import msgspec
import pytest

from streams.table_codec import map_header, pack_hour, unpack_hour


def test_hours_sort_as_bytes_as_they_do_as_numbers() -> None:
    hours = [-(1 << 31), -500_000, -1, 0, 1, 490_000, (1 << 31) - 1]
    packed = [pack_hour(h) for h in hours]
    assert sorted(packed) == packed and all(len(p) == 4 for p in packed)
    assert [unpack_hour(p + b"value") for p in packed] == hours


@pytest.mark.parametrize("n", [0, 1, 15, 16, 65_535, 65_536])
def test_a_map_header_is_the_one_msgpack_writes(n: int) -> None:
    data = {i: None for i in range(n)}
    body = b"".join(msgspec.msgpack.encode(i) + b"\xc0" for i in range(n))
    assert map_header(n) + body == msgspec.msgpack.encode(data)
