"""The catalog's settings blocks, besides families, aggregates and KPIs: `attribution`
(multi-touch attribution) and `mql` (lead scoring), and the checker every part of
validation reports its problems to."""

from __future__ import annotations

from typing import Any, Final

from metrics.catalog_types import AttributionConfig, MqlConfig, parse_duration_ms
from metrics.errors import CatalogError
from metrics.events import TYPES

#: the input types an `mql.points` entry may name (an account's engagement)
SCORED_TYPES = ("email.opened", "email.clicked", "page.viewed", "goal.converted",
                "social.interaction")


class Checker:
    """Collects every problem instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")


#: windowed builtins revised through another builtin's facts: a change to their value is a
#: change to it in the window (metrics/trackers/lead_scoring.py)
REVISED_BY: Final = {"mql_leads": "mqls", "prior_mqls": "mqls"}


def check_companions(builtins: set[str], c: Checker) -> None:
    """A windowed builtin in the catalog needs the builtin whose facts revise it."""
    for b in sorted(builtins):
        need = REVISED_BY.get(b)
        if need is not None and need not in builtins:
            c.fail("aggregates", f"an aggregate of builtin {b!r} needs one of {need!r} too "
                   "(its changes revise the windows)")


def attribution_block(raw: Any, c: Checker) -> AttributionConfig:
    """`attribution: {lookback: 90d, half_life: 7d}` (both optional)."""
    if raw is None:
        return AttributionConfig()
    if not isinstance(raw, dict) or set(raw) - {"lookback", "half_life"}:
        c.fail("attribution", "must be a mapping with lookback and/or half_life")
        raise CatalogError(c.problems)
    got = _durations(raw, ("lookback", "half_life"), "attribution", c)
    if c.problems:
        raise CatalogError(c.problems)
    return AttributionConfig(**got)


def mql_block(raw: Any, c: Checker) -> MqlConfig:
    """`mql: {threshold, half_life, lookback, within, points: {type: n}, pages: {prefix: n}}`
    (each optional; the defaults are MqlConfig's)."""
    if raw is None:
        return MqlConfig()
    keys = {"threshold", "half_life", "lookback", "within", "points", "pages"}
    if not isinstance(raw, dict) or set(raw) - keys:
        c.fail("mql", f"must be a mapping with some of {', '.join(sorted(keys))}")
        raise CatalogError(c.problems)
    got: dict[str, Any] = _durations(raw, ("half_life", "lookback", "within"), "mql", c)
    if "threshold" in raw:
        t = raw["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            c.fail("mql.threshold", "must be a number above 0")
        else:
            got["threshold"] = float(t)
    for key, allowed in (("points", SCORED_TYPES), ("pages", None)):
        if key in raw:
            got[key] = _points(raw[key], f"mql.{key}", allowed, c)
    if c.problems:
        raise CatalogError(c.problems)
    return MqlConfig(**got)


def _points(raw: Any, where: str, allowed: tuple[str, ...] | None, c: Checker
            ) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, dict):
        c.fail(where, "must be a mapping of names to points")
        return ()
    out: list[tuple[str, int]] = []
    for name, pts in raw.items():
        if allowed is not None and name not in allowed:
            known = "an event type" if name in TYPES else "a type"
            c.fail(f"{where}.{name}", f"is not {known} that scores: one of {', '.join(allowed)}")
        elif allowed is None and not (isinstance(name, str) and name.startswith("/")):
            c.fail(f"{where}.{name}", "must be a page path prefix starting with /")
        elif isinstance(pts, bool) or not isinstance(pts, int) or pts < 0:
            c.fail(f"{where}.{name}", "must be a whole number of points, 0 or more")
        else:
            out.append((str(name), pts))
    # the longest prefix first: a page takes the points of the most specific one
    return tuple(sorted(out, key=lambda x: (-len(x[0]), x[0])))


def _durations(raw: dict[str, Any], keys: tuple[str, ...], block: str, c: Checker
               ) -> dict[str, Any]:
    got: dict[str, Any] = {}
    for key in keys:
        if key in raw:
            try:
                ms = parse_duration_ms(raw[key])
            except ValueError as exc:
                c.fail(f"{block}.{key}", str(exc))
                continue
            if ms <= 0:
                c.fail(f"{block}.{key}", "must be longer than 0")
            else:
                got[f"{key}_ms"] = ms
    return got
