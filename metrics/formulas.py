"""KPI values from a closed window's aggregates: the catalog formulas, per breakdown.

A window's aggregates are indexed as (aggregate, breakdown) -> dimension value -> amount.
``plan_kpi`` resolves once which entry each term of a formula reads; ``compute_kpi`` reads
a plan as data (the interpreted twin), ``compile_kpi`` is the same as straight-line code
(codegen.kpi_function), the one the engine runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from typing import Final

from metrics import codegen
from metrics.catalog import Catalog, Formula, Kpi, Term
from metrics.constants import MICRO, TOTAL
from metrics.trackers import MICRO_BUILTINS
from metrics.windows import Agg, DimValue

Dims = tuple[tuple[str, str], ...]
Rows = dict[Dims, tuple[float, float]]


def dims_of(fields: list[str], v: DimValue) -> Dims:
    """The record dims of a breakdown value: a combined breakdown's value is a tuple."""
    if not fields:
        return ()
    if len(fields) == 1:
        return ((fields[0], v),)  # type: ignore[return-value]
    return tuple(zip(fields, v, strict=True))


#: (aggregate, breakdown) -> dimension value -> amount
Index = dict[tuple[str, str], dict[DimValue, int]]


def index_snapshot(snap: Agg) -> Index:
    idx: Index = {}
    for (agg, b, v), n in snap.items():
        d = idx.get((agg, b))
        if d is None:
            d = idx[(agg, b)] = {}
        d[v] = n
    return idx


def merge_indexes(parts: Iterable[Index]) -> Index:
    """Families never share an aggregate, so merging is a plain union."""
    merged: Index = {}
    for idx in parts:
        merged.update(idx)
    return merged


#: a formula compiled for one breakdown: a product of sums of
#: (index key, read at the total, sign, kept in millionths)
_Read = tuple[tuple[tuple[tuple[str, str], bool, int, bool], ...], ...]
#: a KPI compiled per breakdown: (breakdown, its dimension fields, the index keys whose
#: values it lists, numerator, denominator)
KpiPlan = list[tuple[str, list[str], list[tuple[str, str]], _Read, _Read]]


def micro_aggregates(catalog: Catalog) -> set[str]:
    """The aggregates kept in millionths: sums of a field, and the trackers' money and
    duration builtins."""
    return {a.name for a in catalog.aggregates.values()
            if a.sum_field is not None or a.builtin in MICRO_BUILTINS}


def plan_kpi(catalog: Catalog, kpi: Kpi, micro: set[str]) -> KpiPlan:
    """Resolve, once, which index entry every term of every breakdown reads: an aggregate
    not kept under a breakdown is read at its total."""
    kept = catalog.breakdowns
    plan: KpiPlan = []
    for b in (TOTAL, *kpi.breakdowns):
        num_f, den_f = kpi.formulas(b)

        def at_total(t: Term, b: str = b) -> bool:
            return t.total or b not in kept[t.aggregate]

        def compiled(formula: Formula, b: str = b) -> _Read:
            return tuple(tuple(((t.aggregate, TOTAL if at_total(t) else b), at_total(t), t.sign,
                                t.aggregate in micro) for t in factor) for factor in formula)

        sources = [] if b == TOTAL else list(dict.fromkeys(
            (t.aggregate, b) for f in num_f + den_f for t in f if not at_total(t)))
        plan.append((b, b.split("+") if b else [], sources, compiled(num_f), compiled(den_f)))
    return plan


#: a formula resolved against one index, per factor: the integer and millionth sums of its
#: terms read at the total, whether they had data, and the value dicts of the other terms
_Resolved = list[tuple[int, int, bool, list[tuple[dict[DimValue, int], int, bool]]]]


def _resolve(formula: _Read, idx: Index) -> _Resolved:
    """Look up every term's dict once per breakdown, and sum the ones read at the total."""
    out: _Resolved = []
    for factor in formula:
        ints = micros = 0
        per_value: list[tuple[dict[DimValue, int], int, bool]] = []
        for key, total, sign, micro in factor:
            d = idx.get(key)
            if d is None:
                continue
            if not total:
                per_value.append((d, sign, micro))
                continue
            n = d.get(TOTAL, 0)
            if micro:
                micros += sign * n
            else:
                ints += sign * n
        out.append((ints, micros, ints != 0 or micros != 0, per_value))
    return out


def _value(formula: _Resolved, v: DimValue) -> tuple[float, bool]:
    """Product of the formula's factors at dimension value v; and whether any term had
    data. Integer and millionth sums are added apart so the result is exact."""
    product = 1.0
    any_data = False
    for ints, micros, has_data, per_value in formula:
        any_data = any_data or has_data
        for d, sign, micro in per_value:
            n = d.get(v, 0)
            if n:
                any_data = True
                if micro:
                    micros += sign * n
                else:
                    ints += sign * n
        product *= ints + micros / MICRO
    return product, any_data


def compute_kpi(plan: KpiPlan, idx: Index) -> Rows:
    """Numerator and denominator of a KPI for its total and every breakdown value present."""
    rows: Rows = {}
    for b, fields, sources, num_f, den_f in plan:
        if b == TOTAL:
            values: Iterable[DimValue] = (TOTAL,)
        else:
            seen: set[DimValue] = set()
            for key in sources:
                d = idx.get(key)
                if d:
                    seen.update(d)
            if not seen:
                continue
            values = seen
        num_r = _resolve(num_f, idx)
        den_r = _resolve(den_f, idx) if den_f else None
        for v in values:
            num, num_data = _value(num_r, v)
            den, den_data = _value(den_r, v) if den_r is not None else (1.0, False)
            if not (num_data or den_data):
                continue  # a window without input for this KPI publishes nothing
            rows[dims_of(fields, v)] = (num, den)
    return rows


#: suffix of a mean's companion rows: its sums of squares over the same count
SQUARES: Final = "|squares"


def row_functions(catalog: Catalog, generated: bool = True
                  ) -> dict[str, Callable[[Index], Rows]]:
    """Per KPI, what turns a window's index into its rows (generated code, or the
    interpreted twin); for a mean with a ``spread``, also ``{name}|squares``: the rows of
    its sum of squares over the same count, which its interval needs."""
    micro = micro_aggregates(catalog)

    def rows_of(kpi: Kpi) -> Callable[[Index], Rows]:
        plan = plan_kpi(catalog, kpi, micro)
        return compile_kpi(plan, kpi.name) if generated else partial(compute_kpi, plan)

    out: dict[str, Callable[[Index], Rows]] = {}
    for kpi in catalog.kpis.values():
        out[kpi.name] = rows_of(kpi)
        if kpi.spread:
            out[kpi.name + SQUARES] = rows_of(replace(
                kpi, name=f"{kpi.name}_squares", numerator=((Term(1, kpi.spread),),),
                by_dim={}))
    return out


def compile_kpi(plan: KpiPlan, label: str = "kpi") -> Callable[[Index], Rows]:
    """``compute_kpi(plan, idx)`` as generated code (codegen.kpi_function), the form the
    engine runs: a window's close publishes every KPI for every dimension value."""
    return codegen.kpi_function(label, plan, dims_of)  # type: ignore[no-any-return]
