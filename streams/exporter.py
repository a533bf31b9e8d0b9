"""Prometheus exposition (CONTRACT.md §6) as a custom collector over a snapshot of state.

Nothing here runs per event: the collector reads the engine's counters and the latest KPI
values when Prometheus scrapes. Registries are passed in, never the global one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metrics.catalog import Catalog, Kpi
from metrics.engine import NEVER, KpiEngine
from metrics.events import EVENT_TYPES, INVALID_REASONS
from metrics.records import interval
from streams.topics import FAMILY_TOPICS


@dataclass
class ShellStats:
    """What the streaming shell knows and the pure engine does not."""

    invalid: dict[str, int] = field(default_factory=dict)  # reason -> count
    lag: dict[str, int] = field(default_factory=dict)  # topic -> messages behind
    #: latest open-window KPI records, refreshed by the emit timer
    kpis: list[dict[str, Any]] = field(default_factory=list)
    #: malformed state-table records passed over when the shard was restored
    state_skipped: int = 0


OTHER: Final = "_other"


def metric_name(catalog: Catalog, kpi: Kpi) -> str:
    """kpi_<name>, money KPIs suffixed with their currency: kpi_cost_per_lead_eur."""
    suffix = f"_{catalog.currency.lower()}" if kpi.unit == "currency" else ""
    return f"kpi_{kpi.name}{suffix}"


def kpi_families(catalog: Catalog, records: list[dict[str, Any]]) -> Iterator[Metric]:
    """One gauge per KPI (value) and one for its denominator, labelled by window and the
    KPI's dimensions. Per KPI and window at most ``max_series`` breakdown series are kept, the
    largest denominators first; the rest of each breakdown is summed into ``_other``."""
    by_kpi: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_kpi.setdefault(rec["kpi"], []).append(rec)
    for name, recs in sorted(by_kpi.items()):
        kpi = catalog.kpis.get(name)
        if kpi is None:
            continue
        dims = sorted({d for b in kpi.breakdowns for d in b.split("+")})
        labels = ["window", *dims]
        mname = metric_name(catalog, kpi)
        value = GaugeMetricFamily(mname, kpi.description or name, labels=labels)
        denom = GaugeMetricFamily(f"{mname}_denominator", f"Denominator of {mname}: the "
                                  "volume behind the value, for alert guards.", labels=labels)
        lower = GaugeMetricFamily(f"{mname}_lower", f"Lower bound of the 95 % interval of "
                                  f"{mname} (Wilson score).", labels=labels)
        upper = GaugeMetricFamily(f"{mname}_upper", f"Upper bound of the 95 % interval of "
                                  f"{mname} (Wilson score).", labels=labels)
        for window, series in _capped(recs, catalog.max_series, kpi):
            for rec_dims, v, d, lo, hi in series:
                lv = [window, *(rec_dims.get(k, "") for k in dims)]
                if v is not None:
                    value.add_metric(lv, v)
                denom.add_metric(lv, d)
                if lo is not None and hi is not None:
                    lower.add_metric(lv, lo)
                    upper.add_metric(lv, hi)
        yield value
        yield denom
        if kpi.interval:
            yield lower
            yield upper


#: dims, value, denominator, the interval's lower and upper bounds
Series = tuple[dict[str, str], float | None, float, float | None, float | None]


def _capped(recs: list[dict[str, Any]], max_series: int, kpi: Kpi
            ) -> Iterator[tuple[str, list[Series]]]:
    """Ranks by denominator (by value for counts). ``_other`` re-sums numerators and
    denominators, exact for the catalog's single-factor ratios and counts."""
    rank = "denominator" if kpi.denominator else "numerator"
    by_window: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        by_window.setdefault(rec["window"], []).append(rec)
    for window, wrecs in sorted(by_window.items()):
        out: list[Series] = [(r["dims"], r["value"], r["denominator"], r.get("lower"),
                              r.get("upper")) for r in wrecs if not r["dims"]]
        parts = sorted((r for r in wrecs if r["dims"]), key=lambda r: -r[rank])
        other: dict[tuple[str, ...], list[float]] = {}  # breakdown -> [numerator, denominator]
        for i, r in enumerate(parts):
            if i < max_series:
                out.append((r["dims"], r["value"], r["denominator"], r.get("lower"),
                            r.get("upper")))
            else:
                acc = other.setdefault(tuple(sorted(r["dims"])), [0.0, 0.0])
                acc[0] += r["numerator"]
                acc[1] += r["denominator"]
        for keys, (num, den) in sorted(other.items()):
            if not kpi.denominator:
                num, den = num, 1.0
            lo, hi = interval(kpi, num, den)
            out.append(({k: OTHER for k in keys}, kpi.scale * num / den if den else None, den,
                        lo, hi))
        yield window, out


Parts = Callable[[], list[tuple[KpiEngine, ShellStats]]]


class EngineCollector(Collector):
    """Over every (engine, stats) part the worker owns: one per shard, whose families and
    KPIs are disjoint, so their series never collide and counters simply add up."""

    def __init__(self, catalog: Catalog, parts: Parts,
                 topic_name: Callable[[str], str] = lambda t: t):
        self.catalog = catalog
        self.parts = parts
        self.topic_name = topic_name

    def collect(self) -> Iterator[Metric]:
        parts = self.parts()
        yield from kpi_families(self.catalog, [r for _, st in parts for r in st.kpis])
        topic = self.topic_name
        events = CounterMetricFamily("kpi_engine_events", "Valid events counted, by topic and "
                                     "type.", labels=["topic", "type"])
        # every series a rule or panel may read exists from the start, at 0: a rule on an
        # absent series never evaluates
        owned = {f for e, _ in parts for f in e.catalog.families}
        counted = {t: 0 for t, spec in EVENT_TYPES.items() if spec.family in owned}
        counted.update(_summed(e.events_total for e, _ in parts))
        for type_, n in sorted(counted.items()):
            events.add_metric([topic(FAMILY_TOPICS[EVENT_TYPES[type_].family]), type_], n)
        yield events
        invalid = dict.fromkeys(INVALID_REASONS, 0) if parts else {}
        invalid.update(_summed(st.invalid for _, st in parts))
        yield _by_label(CounterMetricFamily("kpi_engine_events_invalid", "Invalid events sent "
                                            "to the DLQ, by reason.", labels=["reason"]),
                        invalid)
        yield _by_label(CounterMetricFamily("kpi_engine_events_late", "Events later than every "
                                            "window they belong to.", labels=["topic"]),
                        {topic(FAMILY_TOPICS[fam]): n for fam, n in
                         _summed(e.late_total for e, _ in parts).items()})
        yield CounterMetricFamily("kpi_engine_events_duplicate", "Events ignored as duplicate "
                                  "event_id.", value=sum(e.duplicates_total for e, _ in parts))
        yield CounterMetricFamily("kpi_engine_state_records_skipped", "Malformed state-table "
                                  "records passed over at restore (the log names each).",
                                  value=sum(st.state_skipped for _, st in parts))
        wm = GaugeMetricFamily("kpi_engine_watermark_seconds", "Event-time watermark per topic.",
                               labels=["topic"])
        for fam, w in sorted((f, w) for e, _ in parts for f, w in e.watermarks.items()):
            if w.value != NEVER:
                wm.add_metric([topic(FAMILY_TOPICS[fam])], w.value / 1000)
        yield wm
        yield _by_label(GaugeMetricFamily("kpi_engine_consumer_lag", "Messages not yet "
                                          "consumed, per input topic.", labels=["topic"]),
                        _summed(st.lag for _, st in parts))


def _by_label(family: CounterMetricFamily | GaugeMetricFamily, counts: dict[str, int]
              ) -> Metric:
    """A family of one label, a sample per key of counts, in key order."""
    for key, n in sorted(counts.items()):
        family.add_metric([key], n)
    return family


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in counts:
        for k, n in c.items():
            out[k] = out.get(k, 0) + n
    return out


def make_registry(catalog: Catalog, parts: Parts,
                  topic_name: Callable[[str], str] = lambda t: t
                  ) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(catalog, parts, topic_name))
    emit_latency = Histogram(
        "kpi_engine_emit_latency_seconds",
        "From the batch that closed windows to their KPI records written to Kafka, after "
        "the snapshot that makes them durable.",
        registry=registry,
        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
    return registry, emit_latency


class Exposition:
    """The /metrics text, rendered at most once per ``max_age_s`` (the emit interval: the
    values change no faster) and served from cache in between, so a burst of scrapes costs
    one rendering, not one each."""

    def __init__(self, registry: CollectorRegistry, max_age_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.registry = registry
        self.max_age_s = max_age_s
        self.clock = clock
        self._text = b""
        self._at: float | None = None

    def text(self) -> bytes:
        now = self.clock()
        if self._at is None or now - self._at >= self.max_age_s:
            self._text = generate_latest(self.registry)
            self._at = now
        return self._text
