"""Prometheus exposition (CONTRACT.md §6) as a custom collector over a snapshot of state.

Nothing here runs per event: the collector reads the engine's counters and the latest KPI
values when Prometheus scrapes. Registries are passed in, never the global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from metrics.engine import NEVER, KpiEngine
from metrics.events import FAMILY_TOPIC, TYPES


@dataclass
class ShellStats:
    """What the streaming shell knows and the pure engine does not."""

    invalid: dict[str, int] = field(default_factory=dict)  # reason -> count
    lag: dict[str, int] = field(default_factory=dict)  # topic -> messages behind
    #: latest open-window KPI records, refreshed by the emit timer
    kpis: list[dict[str, Any]] = field(default_factory=list)


class EngineCollector(Collector):
    def __init__(self, engine: KpiEngine, stats: ShellStats,
                 topic_name: Callable[[str], str] = lambda t: t):
        self.engine = engine
        self.stats = stats
        self.topic_name = topic_name

    def collect(self) -> Iterator[Metric]:
        e = self.engine
        events = CounterMetricFamily("kpi_engine_events", "Valid events counted, by topic and "
                                     "type.", labels=["topic", "type"])
        for type_, n in sorted(e.events_total.items()):
            events.add_metric([self.topic_name(FAMILY_TOPIC[TYPES[type_].family]), type_], n)
        yield events
        invalid = CounterMetricFamily("kpi_engine_events_invalid", "Invalid events sent to the "
                                      "DLQ, by reason.", labels=["reason"])
        for reason, n in sorted(self.stats.invalid.items()):
            invalid.add_metric([reason], n)
        yield invalid
        late = CounterMetricFamily("kpi_engine_events_late", "Events later than every window "
                                   "they belong to.", labels=["topic"])
        for fam, n in sorted(e.late_total.items()):
            late.add_metric([self.topic_name(FAMILY_TOPIC[fam])], n)
        yield late
        yield CounterMetricFamily("kpi_engine_events_duplicate", "Events ignored as duplicate "
                                  "event_id.", value=e.duplicates_total)
        wm = GaugeMetricFamily("kpi_engine_watermark_seconds", "Event-time watermark per topic.",
                               labels=["topic"])
        for fam, w in sorted(e.watermarks.items()):
            if w.value != NEVER:
                wm.add_metric([self.topic_name(FAMILY_TOPIC[fam])], w.value / 1000)
        yield wm
        lag = GaugeMetricFamily("kpi_engine_consumer_lag", "Messages not yet consumed, per "
                                "input topic.", labels=["topic"])
        for topic, n in sorted(self.stats.lag.items()):
            lag.add_metric([topic], n)
        yield lag


def make_registry(engine: KpiEngine, stats: ShellStats,
                  topic_name: Callable[[str], str] = lambda t: t
                  ) -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, stats, topic_name))
    emit_latency = Histogram(
        "kpi_engine_emit_latency_seconds",
        "From the batch that closed windows to their KPI records being handed to Kafka.",
        registry=registry,
        buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
    return registry, emit_latency
