"""Freed memory goes back to the OS once a burst is through, not while it runs."""

from __future__ import annotations

import os
import subprocess
import sys

from streams.heap import (
    TRIM_AFTER_EVENTS,
    TRIM_BACKLOG_EVERY_S,
    TRIM_EVERY_S,
    HeapTrimmer,
    malloc_trim,
)


def test_a_trim_follows_a_burst_once_caught_up_and_at_most_once_a_minute() -> None:
    calls: list[int] = []
    heap = HeapTrimmer(calls.append)
    n = TRIM_AFTER_EVENTS
    assert not heap.after(n - 1, busy=False, now=1.0)  # too little consumed
    assert heap.after(n, busy=False, now=2.0)
    assert calls == [0]
    assert not heap.after(3 * n, busy=False, now=2.0 + TRIM_EVERY_S - 1)  # a minute apart
    assert heap.after(3 * n, busy=False, now=2.0 + TRIM_EVERY_S)
    assert not heap.after(3 * n + 10, busy=False, now=500.0)  # nothing new since
    assert heap.trims == 2


def test_a_backlog_is_trimmed_once_through_and_what_it_closed_sent() -> None:
    """A trim in a pause of a backlog (no shard behind for a moment) must not leave the
    memory of its tail: once a shard was behind, the first moment none is and the closed
    windows are sent trims again, however soon after the last trim (seconds apart)."""
    calls: list[int] = []
    heap = HeapTrimmer(calls.append)
    n = TRIM_AFTER_EVENTS
    assert not heap.after(0, busy=True, now=0.0)  # a backlog: still catching up
    assert heap.after(n // 2, busy=False, now=10.0)  # a pause: whatever was consumed
    assert not heap.after(2 * n, busy=True, now=11.0)  # behind again
    assert not heap.after(3 * n, busy=False, now=12.0, sent=False)  # its windows not out
    assert not heap.after(3 * n, busy=False, now=10.0 + TRIM_BACKLOG_EVERY_S - 1)
    assert heap.after(3 * n, busy=False, now=10.0 + TRIM_BACKLOG_EVERY_S)
    assert calls == [0, 0]
    # then the steady rule again: nothing without more traffic, a minute apart
    assert not heap.after(3 * n + 10, busy=False, now=500.0)
    assert heap.after(4 * n, busy=False, now=501.0)


def test_glibc_trims_for_real() -> None:
    trim = malloc_trim()
    assert trim is not None  # the engine's images and CI run on glibc
    assert trim(0) in (0, 1)


_PROBE = """
import ctypes, sys
from streams.heap import pin_mmap_threshold

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
burst = bytearray(4 << 20)  # a backlog's fetch buffer, mapped apart, then freed
del burst
mapped = libc.mallinfo2().hblkhd
later = bytearray(200 * 1024)  # the next medium buffer
print(libc.mallinfo2().hblkhd - mapped >= 200 * 1024)
"""


def test_a_pinned_threshold_keeps_buffers_after_a_burst_out_of_the_heap() -> None:
    """glibc alone raises its mmap threshold to a freed burst's size, so later medium
    buffers land in the heap between long-lived objects (fragments that no trim returns);
    pinned, they are still mapped apart."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}

    def mapped_apart(mode: str) -> bool:
        out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        return out == "True"

    assert not mapped_apart("glibc")
    assert mapped_apart("pin")
