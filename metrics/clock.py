"""Event time: per topic family, a watermark over its sources (partitions), and the events
held while a family's watermark is not known yet.

A family's watermark is the minimum over its sources of the highest event time each
delivered, so how partitions interleave never makes an event late.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec.structs import astuple, replace

from metrics.constants import NEVER
from metrics.errors import StateError
from metrics.events import EVENT_TYPES, Event, struct_of

#: what orders events: a (topic, partition) in the worker, 0 in replay (any name in tests)
Source = tuple[str, int] | int | str


class WatermarkState(msgspec.Struct, gc=False):
    version: int
    sources: dict[Source, int]
    first: dict[Source, int]
    seen_wall: dict[Source, int]
    idle: list[Source]
    touched: list[Source]
    value: int
    last_wall: int
    value_at_last_event: int


class HeldEvent(msgspec.Struct, array_like=True, gc=False):
    """An event held before its family's watermark is known, with its caller's ref."""

    type: str
    event_id: str
    ts_ms: int
    family: str
    #: its struct's field values in order, a msgpack array (a map with field names before
    #: stop 45: ``unhold`` reads both)
    data: bytes
    ref: Any
    arrival: int | None = None  # when the broker took it (epoch ms), if known
    #: the watermark source it came from (its partition): None in a state written before
    source: Any = None


WATERMARK_VERSION = 1


class Watermark:
    """Per-family event-time progress: the minimum over live sources (partitions) of the
    highest event time each delivered.

    An assigned source that has delivered nothing yet holds the watermark back (so the first
    partition to report can't close windows early); a source quiet for the idle timeout
    stops holding it back; when every source is quiet, event time moves on with the wall
    clock from where it stood.
    """

    __slots__ = ("first", "forgotten", "idle", "last_wall", "seen_wall", "sources", "touched",
                 "value", "value_at_last_event")

    def __init__(self) -> None:
        self.sources: dict[Source, int] = {}  # source -> highest event time (NEVER: none yet)
        self.first: dict[Source, int] = {}  # source -> event time of its first event
        self.seen_wall: dict[Source, int] = {}  # source -> wall time of its last batch
        self.idle: set[Source] = set()
        self.touched: set[Source] = set()  # sources with events since the last idle check
        self.value = NEVER
        self.last_wall = 0
        self.value_at_last_event = NEVER
        #: a source was forgotten since the last recompute: the next event recomputes
        self.forgotten = False

    def assign(self, source: Source, wall: int) -> None:
        if source not in self.sources:
            self.sources[source] = NEVER
            self.seen_wall[source] = wall

    def forget(self, source: Source) -> None:
        """The source no longer feeds the family (its partition revoked): from the next event
        on it no longer holds the watermark back, never at once. A revoke forgets its
        partitions one by one: recomputed after each, the watermark would jump to the
        furthest of the last ones left, and the handover snapshot would carry that jump to
        the next owner, making the others' events late (the kill loop's late events)."""
        self.sources.pop(source, None)
        self.first.pop(source, None)
        self.seen_wall.pop(source, None)
        self.idle.discard(source)
        self.touched.discard(source)
        self.forgotten = True

    def observe(self, source: Source, ts: int) -> None:
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
            elif cur is None or cur <= self.value or self.forgotten:
                self._recompute()  # only the one at the minimum raises it
        self.touched.add(source)

    def busy(self, source: Source) -> None:
        """The source has records its consumer has not handed over yet: however long since
        its last batch, it is not quiet (partitions filled unevenly: one fetched behind the
        others went idle, and its events came in late)."""
        if source in self.sources:
            self.touched.add(source)
            self.idle.discard(source)

    def spoken(self) -> list[Source]:
        """While the watermark is not known yet, the sources that delivered an event: what
        they bring next is held until the others speak (or go idle)."""
        if self.value != NEVER:
            return []
        return [s for s, t in self.sources.items() if t != NEVER]

    def awaited(self) -> list[Source]:
        """While the watermark is not known yet, the sources it waits for: assigned, nothing
        delivered, not idle (with no idle timeout, a source that never delivers holds it for
        good)."""
        if self.value != NEVER:
            return []
        return [s for s, t in self.sources.items() if t == NEVER and s not in self.idle]

    def expecting(self) -> bool:
        """No event yet, but an assigned source that is not idle may still bring one."""
        return self.value == NEVER and any(s not in self.idle for s in self.sources)

    def _recompute(self) -> None:
        self.forgotten = False
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

    def resume(self, wall: int) -> None:
        """Wall-clock quiet counts from ``wall``: the time a worker was down, or cut off
        from the broker, is no quiet time. Counted as quiet, a restart after 10 minutes
        down moved event time 10 minutes on at once, and the backlog that reached the
        broker meanwhile came in late."""
        for src in self.seen_wall:
            self.seen_wall[src] = wall
        self.idle.clear()
        self.last_wall = wall
        self.value_at_last_event = self.value

    def snapshot(self) -> WatermarkState:
        return WatermarkState(WATERMARK_VERSION, self.sources, self.first, self.seen_wall,
                              list(self.idle), list(self.touched), self.value, self.last_wall,
                              self.value_at_last_event)

    def restore(self, st: WatermarkState) -> None:
        self.sources, self.first, self.seen_wall = st.sources, st.first, st.seen_wall
        self.idle, self.touched = set(st.idle), set(st.touched)
        self.value, self.last_wall, self.value_at_last_event = (st.value, st.last_wall,
                                                                st.value_at_last_event)
        self.forgotten = True  # a source may have gone since the last recompute


_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder().decode
_TYPE_NAMES: dict[str, str] = {t: t for t in EVENT_TYPES}  # one string per type, not per event


def judge_held(held: list[HeldEvent], reach_ms: int
               ) -> tuple[list[HeldEvent], list[HeldEvent]]:
    """The events held before a family started, split as replay would: taken in the order
    they reached the broker (else as they came), each is late when it is older than the
    furthest counted event before it by more than ``reach_ms`` (the longest window +
    grace). Within one millisecond of arrival (a producer sends thousands in one) only a
    source's own order is known: an event is late behind the earlier milliseconds' events
    and those before it in its own source (partition), never behind another source's of the
    same millisecond. (Judged all in one, a partition's last event a day ahead, read while
    the family is held, made its same-millisecond neighbours on other partitions late;
    judged oldest first, an event 40 days old right behind its own partition's earlier ones
    counted.) Returns the counted events and the late ones."""
    ordered = sorted(held, key=lambda h: NEVER if h.arrival is None else h.arrival)  # stable
    furthest = NEVER
    counted: list[HeldEvent] = []
    late: list[HeldEvent] = []
    i, n = 0, len(ordered)
    while i < n:
        arrival = ordered[i].arrival
        j = i + 1
        while arrival is not None and j < n and ordered[j].arrival == arrival:
            j += 1
        own: dict[Any, int] = {}  # per source, its furthest counted event in this moment
        reached = furthest
        for h in ordered[i:j]:
            key = _hashable(h.source)
            if h.ts_ms < max(furthest, own.get(key, NEVER)) - reach_ms:
                late.append(h)
                continue
            counted.append(h)
            own[key] = max(own.get(key, NEVER), h.ts_ms)
            reached = max(reached, h.ts_ms)
        furthest, i = reached, j
    return counted, late


def _hashable(source: Any) -> Any:
    """A source as restored (a partition's (topic, partition) comes back as a list)."""
    return tuple(source) if isinstance(source, list) else source


def hold(ev: Event, ref: Any, arrival: int | None = None, source: Any = None) -> HeldEvent:
    """An event held as it is stored: its field values encoded. A backlog's first seconds
    hold every event read before each partition of its family has spoken (40,000-130,000
    per family in a 6-day backlog, three families at once); as ``Event`` objects (450-700 B
    each) they were the worker's largest transient, and the pools they left behind set its
    RSS for good. Encoded as an array: 210-250 B (as a map with the field names: ~500 B)."""
    return HeldEvent(_TYPE_NAMES.get(ev.type, ev.type), ev.event_id, ev.ts_ms, ev.family,
                     _ENCODE(astuple(ev.data)), ref, arrival, source)


def unhold(h: HeldEvent) -> Event:
    """The event ``hold`` encoded. Its values were checked when it was parsed; a state
    record that is not one gives a ``StateError``, never a wrong event."""
    try:
        struct = data_type(h.type)
        values = _DECODE(h.data)
        if type(values) is not dict:  # a map with the field names: the previous format
            values = dict(zip(struct.__struct_fields__, values, strict=True))
        data = msgspec.convert(values, struct)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, ValueError) as exc:
        raise StateError(f"held event {h.event_id!r}: its data is unreadable: {exc}") from None
    return Event(h.event_id, h.type, h.ts_ms, h.family, data)


def restored(h: HeldEvent, ref: Any) -> HeldEvent:
    """A held event from a restored state, with the caller's ``ref``: checked now, so that a
    bad record fails the restore (``StateError``), not the first event after it."""
    unhold(h)
    return replace(h, ref=ref, source=_hashable(h.source))


def data_type(type_: str) -> Any:
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    return struct_of(type_)
