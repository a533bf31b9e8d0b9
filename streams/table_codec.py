"""The bytes of a table on disk (streams/table_disk.py).

Keys, after the table's one-byte prefix: ``d`` + key -> the hour it is filed under
(4 bytes) + its value; ``h`` + hour (4 bytes) + key -> "" (what an hour holds: a commit's
part of it, and expiry). Keys and values are MessagePack, decoded against their types.
"""

from __future__ import annotations

import struct
from typing import Final

_HOUR: Final = struct.Struct(">I")
_BIAS: Final = 1 << 31  # hours stored unsigned, so that they sort as numbers do


def pack_hour(hour: int) -> bytes:
    return _HOUR.pack(hour + _BIAS)


def unpack_hour(raw: bytes) -> int:
    """The hour a ``d`` record starts with."""
    return int(_HOUR.unpack_from(raw)[0]) - _BIAS


def map_header(n: int) -> bytes:
    """msgpack's header of a map of ``n`` pairs (the shortest, as msgspec writes it): an
    hour's part is its keys and values, each already encoded, joined under it."""
    return (bytes([0x80 | n]) if n < 16 else b"\xde" + n.to_bytes(2, "big") if n < 1 << 16
            else b"\xdf" + n.to_bytes(4, "big"))
