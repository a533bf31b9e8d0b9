"""Event time from the contract's ``ts``: ISO-8601 with an offset, or epoch milliseconds.

The common producer format, 'YYYY-MM-DDTHH:MM:SS[.mmm]Z', is read without datetime: the
second prefix repeats across events, so its epoch value is cached (checked once).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Final

SECOND_MS: dict[str, int] = {}  # "2026-11-01T00:12:34" -> epoch ms, for the UTC fast path
_MINUTE_MS: dict[str, int] = {}  # "2026-11-01T00:12" -> epoch ms
_SECONDS: Final = {f":{i:02d}": i * 1000 for i in range(60)}
MILLIS: Final = {"Z": 0, **{f".{i:03d}Z": i for i in range(1000)}}
#: entries per cache before it starts over: ~5 hours of distinct seconds, ~3 MB (at 100k the
#: two caches held ~35 MB of a worker's peak, memray at 3 days of backlog)
CACHE_MAX: Final = 20_000


def parse_utc_fast(v: str) -> int | None:
    """'YYYY-MM-DDTHH:MM:SS[.mmm]Z', the common producer format, without datetime: the
    second prefix repeats across events, so its epoch value is cached (checked once), and
    the milliseconds are read and checked by a table lookup."""
    base = SECOND_MS.get(v[:19])
    if base is None:
        base = _cache_second(v[:19])
        if base is None:
            return None
    ms = MILLIS.get(v[19:])
    return None if ms is None else base + ms


def _cache_second(prefix: str) -> int | None:
    if len(prefix) != 19:
        return None
    minute = _MINUTE_MS.get(prefix[:16])
    if minute is None:
        if not prefix.isascii():
            return None
        try:
            dt = datetime.fromisoformat(prefix[:16] + ":00+00:00")
        except ValueError:
            return None
        if len(_MINUTE_MS) > CACHE_MAX:
            _MINUTE_MS.clear()
        minute = _MINUTE_MS[prefix[:16]] = int(dt.timestamp()) * 1000
    sec = _SECONDS.get(prefix[16:])
    if sec is None:
        return None
    if len(SECOND_MS) > CACHE_MAX:
        SECOND_MS.clear()
    base = SECOND_MS[prefix] = minute + sec
    return base


def parse_ts(v: Any) -> int | None:
    """Event time in epoch milliseconds, or None when it can't be read unambiguously."""
    if type(v) is int:
        return v if v >= 0 else None
    if type(v) is str and 10 <= len(v) <= 40:
        fast = parse_utc_fast(v)
        if fast is not None:
            return fast
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            return None
        if dt.tzinfo is None:  # an offset is required: naive times are ambiguous
            return None
        return int(dt.timestamp() * 1000)
    return None


def wall_ms() -> int:
    """The wall clock, epoch ms (an engine's clock, ``now`` for future checks)."""
    return time.time_ns() // 1_000_000
