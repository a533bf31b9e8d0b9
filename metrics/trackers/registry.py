"""The one place stateful aggregates are registered: the catalog's builtin aggregates, the
engine's trackers, their expiry and their snapshots all come from ``TRACKERS``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from metrics.trackers.account_purchases import AccountPurchases
from metrics.trackers.account_revenue import AccountRevenue
from metrics.trackers.attribution import Attribution
from metrics.trackers.base import TableFactory, Tracker
from metrics.trackers.cohorts import SendCohorts
from metrics.trackers.first_seen import UniqueClickers, UniqueOpeners
from metrics.trackers.lead_scoring import LeadScoring
from metrics.trackers.pipeline import Pipeline
from metrics.trackers.sessions import Sessions
from metrics.trackers.visitors import Visitors

if TYPE_CHECKING:
    from metrics.catalog_types import Catalog

TRACKERS: Final[tuple[type[Tracker], ...]] = (UniqueOpeners, UniqueClickers, SendCohorts,
                                              Sessions, Visitors, Pipeline, AccountRevenue,
                                              Attribution, AccountPurchases, LeadScoring)

#: builtin aggregate -> (the family of the tracker that makes it, the dims its facts carry)
BUILTINS: Final[dict[str, tuple[str, frozenset[str]]]] = {
    builtin: (t.family, dims) for t in TRACKERS for builtin, dims in t.builtins.items()}

#: builtin aggregate -> its tracker class
TRACKER_OF: Final[dict[str, type[Tracker]]] = {
    builtin: t for t in TRACKERS for builtin in t.builtins}

#: builtins kept in millionths (money, durations)
MICRO_BUILTINS: Final = frozenset(b for t in TRACKERS for b in t.micro)


def trackers_used(catalog: Catalog) -> list[type[Tracker]]:
    """The trackers a catalog runs: those of its families with a builtin it uses (a shard's
    catalog, Catalog.restrict, lacks the other families' aggregates)."""
    used = {a.builtin for a in catalog.aggregates.values() if a.builtin is not None}
    return [t for t in TRACKERS if t.family in catalog.families and used & set(t.builtins)]


def make_trackers(catalog: Catalog, tables: TableFactory | None = None) -> dict[str, Tracker]:
    """The trackers a catalog runs, by name, set up: their settings in the catalog, and
    (``tables`` given: a worker's) their large tables on disk."""
    out: dict[str, Tracker] = {}
    for cls in trackers_used(catalog):
        tracker = out[cls.name] = cls(catalog.families[cls.family].state_ms)
        if hasattr(tracker, "configure"):  # settings of its own in the catalog
            tracker.configure(catalog)
        if tables is not None and hasattr(tracker, "spill"):
            tracker.spill(tables)
    return out


def _check_unique() -> None:
    names = [t.name for t in TRACKERS]
    if len(set(names)) != len(names) or len(BUILTINS) != sum(len(t.builtins) for t in TRACKERS):
        raise RuntimeError("two trackers share a name or a builtin aggregate")


_check_unique()
