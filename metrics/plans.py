"""Per event type, the simple aggregates it feeds, compiled to straight-line code.

An event updates a handful of aggregate keys: each aggregate's total and one key per
breakdown. Like the event validators, the updates of a type are generated once per catalog:
walking a table of plans per event costs about twice as much.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from metrics.catalog import TOTAL, Aggregate
from metrics.events import UNKNOWN
from metrics.trackers import MICRO
from metrics.windows import Agg, DimValue

#: adds one event's contribution (its struct, metrics.events) to a pane (or any dict of
#: aggregate keys)
Update = Callable[[Agg, Any], None]


def dim_value(get: Callable[[str], Any], fields: list[str]) -> DimValue:
    """The dimension value an aggregate key carries for a breakdown over ``fields``: a
    missing value counts as "unknown"; a combined breakdown's value is the tuple of its
    values (never joined into one string: a value may hold any character).
    (``update_source`` writes the same out inline.)"""
    if len(fields) == 1:
        return get(fields[0]) or UNKNOWN
    return tuple(str(get(f) or UNKNOWN) for f in fields)


def compile_updates(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]],
                    fields: frozenset[str]) -> Update:
    """The update function of one event type's aggregates (those with an ``event``), over
    the type's struct (``data``), whose attributes are ``fields``.

    An aggregate counts 1 per event, or 1 per event having ``has_field``, or sums
    ``sum_field`` in millionths; ``where`` filters apply first. It lands on its total and on
    every breakdown it is kept under (a missing dimension value counts as "unknown").
    """
    ns: dict[str, Any] = {}
    lines = ["def update(pane, data):", *update_source(aggregates, breakdowns, fields, ns, 1)]
    exec("\n".join(lines), ns)
    return ns.pop("update")  # type: ignore[no-any-return]  # (pop: no function <-> ns cycle)


def read_field(field: str, fields: frozenset[str]) -> str:
    """Source reading ``field`` of an event struct named ``data``."""
    # the catalog names only fields of the event type (catalog.py); still, never raise
    if field in fields and field.isidentifier():
        return f"data.{field}"
    return f"getattr(data, {field!r}, None)"


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


def compile_expand(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]]
                   ) -> Callable[[Agg, tuple[Any, ...], int], None]:
    """``expand(pane, sig, n)``: the update of ``n`` events whose fields_read values are
    ``sig[1:]`` (sig[0] tells the event type apart), made at once."""
    where = {f: i + 1 for i, f in enumerate(fields_read(aggregates, breakdowns))}
    ns: dict[str, Any] = {}
    lines = ["def expand(pane, sig, n):", *update_source(
        aggregates, breakdowns, frozenset(), ns, 1, read=lambda f: f"sig[{where[f]}]",
        times="n")]
    exec("\n".join(lines), ns)
    return ns.pop("expand")  # type: ignore[no-any-return]  # (pop: no function <-> ns cycle)


def update_source(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]],
                  fields: frozenset[str], ns: dict[str, Any], depth: int,
                  read: Callable[[str], str] | None = None, times: str | None = None
                  ) -> list[str]:
    """The body of ``compile_updates``'s function (over ``pane`` and ``data``), indented
    ``depth`` levels; the constants it names are put in ``ns``. ``read`` gives the source
    reading a field (default: from ``data``), ``times`` a multiplier of every amount."""
    ns.update({"UNKNOWN": UNKNOWN, "MICRO": MICRO})
    lines: list[str] = []

    def get(field: str) -> str:
        return read(field) if read is not None else read_field(field, fields)

    for i, agg in enumerate(aggregates):
        ind = "    " * depth
        conds = []
        for j, (field, allowed) in enumerate(agg.where):
            ns[f"W{i}_{j}"] = allowed
            conds.append(f"{get(field)} in W{i}_{j}")
        if agg.has_field is not None:
            conds.append(f"{get(agg.has_field)} is not None")
        if conds:
            lines.append(f"{ind}if {' and '.join(conds)}:")
            ind += "    "
        value = "1" if times is None else times
        if agg.has_field is None and agg.sum_field is not None:
            lines.append(f"{ind}raw = {get(agg.sum_field)}")
            lines.append(f"{ind}if raw is not None:")
            ind += "    "
            lines.append(f"{ind}v = round(raw * MICRO)")
            value = "v" if times is None else f"v * {times}"
        ns[f"T{i}"] = (agg.name, TOTAL, TOTAL)
        lines.append(f"{ind}pane[T{i}] = pane.get(T{i}, 0) + {value}")
        for b in breakdowns[agg.name]:
            if b == TOTAL:
                continue
            dims = b.split("+")
            dim = f"{get(dims[0])} or UNKNOWN" if len(dims) == 1 else "(" + "".join(
                f"str({get(f)} or UNKNOWN), " for f in dims) + ")"
            lines.append(f"{ind}k = ({agg.name!r}, {b!r}, {dim})")
            lines.append(f"{ind}pane[k] = pane.get(k, 0) + {value}")
    return lines
