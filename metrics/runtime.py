"""Process settings replay runs best with (a worker collects cycles on its clock instead:
streams/cycles.py)."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """The engine allocates many short-lived dicts and few cycles: collecting the young
    generation every 700 allocations (the default) costs ~15 % of throughput."""
    gc.set_threshold(50_000, 50, 100)
