"""Every function the core generates at run time, in one place.

These functions run once per input event or once per output record, where walking a table
of plans costs about twice as much as straight-line code. Each generator writes Python
source; ``build`` compiles it under a file name of its own, registered with ``linecache``
(a traceback shows the generated line) and kept in ``sources()`` (``kpi-engine codegen``
writes them out). Each generated function has an interpreted twin that reads the same plan
as data, in the module of its part; tests hold every pair to the same results on random
input (tests/unit/test_codegen.py):

    generated here               interpreted twin
    update_function              plans.apply_update
    expand_function              plans.apply_expand
    kpi_function                 formulas.compute_kpi
    ingest_function              the engine with EngineConfig(generated=False)
    check_function               events.check_fields
    finish_function              events.finish_fields

The aggregate keys the generated code writes are ``windows.Key`` tuples
``(aggregate, breakdown, value)``; a pending tally's signature is ``(event type, *the values
plans.fields_read lists)``. Both layouts are stated in windows.py and checked by the twins'
tests.
"""

from __future__ import annotations

import hashlib
import linecache
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from metrics.constants import MICRO, TOTAL, UNKNOWN

if TYPE_CHECKING:
    from metrics.catalog import Aggregate
    from metrics.formulas import KpiPlan

_MAX_KEPT: Final = 4096  # distinct sources kept; a process builds a few dozen per catalog
_SOURCES: dict[str, str] = {}  # file name -> source, oldest first
_CODE: dict[str, Any] = {}  # file name -> compiled code


def build(kind: str, label: str, lines: Sequence[str], ns: dict[str, Any]) -> Any:
    """Compile the function whose source is ``lines`` (its first line a ``def``) in the
    namespace ``ns`` and return it. The same source is compiled once per process."""
    source = "\n".join(lines) + "\n"
    digest = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()[:10]
    filename = f"<generated {kind} {label} {digest}>"
    code = _CODE.get(filename)
    if code is None:
        if len(_SOURCES) >= _MAX_KEPT:
            oldest = next(iter(_SOURCES))
            del _SOURCES[oldest], _CODE[oldest]
            linecache.cache.pop(oldest, None)
        code = _CODE[filename] = compile(source, filename, "exec")
        _SOURCES[filename] = source
    # (re)registered each time: linecache.clearcache() may have dropped it
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(code, ns)
    name = lines[0].split()[1].split("(")[0]
    return ns.pop(name)  # popped: no function <-> namespace reference cycle


def sources() -> dict[str, str]:
    """File name -> source of every function generated in this process (newest last)."""
    return dict(_SOURCES)


# ---- aggregate updates (plans.py) ------------------------------------------------------


def read_field(field: str, fields: frozenset[str]) -> str:
    """Source reading ``field`` of an event struct named ``data``."""
    # the catalog names only fields of the event type (catalog.py); still, never raise
    if field in fields and field.isidentifier():
        return f"data.{field}"
    return f"getattr(data, {field!r}, None)"


def update_function(label: str, aggregates: list[Aggregate],
                    breakdowns: dict[str, tuple[str, ...]], fields: frozenset[str]
                    ) -> Callable[[dict[Any, int], Any], None]:
    """``update(pane, data)``: adds one event's contribution (its struct) to a pane."""
    ns: dict[str, Any] = {}
    lines = ["def update(pane, data):", *_update_body(aggregates, breakdowns, ns,
                                                     lambda f: read_field(f, fields), None)]
    return build("update", label, lines, ns)  # type: ignore[no-any-return]


def expand_function(label: str, aggregates: list[Aggregate],
                    breakdowns: dict[str, tuple[str, ...]], fields_read: list[str]
                    ) -> Callable[[dict[Any, int], tuple[Any, ...], int], None]:
    """``expand(pane, sig, n)``: the update of ``n`` events whose read values are
    ``sig[1:]`` (in ``fields_read`` order; sig[0] is the event type), made at once."""
    where = {f: i + 1 for i, f in enumerate(fields_read)}
    ns: dict[str, Any] = {}
    lines = ["def expand(pane, sig, n):", *_update_body(
        aggregates, breakdowns, ns, lambda f: f"sig[{where[f]}]", "n")]
    return build("expand", label, lines, ns)  # type: ignore[no-any-return]


def _update_body(aggregates: list[Aggregate], breakdowns: dict[str, tuple[str, ...]],
                 ns: dict[str, Any], get: Callable[[str], str], times: str | None
                 ) -> list[str]:
    """An aggregate counts 1 per event (or ``times``), or 1 per event having ``has_field``,
    or sums ``sum_field`` in millionths; ``where`` filters apply first. It lands on its total
    and on every breakdown it is kept under (a missing value counts as "unknown"; a combined
    breakdown's value is the tuple of its values)."""
    ns.update({"UNKNOWN": UNKNOWN, "MICRO": MICRO})
    lines: list[str] = []
    for i, agg in enumerate(aggregates):
        ind = "    "
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
            lines.append(f"{ind}v = round(raw * raw * MICRO)" if agg.square
                         else f"{ind}v = round(raw * MICRO)")
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
    if not lines:
        lines.append("    pass")
    return lines


# ---- counting one event (engine.py) ----------------------------------------------------


def ingest_function(type_: str, fields: frozenset[str], read: list[str] | None,
                    counts: dict[str, int], apply_late: Callable[..., None],
                    update: Any, observers: Sequence[Callable[[Any], Any]],
                    apply_facts: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``count(ev, fw)``: counts one event of ``type_`` into its family's windows ``fw``.

    At or beyond the frontier (no closed window covers it) the event is tallied in its
    pane's pending signatures, by the values its update reads (``read``; None: the type
    feeds no simple aggregate); before it (late within grace), ``apply_late`` patches the
    closed windows. Each tracker observing the type (``observers``) turns it into facts.
    """
    ns: dict[str, Any] = {"counts": counts, "apply_late": apply_late, "UPDATE": update,
                          "TYPE": type_, "apply_facts": apply_facts}
    lines = ["def count(ev, fw):", "    counts[TYPE] = counts.get(TYPE, 0) + 1"]
    if read is not None:
        sig = "".join(f"{read_field(f, fields)}, " for f in read)
        lines += ["    ts = ev.ts_ms",
                  "    data = ev.data",
                  "    if ts >= fw.frontier:",
                  "        start = ts - ts % fw.pane_ms",
                  "        pending = fw.pending",
                  "        tally = pending.get(start)",
                  "        if tally is None:",
                  "            tally = pending[start] = {}",
                  f"        k = (TYPE, {sig})",
                  "        tally[k] = tally.get(k, 0) + 1",
                  "    else:",
                  "        apply_late(fw, ts, data, UPDATE)"]
    for i, observe in enumerate(observers):
        ns[f"OBSERVE{i}"] = observe
        lines += [f"    facts = OBSERVE{i}(ev)", "    if facts:", "        apply_facts(fw, facts)"]
    return build("ingest", type_, lines, ns)  # type: ignore[no-any-return]


# ---- KPI formulas (formulas.py) --------------------------------------------------------


def kpi_function(label: str, plan: KpiPlan, dims_of: Callable[..., Any]) -> Any:
    """``formulas.compute_kpi(plan, idx)`` as straight-line code: each term's dict is looked
    up once, sums read at the total are made once per breakdown, and each value's numerator
    and denominator are written out, factor by factor, in the order ``formulas._value``
    computes them (so the floats are bit-identical)."""
    ns: dict[str, object] = {"TOTAL": TOTAL, "MICRO": MICRO, "EMPTY": {}, "dims_of": dims_of}
    lines = ["def compute(idx):", "    rows = {}", "    get = idx.get"]
    dicts: dict[tuple[str, str], str] = {}

    def dict_of(key: tuple[str, str]) -> str:
        # a missing entry reads as an empty dict: no values, zero amounts (as _resolve)
        if key not in dicts:
            dicts[key] = name = f"D{len(dicts)}"
            ns[f"K{name}"] = key
            lines.append(f"    {name} = get(K{name}) or EMPTY")
        return dicts[key]

    for key in dict.fromkeys(t[0] for _, _, _, num, den in plan for f in num + den for t in f):
        dict_of(key)
    for i, (b, fields, sources, num_f, den_f) in enumerate(plan):
        ind = "    "
        if b == TOTAL:
            lines.append(f"{ind}values = (TOTAL,)")
        else:
            lines.append(f"{ind}values = set()")
            for key in sources:
                lines.append(f"{ind}values.update({dict_of(key)})")
            lines.append(f"{ind}if values:")
            ind += "    "
        ns[f"F{i}"] = fields
        body: list[str] = []
        for side, formula in (("n", num_f), ("d", den_f)):
            if not formula:
                continue
            consts = []
            for j, factor in enumerate(formula):
                ints = " ".join(f"{'+' if s > 0 else '-'} {dict_of(k)}.get(TOTAL, 0)"
                                for k, total, s, micro in factor if total and not micro)
                micros = " ".join(f"{'+' if s > 0 else '-'} {dict_of(k)}.get(TOTAL, 0)"
                                  for k, total, s, micro in factor if total and micro)
                lines.append(f"{ind}{side}i{j} = 0 {ints}")
                lines.append(f"{ind}{side}m{j} = 0 {micros}")
                consts.append(f"{side}i{j} != 0 or {side}m{j} != 0")
                body.append(f"i = {side}i{j}")
                body.append(f"m = {side}m{j}")
                for k, total, s, micro in factor:
                    if total:
                        continue
                    body.append(f"x = {dict_of(k)}.get(v, 0)")
                    body.append("if x:")
                    body.append(f"    {side}h = True")
                    body.append(f"    {'m' if micro else 'i'} {'+=' if s > 0 else '-='} x")
                body.append(f"{side}f{j} = i + m / MICRO")
            lines.append(f"{ind}{side}h0 = {' or '.join(consts)}")
            body.insert(0, f"{side}h = {side}h0")
            body.append(f"{side} = 1.0 * " + " * ".join(
                f"{side}f{j}" for j in range(len(formula))))
        if not den_f:
            body += ["d = 1.0", "dh = False"]
        dims = "()" if not fields else f"((F{i}[0], v),)" if len(fields) == 1 else \
            f"dims_of(F{i}, v)"
        body += ["if nh or dh:", f"    rows[{dims}] = (n, d)"]
        lines.append(f"{ind}for v in values:")
        lines += [f"{ind}    {line}" for line in body]
    lines.append("    return rows")
    return build("kpi", label, lines, ns)


# ---- event validation (events.py) ------------------------------------------------------


def check_function(type_: str, fields: list[tuple[str, Any, bool]], ns: dict[str, Any]
                   ) -> Callable[[dict[str, Any], str, int, str], Any]:
    """``check(d, event_id, ts_ms, currency)``: the field checks of one event type on a
    decoded dict (the slow path, which explains rejections), then ``S`` (the type's struct)
    built from it and finished by ``FINISH``. ``fields``: (name, check, required), a check
    being a maximum string length or a callable returning ``_BAD``; ``ns`` holds
    ``Invalid``, ``_BAD``, ``S`` and ``FINISH``. Reason values are built here, not per
    rejection."""
    invalid = ns["Invalid"]
    lines = ["def check(d, event_id, ts_ms, currency):"]
    for i, (name, check, required) in enumerate(fields):
        ns[f"M{i}"] = invalid(f"missing_field:{name}")
        ns[f"B{i}"] = invalid(f"bad_value:{name}")
        lines.append(f"    v = d.get({name!r})")
        if required:
            lines.append(f"    if v is None: return M{i}")
            guard = ""
        else:
            guard = "v is not None and "
        if isinstance(check, int):
            lines.append(f"    if {guard}(type(v) is not str or not 0 < len(v) <= {check}):"
                         f" return B{i}")
        else:
            ns[f"C{i}"] = check
            lines.append(f"    if {guard}C{i}(v) is _BAD: return B{i}")
    args = "".join(f", {name}=d.get({name!r})" for name, _, _ in fields)
    lines.append(f"    return FINISH(S(event_id=event_id, ts=d['ts']{args}), event_id, ts_ms,"
                 " currency)")
    return build("check", type_, lines, ns)  # type: ignore[no-any-return]


def finish_function(type_: str, family: str, defaults: Sequence[tuple[str, Any]],
                    extra: Callable[[Any, str], str | None] | None, channel: str,
                    ns: dict[str, Any]) -> Callable[[Any, str, int, str], Any]:
    """``finish(s, event_id, ts_ms, currency)``: what follows the field checks, on the
    event's struct: defaults, the type's cross-field rule (``extra``), the family's channel
    when none is given; then the ``Event``. ``ns`` holds ``Event`` and ``Invalid``."""
    lines = ["def finish(s, event_id, ts_ms, currency):"]
    for name, default in defaults:
        ns[f"D_{name}"] = default
        lines.append(f"    if s.{name} is None: s.{name} = D_{name}")
    if extra is not None:
        ns["X"] = extra
        lines.append("    r = X(s, currency)")
        lines.append("    if r is not None: return Invalid(r)")
    lines.append(f"    if s.channel is None: s.channel = {channel!r}")
    lines.append(f"    return Event(event_id, {type_!r}, ts_ms, {family!r}, s)")
    return build("finish", type_, lines, ns)  # type: ignore[no-any-return]
