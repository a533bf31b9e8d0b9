"""The KPI engine: validated events in, KPI records out. Pure: no I/O, clock injected.

The worker and `kpi-engine replay` drive the same object:

    engine.ingest(event, source)   # dedup, late check, aggregate updates
    engine.advance()               # watermarks -> close windows -> final/revised records
    engine.flush()                 # end of input: close everything

It composes the parts along an event's path, each a module with a typed state:

    dedup.DedupStore        event ids counted, per shard (in memory, or on disk in a worker)
    clock.Watermark         event time per family (and the events held before it is known)
    windows.FamilyWindows   panes and rolling windows per family
    trackers/               stateful aggregates (send cohorts, sessions, pipeline), facts
    publish.Publisher       finals, revisions, open values (scorecards: campaigns' lifetime)

A *source* is whatever orders events (a topic partition); a family's watermark is the minimum
over its sources of the highest event time seen: how partitions interleave makes none late.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from msgspec.structs import replace

from metrics import codegen
from metrics.catalog import Aggregate, Catalog
from metrics.clock import HeldEvent, Source, Watermark, hold, judge_held, restored, unhold
from metrics.constants import NEVER, NEVER_END, TOTAL
from metrics.counting import apply_late, count_interpreted
from metrics.dedup import DedupStore, MemoryDedup
from metrics.errors import StateError
from metrics.events import ACCOUNTS, EVENT_TYPES, PROGRESS_MARK, Event, event_fields, struct_of
from metrics.facts import FactRouter
from metrics.formulas import row_functions
from metrics.plans import (
    Expand,
    Update,
    apply_expand,
    apply_update,
    compile_expand,
    compile_updates,
    fields_read,
)
from metrics.publish import Publisher
from metrics.records import iso_ms
from metrics.scorecards import Scorecards
from metrics.shelf import ShelfFactory, mem_shelf
from metrics.snapshot import (
    ENGINE_STATE_VERSION,
    Counters,
    EngineState,
    PartNames,
    Parts,
    collect_parts,
    decode_part,
    encode_part,
    load_parts,
    strip,
)
from metrics.trackers import TRACKERS, Tracker
from metrics.trackers.base import TableFactory
from metrics.trackers.registry import make_trackers
from metrics.windows import FamilyWindows

__all__ = ["NEVER", "Clock", "EngineConfig", "KpiEngine"]

Clock = Callable[[], int]  # epoch milliseconds
_MARK = struct_of(PROGRESS_MARK)
Record = dict[str, Any]


@dataclass(frozen=True)
class EngineConfig:
    dedup_horizon_ms: int = 7 * 86_400_000
    idle_timeout_ms: int = 30_000  # 0 turns wall-clock watermark advance off
    #: False: every generated function replaced by its interpreted twin (codegen.py), for
    #: the tests that hold the two to the same results
    generated: bool = True


#: makes a shard's dedup store, given the shard's name
DedupFactory = Callable[[str], DedupStore]


class KpiEngine:
    def __new__(cls, catalog: Catalog, *args: Any, **kwargs: Any) -> KpiEngine:
        # a catalog with the accounts stage and families feeding it (replay: the whole one)
        # feeds the stage here; a worker's shards copy onto a topic instead (streams/feed.py)
        from metrics.feed import FEEDING_FAMILIES, FeedingEngine  # it subclasses this one

        feeds = ACCOUNTS in catalog.families and FEEDING_FAMILIES & set(catalog.families)
        return super().__new__(FeedingEngine if cls is KpiEngine and feeds else cls)

    def __init__(self, catalog: Catalog, config: EngineConfig | None = None,
                 clock: Clock | None = None, dedup: DedupFactory | None = None,
                 tables: TableFactory | None = None, shelves: ShelfFactory = mem_shelf):
        self.catalog = catalog
        self.config = config = config or EngineConfig()
        self._clock: Clock = clock or (lambda: 0)
        self.windows = {f: FamilyWindows(cfg, shelves) for f, cfg in catalog.families.items()}
        self.watermarks = {f: Watermark() for f in catalog.families}
        by_event: dict[str, list[Aggregate]] = {}
        for agg in catalog.aggregates.values():
            if agg.builtin is None:
                assert agg.event is not None
                by_event.setdefault(agg.event, []).append(agg)
        self._by_event = by_event
        bds = catalog.breakdowns
        self._updates: dict[str, Update] = {}
        self._expanders: dict[str, Expand] = {}
        for t, aggs in by_event.items():
            if config.generated:
                self._updates[t] = compile_updates(t, aggs, bds, event_fields(t))
                self._expanders[t] = compile_expand(t, aggs, bds)
            else:
                self._updates[t] = partial(apply_update, aggs, bds)
                self._expanders[t] = partial(apply_expand, aggs, bds)
        self._kpi_rows = row_functions(catalog, config.generated)
        self.trackers: dict[str, Tracker] = make_trackers(catalog, tables)
        self._facts = FactRouter(catalog)
        self.scorecards = Scorecards(catalog, self._kpi_rows)
        #: event ids counted, per shard (Catalog.shards)
        shards = catalog.shards()
        self._shard_of = {f: name for name, fams in shards.items() for f in fams}
        make = dedup or (lambda _: MemoryDedup())
        self.dedup: dict[str, DedupStore] = {name: make(name) for name in shards}
        # an accepted event is never older than its family's longest window + grace: ids
        # are kept at least that long, so no accepted event's duplicate counts again
        self._dedup_horizon = {
            name: max([config.dedup_horizon_ms, *(catalog.families[f].longest_ms
                                                  + catalog.families[f].grace_ms
                                                  for f in fams)])
            for name, fams in shards.items()}
        self._next_close = {f: NEVER for f in catalog.families}
        #: events of a family whose windows have not started yet (clock.hold: encoded, with
        #: ref, arrival at the broker if known, and source), in each source's order
        self._held: dict[str, list[HeldEvent]] = {f: [] for f in catalog.families}
        #: refs of every event found late (held ones included); the shell drains it
        self.late_refs: list[Any] = []
        self._partners: dict[str, set[str]] = {f: set() for f in catalog.families}
        for kpi in catalog.kpis.values():
            for f in kpi.families:
                self._partners[f].update(set(kpi.families) - {f})
        settling = {b for t in TRACKERS if t.settles for b in t.builtins}
        self.publisher = Publisher(catalog, self._kpi_rows, {
            k.name for k in catalog.kpis.values()
            if any(catalog.aggregates[a].builtin in settling for a in k.aggregates())}, shelves)
        self._flushing = False
        #: set when a watermark passed a window close: call advance()
        self.due = False
        # counters the streaming shell exports
        self.events_total: dict[str, int] = {}  # event type -> valid events counted
        self.duplicates_total = 0
        self.late_total: dict[str, int] = {f: 0 for f in catalog.families}
        self._bind_state()

    # ---- input ---------------------------------------------------------------------------

    def ingest(self, ev: Event, source: Source = 0, ref: Any = None,
               arrival: int | None = None) -> str:
        """Count one event. Returns 'ok', 'duplicate', 'late' or 'held'.

        ``arrival``: when the event reached the broker (the record's timestamp, epoch ms), if
        known; it orders the events held before a family starts across partitions. 'held':
        the family's watermark is not known yet (an assigned partition has not spoken), so
        its windows have not started; the event is applied, or found late, once it is. A
        late event's ``ref`` is appended to ``late_refs`` for the caller to route."""
        eid = ev.event_id
        fam = ev.family
        seen, fw, wm = self._lanes[fam]
        ts = ev.ts_ms
        # the common case: not late, so a new id is remembered as it is looked up
        if fw.started and (ts >= fw.frontier or not fw.is_late(ts)):
            if seen.admit(eid, ts):
                self._count[ev.type](ev, fw)
                wm.observe(source, ts)
                if wm.value >= self._next_close[fam]:
                    self.due = True
                return "ok"
        elif eid not in seen:
            if fw.started:
                self.late_total[fam] += 1
                self.late_refs.append(ref)
                return "late"
            seen.remember(eid, ts)
            self._held[fam].append(hold(ev, ref, arrival, source))
            wm.observe(source, ts)
            if wm.value == NEVER:
                return "held"
            self._start(fam)
            return "ok" if eid in seen else "late"
        self.duplicates_total += fam != ACCOUNTS  # a copy's is not the input's (metrics/feed.py)
        return "duplicate"

    def progress(self, family: str, source: Source, ts: int, arrival: int | None = None
                 ) -> None:
        """A source of the family reached ``ts`` with no event of it (the accounts stage:
        the event time of a partition it is fed from, metrics/feed.py). Before the family
        starts it is held too, as a mark: what reached the broker after it is judged
        against it, as in replay (``_start``)."""
        wm = self.watermarks[family]
        wm.observe(source, ts)
        if self.windows[family].started:
            if wm.value >= self._next_close[family]:
                self.due = True
            return
        held = self._held[family]
        if held and held[-1].type == PROGRESS_MARK and (
                held[-1].arrival, held[-1].source) == (arrival, source):
            ts = max(ts, held.pop().ts_ms)  # a source's marks of one moment: the furthest
        mark = Event("", PROGRESS_MARK, ts, family, _MARK(event_id="-", ts=ts))
        held.append(hold(mark, None, arrival, source))
        if wm.value != NEVER:
            self.due = True  # advance() starts the family

    def _bind_state(self) -> None:
        """Derived views of the state: made at start and after every restore()."""
        #: family -> what ingest() looks up for every event: shard's ids, windows, watermark
        self._lanes = {f: (self.dedup[shard], self.windows[f], self.watermarks[f])
                       for f, shard in self._shard_of.items()}
        #: event type -> the function that counts it into its family's windows
        self._count: dict[str, Callable[[Event, FamilyWindows], None]] = {
            t: self._counter(t) for t in EVENT_TYPES}

    def _counter(self, type_: str) -> Callable[[Event, FamilyWindows], None]:
        """Counts one event of this type: tallies it in its pane (or, late within grace,
        patches the closed windows it falls in), and hands it to the trackers observing it.
        Generated (codegen.ingest_function): it runs for every event."""
        observers = [t.observe for t in self.trackers.values() if type_ in t.consumes]
        aggs = self._by_event.get(type_)
        read = fields_read(aggs, self.catalog.breakdowns) if aggs else None
        update = self._updates.get(type_)
        if self.config.generated:
            return codegen.ingest_function(type_, event_fields(type_), read, self.events_total,
                                           apply_late, update, observers,
                                           self._facts.apply)
        return partial(count_interpreted, type_, read, self.events_total, update, observers,
                       self._facts.apply)

    def _start(self, fam: str) -> None:
        """Start a family's windows once its watermark is known, at its earliest counted
        held event. The held events are judged as replay would (clock.judge_held): a
        partition that speaks last, far ahead, leaves the others' earlier events counted."""
        fw = self.windows[fam]
        held, self._held[fam] = self._held[fam], []
        counted, late = judge_held(held, fw.cfg.longest_ms + fw.cfg.grace_ms)
        if any(h.type == PROGRESS_MARK for h in held):
            counted = [h for h in counted if h.type != PROGRESS_MARK]
            late = [h for h in late if h.type != PROGRESS_MARK]
            if not counted and not late:
                return  # marks only: the family starts at its first event
        fw.start(min((h.ts_ms for h in counted), default=self.watermarks[fam].value))
        self._next_close[fam] = self._compute_next_close(fam)
        dedup = self.dedup[self._shard_of[fam]]
        for h in late:
            self.late_total[fam] += 1
            self.late_refs.append(h.ref)
            dedup.forget(h.event_id)
        count = self._count
        for h in counted:
            ev = unhold(h)
            count[ev.type](ev, fw)
        if self.watermarks[fam].value >= self._next_close[fam]:
            self.due = True

    # ---- time ----------------------------------------------------------------------------

    def _compute_next_close(self, fam: str) -> int:
        fw = self.windows[fam]
        if not fw.started:
            return NEVER
        grace = fw.cfg.grace_ms
        return min(s.last_end + s.spec.hop_ms + grace for s in fw.specs)

    def assign_source(self, family: str, source: Source) -> None:
        """A partition was assigned: until it delivers, it holds the family's watermark."""
        self.watermarks[family].assign(source, self._clock())

    def forget_source(self, source: Source) -> None:
        """A partition was revoked: it no longer holds back the watermark."""
        for wm in self.watermarks.values():
            wm.forget(source)

    def sources(self) -> set[Source]:
        """Every source registered with a family's watermark."""
        return {src for wm in self.watermarks.values() for src in wm.sources}

    def watermark(self, family: str) -> int:
        return self.watermarks[family].value

    def expecting(self, family: str) -> bool:
        """Not started, but a live partition may still bring its first event."""
        return self.watermarks[family].expecting()

    def settled(self, family: str) -> int:
        """The event time before which the family's tracker facts are final (its sessions
        settled); at the end of input, everything is."""
        if self._flushing:
            return NEVER_END
        wm = self.watermarks[family].value
        grace = self.catalog.families[family].grace_ms
        return min((t.settled(wm, grace) for t in self.trackers.values()
                    if t.family == family and t.settles), default=NEVER_END)

    def advance(self) -> list[Record]:
        """Move watermarks, close due windows, and return final and revised KPI records."""
        wall = self._clock()
        self.due = False
        closed: dict[str, list[tuple[str, int]]] = {}
        for fam, wm in self.watermarks.items():
            wm.idle_advance(wall, self.config.idle_timeout_ms)
            if not self.windows[fam].started and wm.value != NEVER and self._held[fam]:
                self._start(fam)
            if wm.value >= self._next_close[fam]:
                fw = self.windows[fam]
                fw.settle(self._expanders)
                keep = self._expiry_watermark(fam, wm.value) - fw.cfg.longest_ms - fw.cfg.grace_ms
                closed[fam] = [(spec.name, end)
                               for spec, end, _ in fw.close_until(wm.value, keep)]
                self._next_close[fam] = self._compute_next_close(fam)
        out = self.publisher.publish(closed, self, iso_ms(self._clock()))
        for fam, fw in self.windows.items():
            if fam in closed:
                self._expire(fam, self.watermarks[fam].value)
            fw.flush()  # the snapshots of the windows it revised too
        return out

    @property
    def revised(self) -> bool:
        """Closed windows changed since advance() (a late event, a response to a send)."""
        return any(fw.dirty for fw in self.windows.values())

    def flush(self) -> list[Record]:
        """End of input: close every window that holds data."""
        closed: dict[str, list[tuple[str, int]]] = {}
        for fam, fw in self.windows.items():
            if not fw.started:
                if not self._held[fam]:
                    continue
                self._start(fam)
            last = max(self.watermarks[fam].sources.values(), default=NEVER)
            far = last + fw.cfg.longest_ms + fw.cfg.grace_ms + max(
                w.hop_ms for w in fw.cfg.windows)
            fw.settle(self._expanders)
            closed[fam] = [(spec.name, end) for spec, end, _ in fw.close_until(far, far)]
        # nothing expires: the input is over
        self._flushing = True
        try:
            return self.publisher.publish(closed, self, iso_ms(self._clock()))
        finally:
            self._flushing = False

    def _in_play(self, fam: str) -> bool:
        """Started, or still expecting its first event from a live partition."""
        return self.windows[fam].started or self.watermarks[fam].expecting()

    def _expiry_watermark(self, fam: str, watermark: int) -> int:
        """What a family expires by: a window shared with another family's KPI (CPL: crm +
        spend) must outlive the moment that family closes it too, however far ahead this
        one runs."""
        partners = [self.watermarks[f].value for f in self._partners[fam] if self._in_play(f)]
        return min([watermark, *partners])

    def _expire(self, fam: str, watermark: int) -> None:
        watermark = self._expiry_watermark(fam, watermark)
        self.windows[fam].expire(watermark)
        for tracker in self.trackers.values():
            if tracker.family == fam:
                tracker.expire(watermark)
        # the families of a shard share its ids: expire by the slowest one's event time (a
        # family still waiting for a partition holds them all: its held events' too)
        shard = self._shard_of[fam]
        slowest = min((w.value for f, w in self.watermarks.items()
                       if self._shard_of[f] == shard and self._in_play(f)), default=watermark)
        self.dedup[shard].expire(slowest - self._dedup_horizon[shard])
        self.publisher.prune(fam, watermark)

    # ---- output --------------------------------------------------------------------------

    def change_mark(self) -> tuple[int, tuple[int, ...], tuple[bool, ...]]:
        return (sum(self.events_total.values()), tuple(w.value for w in self.watermarks.values()),
                tuple(fw.started for fw in self.windows.values()))

    def open_records(self) -> list[Record]:
        """Current values of the newest open window of every KPI and window (final: false)."""
        for fw in self.windows.values():
            fw.settle(self._expanders)
        emitted_at = iso_ms(self._clock())
        return (self.publisher.open_records(self, emitted_at)
                + self.scorecards.records(self.trackers, emitted_at))

    # ---- durability ----------------------------------------------------------------------

    def snapshot(self, ref: Callable[[Any], Any] = lambda r: r) -> EngineState:
        """The engine's whole mutable state, typed (metrics/snapshot.py; live references:
        encode it before the next event). Everything else is derived from the catalog and
        config. ``ref`` turns the caller's refs of held events into plain data."""
        for fw in self.windows.values():
            fw.settle(self._expanders)
        return self._state({f: fw.snapshot() for f, fw in self.windows.items()},
                           self.publisher.snapshot(), ref,
                           {n: encode_part(t.snapshot()) for n, t in self.trackers.items()})

    def _state(self, windows: Any, publisher: Any, ref: Callable[[Any], Any],
               trackers: dict[str, Any]) -> EngineState:
        return EngineState(
            ENGINE_STATE_VERSION, windows=windows,
            watermarks={f: wm.snapshot() for f, wm in self.watermarks.items()},
            held={f: [replace(h, ref=ref(h.ref)) for h in held]
                  for f, held in self._held.items()},
            dedup={s: d.snapshot() for s, d in self.dedup.items()}, trackers=trackers,
            publisher=publisher,
            counters=Counters(self.events_total, self.duplicates_total, self.late_total,
                              self.due))

    def durable(self, ref: Callable[[Any], Any], full: bool = False
                ) -> tuple[EngineState, Parts, PartNames]:
        """For an incremental commit (metrics/snapshot.py): the core state, what builds each
        part changed since the last call (all when ``full``), every part's name; live."""
        for fw in self.windows.values():
            fw.settle(self._expanders)
        windows = strip({f: fw.snapshot(closed=False) for f, fw in self.windows.items()})
        core = self._state(windows, self.publisher.snapshot(rows=False), ref, {})
        parts, names = collect_parts(self.windows, self.publisher, self.trackers, full)
        return core, parts, names

    def load_parts(self, parts: Iterable[tuple[str, bytes]]) -> None:
        """After restore() of a core state: its parts. Nothing is left to write after."""
        load_parts(self.windows, self.publisher, self.trackers, self.catalog.kpis, parts)

    def restore(self, state: EngineState, ref: Callable[[Any], Any] = lambda r: r) -> None:
        """Continue from a snapshot() taken by an engine with the same catalog. ``ref``
        turns the stored refs of held events back into the caller's."""
        missing = [f"{what} {name}" for what, have, want in (
            ("family", state.windows, self.windows), ("family", state.watermarks, self.watermarks),
            ("shard", state.dedup, self.dedup)) for name in set(want) - set(have)]
        if missing:
            raise StateError(f"the state lacks {', '.join(sorted(missing))}")
        for f, fw in self.windows.items():
            fw.restore(state.windows[f])
        for f, wm in self.watermarks.items():
            wm.restore(state.watermarks[f])
        self._held = {f: [restored(h, ref(h.ref)) for h in state.held.get(f, ())]
                      for f in self.catalog.families}
        for s, d in self.dedup.items():
            d.restore(state.dedup[s])
        for n, t in self.trackers.items():
            if n in state.trackers:
                t.restore(decode_part(state.trackers[n], t.state_type, f"tracker {n}"))
            else:  # a core (its tables come as parts), or a tracker new to the catalog
                for table in t.tables().values():
                    table.replace({})
        self.publisher.restore(state.publisher)
        c = state.counters
        self.events_total.clear()
        self.events_total.update(c.events_total)
        self.duplicates_total = c.duplicates_total
        self.late_total = {f: c.late_total.get(f, 0) for f in self.catalog.families}
        self.due = c.due
        self._next_close = {f: self._compute_next_close(f) for f in self.catalog.families}
        self._bind_state()

    def retain(self, written: dict[str, str], current: dict[str, str]) -> set[str]:
        """After restore(): keep the values of the aggregates whose definition is the same
        as when the state was written (``written``/``current``: aggregate -> fingerprint),
        under the breakdowns the catalog still keeps; returns the aggregates dropped. A KPI
        added, removed or edited leaves every other KPI's values alone."""
        changed = {a for a in set(written) | set(current) if written.get(a) != current.get(a)}
        bds = self.catalog.breakdowns

        def keep(key: tuple[str, str, Any]) -> bool:  # (aggregate, breakdown, value)
            return key[0] not in changed and (key[1] == TOTAL or key[1] in bds.get(key[0], ()))

        for fw in self.windows.values():
            fw.retain(keep)
        return changed & set(written)

    # ---- introspection -------------------------------------------------------------------

    @property
    def held_total(self) -> int:
        """Events waiting for their family's watermark (a partition has not spoken yet)."""
        return sum(len(h) for h in self._held.values())

    def held(self, family: str) -> list[tuple[Event, Any]]:
        """The events a family holds, with their refs, in arrival order."""
        return [(unhold(h), h.ref) for h in self._held[family]]

    def state_sizes(self) -> dict[str, int]:
        return {"dedup_ids": sum(len(d) for d in self.dedup.values()),
                **{name: len(t) for name, t in self.trackers.items()},
                "panes": sum(len(fw.panes) for fw in self.windows.values()),
                "published_windows": len(self.publisher)}
