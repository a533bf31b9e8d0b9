"""Grafana dashboards generated from the KPI catalog (`kpi-engine dashboards`), built with
grafana-foundation-sdk, Grafana's typed builders (a misspelt option fails here, not in Grafana).

Three dashboards with fixed uids, the Prometheus datasource referenced by uid:
- overview: for ops, every KPI's current total against its alert threshold, and engine health;
- email, web and social: breakdowns per campaign, channel, segment, client, page, network;
- pipeline and ROI: the CRM funnel, win rate, cycle, velocity, CPL, CPA, ROMI, NPS;
- accounts: the accounts stage's KPIs (spend against revenue, attribution by model).
Each has the window selector and campaign / channel (and attribution model) variables, and
links to the others.
"""

from __future__ import annotations

import json
from typing import Any, Final

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from metrics.catalog import Catalog, Kpi, metric_name, parse_duration_ms
from metrics.scorecards import Scorecards

#: panels query the data source the `datasource` variable names (default: the provisioned
#: Prometheus, uid ``DEFAULT_DATASOURCE_UID``)
DATASOURCE: Final = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
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
    "kpi-accounts": ("accounts.json", "KPI engine: accounts", ("accounts",)),
}
#: breakdown dimension -> dashboard variable that filters it
FILTER_VARS: Final = {"campaign_id": "campaign", "channel": "channel", "model": "model"}

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


def breakdown_selector(kpi: Kpi, breakdown: str) -> str:
    """The series of one breakdown (``a+b``: a combined one): its dimensions set (filtered
    by their variables), the KPI's others empty."""
    fields = breakdown.split("+")
    others = [f'{d}=""' for d in dims_of(kpi) if d not in fields]
    match = [f'{d}=~"${FILTER_VARS[d]}"' if d in FILTER_VARS else f'{d}!=""' for d in fields]
    return ", ".join(['window="$window"', *match, *others])


def detail_uid(kpi: Kpi) -> str:
    for uid, (_, _, fams) in DETAIL.items():
        if kpi.families[0] in fams:
            return uid
    raise AssertionError(kpi.name)


Panel = stat.Panel | timeseries.Panel | table.Panel


def _thresholds(kpi: Kpi) -> db.ThresholdsConfig:
    alert = kpi.alert
    if alert is None:
        steps = [dm.Threshold(None, "blue")]
    else:
        low, high = ("red", "green") if alert.op == "below" else ("green", "red")
        steps = [dm.Threshold(None, low), dm.Threshold(alert.threshold, high)]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def _target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
            .datasource(DATASOURCE))


def _table_target(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    """An instant query read as a table (one row per series)."""
    return _target(expr, legend, ref).instant().format(pm.PromQueryFormat.TABLE)


def _link(title: str, uid: str, slug: str) -> db.DashboardLink:
    """A link to another dashboard that carries the time range and the variables."""
    return (db.DashboardLink(title).type(dm.DashboardLinkType.LINK).url(f"/d/{uid}/{slug}")
            .tooltip(title).icon("dashboard").tags([]).as_dropdown(False).include_vars(True)
            .keep_time(True).target_blank(False))


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
    """Lays panels left to right on Grafana's 24-column grid, and numbers them."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, panel: Panel, w: int, h: int) -> Panel:
        if self.x + w > 24:
            self.newline()
        panel.grid_pos(dm.GridPos(h=h, w=w, x=self.x, y=self.y)).id(self.next_id)
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> db.Row:
        self.newline()
        row = (db.Row(title).collapsed(False).id(self.next_id)
               .grid_pos(dm.GridPos(h=1, w=24, x=0, y=self.y)))
        self.next_id += 1
        self.y += 1
        return row


def _stat(catalog: Catalog, kpi: Kpi, link: db.DashboardLink | None) -> stat.Panel:
    panel = (stat.Panel().title(kpi.name).description(_description(kpi)).datasource(DATASOURCE)
             .with_target(_target(f"{metric_name(catalog, kpi)}{{{total_selector(kpi)}}}",
                                  kpi.name))
             .unit(grafana_unit(catalog, kpi)).thresholds(_thresholds(kpi))
             .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
             .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("")
                             .values(False))
             .color_mode(cm.BigValueColorMode.BACKGROUND).graph_mode(cm.BigValueGraphMode.AREA)
             .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
             .justify_mode(cm.BigValueJustifyMode.AUTO).orientation(cm.VizOrientation.AUTO))
    if link is not None:
        panel.links([link])
    return panel


def _gray(*more: dm.DynamicConfigValue) -> list[dm.DynamicConfigValue]:
    return [*more, dm.DynamicConfigValue("custom.lineWidth", 0),
            dm.DynamicConfigValue("color", {"mode": "fixed", "fixedColor": "gray"})]


def _timeseries(catalog: Catalog, kpi: Kpi, breakdown: str | None) -> timeseries.Panel:
    name = metric_name(catalog, kpi)
    if breakdown is None:
        targets = [_target(f"{name}{{{total_selector(kpi)}}}", "total")]
        title = f"{kpi.name}"
    else:
        legend = " ".join(f"{{{{{d}}}}}" for d in breakdown.split("+"))
        targets = [_target(f"{name}{{{breakdown_selector(kpi, breakdown)}}}", legend),
                   _target(f"{name}{{{total_selector(kpi)}}}", "total", "B")]
        title = f"{kpi.name} by {breakdown}"
    panel = (timeseries.Panel().title(title).description(_description(kpi))
             .datasource(DATASOURCE)
             .unit(grafana_unit(catalog, kpi)).thresholds(_thresholds(kpi))
             .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
             .thresholds_style(cb.GraphThresholdsStyleConfig().mode(
                 cm.GraphThresholdsStyleMode.LINE if kpi.alert
                 else cm.GraphThresholdsStyleMode.OFF))
             .line_width(2).fill_opacity(5).span_nulls(True)
             .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                     .placement(cm.LegendPlacement.RIGHT).calcs(["lastNotNull"])
                     .show_legend(True))
             .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                      .sort(cm.SortOrder.DESCENDING)))
    for target in targets:
        panel.with_target(target)
    if kpi.interval:  # the total's 95 % interval, drawn as a band
        total = total_selector(kpi)
        panel.with_target(_target(f"{name}_lower{{{total}}}", BAND_LOW, "C"))
        panel.with_target(_target(f"{name}_upper{{{total}}}", BAND_HIGH, "D"))
        panel.override_by_name(BAND_HIGH, _gray(
            dm.DynamicConfigValue("custom.fillBelowTo", BAND_LOW),
            dm.DynamicConfigValue("custom.fillOpacity", 20)))
        panel.override_by_name(BAND_LOW, _gray())
    return panel


#: rates over Grafana's interval: at least four scrapes, whatever the zoom
RATE: Final = "[$__rate_interval]"
BAND_LOW: Final = "total, 95 % low"
BAND_HIGH: Final = "total, 95 % high"


def _variables(catalog: Catalog, default_window: str, filters: bool = True,
               shown: tuple[str, ...] = ()) -> list[Any]:
    """The data source, the window, and (``filters``) the campaign and channel the
    breakdown panels filter by (on every dashboard: its links carry them), and the
    attribution model where a KPI of the ``shown`` families has one."""
    windows = sorted({w.name for f in catalog.families.values() for w in f.windows},
                     key=parse_duration_ms)
    out: list[Any] = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .regex("").current(dm.VariableOption(text="Prometheus", value=DEFAULT_DATASOURCE_UID)),
        db.CustomVariable("window").label("Window")
        .description("Rolling window of the KPIs (each KPI has the windows of its topic "
                     "family: 5m/1h/24h for email, web and social; 24h/7d/30d for CRM "
                     "and spend).")
        .values(",".join(windows))
        .current(dm.VariableOption(text=default_window, value=default_window))
        .options([dm.VariableOption(selected=w == default_window, text=w, value=w)
                  for w in windows]),
    ]
    for dim, var in FILTER_VARS.items():
        kpis = [k for k in catalog.kpis.values()
                if dim in dims_of(k) and (var != "model" or k.families[0] in shown)]
        if not filters or not kpis:
            continue
        # the values any KPI carries (CRM- and spend-only campaigns included); "All" is
        # `.+`: a breakdown series has the label, the total has it empty and stays out
        query = f'label_values({{__name__=~"kpi_.+", {dim}!=""}}, {dim})'
        out.append(
            db.QueryVariable(var).label(dim).datasource(DATASOURCE)
            .query({"query": query, "refId": f"{var}-values"})
            .include_all(True).multi(True).all_value(".+")
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
            .current(dm.VariableOption(text="All", value="$__all")).options([]))
    return out


def _dashboard(uid: str, title: str, panels: list[Any], variables: list[Any]
               ) -> dict[str, Any]:
    board = (db.Dashboard(title).uid(uid)
             .description("Generated by `kpi-engine dashboards` from the KPI catalog.")
             .tags([TAG]).timezone("utc").readonly()
             .tooltip(dm.DashboardCursorSync.CROSSHAIR).refresh("10s").version(1)
             .time("now-6h", "now").variables(variables)
             # a Prometheus annotation query (ALERTS) has no place in the dashboard schema
             # of the pinned @grafana/schema: firing alerts are a panel of the overview
             .link(db.DashboardLink("KPI dashboards").type(dm.DashboardLinkType.DASHBOARDS)
                   .tags([TAG]).as_dropdown(False).icon("external link").include_vars(True)
                   .keep_time(True).target_blank(False).tooltip("").url("")))
    for p in panels:
        if isinstance(p, db.Row):
            board.with_row(p)
        else:
            board.with_panel(p)
    doc: dict[str, Any] = json.loads(JSONEncoder().encode(board.build()))
    # the builders write an older schema version and its `style`, gone from the pinned schema
    doc["schemaVersion"] = SCHEMA_VERSION
    doc.pop("style", None)
    for var in doc["templating"]["list"]:  # ... and an interval variable's fields on all
        for key in ("auto", "auto_count", "auto_min"):
            var.pop(key, None)
    doc["annotations"] = {"list": []}
    return doc


def _health_panels(grid: _Grid) -> list[Panel]:
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
    out: list[Panel] = []
    for title, expr, legend, unit in specs:
        out.append(grid.place(
            timeseries.Panel().title(title).datasource(DATASOURCE)
            .with_target(_target(expr, legend)).unit(unit)
            .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.PALETTE_CLASSIC))
            .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST)
                    .placement(cm.LegendPlacement.BOTTOM).calcs([]).show_legend(True))
            .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI)
                     .sort(cm.SortOrder.NONE)), 6, 7))
    return out


def _organize(exclude: list[str], rename: dict[str, str] | None = None
              ) -> dm.DataTransformerConfig:
    options: dict[str, Any] = {"excludeByName": dict.fromkeys(exclude, True)}
    if rename:
        options["renameByName"] = rename
    return dm.DataTransformerConfig(id_val="organize", options=options)


def _table(title: str, description: str) -> table.Panel:
    return (table.Panel().title(title).datasource(DATASOURCE).description(description)
            .show_header(True)
            .footer(cb.TableFooterOptions().show(False).reducer(["count"]).fields([])))


def _firing_alerts() -> table.Panel:
    """The alerts firing now (Prometheus' ALERTS series), KPI and engine ones."""
    return (_table("Firing alerts", "Every alert firing now, with its labels (the KPI, window "
                   "and campaign or channel of a breakdown alert). Runbook: docs/runbook.md.")
            .with_target(_table_target('ALERTS{alertstate="firing"}', "{{alertname}}", "A"))
            .with_transformation(_organize(["Time", "Value", "__name__", "alertstate",
                                            "job"])))


def _scorecards(catalog: Catalog) -> table.Panel | None:
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
    panel = _table("Campaign scorecards (since each campaign's first send)",
                   "Per campaign, every email rate over its lifetime, each response counted "
                   "at the send it answers (docs/catalog.md).")
    rename = {}
    for i, (title, expr, unit) in enumerate(columns):
        ref = chr(ord("A") + i)
        panel.with_target(_table_target(expr, title, ref))
        rename[f"Value #{ref}"] = title
        panel.override_by_name(title, [dm.DynamicConfigValue("unit", unit)])
    panel.with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
    return panel.with_transformation(_organize(["Time"], rename))


def overview(catalog: Catalog) -> dict[str, Any]:
    grid = _Grid()
    panels: list[Any] = []
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
    panels: list[Any] = []
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
            shown: list[str | None] = [*sorted(kpi.breakdowns)] or [None]
            for breakdown in shown:
                panel = _timeseries(catalog, kpi, breakdown)
                panel.links([back])
                panels.append(grid.place(panel, 12, 8))
    default = "1h" if "email" in fams else "30d"
    return _dashboard(uid, title, panels, _variables(catalog, default, shown=fams))


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
