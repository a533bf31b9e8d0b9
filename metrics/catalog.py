"""Load and validate the declarative KPI catalog (see metrics/catalog.yaml for the format).
The model's types live in catalog_types.py and are re-exported here."""

from __future__ import annotations

import re
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from metrics.catalog_blocks import Checker, attribution_block, check_companions, mql_block
from metrics.catalog_types import (
    NAME_RE,
    Aggregate,
    Alert,
    Anomaly,
    Catalog,
    FamilyConfig,
    Formula,
    Kpi,
    Term,
    WindowSpec,
    metric_name,
    parse_duration_ms,
    parse_formula,
)
from metrics.constants import TOTAL
from metrics.errors import CatalogError
from metrics.events import ACCOUNTS, ENVELOPE_LEN, EVENT_TYPES, FAMILIES, IntRange
from metrics.trackers.registry import BUILTINS, MICRO_BUILTINS

DEFAULT_CATALOG: Final = "catalog.yaml"
UNITS: Final = frozenset({"ratio", "seconds", "days", "count", "per_day", "score", "currency"})
SEVERITIES: Final = frozenset({"critical", "warning", "info"})

__all__ = ["BUILTINS", "TOTAL", "Aggregate", "Alert", "Catalog", "FamilyConfig", "Formula", "Kpi",
           "Term", "WindowSpec", "build_catalog", "load_catalog", "metric_name",
           "parse_duration_ms", "parse_formula"]



def _event_fields(event_type: str) -> frozenset[str]:
    spec = EVENT_TYPES[event_type]
    names = {n for n, _ in spec.required + spec.optional} | {n for n, _ in ENVELOPE_LEN}
    return frozenset(names)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read a catalog file (the shipped default when ``path`` is None) and validate it."""
    if path is None:
        text = resources.files("metrics").joinpath(DEFAULT_CATALOG).read_text("utf-8")
        source = "default catalog"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise CatalogError([f"{path}: cannot read: {exc.strerror}"]) from exc
        source = str(path)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CatalogError([f"{source}: not valid YAML: {exc}"]) from exc
    return build_catalog(doc)


def build_catalog(doc: Any) -> Catalog:
    c = Checker()
    if not isinstance(doc, dict):
        raise CatalogError(["catalog: must be a mapping with families, aggregates and kpis"])
    if doc.get("version") != 1:
        c.fail("version", "must be 1")
    currency = doc.get("currency", "EUR")
    if not (isinstance(currency, str) and re.match(r"^[A-Z]{3}$", currency)):
        c.fail("currency", f"must be a 3-letter ISO code, got {currency!r}")
        currency = "EUR"
    max_series = doc.get("max_series", 50)
    if not isinstance(max_series, int) or max_series < 1:
        c.fail("max_series", "must be a positive integer")
        max_series = 50
    families = _families(doc, c)
    aggregates = _aggregates(doc, families, c)
    kpis = _kpis(doc, families, aggregates, c)
    check_companions({a.builtin for a in aggregates.values() if a.builtin}, c)
    for kpi in kpis.values():  # the stage is a shard of its own (metrics/feed.py)
        if ACCOUNTS in kpi.families and len(set(kpi.families)) > 1:
            c.fail(f"kpis.{kpi.name}", "reads the accounts stage and input families: its "
                   "aggregates must all be of one or the other")
    if c.problems:
        raise CatalogError(c.problems)
    needed: dict[str, set[str]] = {name: {TOTAL} for name in aggregates}
    for kpi in kpis.values():
        for b in kpi.breakdowns:
            num, den = kpi.formulas(b)
            dims = set(b.split("+"))
            # a mean's spread too: each row's interval reads its own sum of squares
            terms = [t.aggregate for f in num + den for t in f if not t.total]
            for agg in [*terms, kpi.spread] if kpi.spread else terms:
                if dims <= aggregates[agg].supported_dims:
                    needed[agg].add(b)
    breakdowns = {a: tuple(sorted(bs)) for a, bs in needed.items()}
    return Catalog(currency, max_series, families, aggregates, kpis, breakdowns,
                   attribution_block(doc.get("attribution"), c), mql_block(doc.get("mql"), c))


def _families(doc: dict[str, Any], c: Checker) -> dict[str, FamilyConfig]:
    hops_raw = doc.get("hops") or {}
    if not isinstance(hops_raw, dict):
        c.fail("hops", "must map window names to hop durations")
        hops_raw = {}
    fams_raw = doc.get("families")
    if not isinstance(fams_raw, dict):
        c.fail("families", "must map each topic family to {grace, windows}")
        return {}
    out: dict[str, FamilyConfig] = {}
    # the accounts stage is optional: a catalog without it has no account analytics
    for fam in (*FAMILIES, ACCOUNTS) if ACCOUNTS in fams_raw else FAMILIES:
        raw = fams_raw.get(fam)
        where = f"families.{fam}"
        if not isinstance(raw, dict):
            c.fail(where, "missing (every topic family needs grace and windows)")
            continue
        try:
            grace = parse_duration_ms(raw.get("grace", ""))
        except ValueError as exc:
            c.fail(f"{where}.grace", str(exc))
            continue
        specs: list[WindowSpec] = []
        for wname in raw.get("windows") or []:
            try:
                size = parse_duration_ms(wname)
                hop = parse_duration_ms(hops_raw.get(wname, "1h" if size >= 86_400_000 else ""))
            except ValueError as exc:
                c.fail(f"{where}.windows.{wname}", f"{exc} (declare its hop under hops)")
                continue
            if hop > size or size % hop:
                c.fail(f"hops.{wname}", f"hop {hop} ms must divide the window size {size} ms")
                continue
            specs.append(WindowSpec(str(wname), size, hop))
        if not specs:
            c.fail(f"{where}.windows", "needs at least one window")
            continue
        horizon = 0
        if raw.get("horizon") is not None:
            try:
                horizon = parse_duration_ms(raw["horizon"])
            except ValueError as exc:
                c.fail(f"{where}.horizon", str(exc))
        out[fam] = FamilyConfig(fam, grace, tuple(specs), horizon)
    for fam in fams_raw:
        if fam not in FAMILIES and fam != ACCOUNTS:
            c.fail(f"families.{fam}",
                   f"unknown topic family (known: {', '.join((*FAMILIES, ACCOUNTS))})")
    return out


def _aggregates(
    doc: dict[str, Any], families: dict[str, FamilyConfig], c: Checker
) -> dict[str, Aggregate]:
    raw_all = doc.get("aggregates")
    if not isinstance(raw_all, dict) or not raw_all:
        c.fail("aggregates", "must be a non-empty mapping")
        return {}
    out: dict[str, Aggregate] = {}
    for name, raw in raw_all.items():
        where = f"aggregates.{name}"
        if not NAME_RE.match(str(name)):
            c.fail(where, "names are lower_snake_case")
            continue
        if not isinstance(raw, dict):
            c.fail(where, "must be a mapping like {event: email.sent}")
            continue
        unknown = set(raw) - {"event", "builtin", "sum", "sum_squares", "has", "where"}
        if unknown:
            c.fail(where, f"unknown keys {sorted(unknown)}")
        if "builtin" in raw:
            b = raw["builtin"]
            if b not in BUILTINS:
                c.fail(where, f"unknown builtin {b!r} (known: {', '.join(sorted(BUILTINS))})")
                continue
            fam, dims = BUILTINS[b]
            out[name] = Aggregate(name, fam, builtin=b, supported_dims=dims)
            continue
        etype = raw.get("event")
        if etype not in EVENT_TYPES:
            c.fail(where, f"unknown event type {etype!r}")
            continue
        fields = _event_fields(etype)
        if "sum" in raw and "sum_squares" in raw:
            c.fail(where, "give one of sum or sum_squares")
        for key in ("sum", "has", "sum_squares"):
            if key in raw and raw[key] not in fields:
                c.fail(where, f"{key}: {raw[key]!r} is not a field of {etype}")
        where_raw = raw.get("where") or {}
        filters: list[tuple[str, frozenset[Any]]] = []
        if not isinstance(where_raw, dict):
            c.fail(where, "where: must map a field to a list of values")
            where_raw = {}
        for f, values in where_raw.items():
            if f not in fields:
                c.fail(where, f"where: {f!r} is not a field of {etype}")
            vals = values if isinstance(values, list) else [values]
            filters.append((f, frozenset(vals)))
        out[name] = Aggregate(
            name,
            EVENT_TYPES[etype].family,
            event=etype,
            sum_field=raw.get("sum", raw.get("sum_squares")),
            has_field=raw.get("has"),
            square="sum_squares" in raw,
            where=tuple(filters),
            supported_dims=fields - {"event_id", "url", "visitor_id", "duration_s", "amount"},
        )
    return out


def _kpis(
    doc: dict[str, Any],
    families: dict[str, FamilyConfig],
    aggregates: dict[str, Aggregate],
    c: Checker,
) -> dict[str, Kpi]:
    raw_all = doc.get("kpis")
    if not isinstance(raw_all, dict) or not raw_all:
        c.fail("kpis", "must be a non-empty mapping")
        return {}
    out: dict[str, Kpi] = {}
    for name, raw in raw_all.items():
        where = f"kpis.{name}"
        if not NAME_RE.match(str(name)) or not isinstance(raw, dict):
            c.fail(where, "must be a lower_snake_case name mapping to a KPI definition")
            continue
        known = {"description", "numerator", "denominator", "unit", "scale", "dims", "by_dim",
                 "spread"}
        unknown = set(raw) - known - {"alert", "windows", "anomaly"}
        if unknown:
            c.fail(where, f"unknown keys {sorted(unknown)}")
        n_problems = len(c.problems)
        num = _formula(raw.get("numerator"), f"{where}.numerator", aggregates, c)
        den: Formula = ()
        if raw.get("denominator") is not None:
            den = _formula(raw["denominator"], f"{where}.denominator", aggregates, c)
        unit = raw.get("unit")
        if unit not in UNITS:
            c.fail(f"{where}.unit", f"must be one of {sorted(UNITS)}")
        scale = raw.get("scale", 1)
        if not isinstance(scale, int | float) or isinstance(scale, bool):
            c.fail(f"{where}.scale", "must be a number")
            scale = 1
        by_dim: dict[str, tuple[Formula, Formula]] = {}
        for dim, over in (raw.get("by_dim") or {}).items():
            if not isinstance(over, dict):
                c.fail(f"{where}.by_dim.{dim}", "must map numerator/denominator to formulas")
                continue
            bnum = num
            if "numerator" in over:
                bnum = _formula(over["numerator"], f"{where}.by_dim.{dim}", aggregates, c)
            bden = den
            if "denominator" in over:
                bden = _formula(over["denominator"], f"{where}.by_dim.{dim}", aggregates, c)
            by_dim[str(dim)] = (bnum, bden)
        alert = _alert(raw.get("alert"), f"{where}.alert", c)  # checked whatever the rest
        if len(c.problems) > n_problems:
            continue
        breakdowns = tuple(str(d) for d in raw.get("dims") or [])
        kpi = Kpi(name, str(raw.get("description", "")), num, den, str(unit), float(scale),
                  breakdowns, by_dim)
        fams = sorted({aggregates[a].family for a in kpi.aggregates()})
        for b in breakdowns:
            bnum, _ = kpi.formulas(b)
            dims = set(b.split("+"))
            for term in (t for f in bnum for t in f):
                agg = aggregates[term.aggregate]
                if not term.total and not dims <= agg.supported_dims:
                    missing = sorted(dims - agg.supported_dims)
                    c.fail(f"{where}.dims", f"{b!r}: aggregate {agg.name} has no dimension "
                           f"{', '.join(missing)} (it has {', '.join(sorted(agg.supported_dims))})")
        for b in by_dim:
            if b not in breakdowns:
                c.fail(f"{where}.by_dim", f"{b!r} is not one of the KPI's dims")
        windows = _kpi_windows(raw.get("windows"), fams, families, where, c)
        if alert is not None and windows:
            # by default an alert watches the KPI's shortest window: the fastest to react
            shortest = min(windows, key=lambda w: parse_duration_ms(w))
            chosen = alert.window or shortest
            if chosen not in windows:
                c.fail(f"{where}.alert.window", f"{chosen!r} is not one of the KPI's windows "
                       f"{list(windows)}")
            alert = replace(alert, window=chosen)
        # a proportion: counts, and no growth rate ((x - y) / y)
        below = {t.aggregate for f in den for t in f}
        counts = all(_counts(aggregates[a]) for a in kpi.aggregates()) and not any(
            t.sign < 0 and t.aggregate in below for f in num for t in f)
        interval = "wilson" if kpi.unit == "ratio" and den and counts else \
            "poisson" if kpi.unit == "currency" and _cost_per_count(num, den, aggregates) \
            else ""
        spread = str(raw.get("spread") or "")
        if spread:
            if by_dim or not _is_mean(num, den, spread, aggregates):
                c.fail(f"{where}.spread", f"{spread!r}: a spread needs a mean (one sum over "
                       "one count, no by_dim) and an aggregate of the same family summing "
                       "the squares of what it averages")
                continue
            interval = "normal"
        anomaly = _anomaly(raw.get("anomaly"), f"{where}.anomaly", windows, c)
        out[name] = Kpi(name, kpi.description, num, den, kpi.unit, kpi.scale, breakdowns,
                        by_dim, windows, tuple(fams), alert, interval, spread, anomaly)
    return out


def _is_mean(num: Formula, den: Formula, spread: str, aggregates: dict[str, Aggregate]) -> bool:
    """One summed term over one counted term, and ``spread`` an aggregate of their family
    (a sum of squares, event or builtin)."""
    single = [f for f in (num, den) if len(f) == 1 and len(f[0]) == 1]
    if len(single) != 2 or spread not in aggregates:
        return False
    n, d = num[0][0], den[0][0]
    fams = {aggregates[n.aggregate].family, aggregates[d.aggregate].family,
            aggregates[spread].family}
    return len(fams) == 1 and not n.total and not d.total and n.sign == d.sign == 1


def _cost_per_count(num: Formula, den: Formula, aggregates: dict[str, Aggregate]) -> bool:
    """A cost per counted thing (spend / leads): the denominator one count, the numerator
    amounts of other families, known exactly. Its interval comes from the count's (Poisson);
    a mean (won amount / won deals) is not one: its amounts vary with the count."""
    if len(den) != 1 or len(den[0]) != 1:
        return False
    term = den[0][0]
    counted = aggregates[term.aggregate]
    if term.total or term.sign != 1 or not _counts(counted):
        return False
    return all(aggregates[t.aggregate].family != counted.family and t.sign == 1
               for factor in num for t in factor)


def _counts(agg: Aggregate) -> bool:
    """Whether an aggregate counts things (events, builtin counts, or a sum of an integer
    count field such as social `count`), not money or durations."""
    if agg.builtin is not None:
        return agg.builtin not in MICRO_BUILTINS
    if agg.sum_field is None:
        return True
    spec = EVENT_TYPES.get(agg.event or "")
    fields = dict(spec.required + spec.optional) if spec else {}
    return isinstance(fields.get(agg.sum_field), IntRange)


def _formula(text: Any, where: str, aggregates: dict[str, Aggregate], c: Checker) -> Formula:
    try:
        formula = parse_formula(text)
    except ValueError as exc:
        c.fail(where, str(exc))
        return ()
    for term in (t for f in formula for t in f):
        if term.aggregate not in aggregates:
            c.fail(where, f"unknown aggregate {term.aggregate!r}")
    return formula


def _kpi_windows(
    raw: Any, fams: list[str], families: dict[str, FamilyConfig], where: str, c: Checker
) -> tuple[str, ...]:
    per_family = [
        {w.name: (w.size_ms, w.hop_ms) for w in families[f].windows} for f in fams if f in families
    ]
    if not per_family:
        return ()
    common = [w for w in per_family[0] if all(pf.get(w) == per_family[0][w] for pf in per_family)]
    if raw is None:
        if not common:
            c.fail(f"{where}.windows", f"families {fams} share no window")
        return tuple(common)
    chosen = tuple(str(w) for w in raw)
    for w in chosen:
        if w not in common:
            c.fail(f"{where}.windows", f"{w!r} is not a window of every family in {fams}")
    return chosen


def _anomaly(raw: Any, where: str, windows: tuple[str, ...], c: Checker) -> Anomaly | None:
    """`anomaly: {window, band, alpha, min_samples, min_denominator, for, severity, by_dims}`,
    each optional (window: the KPI's shortest)."""
    if raw is None or not windows:
        return None
    if not isinstance(raw, dict):
        c.fail(where, "must be a mapping")
        return None
    unknown = set(raw) - {"window", "band", "alpha", "min_samples", "min_denominator", "for",
                          "severity", "by_dims"}
    if unknown:
        c.fail(where, f"unknown keys {sorted(unknown)}")
    window = raw.get("window", min(windows, key=parse_duration_ms))
    if window not in windows:
        c.fail(where, f"window {window!r} is not one of the KPI's windows {list(windows)}")
    band, alpha, samples = raw.get("band", 4.0), raw.get("alpha", 0.2), raw.get("min_samples", 4)
    if not isinstance(band, int | float) or band <= 0:
        c.fail(where, "band must be a number > 0 (standard deviations)")
    if not isinstance(alpha, int | float) or not 0 < alpha <= 1:
        c.fail(where, "alpha must be a number in (0, 1]")
    if not isinstance(samples, int) or samples < 2:
        c.fail(where, "min_samples must be an integer >= 2")
    severity, for_, min_den = _alert_common(raw, where, "0m", c)
    try:
        return Anomaly(str(window), float(band), float(alpha), int(samples), float(min_den),
                       for_, str(severity), bool(raw.get("by_dims", False)))
    except (TypeError, ValueError):
        return None


def _alert(raw: Any, where: str, c: Checker) -> Alert | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        c.fail(where, "must be a mapping")
        return None
    ops = [op for op in ("below", "above") if op in raw]
    if len(ops) != 1:
        c.fail(where, "needs exactly one of below / above")
        return None
    threshold = raw[ops[0]]
    if not isinstance(threshold, int | float) or isinstance(threshold, bool):
        c.fail(where, f"{ops[0]} must be a number")
        return None
    severity, for_, min_den = _alert_common(raw, where, "5m", c)
    unknown = set(raw) - {"below", "above", "severity", "for", "min_denominator", "window"}
    if unknown:
        c.fail(where, f"unknown keys {sorted(unknown)}")
    window = raw.get("window", "")
    if not isinstance(window, str):
        c.fail(where, "window must be a window name such as 5m")
        window = ""
    return Alert(ops[0], float(threshold), min_den, for_, severity, window)


def _alert_common(raw: dict[str, Any], where: str, default_for: str, c: Checker
                  ) -> tuple[str, str, float]:
    """The settings a threshold alert and an anomaly share, checked: severity, `for` and
    the volume guard (an invalid one reads as 0)."""
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        c.fail(where, f"severity must be one of {sorted(SEVERITIES)}")
    for_ = str(raw.get("for", default_for))
    try:
        parse_duration_ms(for_)
    except ValueError as exc:
        c.fail(where, f"for: {exc}")
    min_den = raw.get("min_denominator", 0)
    if not isinstance(min_den, int | float) or min_den < 0:
        c.fail(where, "min_denominator must be a number >= 0")
        min_den = 0
    return str(severity), for_, float(min_den)
