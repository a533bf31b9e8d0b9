"""Breaches of the catalog's alerts, evaluated in the engine on the KPI records it emits,
for the `kpi-alerts` topic (CONTRACT.md §3).

A breach is *significant*: the whole 95 % interval of the value lies beyond the threshold
(``upper < threshold`` for a `below` alert, ``lower > threshold`` for `above`), with the
volume guard met; KPIs without an interval (money ratios, counts) compare their value. It
is pending from the first significant record, firing once it has lasted the alert's `for`
in event time (the family's watermark), and resolved when the value is back on the healthy side
of the threshold: the gap between "the interval beyond" and "the value back" is the
hysteresis that keeps a KPI hovering at its threshold from flapping.

The breaches under way are part of the shard's committed state (``snapshot``/``restore``):
after a restart or a takeover a firing breach is resolved once, not forgotten, and a
pending one keeps its start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from metrics.catalog import Catalog, Kpi, parse_duration_ms
from metrics.records import dims_text, iso_ms
from metrics.timestamps import parse_ts

Record = dict[str, Any]

TOPIC: Final = "kpi-alerts"


def camel(name: str) -> str:
    """email_open_rate -> EmailOpenRate: a KPI's part of its alerts' names."""
    return "".join(part.capitalize() for part in name.split("_"))


def alert_name(kpi: Kpi) -> str:
    """email_open_rate + below -> EmailOpenRateLow (the Prometheus rule's name too)."""
    assert kpi.alert is not None
    return f"{camel(kpi.name)}{'Low' if kpi.alert.op == 'below' else 'High'}"


@dataclass
class Breach:
    state: str  # "pending" | "firing"
    since: int  # event time (ms) of the first significant record
    since_text: str


class HeldBreach(msgspec.Struct, array_like=True, gc=False):
    """A breach under way, as committed: its alert, dims text, state and start."""
    alert: str
    dims: str
    state: str
    since: int
    since_text: str


class AlertEvaluator:
    """Per (alert, dims): pending, firing, resolved."""

    def __init__(self, catalog: Catalog):
        self.kpis = {k.name: k for k in catalog.kpis.values() if k.alert is not None}
        #: each alert's `for`, parsed once (observe runs for every record of every emit)
        self.for_ms = {n: parse_duration_ms(k.alert.for_)
                       for n, k in self.kpis.items() if k.alert is not None}
        self.breaches: dict[tuple[str, str], Breach] = {}

    def observe(self, records: list[Record], emitted_at: str,
                now: dict[str, int] | None = None,
                partial: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset()
                ) -> list[Record]:
        """Breach events (firing, resolved) the records cause; each is to be published
        with key ``{alert}|{dims}``.

        ``now``: each family's event time (its watermark), what `for` is measured in
        (default: the record's window end). ``partial``: (kpi, window) whose window began
        before its data did (``Publisher.partial_open``): a KPI without an interval is not
        judged on it (ROMI over the first days of spend, before any win); a ratio's
        interval already says how little such a sample proves."""
        out: list[Record] = []
        for rec in records:
            kpi = self.kpis.get(rec["kpi"])
            if kpi is None or kpi.alert is None or rec["window"] != kpi.alert.window:
                continue
            if not kpi.interval and (rec["kpi"], rec["window"]) in partial:
                continue
            a = kpi.alert
            name = alert_name(kpi)
            key = (name, dims_text(rec["dims"]))
            value = rec["value"]
            guarded = not kpi.denominator or rec["denominator"] >= a.min_denominator
            significant = guarded and value is not None and _beyond(kpi, rec)
            end = (max(now[f] for f in kpi.families) if now is not None
                   else parse_ts(rec["end"]) or 0)
            held = self.breaches.get(key)
            if held is None:
                if significant:
                    self.breaches[key] = held = Breach("pending", end, iso_ms(end))
                else:
                    continue
            if held.state == "pending":
                if not significant:
                    del self.breaches[key]
                elif end - held.since >= self.for_ms[kpi.name]:
                    held.state = "firing"
                    out.append(_event(kpi, name, rec, "firing", held, emitted_at))
            elif value is not None and _healthy(kpi, value):
                del self.breaches[key]
                out.append(_event(kpi, name, rec, "resolved", held, emitted_at))
        return out

    def snapshot(self) -> list[HeldBreach]:
        return [HeldBreach(a, d, b.state, b.since, b.since_text)
                for (a, d), b in sorted(self.breaches.items())]

    def restore(self, held: list[HeldBreach]) -> None:
        """Continue the breaches of a committed state; those of alerts the catalog no longer
        has are dropped."""
        names = {alert_name(k) for k in self.kpis.values()}
        self.breaches = {(h.alert, h.dims): Breach(h.state, h.since, h.since_text)
                         for h in held if h.alert in names}

    def firing(self) -> list[tuple[str, str]]:
        return sorted(k for k, b in self.breaches.items() if b.state == "firing")


def _beyond(kpi: Kpi, rec: Record) -> bool:
    """The whole interval beyond the threshold (the value, where there is no interval)."""
    a = kpi.alert
    assert a is not None
    lower, upper = rec.get("lower"), rec.get("upper")
    if kpi.interval and lower is None:
        return False  # no interval to be significant with
    if a.op == "below":
        bound = upper if upper is not None else rec["value"]
        return bool(bound < a.threshold)
    bound = lower if lower is not None else rec["value"]
    return bool(bound > a.threshold)


def _healthy(kpi: Kpi, value: float) -> bool:
    a = kpi.alert
    assert a is not None
    return value >= a.threshold if a.op == "below" else value <= a.threshold


def alert_key(event: Record) -> str:
    """Key of a breach event on `kpi-alerts`: ``{alert}|{dims}``."""
    return f"{event['alert']}|{dims_text(event['dims'])}"


def _event(kpi: Kpi, name: str, rec: Record, state: str, breach: Breach, emitted_at: str
           ) -> Record:
    a = kpi.alert
    assert a is not None
    return {"alert": name, "kpi": kpi.name, "window": rec["window"], "dims": rec["dims"],
            "value": rec["value"], "lower": rec.get("lower"), "upper": rec.get("upper"),
            "threshold": a.threshold, "direction": a.op, "severity": a.severity,
            "state": state, "since": breach.since_text, "emitted_at": emitted_at}
