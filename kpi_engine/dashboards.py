"""Grafana dashboards generated from the KPI catalog (`kpi-engine dashboards`).

Three dashboards with fixed uids, the Prometheus datasource referenced by uid:
- overview: for ops, every KPI's current total against its alert threshold, and engine health;
- email, web and social: breakdowns per campaign, channel, segment, client, page, network;
- pipeline and ROI: the CRM funnel, win rate, cycle, velocity, CPL, CPA, ROMI, NPS.
Each has the window selector and campaign / channel variables, and links to the others.
"""

from __future__ import annotations

import json
from typing import Any, Final

from metrics.catalog import Catalog, Kpi, metric_name, parse_duration_ms
from metrics.scorecards import Scorecards

#: panels query the data source the `datasource` variable names (default: the provisioned
#: Prometheus, uid ``DEFAULT_DATASOURCE_UID``)
DATASOURCE: Final = {"type": "prometheus", "uid": "${datasource}"}
DEFAULT_DATASOURCE_UID: Final = "kpi-prometheus"
OVERVIEW_UID: Final = "kpi-overview"
OVERVIEW_SLUG: Final = "kpi-engine-overview"
TAG: Final = "kpi-engine"
SCHEMA_VERSION: Final = 39

#: dashboard uid -> (file name, title, topic families shown)
DETAIL: Final = {
    "kpi-email-web": ("email-web.json", "KPI engine: email, web and social",
                      ("email", "web", "social")),
    "kpi-pipeline-roi": ("pipeline-roi.json", "KPI engine: pipeline and ROI",
                         ("crm", "spend")),
}
#: breakdown dimension -> dashboard variable that filters it
FILTER_VARS: Final = {"campaign_id": "campaign", "channel": "channel"}

_UNITS: Final = {"ratio": "percentunit", "seconds": "s", "days": "d", "count": "short",
                 "per_day": "short", "score": "none"}


def grafana_unit(catalog: Catalog, kpi: Kpi) -> str:
    if kpi.unit == "currency":
        return f"currency{catalog.currency}"
    return _UNITS[kpi.unit]


def dims_of(kpi: Kpi) -> list[str]:
    return sorted({d for b in kpi.breakdowns for d in b.split("+")})


def total_selector(kpi: Kpi) -> str:
    """The total series: every dimension label empty."""
    return ", ".join(['window="$window"', *(f'{d}=""' for d in dims_of(kpi))])


def breakdown_selector(kpi: Kpi, dim: str) -> str:
    others = [f'{d}=""' for d in dims_of(kpi) if d != dim]
    var = FILTER_VARS.get(dim)
    match = f'{dim}=~"${var}"' if var else f'{dim}!=""'
    return ", ".join(['window="$window"', match, *others])


def detail_uid(kpi: Kpi) -> str:
    for uid, (_, _, fams) in DETAIL.items():
        if kpi.families[0] in fams:
            return uid
    raise AssertionError(kpi.name)


def _thresholds(kpi: Kpi) -> dict[str, Any]:
    alert = kpi.alert
    if alert is None:
        return {"mode": "absolute", "steps": [{"color": "blue", "value": None}]}
    low, high = ("red", "green") if alert.op == "below" else ("green", "red")
    return {"mode": "absolute", "steps": [{"color": low, "value": None},
                                          {"color": high, "value": alert.threshold}]}


def _target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}


def _link(title: str, uid: str, slug: str) -> dict[str, Any]:
    """A link to another dashboard that carries the time range and the variables."""
    return {"title": title, "type": "link", "url": f"/d/{uid}/{slug}", "tooltip": title,
            "icon": "dashboard", "tags": [], "asDropdown": False, "includeVars": True,
            "keepTime": True, "targetBlank": False}


def _slug(title: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-").replace(
        "--", "-").replace("--", "-")


def _description(kpi: Kpi) -> str:
    text = kpi.description
    if kpi.alert is not None:
        a = kpi.alert
        text += (f" Alert {a.op} {a.threshold:g} on the {a.window} window, for {a.for_}, "
                 f"with at least {a.min_denominator:g} in the denominator.")
    return text


class _Grid:
    """Lays panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, panel: dict[str, Any], w: int, h: int) -> dict[str, Any]:
        if self.x + w > 24:
            self.newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        panel["id"] = self.next_id
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> dict[str, Any]:
        self.newline()
        panel = {"type": "row", "title": title, "collapsed": False, "panels": [],
                 "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "id": self.next_id}
        self.next_id += 1
        self.y += 1
        return panel


def _stat(catalog: Catalog, kpi: Kpi, link: dict[str, Any] | None) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": "stat",
        "title": kpi.name,
        "description": _description(kpi),
        "datasource": DATASOURCE,
        "targets": [_target(f"{metric_name(catalog, kpi)}{{{total_selector(kpi)}}}",
                            kpi.name)],
        "fieldConfig": {"defaults": {"unit": grafana_unit(catalog, kpi),
                                     "thresholds": _thresholds(kpi),
                                     "color": {"mode": "thresholds"}},
                        "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "area", "textMode": "value_and_name",
                    "justifyMode": "auto", "orientation": "auto"},
    }
    if link is not None:
        panel["links"] = [link]
    return panel


def _timeseries(catalog: Catalog, kpi: Kpi, dim: str | None) -> dict[str, Any]:
    name = metric_name(catalog, kpi)
    if dim is None:
        targets = [_target(f"{name}{{{total_selector(kpi)}}}", "total")]
        title = f"{kpi.name}"
    else:
        targets = [_target(f"{name}{{{breakdown_selector(kpi, dim)}}}", f"{{{{{dim}}}}}"),
                   _target(f"{name}{{{total_selector(kpi)}}}", "total", "B")]
        title = f"{kpi.name} by {dim}"
    overrides: list[dict[str, Any]] = []
    if kpi.interval:  # the total's 95 % interval, drawn as a band
        targets += [_target(f"{name}_lower{{{total_selector(kpi)}}}", BAND_LOW, "C"),
                    _target(f"{name}_upper{{{total_selector(kpi)}}}", BAND_HIGH, "D")]
        overrides = [
            {"matcher": {"id": "byName", "options": BAND_HIGH},
             "properties": [{"id": "custom.fillBelowTo", "value": BAND_LOW},
                            {"id": "custom.lineWidth", "value": 0},
                            {"id": "custom.fillOpacity", "value": 20},
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": "gray"}}]},
            {"matcher": {"id": "byName", "options": BAND_LOW},
             "properties": [{"id": "custom.lineWidth", "value": 0},
                            {"id": "color", "value": {"mode": "fixed", "fixedColor": "gray"}}]}]
    thresholds = _thresholds(kpi)
    return {
        "type": "timeseries",
        "title": title,
        "description": _description(kpi),
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {
            "unit": grafana_unit(catalog, kpi), "thresholds": thresholds,
            "color": {"mode": "palette-classic"},
            "custom": {"thresholdsStyle": {"mode": "line" if kpi.alert else "off"},
                       "lineWidth": 2, "fillOpacity": 5, "spanNulls": True}},
            "overrides": overrides},
        "options": {"legend": {"displayMode": "table", "placement": "right",
                               "calcs": ["lastNotNull"], "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }


#: rates over Grafana's interval: at least four scrapes, whatever the zoom
RATE: Final = "[$__rate_interval]"
BAND_LOW: Final = "total, 95 % low"
BAND_HIGH: Final = "total, 95 % high"


def _variables(catalog: Catalog, default_window: str, filters: bool = True
               ) -> list[dict[str, Any]]:
    """The data source, the window, and (``filters``) the campaign and channel the
    breakdown panels filter by."""
    windows = sorted({w.name for f in catalog.families.values() for w in f.windows},
                     key=parse_duration_ms)
    out: list[dict[str, Any]] = [{
        "type": "datasource", "name": "datasource", "label": "Data source",
        "query": "prometheus", "refresh": 1, "regex": "", "options": [],
        "current": {"text": "Prometheus", "value": DEFAULT_DATASOURCE_UID},
    }, {
        "type": "custom", "name": "window", "label": "Window",
        "description": "Rolling window of the KPIs (each KPI has the windows of its topic "
                       "family: 5m/1h/24h for email, web and social; 24h/7d/30d for CRM "
                       "and spend).",
        "query": ",".join(windows),
        "current": {"text": default_window, "value": default_window},
        "options": [{"text": w, "value": w, "selected": w == default_window}
                    for w in windows],
    }]
    for var, dim in (("campaign", "campaign_id"), ("channel", "channel")):
        if not filters or not any(dim in dims_of(k) for k in catalog.kpis.values()):
            continue
        # the values any KPI carries (CRM- and spend-only campaigns included); "All" is
        # `.+`: a breakdown series has the label, the total has it empty and stays out
        query = f'label_values({{__name__=~"kpi_.+", {dim}!=""}}, {dim})'
        out.append({
            "type": "query", "name": var, "label": dim, "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{var}-values"},
            "includeAll": True, "multi": True, "allValue": ".+", "refresh": 2, "sort": 1,
            "current": {"text": "All", "value": "$__all"}, "options": [],
        })
    return out


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]],
               variables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": "Generated by `kpi-engine dashboards` from the KPI catalog.",
        "tags": [TAG],
        "timezone": "utc",
        "editable": False,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": variables},
        # a Prometheus annotation query (ALERTS) has no place in the dashboard schema of
        # the pinned @grafana/schema: firing alerts are a panel of the overview instead
        "annotations": {"list": []},
        "links": [{"title": "KPI dashboards", "type": "dashboards", "tags": [TAG],
                   "asDropdown": False, "icon": "external link", "includeVars": True,
                   "keepTime": True, "targetBlank": False, "tooltip": "", "url": ""}],
        "panels": panels,
    }


def _health_panels(grid: _Grid) -> list[dict[str, Any]]:
    specs = (
        ("Events counted per second, by topic",
         f"sum by (topic) (rate(kpi_engine_events_total{RATE}))", "{{topic}}", "short"),
        ("Invalid events per second (DLQ), by reason",
         f"sum by (reason) (rate(kpi_engine_events_invalid_total{RATE}))", "{{reason}}",
         "short"),
        ("Late events per second, by topic",
         f"sum by (topic) (rate(kpi_engine_events_late_total{RATE}))", "{{topic}}", "short"),
        ("Duplicate events per second", f"sum(rate(kpi_engine_events_duplicate_total{RATE}))",
         "duplicates", "short"),
        ("Watermark delay behind wall clock, by topic",
         "time() - max by (topic) (kpi_engine_watermark_seconds)", "{{topic}}", "s"),
        ("Consumer lag, by topic", "sum by (topic) (kpi_engine_consumer_lag)", "{{topic}}",
         "short"),
        ("Emit latency p99",
         "histogram_quantile(0.99, sum by (le) "
         f"(rate(kpi_engine_emit_latency_seconds_bucket{RATE})))",
         "p99", "s"),
        ("Workers up", 'sum(up{job="kpi-engine"})', "workers", "short"),
    )
    out = []
    for title, expr, legend, unit in specs:
        out.append(grid.place({
            "type": "timeseries", "title": title, "datasource": DATASOURCE,
            "targets": [_target(expr, legend)],
            "fieldConfig": {"defaults": {"unit": unit, "color": {"mode": "palette-classic"}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom",
                                   "calcs": [], "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
        }, 6, 7))
    return out


def _firing_alerts() -> dict[str, Any]:
    """The alerts firing now (Prometheus' ALERTS series), KPI and engine ones."""
    target = _target('ALERTS{alertstate="firing"}', "{{alertname}}")
    target.update(instant=True, format="table")
    return {
        "type": "table", "title": "Firing alerts", "datasource": DATASOURCE,
        "description": "Every alert firing now, with its labels (the KPI, window and "
                       "campaign or channel of a breakdown alert). Runbook: docs/runbook.md.",
        "targets": [target],
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True, "__name__": True,
                              "alertstate": True, "job": True}}}],
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "footer": {"show": False, "reducer": ["count"],
                                                     "fields": ""}},
    }


def _scorecards(catalog: Catalog) -> dict[str, Any] | None:
    """Per campaign, its lifetime email rates (the scorecards, window="lifetime") and sends:
    one row per campaign, one column per KPI."""
    kpis = Scorecards(catalog, {}).kpis
    if not kpis:
        return None
    sel = 'window="lifetime", campaign_id=~"$campaign"'
    first = metric_name(catalog, kpis[0])
    columns = [("sent", f"max by (campaign_id) ({first}_denominator{{{sel}}})", "short")]
    columns += [(k.name, f"max by (campaign_id) ({metric_name(catalog, k)}{{{sel}}})",
                 grafana_unit(catalog, k)) for k in kpis]
    targets, rename, overrides = [], {}, []
    for i, (title, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + i)
        target = _target(expr, title, ref)
        target.update(instant=True, format="table")
        targets.append(target)
        rename[f"Value #{ref}"] = title
        overrides.append({"matcher": {"id": "byName", "options": title},
                          "properties": [{"id": "unit", "value": unit}]})
    return {
        "type": "table", "title": "Campaign scorecards (since each campaign's first send)",
        "datasource": DATASOURCE,
        "description": "Per campaign, every email rate over its lifetime, each response "
                       "counted at the send it answers (docs/catalog.md).",
        "targets": targets,
        "transformations": [{"id": "merge", "options": {}},
                            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                                           "renameByName": rename}}],
        "fieldConfig": {"defaults": {}, "overrides": overrides},
        "options": {"showHeader": True, "footer": {"show": False, "reducer": ["count"],
                                                     "fields": ""}},
    }


def overview(catalog: Catalog) -> dict[str, Any]:
    grid = _Grid()
    panels: list[dict[str, Any]] = []
    for uid, (_, title, fams) in DETAIL.items():
        kpis = [k for k in catalog.kpis.values() if k.families[0] in fams]
        if not kpis:
            continue
        panels.append(grid.row(title.removeprefix("KPI engine: ").capitalize()))
        link = _link(f"Breakdowns: {title}", uid, _slug(title))
        for kpi in kpis:
            panels.append(grid.place(_stat(catalog, kpi, link), 4, 5))
    panels.append(grid.row("Firing alerts"))
    panels.append(grid.place(_firing_alerts(), 24, 6))
    panels.append(grid.row("Engine health"))
    panels += _health_panels(grid)
    # its tiles are totals: no campaign or channel to choose
    return _dashboard(OVERVIEW_UID, "KPI engine: overview", panels,
                      _variables(catalog, "24h", filters=False))


def detail(catalog: Catalog, uid: str) -> dict[str, Any]:
    _, title, fams = DETAIL[uid]
    grid = _Grid()
    panels: list[dict[str, Any]] = []
    back = _link("Overview", OVERVIEW_UID, OVERVIEW_SLUG)
    for fam in fams:
        kpis = [k for k in catalog.kpis.values() if k.families[0] == fam]
        if not kpis:
            continue
        panels.append(grid.row(f"{fam} KPIs"))
        card = _scorecards(catalog) if fam == "email" else None
        if card is not None:
            panels.append(grid.place(card, 24, 6))
        for kpi in kpis:
            dims = dims_of(kpi)
            for dim in ([*dims] if dims else [None]):
                panel = _timeseries(catalog, kpi, dim)
                panel["links"] = [back]
                panels.append(grid.place(panel, 12, 8))
    default = "1h" if "email" in fams else "30d"
    return _dashboard(uid, title, panels, _variables(catalog, default))


def dashboards(catalog: Catalog) -> dict[str, dict[str, Any]]:
    """File name (under grafana/dashboards/) -> dashboard JSON model."""
    out = {"overview.json": overview(catalog)}
    for uid, (fname, _, _) in DETAIL.items():
        out[fname] = detail(catalog, uid)
    return out


def generated_files(catalog: Catalog) -> dict[str, str]:
    return {name: json.dumps(doc, indent=2, sort_keys=False) + "\n"
            for name, doc in dashboards(catalog).items()}


def panel_exprs(doc: dict[str, Any]) -> list[str]:
    """Every PromQL query of a dashboard: panel targets and query variables."""
    exprs = []
    for panel in doc["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs
