"""The KPI catalog's model: windows, aggregates, formulas, KPIs and alerts (loaded and
checked by catalog.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
_UNIT_MS: Final = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]*$")


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
class AttributionConfig:
    """Multi-touch attribution (docs/catalog.md): an account's touches within ``lookback_ms``
    before a purchase share its amount; time decay halves a touch's weight per
    ``half_life_ms`` before the purchase."""

    lookback_ms: int = 90 * 86_400_000
    half_life_ms: int = 7 * 86_400_000


#: engagement points per event type (a social interaction's times its count), and per page
#: path prefix (a view of a pricing page weighs more than another page's)
DEFAULT_POINTS: Final = (("email.opened", 1), ("email.clicked", 3), ("page.viewed", 1),
                         ("goal.converted", 10), ("social.interaction", 2))


@dataclass(frozen=True)
class MqlConfig:
    """Lead scoring (docs/catalog.md): an account's engagement points, summed per hour,
    weigh half as much every ``half_life_ms`` and nothing after ``lookback_ms``; a lead is
    an MQL from the first hour, within ``within_ms`` of its creation, at which its
    account's score reaches ``threshold``."""

    threshold: float = 40.0
    half_life_ms: int = 14 * 86_400_000
    lookback_ms: int = 90 * 86_400_000
    within_ms: int = 90 * 86_400_000
    points: tuple[tuple[str, int], ...] = DEFAULT_POINTS
    pages: tuple[tuple[str, int], ...] = (("/pricing", 5),)


@dataclass(frozen=True)
class FamilyConfig:
    name: str
    grace_ms: int
    windows: tuple[WindowSpec, ...]
    #: how long its stateful aggregates remember a key (crm: a lead's channel and campaign,
    #: a deal, an account's first win), never less than the longest window + grace
    horizon_ms: int = 0

    @property
    def longest_ms(self) -> int:
        return max(w.size_ms for w in self.windows)

    @property
    def state_ms(self) -> int:
        return max(self.horizon_ms, self.longest_ms + self.grace_ms)


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
    #: sums the square of ``sum_field`` (a mean's spread: its interval)
    square: bool = False


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
class Anomaly:
    """An anomaly alert: the window it watches leaving its seasonal baseline's band
    (metrics/baselines.py)."""
    window: str
    band: float = 4.0  # half-width, in the baseline's standard deviations
    alpha: float = 0.2  # weight of each new week in its slot's mean and variance
    min_samples: int = 4  # weeks a slot needs before it judges
    min_denominator: float = 0
    for_: str = "0m"
    severity: str = "warning"
    #: also per breakdown value (default: the total only; thin series are noisy)
    by_dims: bool = False


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
    #: the 95 % interval its records carry: "wilson" for a proportion of counts (a ratio
    #: of event or builtin counts), "poisson" for a cost per counted thing (spend /
    #: leads: the count's interval), "normal" for a mean with a ``spread``, "" where none
    #: applies (ROMI, shares of money)
    interval: str = ""
    #: for a mean (sum / count): the aggregate summing the squares of what it averages
    spread: str = ""
    anomaly: Anomaly | None = None

    def formulas(self, breakdown: str) -> tuple[Formula, Formula]:
        return self.by_dim.get(breakdown, (self.numerator, self.denominator))

    def aggregates(self) -> set[str]:
        names: set[str] = set()
        for num, den in [(self.numerator, self.denominator), *self.by_dim.values()]:
            names.update(t.aggregate for f in num + den for t in f)
        if self.spread:
            names.add(self.spread)
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
    attribution: AttributionConfig = AttributionConfig()
    mql: MqlConfig = MqlConfig()

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
                       {n: b for n, b in self.breakdowns.items() if n in aggregates},
                       self.attribution, self.mql)


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
            if not NAME_RE.match(name) or suffix not in ("", "total"):
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


def metric_name(catalog: Catalog, kpi: Kpi) -> str:
    """kpi_<name>, money KPIs suffixed with their currency: kpi_cost_per_lead_eur."""
    suffix = f"_{catalog.currency.lower()}" if kpi.unit == "currency" else ""
    return f"kpi_{kpi.name}{suffix}"
