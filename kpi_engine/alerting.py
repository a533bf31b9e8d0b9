"""Prometheus alert rules and their promtool unit tests, generated from the KPI catalog.

`kpi-engine rules` writes them under prometheus/; a test fails when the committed files
differ from a fresh generation. One alert per catalog threshold, guarded by the KPI's
denominator so a handful of events pages nobody, plus alerts on the engine itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Final

import yaml

from metrics.alerts import alert_name
from metrics.catalog import Alert, Catalog, Kpi, metric_name

JOB: Final = "kpi-engine"  # the Prometheus scrape job of the workers
DEFAULT_GRAFANA_URL: Final = "http://localhost:3000"
#: where the runbook (docs/runbook.md, from ``runbook``) is read: the repository's copy by
#: default; point it at your own docs site
DEFAULT_RUNBOOK_URL: Final = "docs/runbook.md"
RULES_FILE: Final = "rules/kpi-alerts.yml"
TESTS_FILE: Final = "tests/kpi-alerts.test.yml"




def kpi_labels(kpi: Kpi) -> list[str]:
    """The labels of a KPI's gauges besides `window` (CONTRACT.md §6)."""
    return sorted({d for b in kpi.breakdowns for d in b.split("+")})


def _value_fmt(kpi: Kpi) -> str:
    return "humanizePercentage" if kpi.unit == "ratio" else 'printf "%.2f"'


def _threshold_text(kpi: Kpi, alert: Alert) -> str:
    if kpi.unit == "ratio":
        return f"{alert.threshold * 100:g}%"
    return f"{alert.threshold:g}"


def kpi_alert_expr(catalog: Catalog, kpi: Kpi) -> str:
    alert = kpi.alert
    assert alert is not None
    name = metric_name(catalog, kpi)
    sel = f'{{window="{alert.window}"}}'
    op = "<" if alert.op == "below" else ">"
    on = ", ".join(["window", *kpi_labels(kpi)])
    return (f"{compared_metric(catalog, kpi)}{sel} {op} {alert.threshold:g}\n"
            f"and on({on})\n"
            f"{name}_denominator{sel} >= {alert.min_denominator:g}")


def compared_metric(catalog: Catalog, kpi: Kpi) -> str:
    """What a KPI's alert compares with its threshold, as the engine's `kpi-alerts` does
    (metrics/alerts.py): for a KPI with an interval, its bound on the far side (a breach
    is significant when the whole interval lies beyond the threshold); else the value."""
    name = metric_name(catalog, kpi)
    if not kpi.interval:
        return name
    assert kpi.alert is not None
    return f"{name}_upper" if kpi.alert.op == "below" else f"{name}_lower"


def _describe(kpi: Kpi, value: str, direction: str) -> str:
    alert = kpi.alert
    assert alert is not None
    threshold = _threshold_text(kpi, alert)
    guard = f"with at least {alert.min_denominator:g} in the denominator."
    if kpi.interval:  # ``value`` is the interval's far bound (compared_metric)
        bound = "up to" if alert.op == "below" else "from"
        return (f"{kpi.description} Over the last {alert.window}, its whole 95 % interval "
                f"({bound} {value}) lies {direction} the threshold {threshold} for "
                f"{alert.for_}, {guard}")
    return (f"{kpi.description} Now {value} over the last {alert.window}, {direction} the "
            f"threshold {threshold} for {alert.for_}, {guard}")


def _where(kpi: Kpi) -> str:
    dims = kpi_labels(kpi)
    if not dims:
        return ""
    # prints "(campaign_id=spring-webinar)" for a breakdown series, nothing for the total
    return "".join(f'{{{{ with $labels.{d} }}}} {d}={{{{ . }}}}{{{{ end }}}}' for d in dims)


#: the dashboard link of a campaign's alert opens the dashboard on that campaign
_CAMPAIGN_LINK: Final = "{{ with $labels.campaign_id }}&var-campaign={{ . }}{{ end }}"


def anchor(name: str) -> str:
    """The runbook's anchor of an alert (Markdown renderers lower-case headings)."""
    return name.lower()


def kpi_rule(catalog: Catalog, kpi: Kpi, dashboard_url: str,
             runbook_url: str = DEFAULT_RUNBOOK_URL) -> dict[str, Any]:
    alert = kpi.alert
    assert alert is not None
    direction = "below" if alert.op == "below" else "above"
    value = f"{{{{ $value | {_value_fmt(kpi)} }}}}"
    return {
        "alert": alert_name(kpi),
        "expr": kpi_alert_expr(catalog, kpi),
        "for": alert.for_,
        "labels": {"severity": alert.severity, "kpi": kpi.name},
        "annotations": {
            "summary": f"{kpi.name} {direction} {_threshold_text(kpi, alert)} "
                       f"({alert.window} window){_where(kpi)}",
            "description": _describe(kpi, value, direction),
            "dashboard_url": dashboard_url + (
                _CAMPAIGN_LINK if "campaign_id" in kpi_labels(kpi) else ""),
            "runbook_url": f"{runbook_url}#{anchor(alert_name(kpi))}",
        },
    }


#: alerts on the engine itself: (name, expr, for, severity, summary, description)
ENGINE_ALERTS: Final = (
    ("KpiEngineDown", f'up{{job="{JOB}"}} == 0', "1m", "critical",
     "kpi-engine worker {{ $labels.instance }} is down",
     "Prometheus cannot scrape the worker: its partitions move to the other workers, or "
     "nothing is computed."),
    ("KpiEngineNoEvents", "(sum(rate(kpi_engine_events_total[10m])) or vector(0)) == 0",
     "10m", "warning", "kpi-engine counts no events",
     "No valid event was counted for 10 minutes: producers, topics or the workers' group "
     "are broken."),
    ("KpiEngineWatermarkStalled",
     "changes(kpi_engine_watermark_seconds[10m]) == 0\n"
     "and on(topic)\n"
     "sum by (topic) (rate(kpi_engine_events_total[10m])) > 0",
     "5m", "warning", "Watermark of {{ $labels.topic }} stalled",
     "Events arrive on {{ $labels.topic }} but its event-time watermark has not moved for "
     "10 minutes: windows do not close (a silent partition holds it back?)."),
    ("KpiEngineDlqRateHigh",
     "sum(rate(kpi_engine_events_invalid_total[5m]))\n"
     "/ (sum(rate(kpi_engine_events_invalid_total[5m])) + sum(rate(kpi_engine_events_total[5m])))"
     "\n> 0.05",
     "10m", "warning", "More than 5% of input is invalid",
     "{{ $value | humanizePercentage }} of input goes to kpi-dlq; its `error` header says "
     "why."),
    ("KpiEngineLateRateHigh",
     "sum(rate(kpi_engine_events_late_total[5m]))\n"
     "/ (sum(rate(kpi_engine_events_late_total[5m])) + sum(rate(kpi_engine_events_total[5m])))"
     "\n> 0.05",
     "10m", "warning", "More than 5% of input is late",
     "{{ $value | humanizePercentage }} of input arrives after its windows closed (see "
     "kpi-late): raise the family's grace or fix the producer's delay."),
    ("KpiEngineConsumerLagHigh", "sum by (topic) (kpi_engine_consumer_lag) > 50000", "10m",
     "warning", "Consumer lag on {{ $labels.topic }} above 50k",
     "The workers fall behind on {{ $labels.topic }} ({{ $value }} messages): scale out "
     "with more workers (up to the partition count)."),
)


def dashboard_link(grafana_url: str, uid: str, slug: str, window: str) -> str:
    return f"{grafana_url}/d/{uid}/{slug}?var-window={window}"


def rules(catalog: Catalog, grafana_url: str = DEFAULT_GRAFANA_URL,
          for_override: str | None = None,
          runbook_url: str = DEFAULT_RUNBOOK_URL) -> dict[str, Any]:
    """The rule file. ``for_override`` replaces every `for:` (live tests use seconds)."""
    from kpi_engine.dashboards import OVERVIEW_SLUG, OVERVIEW_UID

    kpi_rules = []
    for kpi in catalog.kpis.values():
        if kpi.alert is None:
            continue
        url = dashboard_link(grafana_url, OVERVIEW_UID, OVERVIEW_SLUG, kpi.alert.window)
        kpi_rules.append(kpi_rule(catalog, kpi, url, runbook_url))
    engine_rules = [
        {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
         "annotations": {"summary": summary, "description": description,
                         "dashboard_url": dashboard_link(grafana_url, OVERVIEW_UID,
                                                         OVERVIEW_SLUG, "5m"),
                         "runbook_url": f"{runbook_url}#{anchor(name)}"}}
        for name, expr, for_, severity, summary, description in ENGINE_ALERTS]
    if for_override is not None:
        for r in kpi_rules + engine_rules:
            r["for"] = for_override
    return {"groups": [{"name": "kpi-thresholds", "rules": kpi_rules},
                       {"name": "kpi-engine", "rules": engine_rules}]}


# ---- promtool unit tests of the KPI alerts ---------------------------------------------


def _render(template: str, value: float, labels: dict[str, str]) -> str:
    """Enough of Go templates to render this module's annotations for promtool tests."""
    out = template.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")
    out = out.replace('{{ $value | printf "%.2f" }}', f"{value:.2f}")
    for d in sorted({*labels, "campaign_id", "segment", "channel", "network", "client",
                     "goal", "page", "stage"}):
        v = labels.get(d)
        out = out.replace(f"{{{{ with $labels.{d} }}}} {d}={{{{ . }}}}{{{{ end }}}}",
                          f" {d}={v}" if v else "")
    v = labels.get("campaign_id")
    out = out.replace(_CAMPAIGN_LINK, f"&var-campaign={v}" if v else "")
    return out


def _test_values(alert: Alert) -> tuple[float, float]:
    """(a value crossing the threshold, a healthy value), both exact in binary-safe steps."""
    t = alert.threshold
    step = abs(t) / 2 if t else 10.0
    bad = t - step if alert.op == "below" else t + step
    good = t + step if alert.op == "below" else t - step
    return bad, good


def _duration_minutes(text: str) -> int:
    from metrics.catalog import parse_duration_ms

    return max(1, math.ceil(parse_duration_ms(text) / 60_000))


def kpi_alert_tests(catalog: Catalog, rules_doc: dict[str, Any]) -> dict[str, Any]:
    """For every KPI alert: it fires on a breakdown series crossing the threshold with
    volume; it does not fire below the volume guard, nor on a healthy value, nor before
    its `for:` has elapsed."""
    rule_by_name = {r["alert"]: r for g in rules_doc["groups"] for r in g["rules"]}
    tests = []
    for kpi in catalog.kpis.values():
        alert = kpi.alert
        if alert is None:
            continue
        name = metric_name(catalog, kpi)
        rule = rule_by_name[alert_name(kpi)]
        dims = kpi_labels(kpi)
        bad, good = _test_values(alert)
        vol = alert.min_denominator * 2 or 10
        low_vol = alert.min_denominator / 2
        for_m = _duration_minutes(alert.for_)
        n = for_m + 5
        labels = {"window": alert.window, **({dims[0]: "c1"} if dims else {})}
        sel = ",".join(f'{k}="{v}"' for k, v in labels.items())

        compared = compared_metric(catalog, kpi)

        def series(value: float, den: float, name: str = name, sel: str = sel, n: int = n,
                   compared: str = compared) -> list[dict[str, str]]:
            return [{"series": f"{compared}{{{sel}}}", "values": f"{value:g}x{n}"},
                    {"series": f"{name}_denominator{{{sel}}}", "values": f"{den:g}x{n}"}]

        exp_labels = {"severity": alert.severity, "kpi": kpi.name, **labels}
        annotations = {k: _render(v, bad, labels) for k, v in rule["annotations"].items()}
        late = f"{for_m + 1}m"
        tests += [
            # crossing with volume: pending until `for:` has elapsed, then firing
            {"interval": "1m", "input_series": series(bad, vol), "alert_rule_test": [
                {"eval_time": f"{max(0, for_m - 1)}m", "alertname": rule["alert"],
                 "exp_alerts": []},
                {"eval_time": late, "alertname": rule["alert"],
                 "exp_alerts": [{"exp_labels": exp_labels, "exp_annotations": annotations}]},
            ]},
            # crossing below the volume guard: silent
            {"interval": "1m", "input_series": series(bad, low_vol), "alert_rule_test": [
                {"eval_time": late, "alertname": rule["alert"], "exp_alerts": []}]},
            # healthy with volume: silent
            {"interval": "1m", "input_series": series(good, vol), "alert_rule_test": [
                {"eval_time": late, "alertname": rule["alert"], "exp_alerts": []}]},
        ]
    return {"rule_files": [f"../{RULES_FILE}"], "evaluation_interval": "1m", "tests": tests}


class _Dumper(yaml.SafeDumper):
    """Multi-line PromQL as literal blocks, as a person would write it."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def _dump(doc: dict[str, Any], header: str) -> str:
    return header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=200,
                              allow_unicode=True)


HEADER: Final = ("# Generated by `kpi-engine rules` from the KPI catalog: edit the catalog or\n"
                 "# kpi_engine/alerting.py, not this file (a test fails when it is stale).\n")


def generated_files(catalog: Catalog, grafana_url: str = DEFAULT_GRAFANA_URL
                    ) -> dict[str, str]:
    """Paths (relative to prometheus/) -> contents."""
    doc = rules(catalog, grafana_url)
    return {RULES_FILE: _dump(doc, HEADER),
            TESTS_FILE: _dump(kpi_alert_tests(catalog, doc), HEADER)}


def write_files(files: dict[str, str], out_dir: Path) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        written.append(path)
    return written


# ---- the runbook -------------------------------------------------------------------------

#: what to check first, per topic family of a KPI alert
_FIRST_CHECKS: Final = {
    "email": "Which campaign or segment (the alert's labels)? A new list, a sender domain "
             "or template change, a deliverability incident at a mailbox provider? Compare "
             "`kpi_email_bounce_rate` and `kpi_email_undelivered_rate` for the same campaign.",
    "web": "Which channel? A tracking tag removed, a landing page broken or slow, a traffic "
           "source changed (bot traffic raises bounce)? Check the page's own analytics.",
    "social": "Which network? An impression-heavy boost without engagement, a paused "
              "campaign, the network's reporting delayed?",
    "crm": "Which channel or campaign? A CRM sync stopped or delayed (deal stages arrive "
           "late), a change of qualification rules, a sales team capacity issue?",
    "spend": "Which channel or campaign? A budget booked twice or in the wrong period, a "
             "campaign paused while its spend continues?",
}


def runbook(catalog: Catalog) -> str:
    """docs/runbook.md: what each alert means and what to check first; every rule's
    ``runbook_url`` points at its section."""
    lines = ["# Alert runbook", "",
             "Generated from the catalog by `kpi-engine provisioning` (every alert rule's "
             "`runbook_url` points at its section). Routing and calibration: "
             "observability.md.", "", "## KPI alerts", ""]
    for kpi in catalog.kpis.values():
        a = kpi.alert
        if a is None:
            continue
        name = alert_name(kpi)
        fam = kpi.families[0]
        lines += [f"### {name}", "",
                  f"- **Fires when** `{kpi.name}` ({kpi.description.rstrip('.')}) is "
                  f"{a.op} {_threshold_text(kpi, a)} on the {a.window} window for {a.for_}, "
                  f"with at least {a.min_denominator:g} in its denominator "
                  f"(severity {a.severity}).",
                  f"- **First checks:** {_FIRST_CHECKS.get(fam, '')}",
                  "- **Not a real drop?** The engine's own alerts below (late or invalid "
                  "input, a stalled watermark, lag) can make a KPI look wrong: rule them "
                  "out first.", ""]
    lines += ["## Engine alerts", ""]
    for name, _, for_, severity, summary, description in ENGINE_ALERTS:
        lines += [f"### {name}", "",
                  f"- **Fires when** {_plain(summary)} (for {for_}, severity {severity}).",
                  f"- **Means:** {_plain(description)}",
                  "- **Runbook:** operations.md.", ""]
    return "\n".join(lines)


def _plain(template: str) -> str:
    """An annotation template in prose: its label references named, not rendered."""
    return (template.replace("{{ $labels.instance }}", "(instance)")
            .replace("{{ $labels.topic }}", "(topic)")
            .replace("{{ $value | humanizePercentage }}", "a share")
            .replace("{{ $value }}", "N"))
