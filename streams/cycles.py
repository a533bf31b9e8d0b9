"""Reference cycles in a worker: collected on the clock, not by counting allocations.

CPython collects when tracked allocations outnumber deallocations by a threshold (700 by
default; replay raises it to 50,000: metrics/runtime.py). A worker's state grows until its
caches fill (their entries, visitors, send cohorts, sessions), and each such object is
traversed by every young collection it meets until it is promoted: in stream_bench (one
process, timed with ``gc.callbacks``, the threshold then 50,000) the collector took 0.36 s
of 7.5 s at 300,000 events and 2.5–3.2 s of ~45 s at 900,000, for ~2,200 objects found in
cycles in either run, nearly all of them the clients' (futures, exceptions).

So a worker collects on its clock instead: every ``EVERY_S`` seconds what was allocated
since the last collection (a cycle of the clients' is garbage by then), and every
``FULL_EVERY`` times everything (a cycle that outlived a collection waits for that one).
What it built at start (modules, the catalog: never garbage) is frozen out of every
collection. Everything at once is what costs: 0.6-0.7 s at 2.2 M events of state held
(state_bench, 6 days), 0.4 s at rest; once a minute, that was a point of a core at rest.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

log = logging.getLogger(__name__)

#: seconds between two collections of a worker's cycles
EVERY_S: Final = 60.0
#: one collection in this many takes everything, not only what is new since the last
FULL_EVERY: Final = 10


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
        self.full = 0  # of them, of everything
        self.freed = 0  # objects found in cycles and freed
        self.seconds = 0.0

    def collect(self) -> int:
        """Free the cycles among what is new since the last collection, or, one time in
        ``FULL_EVERY``, among everything."""
        full = self.collections % FULL_EVERY == FULL_EVERY - 1
        t0 = time.perf_counter()
        freed = gc.collect(2 if full else 0)
        took = time.perf_counter() - t0
        self.collections += 1
        self.full += full
        self.freed += freed
        self.seconds += took
        log.debug("cycles: %d objects freed in %.3f s (%s)", freed, took,
                  "all" if full else "new")
        return freed

    def health(self) -> dict[str, object]:
        return {"automatic": gc.isenabled(), "collections": self.collections,
                "full": self.full, "freed": self.freed, "seconds": round(self.seconds, 3)}
