"""Counting one event into its family's panes: the interpreted form of what
codegen.ingest_function generates (the tests hold the two to the same results), and the
patch of closed windows for an event late within grace, which both call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from metrics.events import Event
from metrics.plans import Update
from metrics.windows import Agg, FamilyWindows


def apply_late(fw: FamilyWindows, ts: int, data: Any, update: Update) -> None:
    """An event in a pane some closed window covers (late within grace): the closed windows
    it falls in are patched too, and republished as revisions."""
    delta: Agg = {}
    update(delta, data)
    for key, value in delta.items():
        fw.add(ts, key, value)


def count_interpreted(type_: str, read: list[str] | None, counts: dict[str, int],
                       update: Update | None, observers: Sequence[Callable[[Event], Any]],
                       apply_facts: Callable[[FamilyWindows, Any], None], ev: Event,
                       fw: FamilyWindows) -> None:
    """The interpreted twin of codegen.ingest_function."""
    counts[type_] = counts.get(type_, 0) + 1
    if read is not None:
        assert update is not None
        ts = ev.ts_ms
        if ts >= fw.frontier:
            tally = fw.pending.setdefault(ts - ts % fw.pane_ms, {})
            sig = (type_, *(getattr(ev.data, f, None) for f in read))
            tally[sig] = tally.get(sig, 0) + 1
        else:
            apply_late(fw, ts, ev.data, update)
    for observe in observers:
        facts = observe(ev)
        if facts:
            apply_facts(fw, facts)

