"""Freed memory handed back to the OS once a backlog is through.

glibc's malloc keeps the memory a burst freed (a backlog's fetched batches, parsed events,
closed windows waiting for a commit) mapped in the process: after catching up 6 days of
traffic a worker held 871 MB where a fresh process restored with the same state held 611 MB
(benchmarks/state_bench.py). ``malloc_trim`` returns the free pages; the worker calls it
when its shards have caught up after a burst, at most once a minute, and once more when a
backlog is through, its closed windows sent: a trim in a pause of the backlog (a moment no
shard was behind) left the memory of its tail, and of its last commits, with glibc (a
further trim returned 22 and 15 MB of the two processes after 6 days).

Trimming cannot return pages that a live allocation shares with freed ones, and glibc's
*dynamic* mmap threshold makes that common: once a large buffer (a 4 MB fetch, a commit's
encoded parts) is freed, glibc raises the threshold to its size, so the next ones come from
the heap and leave holes between the state's long-lived objects. ``pin_mmap_threshold``
fixes the threshold, so buffers of 128 KiB and more are always mapped apart and unmapped
when freed. Measured at 3 days (state_bench, one run before, three after): RSS after
consuming 685 MB -> 593-638 MB, peak 740 -> 623-688 MB, consuming at the same rate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Any, Final

#: events consumed since the last trim that make the next one worth it
TRIM_AFTER_EVENTS: Final = 100_000
TRIM_EVERY_S: Final = 60.0
#: at least this long between trims when each ends a backlog (the shards may fall behind
#: and catch up again in turns)
TRIM_BACKLOG_EVERY_S: Final = 5.0
#: glibc's ``mallopt`` parameter, and the size from which a buffer is mapped apart
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def malloc_trim() -> Callable[[int], Any] | None:
    """glibc's ``malloc_trim``; None elsewhere (musl, macOS: nothing to trim with)."""
    return getattr(_libc(), "malloc_trim", None)


def pin_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold (see above); False where there is no glibc ``mallopt``
    or it refuses. (The worker leaves it alone when the operator set one:
    ``settings.malloc_tuned``.)"""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


class HeapTrimmer:
    def __init__(self, trim: Callable[[int], Any] | None = None) -> None:
        self._trim = trim or malloc_trim()
        self._events = 0  # consumed at the last trim
        self._at = float("-inf")
        self._behind = False  # a shard was busy catching up since the last trim
        self.trims = 0

    def after(self, events: int, busy: bool, now: float, sent: bool = True) -> bool:
        """Trim if no shard is still ``busy`` catching up, and either ``events`` (consumed
        so far) grew enough since the last trim, a minute ago at least, or a backlog was
        read since (``busy`` at an earlier call) and what it closed is ``sent``."""
        if self._trim is None:
            return False
        if busy:
            self._behind = True
            return False
        if self._behind:
            if not sent or now - self._at < TRIM_BACKLOG_EVERY_S:
                return False
        elif events - self._events < TRIM_AFTER_EVENTS or now - self._at < TRIM_EVERY_S:
            return False
        self._events, self._at, self._behind = events, now, False
        self._trim(0)
        self.trims += 1
        return True
