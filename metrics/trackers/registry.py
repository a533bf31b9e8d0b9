"""The one place stateful aggregates are registered: the catalog's builtin aggregates, the
engine's trackers, their expiry and their snapshots all come from ``TRACKERS``."""

from __future__ import annotations

from typing import Final

from metrics.trackers.account_purchases import AccountPurchases
from metrics.trackers.account_revenue import AccountRevenue
from metrics.trackers.attribution import Attribution
from metrics.trackers.base import Tracker
from metrics.trackers.cohorts import SendCohorts
from metrics.trackers.first_seen import UniqueClickers, UniqueOpeners
from metrics.trackers.lead_scoring import LeadScoring
from metrics.trackers.pipeline import Pipeline
from metrics.trackers.sessions import Sessions
from metrics.trackers.visitors import Visitors

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


def _check_unique() -> None:
    names = [t.name for t in TRACKERS]
    if len(set(names)) != len(names) or len(BUILTINS) != sum(len(t.builtins) for t in TRACKERS):
        raise RuntimeError("two trackers share a name or a builtin aggregate")


_check_unique()
