"""Freed memory goes back to the OS once a burst is through, not while it runs."""

from __future__ import annotations

from streams.heap import TRIM_AFTER_EVENTS, TRIM_EVERY_S, HeapTrimmer, malloc_trim


def test_a_trim_follows_a_burst_once_caught_up_and_at_most_once_a_minute() -> None:
    calls: list[int] = []
    heap = HeapTrimmer(calls.append)
    n = TRIM_AFTER_EVENTS
    assert not heap.after(n, busy=True, now=0.0)  # still catching up
    assert not heap.after(n - 1, busy=False, now=1.0)  # too little consumed
    assert heap.after(n, busy=False, now=2.0)
    assert calls == [0]
    assert not heap.after(3 * n, busy=False, now=2.0 + TRIM_EVERY_S - 1)  # a minute apart
    assert heap.after(3 * n, busy=False, now=2.0 + TRIM_EVERY_S)
    assert not heap.after(3 * n + 10, busy=False, now=500.0)  # nothing new since
    assert heap.trims == 2


def test_glibc_trims_for_real() -> None:
    trim = malloc_trim()
    assert trim is not None  # the engine's images and CI run on glibc
    assert trim(0) in (0, 1)
