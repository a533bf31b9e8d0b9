"""Reference cycles in a worker: collected on the clock, not by counting allocations.

CPython collects when tracked allocations outnumber deallocations by a threshold (50,000
in the engine: metrics/runtime.py). A worker's state grows until its caches fill (their
entries, visitors, send cohorts, sessions), and each such object is traversed by every
young collection it meets until it is promoted: in stream_bench (one process, timed with
``gc.callbacks``) the collector took 0.36 s of 7.5 s at 300,000 events and 2.5–3.2 s of
~45 s at 900,000, for ~2,200 objects found in cycles in either run, nearly all of them the
clients' (futures, exceptions).

So a worker collects every ``EVERY_S`` seconds instead: what it built at start (modules,
the catalog: never garbage) is frozen out of every collection, and a cycle waits at most
that long to be freed (a minute of a backlog read at full speed left a few thousand).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

log = logging.getLogger(__name__)

#: seconds between two collections of a worker's cycles
EVERY_S: Final = 60.0


def collect_on_clock() -> None:
    """From now on cycles are freed by ``collect`` only (a worker's timer calls it); what
    is alive now is left out of every collection."""
    gc.collect()
    gc.freeze()
    gc.disable()


class Cycles:
    """A worker's collections of cycles, timed (/health: ``cycles``)."""

    def __init__(self) -> None:
        self.collections = 0
        self.freed = 0  # objects found in cycles and freed
        self.seconds = 0.0

    def collect(self) -> int:
        t0 = time.perf_counter()
        freed = gc.collect()
        took = time.perf_counter() - t0
        self.collections += 1
        self.freed += freed
        self.seconds += took
        log.debug("cycles: %d objects freed in %.3f s", freed, took)
        return freed

    def health(self) -> dict[str, object]:
        return {"automatic": gc.isenabled(), "collections": self.collections,
                "freed": self.freed, "seconds": round(self.seconds, 3)}
