"""One worker's pages from its processes' pages (``kpi-engine worker --processes N``).

Each process is a member of the worker's consumer group and owns whole shards, so what they
show is disjoint by construction: a shard's families, topics and KPIs are in one process.
Counters and histograms add up; a gauge is one process's, except for the moment a shard
changes hands inside the worker, when the larger is kept (a watermark never goes back).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from streams.health import NO_SHARD_ACTIVE, SUMMED

#: fields of the processes' /health taken as a union of their (disjoint) keys
_UNITED: Final = ("late_by_family", "state_epochs", "ids_loaded")


def merge_metrics(texts: list[str]) -> bytes:
    """The processes' /metrics texts as one exposition: each family once, its samples summed
    (counters, histograms), or the larger kept (gauges; a ``_created`` time: the earliest)."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            if fam.name not in families:
                families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                values[fam.name] = {}
            into = values[fam.name]
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = into.get(key)
                if old is None:
                    into[key] = s.value
                elif s.name.endswith("_created"):
                    into[key] = min(old, s.value)
                elif fam.type == "gauge":
                    into[key] = max(old, s.value)
                else:
                    into[key] = old + s.value
    for name, fam in families.items():
        fam.samples = [Sample(n, dict(labels), v) for (n, labels), v in values[name].items()]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    """A collector of families built beforehand."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge_health(parts: list[dict[str, Any] | None], names: list[str]) -> dict[str, Any]:
    """The worker's /health from its processes' (None: a process that did not answer; names
    say which process each part is, for ``problems``). A shard is active when a process owns
    it; the counts add up; the worker counts nothing only when no process owns a shard."""
    out: dict[str, Any] = {"status": "ok", "problems": [], "role": "standby", "shards": {}}
    out.update(dict.fromkeys(SUMMED, 0))
    out.update({k: {} for k in _UNITED})
    state: dict[str, int] = {}
    waiting: set[str] = set()
    durable = True
    firsts, lasts = [], []
    cycles: dict[str, Any] = {"automatic": False, "collections": 0, "full": 0, "freed": 0,
                              "seconds": 0.0}  # the processes' collections, summed
    for name, h in zip(names, parts, strict=True):
        if h is None:
            out["problems"].append(f"{name}: not answering")
            durable = False
            continue
        out["problems"] += [f"{name}: {p}" for p in h["problems"]
                            if not p.startswith(NO_SHARD_ACTIVE)]
        for shard, role in h["shards"].items():
            if out["shards"].get(shard) != "active":
                out["shards"][shard] = role
        for k in SUMMED:
            out[k] += h[k]
        for k in _UNITED:
            out[k].update(h[k])
        for k, v in h["state"].items():
            state[k] = state.get(k, 0) + v
        waiting.update(h["waiting"])
        if "accounts_stage" in h:
            out["accounts_stage"] = h["accounts_stage"]
        durable = durable and h["durable"]
        for k, v in h["cycles"].items():  # automatic: on in any process
            if k == "automatic":
                cycles[k] = cycles[k] or v
            else:
                cycles[k] += v
        if h["first_batch_at"] is not None:
            firsts.append(h["first_batch_at"])
        if h["last_batch_done_at"] is not None:
            lasts.append(h["last_batch_done_at"])
    if "active" in out["shards"].values():
        out["role"] = "active"
    elif all(h is not None for h in parts):
        out["problems"].append(f"{NO_SHARD_ACTIVE}: no process of this worker owns a shard "
                               "(waiting for an assignment, or the group has more members "
                               "than shards)")
    first = min(firsts) if firsts else None
    last = max(lasts) if lasts else None
    out |= {"status": "unavailable" if out["problems"] else "ok", "state": state,
            "durable": durable, "waiting": sorted(waiting),
            "cycles": cycles | {"seconds": round(cycles["seconds"], 3)},
            "busy_s": last - first if first is not None and last is not None else None,
            "first_batch_at": first, "last_batch_done_at": last}
    return out


def merge_dashboard(parts: list[dict[str, Any] | None], names: list[str]) -> dict[str, Any]:
    """The /dashboard/state poll: the processes' current values and trend lines (per KPI,
    one process's), their health merged, event rates and lags summed."""
    answered = [p for p in parts if p is not None]
    history: dict[str, dict[str, Any]] = {}
    for p in answered:
        for kpi, by_window in p["history"].items():
            history.setdefault(kpi, {}).update(by_window)
    health = merge_health([None if p is None else p["health"] for p in parts], names)
    health["events_per_s"] = round(sum(p["health"]["events_per_s"] for p in answered), 1)
    health["lag"] = sum(p["health"]["lag"] for p in answered)
    health["watermark_delay_s"] = {t: d for p in answered
                                   for t, d in p["health"]["watermark_delay_s"].items()}
    return {"catalog": answered[0]["catalog"] if answered else [],
            "current": [r for p in answered for r in p["current"]],
            "history": history, "health": health}
