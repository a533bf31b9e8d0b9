"""Replay runs with the cycle collector off: that is only sound while the engine's state
holds no reference cycles, which this checks on traffic exercising every tracker."""

from __future__ import annotations

import gc

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.replay import replay_lines
from metrics.catalog import load_catalog

NOW = 1_793_491_200_000 + 120 * 86_400_000


def test_replay_leaves_no_cyclic_garbage_and_restores_the_collector() -> None:
    cfg = GeneratorConfig(rate=40, duration_s=1800, seed=5, history_days=5, invalid=0.02,
                          duplicates=0.05, late=0.01, disorder_s=60)
    lines = [raw for _, (_, raw) in Generator(cfg).messages()]
    catalog = load_catalog()
    gc.collect()
    assert gc.isenabled()
    kinds: dict[str, int] = {}
    for kind, item in replay_lines(lines, catalog, now_ms=NOW):
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "summary":
            assert item.duplicates_total > 0 and sum(item.late_total.values()) > 0
            assert len(item.sessions) > 0 and len(item.pipeline) > 0 and len(item.opens) > 0
        del item
    assert kinds["invalid"] > 0 and kinds["records"] > 10
    assert gc.isenabled()  # switched back on once the replay is over
    # everything the replay made was freed by reference counting: nothing left in a cycle
    assert gc.collect() == 0
