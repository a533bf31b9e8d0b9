"""Load and validate the declarative KPI catalog (see metrics/catalog.yaml for the format)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from metrics.errors import CatalogError
from metrics.events import _ENVELOPE_LEN, FAMILIES, TYPES

DEFAULT_CATALOG: Final = "catalog.yaml"
UNITS: Final = frozenset({"ratio", "seconds", "days", "count", "per_day", "score", "currency"})
SEVERITIES: Final = frozenset({"critical", "warning", "info"})
TOTAL: Final = ""  # breakdown name of the total over all dimensions

#: stateful aggregates computed by the engine: name -> (family, dimensions they carry)
_DEAL_DIMS: Final = frozenset({"channel", "campaign_id"})
BUILTINS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    "unique_opens": ("email", frozenset({"campaign_id", "segment"})),
    "unique_clickers": ("email", frozenset({"campaign_id", "segment"})),
    "sessions": ("web", frozenset({"channel", "campaign_id"})),
    "single_page_sessions": ("web", frozenset({"channel", "campaign_id"})),
    "converting_sessions": ("web", frozenset({"channel", "campaign_id"})),
    "goal_sessions": ("web", frozenset({"goal", "channel", "campaign_id"})),
    "deals_entered": ("crm", _DEAL_DIMS | {"stage"}),
    "deals_advanced": ("crm", _DEAL_DIMS | {"stage"}),
    "opportunities": ("crm", _DEAL_DIMS),
    "deals_won": ("crm", _DEAL_DIMS),
    "deals_lost": ("crm", _DEAL_DIMS),
    "won_amount": ("crm", _DEAL_DIMS),
    "cycle_days_sum": ("crm", _DEAL_DIMS),
    "cycle_deals": ("crm", _DEAL_DIMS),
}

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def parse_duration_ms(text: str) -> int:
    """'5m' -> 300000. Raises ValueError on anything else."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h, 7d)")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class WindowSpec:
    name: str
    size_ms: int
    hop_ms: int


@dataclass(frozen=True)
class FamilyConfig:
    name: str
    grace_ms: int
    windows: tuple[WindowSpec, ...]

    @property
    def longest_ms(self) -> int:
        return max(w.size_ms for w in self.windows)


@dataclass(frozen=True)
class Aggregate:
    name: str
    family: str
    event: str | None = None
    builtin: str | None = None
    sum_field: str | None = None
    has_field: str | None = None
    where: tuple[tuple[str, frozenset[Any]], ...] = ()
    supported_dims: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Term:
    """One aggregate read, with its sign inside a sum. ``total`` pins it to the total."""

    sign: int
    aggregate: str
    total: bool = False


Factor = tuple[Term, ...]  # a sum of terms
Formula = tuple[Factor, ...]  # a product of factors


@dataclass(frozen=True)
class Alert:
    op: str  # "below" | "above"
    threshold: float
    min_denominator: float
    for_: str
    severity: str
    window: str = ""  # the window the alert watches; "" until the KPI's windows are known


@dataclass(frozen=True)
class Kpi:
    name: str
    description: str
    numerator: Formula
    denominator: Formula  # empty: the value is the numerator itself
    unit: str
    scale: float
    breakdowns: tuple[str, ...]  # "campaign_id", "campaign_id+segment"; total is implicit
    by_dim: dict[str, tuple[Formula, Formula]] = field(default_factory=dict, hash=False)
    windows: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    alert: Alert | None = None

    def formulas(self, breakdown: str) -> tuple[Formula, Formula]:
        return self.by_dim.get(breakdown, (self.numerator, self.denominator))

    def aggregates(self) -> set[str]:
        names: set[str] = set()
        for num, den in [(self.numerator, self.denominator), *self.by_dim.values()]:
            names.update(t.aggregate for f in num + den for t in f)
        return names


@dataclass(frozen=True)
class Catalog:
    currency: str
    max_series: int
    families: dict[str, FamilyConfig]
    aggregates: dict[str, Aggregate]
    kpis: dict[str, Kpi]
    #: aggregate -> breakdown names it must be kept under (always including TOTAL)
    breakdowns: dict[str, tuple[str, ...]]

    def unit_label(self, kpi: Kpi) -> str:
        return self.currency if kpi.unit == "currency" else kpi.unit

    def window(self, family: str, name: str) -> WindowSpec:
        for w in self.families[family].windows:
            if w.name == name:
                return w
        raise KeyError(name)

    def shards(self) -> dict[str, tuple[str, ...]]:
        """The families grouped so that no KPI spans two groups (crm and spend share CPL,
        CPA and ROMI). Each group's state is independent of the others': workers scale out
        by owning different groups. Named by their families joined with '+'."""
        group = {f: {f} for f in self.families}
        for kpi in self.kpis.values():
            merged = set().union(*(group[f] for f in kpi.families))
            for f in merged:
                group[f] = merged
        out = {tuple(sorted(g)) for g in group.values()}
        return {"+".join(fams): fams for fams in sorted(out)}

    def restrict(self, families: tuple[str, ...]) -> Catalog:
        """The part of the catalog over these families: their windows, aggregates and the
        KPIs that read only them (a whole shard, from ``shards``)."""
        keep = set(families)
        aggregates = {n: a for n, a in self.aggregates.items() if a.family in keep}
        return Catalog(self.currency, self.max_series,
                       {f: c for f, c in self.families.items() if f in keep}, aggregates,
                       {n: k for n, k in self.kpis.items() if set(k.families) <= keep},
                       {n: b for n, b in self.breakdowns.items() if n in aggregates})


def parse_formula(text: Any) -> Formula:
    """'a * (b + c) * d@total' -> product of sums of terms. Raises ValueError."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not a formula: {text!r}")
    factors: list[Factor] = []
    for raw in _split_top(text, "*"):
        part = raw.strip()
        if part.startswith("(") and part.endswith(")"):
            part = part[1:-1]
        tokens = re.findall(r"[+-]|[^\s+-]+", part)
        terms: list[Term] = []
        sign = 1
        expect_name = True
        for tok in tokens:
            if tok in "+-":
                if expect_name:
                    raise ValueError(f"misplaced {tok!r} in {text!r}")
                sign = 1 if tok == "+" else -1
                expect_name = True
                continue
            if not expect_name:
                raise ValueError(f"missing operator before {tok!r} in {text!r}")
            name, _, suffix = tok.partition("@")
            if not _NAME.match(name) or suffix not in ("", "total"):
                raise ValueError(f"bad aggregate reference {tok!r} in {text!r}")
            terms.append(Term(sign, name, suffix == "total"))
            expect_name = False
        if not terms or expect_name:
            raise ValueError(f"incomplete formula {text!r}")
        factors.append(tuple(terms))
    return tuple(factors)


def _split_top(text: str, sep: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            raise ValueError(f"unbalanced parentheses in {text!r}")
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValueError(f"unbalanced parentheses in {text!r}")
    return [*parts, cur]


def _event_fields(event_type: str) -> frozenset[str]:
    spec = TYPES[event_type]
    names = {n for n, _ in spec.required + spec.optional} | {n for n, _ in _ENVELOPE_LEN}
    return frozenset(names)


class _Checker:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")


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
    c = _Checker()
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
    if c.problems:
        raise CatalogError(c.problems)
    needed: dict[str, set[str]] = {name: {TOTAL} for name in aggregates}
    for kpi in kpis.values():
        for b in kpi.breakdowns:
            num, den = kpi.formulas(b)
            dims = set(b.split("+"))
            for term in (t for f in num + den for t in f):
                if not term.total and dims <= aggregates[term.aggregate].supported_dims:
                    needed[term.aggregate].add(b)
    breakdowns = {a: tuple(sorted(bs)) for a, bs in needed.items()}
    return Catalog(currency, max_series, families, aggregates, kpis, breakdowns)


def _families(doc: dict[str, Any], c: _Checker) -> dict[str, FamilyConfig]:
    hops_raw = doc.get("hops") or {}
    if not isinstance(hops_raw, dict):
        c.fail("hops", "must map window names to hop durations")
        hops_raw = {}
    fams_raw = doc.get("families")
    if not isinstance(fams_raw, dict):
        c.fail("families", "must map each topic family to {grace, windows}")
        return {}
    out: dict[str, FamilyConfig] = {}
    for fam in FAMILIES:
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
        out[fam] = FamilyConfig(fam, grace, tuple(specs))
    for fam in fams_raw:
        if fam not in FAMILIES:
            c.fail(f"families.{fam}", f"unknown topic family (known: {', '.join(FAMILIES)})")
    return out


def _aggregates(
    doc: dict[str, Any], families: dict[str, FamilyConfig], c: _Checker
) -> dict[str, Aggregate]:
    raw_all = doc.get("aggregates")
    if not isinstance(raw_all, dict) or not raw_all:
        c.fail("aggregates", "must be a non-empty mapping")
        return {}
    out: dict[str, Aggregate] = {}
    for name, raw in raw_all.items():
        where = f"aggregates.{name}"
        if not _NAME.match(str(name)):
            c.fail(where, "names are lower_snake_case")
            continue
        if not isinstance(raw, dict):
            c.fail(where, "must be a mapping like {event: email.sent}")
            continue
        unknown = set(raw) - {"event", "builtin", "sum", "has", "where"}
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
        if etype not in TYPES:
            c.fail(where, f"unknown event type {etype!r}")
            continue
        fields = _event_fields(etype)
        for key in ("sum", "has"):
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
            TYPES[etype].family,
            event=etype,
            sum_field=raw.get("sum"),
            has_field=raw.get("has"),
            where=tuple(filters),
            supported_dims=fields - {"event_id", "url", "visitor_id", "duration_s", "amount"},
        )
    return out


def _kpis(
    doc: dict[str, Any],
    families: dict[str, FamilyConfig],
    aggregates: dict[str, Aggregate],
    c: _Checker,
) -> dict[str, Kpi]:
    raw_all = doc.get("kpis")
    if not isinstance(raw_all, dict) or not raw_all:
        c.fail("kpis", "must be a non-empty mapping")
        return {}
    out: dict[str, Kpi] = {}
    for name, raw in raw_all.items():
        where = f"kpis.{name}"
        if not _NAME.match(str(name)) or not isinstance(raw, dict):
            c.fail(where, "must be a lower_snake_case name mapping to a KPI definition")
            continue
        known = {"description", "numerator", "denominator", "unit", "scale", "dims", "by_dim"}
        unknown = set(raw) - known - {"alert", "windows"}
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
        alert = _alert(raw.get("alert"), f"{where}.alert", c)
        if alert is not None and windows:
            # by default an alert watches the KPI's shortest window: the fastest to react
            shortest = min(windows, key=lambda w: parse_duration_ms(w))
            chosen = alert.window or shortest
            if chosen not in windows:
                c.fail(f"{where}.alert.window", f"{chosen!r} is not one of the KPI's windows "
                       f"{list(windows)}")
            alert = replace(alert, window=chosen)
        out[name] = Kpi(name, kpi.description, num, den, kpi.unit, kpi.scale, breakdowns,
                        by_dim, windows, tuple(fams), alert)
    return out


def _formula(text: Any, where: str, aggregates: dict[str, Aggregate], c: _Checker) -> Formula:
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
    raw: Any, fams: list[str], families: dict[str, FamilyConfig], where: str, c: _Checker
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


def _alert(raw: Any, where: str, c: _Checker) -> Alert | None:
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
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        c.fail(where, f"severity must be one of {sorted(SEVERITIES)}")
    for_ = str(raw.get("for", "5m"))
    try:
        parse_duration_ms(for_)
    except ValueError as exc:
        c.fail(where, f"for: {exc}")
    unknown = set(raw) - {"below", "above", "severity", "for", "min_denominator", "window"}
    if unknown:
        c.fail(where, f"unknown keys {sorted(unknown)}")
    window = raw.get("window", "")
    if not isinstance(window, str):
        c.fail(where, "window must be a window name such as 5m")
        window = ""
    min_den = raw.get("min_denominator", 0)
    if not isinstance(min_den, int | float) or min_den < 0:
        c.fail(where, "min_denominator must be a number >= 0")
        min_den = 0
    return Alert(ops[0], float(threshold), float(min_den), for_, str(severity), window)
