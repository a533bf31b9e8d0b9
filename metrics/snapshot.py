"""The engine's state as explicit, versioned records (msgspec), and their bytes.

Every part of the engine owns a typed state (windows.WindowsState, clock.WatermarkState,
dedup.DedupState, publish.PublisherState, each tracker's ``state_type``); this module
gathers them into one ``EngineState`` and encodes it as MessagePack. Decoding checks every
field's type against the schema and builds plain data only: a corrupt or hostile record
raises ``StateError``, it never runs code (no pickle anywhere in the state path).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from typing import Any, Final

import msgspec

from metrics.clock import HeldEvent, WatermarkState
from metrics.dedup import DedupState
from metrics.errors import StateError
from metrics.formulas import Dims, Rows
from metrics.publish import Publisher, PublisherState
from metrics.sharing import share_keys
from metrics.trackers import Tracker
from metrics.windows import FamilyWindows, WindowsState

#: raised whenever the layout of EngineState or of any part's state changes
ENGINE_STATE_VERSION: Final = 1


class Counters(msgspec.Struct, gc=False):
    events_total: dict[str, int]  # event type -> valid events counted
    duplicates_total: int
    late_total: dict[str, int]  # family -> events found late
    due: bool  # a watermark passed a window close: advance() has work


class EngineState(msgspec.Struct, gc=False):
    version: int
    windows: dict[str, WindowsState]  # per family
    watermarks: dict[str, WatermarkState]  # per family
    held: dict[str, list[HeldEvent]]  # per family
    dedup: dict[str, DedupState]  # per shard
    #: tracker name -> its state, encoded (each tracker decodes its own ``state_type``)
    trackers: dict[str, msgspec.Raw]
    publisher: PublisherState
    counters: Counters


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(EngineState)


def encode_part(part: msgspec.Struct) -> msgspec.Raw:
    return msgspec.Raw(_ENCODER.encode(part))


def decode_part(raw: msgspec.Raw | bytes, type_: type[msgspec.Struct], what: str
                ) -> msgspec.Struct:
    try:
        return msgspec.msgpack.decode(raw, type=type_)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"state of {what} is unreadable: {exc}") from None


def encode_state(state: EngineState) -> bytes:
    return _ENCODER.encode(state)


def decode_state(blob: bytes) -> EngineState:
    """The engine state in ``blob``, checked against the schema; ``StateError`` otherwise."""
    try:
        state = _DECODER.decode(blob)
    except (msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"engine state is unreadable: {exc}") from None
    if state.version != ENGINE_STATE_VERSION:
        raise StateError(f"engine state version {state.version}, this engine reads "
                         f"{ENGINE_STATE_VERSION}")
    return state


# ---- incremental commits: the state as a small core and keyed parts --------------------
#
# A commit writes the core (watermarks, held events, running sums, counters: small) and the
# parts that changed since the previous commit: a pane, a closed window, a published
# window's rows, an hour of a tracker's table. Part names:
#
#     w|{family}|p|{pane start}        a pane (Agg)
#     w|{family}|c|{window}|{end}      a closed window's values (Agg)
#     p|{family}|{window}|{end}        a published window's rows, per KPI
#     t|{tracker}|{table}|{hour}       an hour of a tracker's keyed table
#     t|{tracker}|{table}|d|{n}        a delta of a table on disk: its keys changed since
#                                      the commit before, over its hours as last written

#: part name -> what builds its plain data (live references: encode before going on). Built
#: one part at a time by the commit, each encoded and let go before the next: a backlog's
#: commit changes many hours of the keyed tables, and all their data built at once was the
#: worker's largest burst of small objects (docs/benchmarks.md, stop 39)
Parts = dict[str, Callable[[], Any]]

_AGG: Final = msgspec.msgpack.Decoder(dict[tuple[str, str, str | tuple[str, ...]], int])
#: a published window's part, its rows left encoded (checked with _ROWS, then kept so)
_FILED: Final = msgspec.msgpack.Decoder(dict[str, tuple[msgspec.Raw, dict[Dims, int]]])
_ROWS: Final = msgspec.msgpack.Decoder(Rows)


def strip(windows: dict[str, WindowsState]) -> dict[str, WindowsState]:
    """The core's part of the windows' states: their panes and closed windows left out (the
    publisher's rows are left out by ``Publisher.snapshot(rows=False)``)."""
    return {f: msgspec.structs.replace(w, panes={}, specs=[
                msgspec.structs.replace(s, closed={}) for s in w.specs])
            for f, w in windows.items()}


def decode_parts(parts: Iterable[tuple[str, bytes]], part_types: dict[tuple[str, ...], Any]
                 ) -> Iterator[tuple[list[str], Any]]:
    """Each part's name split, and its data checked against its schema (``part_types``:
    (tracker, table) -> type, (tracker, table, "d") -> a delta's), one at a time (a table
    on disk is never whole in memory). ``StateError`` naming the part when it is not
    readable."""
    for name, raw in parts:
        bits = name.split("|")
        try:
            if bits[0] == "w":
                data: Any = _AGG.decode(raw)
            elif bits[0] == "p":
                data = {}
                for kpi, (rows, revs) in _FILED.decode(raw).items():
                    _ROWS.decode(rows)  # readable, or the part is not
                    data[kpi] = (bytes(rows), revs)  # a copy: not a view of the whole part
            elif bits[0] == "t":
                delta = bits[3] == "d"
                int(bits[4] if delta else bits[3])  # a number, or the part is not readable
                type_ = part_types.get((bits[1], bits[2], "d") if delta else (bits[1], bits[2]))
                if type_ is None:
                    continue  # a tracker the catalog no longer uses
                data = msgspec.msgpack.decode(raw, type=type_)
            else:
                raise ValueError("unknown kind of part")
        except (msgspec.DecodeError, ValueError, IndexError) as exc:
            raise StateError(f"state part {name!r} is unreadable: {exc}") from None
        yield bits, data


def _live(data: Any) -> Callable[[], Any]:
    return lambda: data


class PartNames:
    """Every part's name, as its stem (the name but for its last field, a number) -> the
    numbers: the collections the engine holds them in, read live. A commit asks it of
    tens of thousands of parts once a year-long table has filled (one per hour of each);
    a string made for each at every commit was most of a quiet commit's time."""

    def __init__(self) -> None:
        self.stems: dict[str, Collection[int]] = {}

    def add(self, stem: str, numbers: Collection[int]) -> None:
        if numbers:
            self.stems[stem] = numbers

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        stem, _, number = name.rpartition("|")
        numbers = self.stems.get(stem)
        return numbers is not None and number.lstrip("-").isdigit() and int(number) in numbers

    def __iter__(self) -> Iterator[str]:
        for stem, numbers in self.stems.items():
            for n in numbers:
                yield f"{stem}|{n}"

    def __len__(self) -> int:
        return sum(len(n) for n in self.stems.values())


def collect_parts(windows: dict[str, FamilyWindows], publisher: Publisher,
                  trackers: dict[str, Tracker], full: bool) -> tuple[Parts, PartNames]:
    """The parts changed since the last call (every one when ``full``), and every name."""
    parts: Parts = {}
    names = PartNames()
    for fam, fw in windows.items():
        panes, closed = fw.drain_changes()
        names.add(f"w|{fam}|p", fw.panes.keys())
        for start in (fw.panes if full else sorted(panes)):
            parts[f"w|{fam}|p|{start}"] = _live(fw.panes[start])
        for spec in fw.specs:
            wname = spec.spec.name
            names.add(f"w|{fam}|c|{wname}", spec.closed.keys())  # on a shelf: read when
            for end in (spec.closed if full else  # its part is built
                        sorted(e for n, e in closed if n == wname)):
                parts[f"w|{fam}|c|{wname}|{end}"] = functools.partial(spec.closed.get, end)
    published = publisher.drain_changes()
    by_window: dict[tuple[str, str], set[int]] = {}
    for key in publisher.published:
        by_window.setdefault(key[:2], set()).add(key[2])
    for (fam, window), ends in by_window.items():
        names.add(f"p|{fam}|{window}", ends)
    for key in (publisher.published if full else sorted(published)):
        parts[f"p|{key[0]}|{key[1]}|{key[2]}"] = functools.partial(publisher.part, key)
    for tname, tracker in trackers.items():
        for table, keyed in tracker.tables().items():
            plan = keyed.commit(full)
            filed = keyed.filed()
            names.add(f"t|{tname}|{table}", filed)
            for hour in sorted(h for h in plan.hours if h in filed):
                parts[f"t|{tname}|{table}|{hour}"] = functools.partial(keyed.hour, hour)
            names.add(f"t|{tname}|{table}|d", list(plan.deltas))
            if plan.delta is not None:
                parts[f"t|{tname}|{table}|d|{plan.delta[0]}"] = plan.delta[1]
    return parts, names


def load_parts(windows: dict[str, FamilyWindows], publisher: Publisher,
               trackers: dict[str, Tracker], kpis: Container[str],
               parts: Iterable[tuple[str, bytes]]) -> None:
    """Fill a restored core with its parts; what no longer fits the catalog (a KPI, a
    window, a tracker gone) is left out. Nothing is left to write after."""
    tables = {n: t.tables() for n, t in trackers.items()}
    types: dict[tuple[str, ...], Any] = {}
    for n, t in trackers.items():
        for table, declared in t.part_types.items():
            types[(n, table)] = tables[n][table].part_type(declared)
            types[(n, table, "d")] = tables[n][table].delta_type(declared)
    deltas: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    memo: dict[Any, Any] = {}  # equal keys across parts: one object (metrics/sharing.py)
    for bits, data in decode_parts(parts, types):
        if bits[0] == "w":
            fw = windows.get(bits[1])
            if fw is None:
                continue
            data = share_keys(data, memo)
            if bits[2] == "p":
                fw.panes[int(bits[3])] = data
            else:
                spec = next((s for s in fw.specs if s.spec.name == bits[3]), None)
                if spec is not None:
                    spec.closed[int(bits[4])] = data
        elif bits[0] == "p":
            if bits[1] in windows:
                publisher.published[(bits[1], bits[2], int(bits[3]))] = {
                    k: (rows, share_keys(revs, memo)) for k, (rows, revs) in data.items()
                    if k in kpis}
        elif bits[3] == "d":  # applied over the hours once they are all in
            deltas.setdefault((bits[1], bits[2]), []).append((int(bits[4]), data))
        else:
            tables[bits[1]][bits[2]].fill(data, int(bits[3]))
    for (tname, table), found in deltas.items():
        keyed = tables[tname][table]
        for number, data in sorted(found, key=lambda d: d[0]):
            keyed.load_delta(number, data)
    for fw in windows.values():
        for spec in fw.specs:  # closed windows are kept in closing order (expire)
            spec.closed.order()
        fw.flush()
        fw.mark_written()
    publisher.published.flush()
    publisher.drain_changes()
    for tracker in trackers.values():
        tracker.loaded()
        for keyed in tracker.tables().values():
            keyed.drain()
