"""The accounts stage's input: copies of other families' events (docs/semantics.md,
"Accounts stage").

KPIs that read several families (spend against won and ordered revenue; accounts' touches
against their purchases) would merge those families' shards into one, and web, the
heaviest, with them. Instead the events they read are copied into a family of their own,
``accounts``, with its own windows, watermark, dedup and state: in replay the engine copies
them as it reads them; in a worker each family's shard copies them onto the internal topic
`kpi-account-events`, which the accounts shard reads like any input (streams/feed.py).

A copy keeps its event's id, time and fields; only its type (``ACCOUNT_FEEDS``) and family
change. Its watermark source is the copied event's own (its partition): the accounts
family's event time is the minimum over the input partitions it is fed from, as if it read
them itself. Every event of a feeding family also moves that source's event time on (the
worker sends it as a progress mark), so a partition with nothing to copy never holds the
stage back.
"""

from __future__ import annotations

from typing import Any, Final

from metrics.catalog import Catalog
from metrics.clock import Source
from metrics.engine import KpiEngine
from metrics.events import ACCOUNT_FEEDS, ACCOUNTS, TYPES, Event, struct_of
from metrics.trackers.lead_scoring import ENGAGEMENT
from metrics.trackers.registry import trackers_used

#: families with events the stage copies: their every event moves the stage's event time
FEEDING_FAMILIES: Final = frozenset(TYPES[t].family for t in ACCOUNT_FEEDS)

_FIELDS: Final = {t: tuple(struct_of(t).__struct_fields__) for t in ACCOUNT_FEEDS}
_COPY_STRUCT: Final = {t: struct_of(c) for t, c in ACCOUNT_FEEDS.items()}


#: every copy type there is: what a catalog using the whole stage reads
ALL_COPIES: Final = frozenset(ACCOUNT_FEEDS.values())


def stage_reads(catalog: Catalog) -> frozenset[str]:
    """The copy types the catalog's accounts stage reads: those its aggregates count and
    those its trackers consume (a tracker runs when one of its builtins is used, as in the
    engine). A catalog without lead scoring copies no email open, for instance."""
    reads = {a.event for a in catalog.aggregates.values() if a.event in ALL_COPIES}
    for cls in trackers_used(catalog):
        if cls.family == ACCOUNTS:
            reads |= cls.consumes & ALL_COPIES
    return frozenset(reads)


def copied(ev: Event, reads: frozenset[str] = ALL_COPIES) -> bool:
    """Whether the stage reads this input event (``reads``: ``stage_reads`` of the catalog):
    an account's engagement (lead scoring, and attribution's touches) only when it names
    the account, every other fed type always."""
    copy_type = ACCOUNT_FEEDS.get(ev.type)
    if copy_type is None or copy_type not in reads:
        return False
    return copy_type not in ENGAGEMENT or bool(ev.data.account_id)


def copy_for_accounts(ev: Event, reads: frozenset[str] = ALL_COPIES) -> Event | None:
    """The accounts stage's copy of an event, or None when the stage does not read it."""
    if not copied(ev, reads):
        return None
    data = ev.data
    copy_type = ACCOUNT_FEEDS[ev.type]
    struct = _COPY_STRUCT[ev.type]
    return Event(ev.event_id, copy_type, ev.ts_ms, ACCOUNTS,
                 struct(**{f: getattr(data, f) for f in _FIELDS[ev.type]}))


class FeedingEngine(KpiEngine):
    """The engine over a catalog with the stage and families feeding it (replay: the whole
    catalog; ``KpiEngine(catalog)`` makes one): each event read also feeds the stage."""

    def __init__(self, catalog: Catalog, *args: Any, **kwargs: Any):
        super().__init__(catalog, *args, **kwargs)
        self._reads = stage_reads(catalog)

    def ingest(self, ev: Event, source: Source = 0, ref: Any = None,
               arrival: int | None = None) -> str:
        verdict = KpiEngine.ingest(self, ev, source, ref, arrival)
        if ev.family in FEEDING_FAMILIES:
            copy = copy_for_accounts(ev, self._reads)
            if copy is None:
                self.progress(ACCOUNTS, source, ev.ts_ms, arrival)
            else:  # its own verdict: the stage has its own ids, grace and watermark
                KpiEngine.ingest(self, copy, source, None, arrival)
        return verdict

    def assign_source(self, family: str, source: Source) -> None:
        """A feeding partition holds the stage's watermark too, until it speaks."""
        super().assign_source(family, source)
        if family in FEEDING_FAMILIES:
            self.watermarks[ACCOUNTS].assign(source, self._clock())
