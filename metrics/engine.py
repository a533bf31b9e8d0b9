"""The KPI engine: validated events in, KPI records out. Pure: no I/O, clock injected.

The worker and `kpi-engine replay` drive the same object:

    engine.ingest(event, source)   # dedup, late check, aggregate updates
    engine.advance()               # watermarks -> close windows -> final/revised records
    engine.flush()                 # end of input: close everything

A *source* is whatever orders events (a topic partition); a family's watermark is the
minimum over its sources of the highest event time seen, so how partitions interleave never
makes an event late.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from metrics.catalog import TOTAL, Aggregate, Catalog, Kpi, WindowSpec
from metrics.events import TYPES, UNKNOWN, Event, event_fields
from metrics.formulas import (
    Dims,
    Index,
    Rows,
    compile_kpi,
    index_snapshot,
    merge_indexes,
    plan_kpi,
)
from metrics.plans import (
    Update,
    compile_expand,
    compile_updates,
    dim_value,
    fields_read,
    read_field,
)
from metrics.records import iso_boundary, iso_ms
from metrics.trackers import Fact, FirstSeen, Pipeline, Sessions
from metrics.windows import Agg, FamilyWindows, Key

NEVER: Final = -(2**62)
_MICRO_BUILTINS: Final = frozenset({"won_amount", "cycle_days_sum"})

Clock = Callable[[], int]  # epoch milliseconds


@dataclass(frozen=True)
class EngineConfig:
    dedup_horizon_ms: int = 7 * 86_400_000
    idle_timeout_ms: int = 30_000  # 0 turns wall-clock watermark advance off


class _Watermark:
    """Per-family event-time progress: the minimum over live sources (partitions) of the
    highest event time each delivered.

    An assigned source that has delivered nothing yet holds the watermark back (so the first
    partition to report can't close windows early); a source quiet for the idle timeout
    stops holding it back; when every source is quiet, event time moves on with the wall
    clock from where it stood.
    """

    __slots__ = ("first", "idle", "last_wall", "seen_wall", "sources", "touched", "value",
                 "value_at_last_event")

    def __init__(self) -> None:
        self.sources: dict[Any, int] = {}  # source -> highest event time (NEVER: none yet)
        self.first: dict[Any, int] = {}  # source -> event time of its first event
        self.seen_wall: dict[Any, int] = {}  # source -> wall time of its last batch
        self.idle: set[Any] = set()
        self.touched: set[Any] = set()  # sources with events since the last idle check
        self.value = NEVER
        self.last_wall = 0
        self.value_at_last_event = NEVER

    def assign(self, source: Any, wall: int) -> None:
        if source not in self.sources:
            self.sources[source] = NEVER
            self.seen_wall[source] = wall

    def forget(self, source: Any) -> None:
        self.sources.pop(source, None)
        self.first.pop(source, None)
        self.seen_wall.pop(source, None)
        self.idle.discard(source)
        self.touched.discard(source)
        self._recompute()

    def observe(self, source: Any, ts: int) -> None:
        sources = self.sources
        cur = sources.get(source)
        if cur is None or ts > cur:
            sources[source] = ts
            if cur is None or cur == NEVER:
                self.first.setdefault(source, ts)
            if source in self.idle:
                self.idle.discard(source)
            if len(sources) == 1:  # one partition (replay): its event time is the minimum
                if ts > self.value:
                    self.value = ts
            elif cur is None or cur <= self.value:  # only the one at the minimum raises it
                self._recompute()
        self.touched.add(source)

    def expecting(self) -> bool:
        """No event yet, but an assigned source that is not idle may still bring one."""
        return self.value == NEVER and any(s not in self.idle for s in self.sources)

    def _recompute(self) -> None:
        idle = self.idle
        live = [t for s, t in self.sources.items() if s not in idle] if idle else \
            list(self.sources.values())
        if not live and self.value == NEVER:
            # every source went quiet in the same idle check before the watermark was ever
            # known: start from the sources that did deliver, or it would never start
            live = [t for t in self.sources.values() if t != NEVER]
        if live:
            low = min(live)
            if low > self.value:
                self.value = low

    def idle_advance(self, wall: int, idle_timeout_ms: int) -> None:
        """Once per batch: stamp activity, retire quiet sources, move a quiet family on."""
        if self.touched:
            for src in self.touched:
                self.seen_wall[src] = wall
            self.touched.clear()
            self.last_wall = wall
            self.value_at_last_event = self.value
        if idle_timeout_ms <= 0:
            return
        newly_idle = [s for s, w in self.seen_wall.items()
                      if s not in self.idle and wall - w >= idle_timeout_ms]
        if newly_idle:
            self.idle.update(newly_idle)
            self._recompute()
        if self.value == NEVER or self.last_wall == wall:
            return
        quiet = wall - self.last_wall
        if quiet >= idle_timeout_ms:
            moved = self.value_at_last_event + quiet
            if moved > self.value:
                self.value = moved


class KpiEngine:
    def __init__(self, catalog: Catalog, config: EngineConfig | None = None,
                 clock: Clock | None = None):
        self.catalog = catalog
        self.config = config or EngineConfig()
        self._clock: Clock = clock or (lambda: 0)
        self.windows = {f: FamilyWindows(cfg) for f, cfg in catalog.families.items()}
        self.watermarks = {f: _Watermark() for f in catalog.families}
        self._builtin_targets: dict[str, list[tuple[str, list[tuple[str, list[str]]]]]] = {}
        by_event: dict[str, list[Aggregate]] = {}
        for agg in catalog.aggregates.values():
            if agg.builtin is not None:
                bds = [(b, b.split("+") if b else []) for b in catalog.breakdowns[agg.name]]
                self._builtin_targets.setdefault(agg.builtin, []).append((agg.name, bds))
            else:
                assert agg.event is not None
                by_event.setdefault(agg.event, []).append(agg)
        self._by_event = by_event
        self._updates: dict[str, Update] = {
            t: compile_updates(aggs, catalog.breakdowns, event_fields(t))
            for t, aggs in by_event.items()}
        self._expanders = {t: compile_expand(aggs, catalog.breakdowns)
                           for t, aggs in by_event.items()}
        self._fact_keys: dict[tuple[str, tuple[tuple[str, str], ...]], list[Key]] = {}
        self._micro = {a.name for a in catalog.aggregates.values()
                       if a.sum_field is not None or a.builtin in _MICRO_BUILTINS}
        self._kpi_rows = {k.name: compile_kpi(plan_kpi(catalog, k, self._micro))
                          for k in catalog.kpis.values()}
        horizon = {f: cfg.longest_ms + cfg.grace_ms for f, cfg in catalog.families.items()}
        # a shard's catalog (Catalog.restrict) lacks the other families: their trackers
        # stay empty
        self.opens = FirstSeen("unique_opens", horizon.get("email", 0))
        self.clicks = FirstSeen("unique_clickers", horizon.get("email", 0))
        self.sessions = Sessions(horizon.get("web", 0))
        self.pipeline = Pipeline(horizon.get("crm", 0))
        #: event ids counted, per shard (Catalog.shards) and per hour of event time: an id
        #: repeats only within a shard's topics, as the worker that owns the shard sees them
        shards = catalog.shards()
        self._shard_of = {f: name for name, fams in shards.items() for f in fams}
        self._seen: dict[str, dict[str, int]] = {name: {} for name in shards}
        self._seen_by_hour: dict[str, dict[int, list[str]]] = {name: {} for name in shards}
        self._next_close = {f: NEVER for f in catalog.families}
        #: events of a family whose windows have not started yet, with their refs
        self._held: dict[str, list[tuple[Event, Any]]] = {f: [] for f in catalog.families}
        #: refs of every event found late (held ones included); the shell drains it
        self.late_refs: list[Any] = []
        self._kpis_by_family: dict[str, list[Kpi]] = {f: [] for f in catalog.families}
        self._partners: dict[str, set[str]] = {f: set() for f in catalog.families}
        for kpi in catalog.kpis.values():
            for f in kpi.families:
                self._kpis_by_family[f].append(kpi)
                self._partners[f].update(set(kpi.families) - {f})
        #: (family, window, end) -> kpi -> (dims -> (numerator, denominator) as published,
        #: dims -> revision of the revised ones); a KPI over several families is filed under
        #: its first one
        self._published: dict[tuple[str, str, int], dict[str, tuple[Rows, dict[Dims, int]]]] = {}
        self._published_floor = {f: NEVER for f in catalog.families}
        #: (window, end, kpi) of cross-family KPIs one family closed while another family
        #: it needs had not: published once that one closes it too, or turns out absent
        self._waiting: set[tuple[str, int, str]] = set()
        #: set when a watermark passed a window close: call advance()
        self.due = False
        # counters the streaming shell exports
        self.events_total: dict[str, int] = {}  # event type -> valid events counted
        self.duplicates_total = 0
        self.late_total: dict[str, int] = {f: 0 for f in catalog.families}
        self._bind_state()

    # ---- input ---------------------------------------------------------------------------

    def ingest(self, ev: Event, source: Any = 0, ref: Any = None) -> str:
        """Count one event. Returns 'ok', 'duplicate', 'late' or 'held'.

        'held': the family's watermark is not known yet (an assigned partition has not
        spoken), so its windows have not started; the event is applied, or found late, once
        it is. Whenever an event turns out late, now or later, its ``ref`` is appended to
        ``late_refs`` for the caller to route.
        """
        eid = ev.event_id
        fam = ev.family
        seen, by_hour, fw, wm = self._lanes[fam]
        if eid in seen:
            self.duplicates_total += 1
            return "duplicate"
        ts = ev.ts_ms
        if not fw.started:
            self._remember(fam, eid, ts)
            self._held[fam].append((ev, ref))
            wm.observe(source, ts)
            if wm.value == NEVER:
                return "held"
            self._start(fam)
            return "ok" if eid in seen else "late"
        if ts < fw.frontier and fw.is_late(ts):  # beyond the frontier nothing is closed
            self.late_total[fam] += 1
            self.late_refs.append(ref)
            return "late"
        seen[eid] = ts  # self._remember, inlined: it runs once per event
        bucket = by_hour.get(ts // 3_600_000)
        if bucket is None:
            by_hour[ts // 3_600_000] = [eid]
        else:
            bucket.append(eid)
        self._appliers[ev.type](ev, fw, self)
        wm.observe(source, ts)
        if wm.value >= self._next_close[fam]:
            self.due = True
        return "ok"

    def _remember(self, fam: str, eid: str, ts: int) -> None:
        seen, by_hour, _, _ = self._lanes[fam]
        seen[eid] = ts
        hour = ts // 3_600_000
        bucket = by_hour.get(hour)
        if bucket is None:
            by_hour[hour] = [eid]
        else:
            bucket.append(eid)

    def _bind_state(self) -> None:
        """Derived views of the state: made at start and after every restore()."""
        #: family -> what ingest() looks up for every event: its shard's ids by id and by
        #: hour, its windows, its watermark
        self._lanes = {f: (self._seen[shard], self._seen_by_hour[shard], self.windows[f],
                           self.watermarks[f]) for f, shard in self._shard_of.items()}
        #: event type -> the function that counts it (bound to events_total, so rebuilt
        #: whenever the state is)
        self._appliers = {t: self._compile_apply(t) for t in TYPES}

    def _compile_apply(self, type_: str) -> Callable[[Event, FamilyWindows, KpiEngine], None]:
        """The function that counts one event of this type into its family's windows:
        tallies it in its pane (or, late within grace, patches the closed windows it falls
        in), and hands it to its tracker when a stateful KPI needs it. Generated: it runs for
        every event, and each call it saves is ~2 % of replay."""
        # the engine is an argument, not bound in: bound methods held by the engine would
        # put it in a reference cycle, and a dropped engine would wait for the collector
        ns: dict[str, Any] = {"counts": self.events_total, "apply_late": self._apply_late,
                              "UPDATE": self._updates.get(type_), "TYPE": type_}
        lines = ["def apply(ev, fw, engine):", "    counts[TYPE] = counts.get(TYPE, 0) + 1"]
        if type_ in self._by_event:
            # the common case, no closed window covers ts: tallied by what its update reads,
            # expanded into aggregate keys once per distinct tally (FamilyWindows.settle)
            fields = event_fields(type_)
            sig = "".join(f"{read_field(f, fields)}, " for f in fields_read(
                self._by_event[type_], self.catalog.breakdowns))
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
        if type_ in _STATEFUL:
            lines += ["    facts = engine._track(ev)", "    if facts:",
                      "        engine._apply_facts(fw, facts)"]
        exec("\n".join(lines), ns)
        return ns.pop("apply")  # type: ignore[no-any-return]  # (pop: no function <-> ns cycle)

    def _start(self, fam: str) -> None:
        """Start a family's windows once its watermark is known, at the earliest event held
        meanwhile (as replay starts at its first line, whichever partition was read first);
        then the held events go through the usual late check, in arrival order."""
        fw = self.windows[fam]
        held, self._held[fam] = self._held[fam], []
        # Partitions open at about the same event time. An event older than the latest of
        # their first events by more than the longest window + grace is one a partition
        # happened to deliver first (replay, reading it later, finds it late): it must not
        # start 40 days of windows, nor set the watermark it is judged by.
        wm = self.watermarks[fam]
        latest_first = max(wm.first.values(), default=wm.value)
        floor = latest_first - fw.cfg.longest_ms - fw.cfg.grace_ms
        fw.start(min((ev.ts_ms for ev, _ in held if ev.ts_ms >= floor), default=latest_first))
        self._next_close[fam] = self._compute_next_close(fam)
        for ev, ref in held:
            if fw.is_late(ev.ts_ms):
                self.late_total[fam] += 1
                self.late_refs.append(ref)
                self._lanes[fam][0].pop(ev.event_id, None)
            else:
                self._appliers[ev.type](ev, fw, self)
        if self.watermarks[fam].value >= self._next_close[fam]:
            self.due = True

    @staticmethod
    def _apply_late(fw: FamilyWindows, ts: int, data: Any, update: Update) -> None:
        """An event in a pane some closed window covers (late within grace): the closed
        windows it falls in are patched too, and republished as revisions."""
        delta: Agg = {}
        update(delta, data)
        for key, value in delta.items():
            fw.add(ts, key, value)

    def _track(self, ev: Event) -> list[Fact]:
        d = ev.data
        t = ev.type
        ts = ev.ts_ms
        if t == "email.opened" or t == "email.clicked":
            dims = (("campaign_id", d.campaign_id), ("segment", d.segment or UNKNOWN))
            tracker = self.opens if t == "email.opened" else self.clicks
            return tracker.observe((d.campaign_id, d.contact_id), ts, dims)
        if t == "page.viewed":
            return self.sessions.observe(d.session_id, ts, True, d.channel,
                                         d.campaign_id or UNKNOWN, None)
        if t == "goal.converted":
            return self.sessions.observe(d.session_id, ts, False, d.channel,
                                         d.campaign_id or UNKNOWN, d.goal)
        if t == "lead.created":
            return self.pipeline.lead(d.lead_id, ts, d.channel, d.campaign_id or UNKNOWN)
        if t == "deal.stage_changed":
            return self.pipeline.deal(d, ts)
        return []

    def _apply_facts(self, fw: FamilyWindows, facts: list[Fact]) -> None:
        cache = self._fact_keys
        frontier, panes, pane_ms = fw.frontier, fw.panes, fw.pane_ms
        for ts, builtin, dims, value in facts:
            keys = cache.get((builtin, dims))
            if keys is None:
                keys = self._keys_of(builtin, dims)
            if not keys:
                continue
            if ts >= frontier:  # the common case: a pane no closed window covers yet
                start = ts - ts % pane_ms  # FamilyWindows.add, inlined
                pane = panes.get(start)
                if pane is None:
                    pane = panes[start] = {}
                for key in keys:
                    pane[key] = pane.get(key, 0) + value
            else:
                for key in keys:
                    fw.add(ts, key, value)

    def _keys_of(self, builtin: str, dims: tuple[tuple[str, str], ...]) -> list[Key]:
        """The aggregate keys a fact lands on; cached, as the same dims recur endlessly."""
        keys: list[Key] = []
        dmap = dict(dims)
        for agg, bds in self._builtin_targets.get(builtin, ()):
            for bname, fields in bds:
                keys.append((agg, bname, dim_value(dmap.get, fields)) if fields else
                            (agg, TOTAL, TOTAL))
        if len(self._fact_keys) >= 100_000:  # bounded: dims cardinality is the user's
            self._fact_keys.clear()
        self._fact_keys[(builtin, dims)] = keys
        return keys

    # ---- time ----------------------------------------------------------------------------

    def _compute_next_close(self, fam: str) -> int:
        fw = self.windows[fam]
        if not fw.started:
            return NEVER
        grace = fw.cfg.grace_ms
        return min(s.last_end + s.spec.hop_ms + grace for s in fw.specs)

    def assign_source(self, family: str, source: Any) -> None:
        """A partition was assigned: until it delivers, it holds the family's watermark."""
        self.watermarks[family].assign(source, self._clock())

    def forget_source(self, source: Any) -> None:
        """A partition was revoked: it no longer holds back the watermark."""
        for wm in self.watermarks.values():
            wm.forget(source)

    def advance(self) -> list[dict[str, Any]]:
        """Move watermarks, close due windows, and return final and revised KPI records."""
        wall = self._clock()
        self.due = False
        closed: dict[str, list[tuple[str, int]]] = {}
        for fam, wm in self.watermarks.items():
            wm.idle_advance(wall, self.config.idle_timeout_ms)
            if not self.windows[fam].started and wm.value != NEVER and self._held[fam]:
                self._start(fam)
            if wm.value >= self._next_close[fam]:
                self.windows[fam].settle(self._expanders)
                closed[fam] = [(spec.name, end)
                               for spec, end, _ in self.windows[fam].close_until(wm.value)]
                self._next_close[fam] = self._compute_next_close(fam)
        out = self._publish(closed)
        for fam in closed:
            self._expire(fam, self.watermarks[fam].value)
        return out

    def flush(self) -> list[dict[str, Any]]:
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
            closed[fam] = [(spec.name, end) for spec, end, _ in fw.close_until(far)]
        return self._publish(closed)  # nothing expires: the input is over

    def _in_play(self, fam: str) -> bool:
        """Started, or still expecting its first event from a live partition."""
        return self.windows[fam].started or self.watermarks[fam].expecting()

    def _expire(self, fam: str, watermark: int) -> None:
        # a window shared with another family's KPI (CPL: crm + spend) must outlive the
        # moment that family closes it too, however far ahead this one runs
        partners = [self.watermarks[f].value for f in self._partners[fam] if self._in_play(f)]
        watermark = min([watermark, *partners])
        self.windows[fam].expire(watermark)
        if fam == "email":
            self.opens.expire(watermark)
            self.clicks.expire(watermark)
        elif fam == "web":
            self.sessions.expire(watermark)
        elif fam == "crm":
            self.pipeline.expire(watermark)
        # the families of a shard share its ids: expire by the slowest one's event time (a
        # family still waiting for a partition holds them all: its held events' too)
        shard = self._shard_of[fam]
        slowest = min((w.value for f, w in self.watermarks.items()
                       if self._shard_of[f] == shard and self._in_play(f)), default=watermark)
        cutoff_h = (slowest - self.config.dedup_horizon_ms) // 3_600_000
        seen, by_hour = self._seen[shard], self._seen_by_hour[shard]
        for h in [h for h in by_hour if h < cutoff_h]:
            for eid in by_hour.pop(h):
                seen.pop(eid, None)
        # published values are kept while their window can still be revised (windows.py)
        cfg = self.catalog.families[fam]
        keep = cfg.longest_ms + cfg.grace_ms
        horizon = watermark - keep
        # pruned in steps of an eighth of that (at least an hour): each prune scans every key
        if horizon > self._published_floor[fam] + max(3_600_000, keep // 8):
            self._published_floor[fam] = horizon
            for key in [k for k in self._published if k[0] == fam and k[2] < horizon]:
                del self._published[key]

    # ---- output --------------------------------------------------------------------------

    def _publish(self, closed: dict[str, list[tuple[str, int]]]) -> list[dict[str, Any]]:
        todo: dict[tuple[str, int], set[str]] = {}  # (window, end) -> families touched
        for fam, ends in closed.items():
            for w_end in ends:
                todo.setdefault(w_end, set()).add(fam)
        for fam, fw in self.windows.items():
            for w_end in fw.dirty:
                todo.setdefault(w_end, set()).add(fam)
            fw.dirty.clear()
        kpis_at: dict[tuple[str, int], dict[str, Kpi]] = {
            w_end: {k.name: k for f in sorted(fams) for k in self._kpis_by_family[f]
                    if w_end[0] in k.windows}
            for w_end, fams in todo.items()}
        for wname, end, name in self._waiting:
            kpis_at.setdefault((wname, end), {})[name] = self.catalog.kpis[name]
        out: list[dict[str, Any]] = []
        emitted_at = iso_ms(self._clock())
        waiting: set[tuple[str, int, str]] = set()
        for (wname, end), kpis in sorted(kpis_at.items(), key=lambda x: (x[0][1], x[0][0])):
            indexes: dict[str, Index] = {}  # each family's snapshot is indexed once
            for kpi in kpis.values():
                idx = self._closed_index(kpi, wname, end, indexes)
                if idx is None:
                    waiting.add((wname, end, kpi.name))
                else:
                    out += self._records(kpi, wname, end, idx, emitted_at)
        self._waiting = waiting
        return out

    def _closed_index(self, kpi: Kpi, wname: str, end: int,
                      cache: dict[str, Index]) -> Index | None:
        """Index of every family's snapshot, or None while one of them is still open."""
        parts: list[Index] = []
        for fam in kpi.families:
            fw = self.windows[fam]
            if not fw.started:
                if self.watermarks[fam].expecting():
                    return None  # its partitions have not spoken yet: wait for them
                continue  # a family with no input contributes nothing
            last = fw.last_end(wname)
            if last is None or last < end:
                return None
            idx = cache.get(fam)
            if idx is None:
                idx = cache[fam] = index_snapshot(fw.closed_snapshot(wname, end) or {})
            parts.append(idx)
        return parts[0] if len(parts) == 1 else merge_indexes(parts)

    def _records(self, kpi: Kpi, wname: str, end: int, idx: Index, emitted_at: str
                 ) -> list[dict[str, Any]]:
        filed = self._published.setdefault((kpi.families[0], wname, end), {})
        rows = self._kpi_rows[kpi.name](idx)
        size = self._window_spec(kpi, wname).size_ms
        start_s, end_s = iso_boundary(end - size), iso_boundary(end)
        unit = self.catalog.unit_label(kpi)
        before = filed.get(kpi.name)
        if before is None:  # the window's first publication: every row, revision 0
            filed[kpi.name] = (rows, {})
            first = []
            for dkey in sorted(rows):
                num, den = rows[dkey]
                first.append(make_record(kpi, unit, wname, start_s, end_s, dict(dkey), num, den,
                                         True, 0, emitted_at))
            return first
        published, revisions = before
        for dkey in published:
            if dkey not in rows:
                rows[dkey] = (0.0, 0.0 if kpi.denominator else 1.0)
        out = []
        for dkey in sorted(rows):
            num, den = rows[dkey]
            prev = published.get(dkey)
            if prev is None:
                revision = 0
            elif prev[0] == num and prev[1] == den:
                continue
            else:
                revision = revisions[dkey] = revisions.get(dkey, 0) + 1
            out.append(make_record(kpi, unit, wname, start_s, end_s, dict(dkey), num, den, True,
                                   revision, emitted_at))
        filed[kpi.name] = (rows, revisions)
        return out

    def _window_spec(self, kpi: Kpi, wname: str) -> WindowSpec:
        return self.catalog.window(kpi.families[0], wname)

    def open_records(self) -> list[dict[str, Any]]:
        """Current values of the newest open window of every KPI and window (final: false)."""
        out: list[dict[str, Any]] = []
        emitted_at = iso_ms(self._clock())
        for fw in self.windows.values():
            fw.settle(self._expanders)
        for kpi in self.catalog.kpis.values():
            started = [f for f in kpi.families if self.windows[f].started]
            if not started:
                continue
            for wname in kpi.windows:
                spec = self._window_spec(kpi, wname)
                wm = max(self.watermarks[f].value for f in started)
                if wm == NEVER:
                    continue
                end = (wm // spec.hop_ms + 1) * spec.hop_ms
                idx = merge_indexes([index_snapshot(self.windows[f].open_snapshot(spec, end))
                                     for f in started])
                rows = self._kpi_rows[kpi.name](idx)
                start_s, end_s = iso_boundary(end - spec.size_ms), iso_boundary(end)
                for dkey in sorted(rows):
                    num, den = rows[dkey]
                    out.append(make_record(kpi, self.catalog.unit_label(kpi), wname, start_s,
                                           end_s, dict(dkey), num, den, False, 0, emitted_at))
        return out

    # ---- durability ----------------------------------------------------------------------

    def snapshot(self, ref: Callable[[Any], Any] = lambda r: r) -> dict[str, Any]:
        """The engine's whole mutable state (live references: serialise it before the next
        event). Everything else is derived from the catalog and config. ``ref`` turns the
        caller's refs of held events into something it can serialise."""
        state = {name: getattr(self, name) for name in _DURABLE}
        state["_held"] = {f: [(ev, ref(r)) for ev, r in held] for f, held in self._held.items()}
        return state

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a snapshot() taken by an engine with the same catalog."""
        missing = {*_DURABLE, "_held"} - set(state)
        if missing:
            raise ValueError(f"snapshot lacks {sorted(missing)}")
        for name in (*_DURABLE, "_held"):
            setattr(self, name, state[name])
        self._bind_state()

    # ---- introspection -------------------------------------------------------------------

    @property
    def held_total(self) -> int:
        """Events waiting for their family's watermark (a partition has not spoken yet)."""
        return sum(len(h) for h in self._held.values())

    def state_sizes(self) -> dict[str, int]:
        return {
            "dedup_ids": sum(len(ids) for ids in self._seen.values()),
            "unique_opens": len(self.opens),
            "unique_clicks": len(self.clicks),
            "sessions": len(self.sessions),
            "pipeline": len(self.pipeline),
            "panes": sum(len(fw.panes) for fw in self.windows.values()),
            "published_windows": len(self._published),
        }


#: the mutable state a snapshot carries; the rest is derived from catalog and config
_DURABLE: Final = ("windows", "watermarks", "opens", "clicks", "sessions", "pipeline", "_seen",
                   "_seen_by_hour", "_next_close", "_published", "_published_floor", "_waiting",
                   "events_total", "duplicates_total", "late_total", "due")

_STATEFUL: Final = frozenset(
    {"email.opened", "email.clicked", "page.viewed", "goal.converted", "lead.created",
     "deal.stage_changed"})


def make_record(kpi: Kpi, unit: str, window: str, start: str, end: str, dims: dict[str, str],
                num: float, den: float, final: bool, revision: int, emitted_at: str
                ) -> dict[str, Any]:
    """A CONTRACT.md §3 record; ``start`` and ``end`` already in ISO form (iso_boundary).
    Whole numbers are written as ints (exact below 2**53; infinities and NaN stay floats).
    Runs for every output record: positional arguments, nothing called."""
    return {
        "kpi": kpi.name,
        "window": window,
        "start": start,
        "end": end,
        "dims": dims,
        "value": None if den == 0 else kpi.scale * num / den,
        "numerator": int(num) if num.is_integer() and -_EXACT < num < _EXACT else num,
        "denominator": int(den) if den.is_integer() and -_EXACT < den < _EXACT else den,
        "unit": unit,
        "final": final,
        "revision": revision,
        "emitted_at": emitted_at,
    }


_EXACT: Final = float(2**53)
