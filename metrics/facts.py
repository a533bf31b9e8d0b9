"""Facts of trackers into panes: each (ts, builtin, dims, delta) lands on the aggregate keys
of every catalog aggregate built on that builtin, under each breakdown it is kept by."""

from __future__ import annotations

from typing import Final

from metrics.catalog import Catalog
from metrics.constants import TOTAL
from metrics.plans import dim_value
from metrics.trackers.base import Dims, Fact
from metrics.windows import FamilyWindows, Key

_CACHE_MAX: Final = 100_000  # dims cardinality is the user's: the key cache is bounded


class FactRouter:
    def __init__(self, catalog: Catalog):
        #: builtin -> [(aggregate, [(breakdown, its fields)])]
        self._targets: dict[str, list[tuple[str, list[tuple[str, list[str]]]]]] = {}
        for agg in catalog.aggregates.values():
            if agg.builtin is not None:
                bds = [(b, b.split("+") if b else []) for b in catalog.breakdowns[agg.name]]
                self._targets.setdefault(agg.builtin, []).append((agg.name, bds))
        self._keys: dict[tuple[str, Dims], list[Key]] = {}

    def apply(self, fw: FamilyWindows, facts: list[Fact]) -> None:
        cache = self._keys
        frontier, panes, pane_ms = fw.frontier, fw.panes, fw.pane_ms
        for ts, builtin, dims, value in facts:
            keys = cache.get((builtin, dims))
            if keys is None:
                keys = self.keys_of(builtin, dims)
            if not keys:
                continue
            if ts >= frontier:  # the common case: a pane no closed window covers yet
                start = ts - ts % pane_ms  # FamilyWindows.add, inlined
                pane = panes.get(start)
                if pane is None:
                    pane = panes[start] = {}
                for key in keys:
                    pane[key] = pane.get(key, 0) + value
            else:
                for key in keys:
                    fw.add(ts, key, value)

    def keys_of(self, builtin: str, dims: Dims) -> list[Key]:
        """The aggregate keys a fact lands on; cached, as the same dims recur endlessly."""
        keys: list[Key] = []
        dmap = dict(dims)
        for agg, bds in self._targets.get(builtin, ()):
            for bname, fields in bds:
                keys.append((agg, bname, dim_value(dmap.get, fields)) if fields else
                            (agg, TOTAL, TOTAL))
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        self._keys[(builtin, dims)] = keys
        return keys
