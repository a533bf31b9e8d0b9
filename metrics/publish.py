"""The publisher: closed windows out as final KPI records, revisions when they change, and
the current values of open windows.

A closed window's rows are kept as published while the window can still be revised (its
end + longest window + grace), so a revision carries only the rows that changed, each with
its own revision number. They are kept encoded (MessagePack, as a commit writes them): a
day of 5-minute windows, or a month of hourly 30-day ones, is read back only when one of
them is revised, and a row held as Python objects took ~280 bytes. They are on a shelf
(metrics/shelf.py): a worker keeps them on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import msgspec

from metrics.catalog import Catalog, Kpi, WindowSpec
from metrics.constants import NEVER
from metrics.facts import FactRouter
from metrics.formulas import SQUARES, Dims, Index, Rows, index_snapshot, merge_indexes
from metrics.records import iso_boundary, make_record
from metrics.shelf import ShelfFactory, mem_shelf
from metrics.trackers import TRACKERS
from metrics.windows import Agg, FamilyWindows

Record = dict[str, Any]
#: a KPI's published rows and the revision of each revised one (snapshots and parts)
Filed = tuple[Rows, dict[Dims, int]]
#: the same as held: the rows encoded
Kept = tuple[bytes, dict[Dims, int]]

_ENCODE_ROWS: Final = msgspec.msgpack.Encoder().encode
_ROWS: Final = msgspec.msgpack.Decoder(Rows)
_NO_REVISIONS: Final[dict[Dims, int]] = {}  # shared: a revision copies it first


class PublisherState(msgspec.Struct, gc=False):
    version: int
    #: (family, window, end) -> kpi -> its rows as published; a KPI over several families is
    #: filed under its first one
    published: dict[tuple[str, str, int], dict[str, Filed]]
    floor: dict[str, int]  # family -> published windows ending before this were pruned
    #: (window, end, kpi) of cross-family KPIs one family closed while another had not
    waiting: list[tuple[str, int, str]]


PUBLISHER_VERSION: Final = 1


class Families(Protocol):
    """What the publisher reads of the engine's event-time state."""

    windows: dict[str, FamilyWindows]
    #: tracker name -> tracker: those with windowed builtins answer ``window_values``
    trackers: dict[str, Any]

    def expecting(self, family: str) -> bool:
        """Not started, but a live partition may still bring its first event."""
        ...

    def watermark(self, family: str) -> int: ...

    def settled(self, family: str) -> int:
        """The event time before which the family's tracker facts are final."""
        ...


class Publisher:
    def __init__(self, catalog: Catalog, kpi_rows: dict[str, Callable[[Index], Rows]],
                 settling: set[str] | None = None, shelves: ShelfFactory = mem_shelf):
        self.catalog = catalog
        self._kpi_rows = kpi_rows
        #: KPIs built on facts that settle after their window closes (sessions): final only
        #: once the window's facts are (``Families.settled``)
        self._settling = settling or set()
        self.published = shelves("published", tuple[str, str, int], dict[str, Kept])
        #: the published windows read or changed by the publication under way: put back on
        #: the shelf once it is done
        self._filing: dict[tuple[str, str, int], dict[str, Kept]] = {}
        self.floor = {f: NEVER for f in catalog.families}
        self.waiting: set[tuple[str, int, str]] = set()
        #: published windows whose rows changed since the last ``drain_changes``
        self.changed: set[tuple[str, str, int]] = set()
        #: (kpi, window) whose newest open window is partial (``open_records``)
        self.partial_open: set[tuple[str, str]] = set()
        #: (family, window) -> [(tracker, the windowed builtins its KPIs read there)]:
        #: builtins valued per window by their tracker when it is published, not summed
        #: from panes (a count of distinct accounts); they land on aggregate keys as facts do
        self._windowed: dict[tuple[str, str], list[tuple[str, frozenset[str]]]] = {}
        for cls in TRACKERS:
            windowed = frozenset(getattr(cls, "windowed", ()))
            fam = cls.family
            cfg = catalog.families.get(fam)
            for w in cfg.windows if cfg is not None and windowed else ():
                wanted = windowed & {
                    catalog.aggregates[a].builtin for k in catalog.kpis.values()
                    if w.name in k.windows and fam in k.families for a in k.aggregates()}
                if wanted:
                    self._windowed.setdefault((fam, w.name), []).append((cls.name, wanted))
        self._router = FactRouter(catalog)
        self._kpis_by_family: dict[str, list[Kpi]] = {f: [] for f in catalog.families}
        for kpi in catalog.kpis.values():
            for f in kpi.families:
                self._kpis_by_family[f].append(kpi)

    def publish(self, closed: dict[str, list[tuple[str, int]]], fams: Families,
                emitted_at: str) -> list[Record]:
        """Final records of the windows just closed, and revisions of the closed windows
        changed since the last call (``FamilyWindows.dirty``)."""
        todo: dict[tuple[str, int], set[str]] = {}  # (window, end) -> families touched
        for fam, ends in closed.items():
            for w_end in ends:
                todo.setdefault(w_end, set()).add(fam)
        for fam, fw in fams.windows.items():
            for w_end in fw.dirty:
                todo.setdefault(w_end, set()).add(fam)
            fw.dirty.clear()
        kpis_at: dict[tuple[str, int], dict[str, Kpi]] = {
            w_end: {k.name: k for f in sorted(f_) for k in self._kpis_by_family[f]
                    if w_end[0] in k.windows}
            for w_end, f_ in todo.items()}
        for wname, end, name in self.waiting:
            kpis_at.setdefault((wname, end), {})[name] = self.catalog.kpis[name]
        out: list[Record] = []
        waiting: set[tuple[str, int, str]] = set()
        settled: dict[str, int] = {}
        for (wname, end), kpis in sorted(kpis_at.items(), key=lambda x: (x[0][1], x[0][0])):
            indexes: dict[str, Index] = {}  # each family's snapshot is indexed once
            for kpi in kpis.values():
                idx = self._closed_index(kpi, wname, end, fams, indexes, settled)
                if idx is None:
                    waiting.add((wname, end, kpi.name))
                else:
                    out += self._records(kpi, wname, end, idx, emitted_at)
            for key, filed in self._filing.items():
                self.published[key] = filed
            self._filing = {}
        self.waiting = waiting
        self.published.flush()
        return out

    def _closed_index(self, kpi: Kpi, wname: str, end: int, fams: Families,
                      cache: dict[str, Index], settled: dict[str, int]) -> Index | None:
        """Index of every family's snapshot, or None while one of them is still open."""
        parts: list[Index] = []
        if kpi.name in self._settling:
            for f in kpi.families:
                if f not in settled:  # once per publish: it scans the recent sessions
                    settled[f] = fams.settled(f)
                if fams.windows[f].started and end > settled[f]:
                    return None  # a session in the window can still change: wait for it
        for fam in kpi.families:
            fw = fams.windows[fam]
            if not fw.started:
                if fams.expecting(fam):
                    return None  # its partitions have not spoken yet: wait for them
                continue  # a family with no input contributes nothing
            last = fw.last_end(wname)
            if last is None or last < end:
                return None
            idx = cache.get(fam)
            if idx is None:
                size = self.catalog.window(fam, wname).size_ms
                idx = cache[fam] = self._index(fams, fam, wname,
                                               fw.closed_snapshot(wname, end) or {},
                                               end - size, end)
            parts.append(idx)
        return parts[0] if len(parts) == 1 else merge_indexes(parts)

    def _index(self, fams: Families, fam: str, wname: str, snap: Agg, start: int, end: int
               ) -> Index:
        """A window's aggregates: its sums of panes, and its windowed builtins' values (none
        at 0: a window with no input for a KPI publishes no record for it)."""
        trackers = self._windowed.get((fam, wname))
        if trackers:
            snap = dict(snap)
            for name, wanted in trackers:
                for builtin, dims, value in fams.trackers[name].window_values(start, end,
                                                                              wanted):
                    if value:
                        for key in self._router.keys_of(builtin, dims):
                            snap[key] = snap.get(key, 0) + value
        return index_snapshot(snap)

    def _records(self, kpi: Kpi, wname: str, end: int, idx: Index, emitted_at: str
                 ) -> list[Record]:
        key = (kpi.families[0], wname, end)
        filed = self._filing.get(key)
        if filed is None:
            filed = self._filing[key] = self.published.get(key) or {}
        self.changed.add(key)
        rows = self._kpi_rows[kpi.name](idx)
        sq = self._squares(kpi, idx)
        size = self._window_spec(kpi, wname).size_ms
        start_s, end_s = iso_boundary(end - size), iso_boundary(end)
        unit = self.catalog.unit_label(kpi)
        before = filed.get(kpi.name)
        if before is None:  # the window's first publication: every row, revision 0
            filed[kpi.name] = (_ENCODE_ROWS(rows), _NO_REVISIONS)
            first = []
            for dkey in sorted(rows):
                num, den = rows[dkey]
                first.append(make_record(kpi, unit, wname, start_s, end_s, dict(dkey), num, den,
                                         True, 0, emitted_at, sq.get(dkey)))
            return first
        published, revisions = _ROWS.decode(before[0]), dict(before[1])
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
                                   revision, emitted_at, sq.get(dkey)))
        filed[kpi.name] = (_ENCODE_ROWS(rows), revisions)
        return out

    def _squares(self, kpi: Kpi, idx: Index) -> dict[Dims, float]:
        """A mean's sums of squares per row (its interval), none for other KPIs."""
        if not kpi.spread:
            return {}
        return {d: n for d, (n, _) in self._kpi_rows[kpi.name + SQUARES](idx).items()}

    def _window_spec(self, kpi: Kpi, wname: str) -> WindowSpec:
        return self.catalog.window(kpi.families[0], wname)

    def open_records(self, fams: Families, emitted_at: str) -> list[Record]:
        """Current values of the newest open window of every KPI and window (final: false).
        The families' pending tallies must be settled."""
        out: list[Record] = []
        partial: set[tuple[str, str]] = set()
        #: (family, window, end) -> its open window's index: once per tick, not per KPI
        #: (a windowed builtin such as RFM reads a year of purchases)
        indexes: dict[tuple[str, str, int], Index] = {}
        for kpi in self.catalog.kpis.values():
            started = [f for f in kpi.families if fams.windows[f].started]
            if not started:
                continue
            for wname in kpi.windows:
                spec = self._window_spec(kpi, wname)
                wm = max(fams.watermark(f) for f in started)
                if wm == NEVER:
                    continue
                end = (wm // spec.hop_ms + 1) * spec.hop_ms
                for f in started:
                    if (f, wname, end) not in indexes:
                        indexes[(f, wname, end)] = self._index(
                            fams, f, wname, fams.windows[f].open_snapshot(spec, end),
                            end - spec.size_ms, end)
                idx = merge_indexes([indexes[(f, wname, end)] for f in started])
                rows = self._kpi_rows[kpi.name](idx)
                sq = self._squares(kpi, idx)
                start_s, end_s = iso_boundary(end - spec.size_ms), iso_boundary(end)
                # a window that began before its data did (the family started inside it)
                first = [t for f in started if (t := fams.windows[f].first_ts) is not None]
                if first and end - spec.size_ms < max(first):
                    partial.add((kpi.name, wname))
                for dkey in sorted(rows):
                    num, den = rows[dkey]
                    out.append(make_record(kpi, self.catalog.unit_label(kpi), wname, start_s,
                                           end_s, dict(dkey), num, den, False, 0, emitted_at,
                                           sq.get(dkey)))
        self.partial_open = partial
        return out

    def prune(self, fam: str, watermark: int) -> None:
        """Forget published rows of windows that can no longer be revised (windows.py)."""
        cfg = self.catalog.families[fam]
        keep = cfg.longest_ms + cfg.grace_ms
        horizon = watermark - keep
        # pruned in steps of an eighth of that (at least an hour): each prune scans every key
        if horizon > self.floor[fam] + max(3_600_000, keep // 8):
            self.floor[fam] = horizon
            for key in [k for k in self.published if k[0] == fam and k[2] < horizon]:
                del self.published[key]
            self.published.flush()

    def drain_changes(self) -> set[tuple[str, str, int]]:
        changed, self.changed = self.changed & self.published.keys(), set()
        return changed

    def snapshot(self, rows: bool = True) -> PublisherState:
        """The whole state; without its published rows (``rows=False``: an incremental
        commit writes them as parts, ``part``)."""
        published = {k: {n: (_ROWS.decode(b), revs) for n, (b, revs) in by_kpi.items()}
                     for k, by_kpi in self.published.items()} if rows else {}
        return PublisherState(PUBLISHER_VERSION, published, self.floor, sorted(self.waiting))

    def part(self, key: tuple[str, str, int]) -> dict[str, tuple[msgspec.Raw, dict[Dims, int]]]:
        """A published window's rows as a commit's part: encoded as ``Filed`` (the rows are
        already)."""
        filed = self.published.get(key) or {}
        return {n: (msgspec.Raw(b), revs) for n, (b, revs) in filed.items()}

    def restore(self, state: PublisherState) -> None:
        kpis = self.catalog.kpis  # a KPI removed since: its rows go
        self.published.clear()
        for k, by_kpi in state.published.items():
            self.published[k] = {n: (_ENCODE_ROWS(rows), revs)
                                 for n, (rows, revs) in by_kpi.items() if n in kpis}
        self.published.flush()
        self.floor = {f: state.floor.get(f, NEVER) for f in self.catalog.families}
        self.waiting = {w for w in state.waiting if w[2] in kpis}

    def __len__(self) -> int:
        return len(self.published)
