"""Per event type, the simple aggregates it feeds, and how one event updates them.

An event updates a handful of aggregate keys: each aggregate's total and one key per
breakdown. The engine runs the generated form (codegen.update_function and
codegen.expand_function); ``apply_update`` and ``apply_expand`` here are their interpreted
twins, reading the same aggregates as data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metrics import codegen
from metrics.catalog import Aggregate
from metrics.constants import MICRO, TOTAL, UNKNOWN
from metrics.windows import Agg, DimValue

#: adds one event's contribution (its struct, metrics.events) to a pane (or any dict of
#: aggregate keys)
Update = Callable[[Agg, Any], None]
#: ``expand(pane, sig, n)``: the update of n events of one signature (windows.Sig)
Expand = Callable[[Agg, tuple[Any, ...], int], None]


def dim_value(get: Callable[[str], Any], fields: list[str]) -> DimValue:
    """The dimension value an aggregate key carries for a breakdown over ``fields``: a
    missing value counts as "unknown"; a combined breakdown's value is the tuple of its
    values (never joined into one string: a value may hold any character)."""
    if len(fields) == 1:
        return get(fields[0]) or UNKNOWN
    return tuple(str(get(f) or UNKNOWN) for f in fields)


def fields_read(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]]
                ) -> list[str]:
    """Every field the update of these aggregates reads, in a fixed order: two events with
    the same values there update the same keys by the same amounts."""
    out: dict[str, None] = {}
    for agg in aggregates:
        out.update((f, None) for f, _ in agg.where)
        for f in (agg.has_field, agg.sum_field):
            if f is not None:
                out[f] = None
        for b in breakdowns[agg.name]:
            if b != TOTAL:
                out.update((f, None) for f in b.split("+"))
    return list(out)


def compile_updates(type_: str, aggregates: list[Aggregate],
                    breakdowns: dict[str, tuple[str, ...]], fields: frozenset[str]) -> Update:
    """The generated update of one event type's aggregates, over its struct (``data``),
    whose attributes are ``fields``."""
    return codegen.update_function(type_, aggregates, breakdowns, fields)


def compile_expand(type_: str, aggregates: list[Aggregate],
                   breakdowns: dict[str, tuple[str, ...]]) -> Expand:
    """The generated expansion of a pending tally of one event type."""
    return codegen.expand_function(type_, aggregates, breakdowns,
                                   fields_read(aggregates, breakdowns))


def apply_update(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]],
                 pane: Agg, data: Any) -> None:
    """Interpreted twin of the generated update."""
    _apply(aggregates, breakdowns, pane, lambda f: getattr(data, f, None), 1)


def apply_expand(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]],
                 pane: Agg, sig: tuple[Any, ...], n: int) -> None:
    """Interpreted twin of the generated expansion."""
    where = {f: i + 1 for i, f in enumerate(fields_read(aggregates, breakdowns))}
    _apply(aggregates, breakdowns, pane, lambda f: sig[where[f]], n)


def _apply(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]], pane: Agg,
           get: Callable[[str], Any], times: int) -> None:
    for agg in aggregates:
        if not all(get(f) in allowed for f, allowed in agg.where):
            continue
        if agg.has_field is not None:
            if get(agg.has_field) is None:
                continue
            value = times
        elif agg.sum_field is not None:
            raw = get(agg.sum_field)
            if raw is None:
                continue
            value = round((raw * raw if agg.square else raw) * MICRO) * times
        else:
            value = times
        total = (agg.name, TOTAL, TOTAL)
        pane[total] = pane.get(total, 0) + value
        for b in breakdowns[agg.name]:
            if b == TOTAL:
                continue
            k = (agg.name, b, dim_value(get, b.split("+")))
            pane[k] = pane.get(k, 0) + value
