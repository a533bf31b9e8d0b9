"""An engine's state holds no reference cycles, so reference counting frees it the moment
it is dropped (a worker drops a shard's engine on every revoke), without waiting for the
cycle collector to walk hundreds of megabytes. Checked on traffic exercising every tracker.
(Running replay with the collector off was measured too: no faster.)"""

from __future__ import annotations

import gc
from typing import Any

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.replay import replay_lines
from metrics.catalog import load_catalog

NOW = 1_793_491_200_000 + 120 * 86_400_000


def test_replay_leaves_no_cyclic_garbage() -> None:
    cfg = GeneratorConfig(rate=40, duration_s=1800, seed=5, history_days=5, invalid=0.02,
                          duplicates=0.05, late=0.01, disorder_s=60)
    lines = [raw for _, (_, raw) in Generator(cfg).messages()]
    catalog = load_catalog()
    gc.collect()
    gc.disable()  # nothing may be freed behind the test's back
    try:
        kinds = _replay_kinds(lines, catalog)
    finally:
        gc.enable()
    assert kinds["invalid"] > 0 and kinds["records"] > 10
    # everything the replay made was freed by reference counting: nothing left in a cycle
    assert gc.collect() == 0


def _replay_kinds(lines: list[bytes], catalog: Any) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for kind, item in replay_lines(lines, catalog, now_ms=NOW):
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "summary":
            assert item.duplicates_total > 0 and sum(item.late_total.values()) > 0
            assert all(len(t) > 0 for t in item.trackers.values())
        del item
    return kinds
