"""What every stateful aggregate (a *tracker*) provides, and the pieces they share.

A tracker turns events into *facts*: (ts, builtin aggregate, dims, value) deltas placed in
the pane of the moment they belong to. When a later (or out-of-order) event changes what an
earlier fact should have been, the tracker retracts the old facts and adds new ones. The final
state depends only on the set of events, never on their arrival order, which is what lets
shuffled input within grace give identical windows.

State expires with the tracker's horizon (its family's longest window plus grace), so memory
stays flat on an endless stream. Its keyed state is held in ``Keyed`` tables, filed by hour:
what expiry drops, and what a commit writes when it changed (metrics/snapshot.py). A new
tracker is one module with a class following ``Tracker`` plus its line in registry.py.

Two optional parts: ``configure(catalog)``, for a tracker with settings of its own in the
catalog (attribution's lookback); and ``windowed`` builtins with ``window_values(start,
end)``, for a quantity that is no sum of panes (distinct accounts in a window): the
publisher asks for it per window when it publishes the window (metrics/publish.py).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from typing import Any, ClassVar, Generic, NamedTuple, Protocol, TypeVar, get_args

import msgspec

from metrics.constants import HOUR_MS
from metrics.events import Event

Dims = tuple[tuple[str, str], ...]
Fact = tuple[int, str, Dims, int]  # ts, builtin, dims, delta


class Tracker(Protocol):
    """A stateful aggregate, registered in registry.py."""

    #: what its state and size go by (snapshots, /health)
    name: ClassVar[str]
    #: the topic family whose events it observes and whose panes its facts land in
    family: ClassVar[str]
    #: builtin aggregate -> the dimensions its facts carry (what a catalog may break it by)
    builtins: ClassVar[dict[str, frozenset[str]]]
    #: the builtins whose values are sums in millionths (money, durations)
    micro: ClassVar[frozenset[str]]
    #: the event types it observes
    consumes: ClassVar[frozenset[str]]
    #: the msgspec type of ``snapshot()``; its ``version`` field is raised on any change
    state_type: ClassVar[type[msgspec.Struct]]

    def __init__(self, horizon_ms: int) -> None: ...

    def observe(self, ev: Event) -> list[Fact]:
        """Take one event of a type in ``consumes``; return the facts it changes."""
        ...

    def expire(self, watermark: int) -> None:
        """Forget what the horizon no longer reaches at this watermark."""
        ...

    def snapshot(self) -> msgspec.Struct:
        """Its whole state (live references: encode it before the next event)."""
        ...

    def restore(self, state: Any) -> None:
        """Continue from a ``snapshot()`` (decoded as ``state_type``)."""
        ...

    def __len__(self) -> int: ...

    #: its facts can change after the windows they land in close, on in-order input (a
    #: session extended by its next page view): the KPIs built on them wait for
    #: ``settled`` before they are final
    settles: ClassVar[bool]

    def settled(self, watermark: int, grace_ms: int) -> int:
        """The event time before which its facts are final at this watermark (settling
        trackers only)."""
        ...

    #: per keyed table, the msgspec type of one hour of it (a commit's part)
    part_types: ClassVar[dict[str, Any]]

    def tables(self) -> Mapping[str, Table[Any, Any]]:
        """Its keyed state, by table name (what commits write hour by hour)."""
        ...

    def loaded(self) -> None:
        """Its tables were filled from parts: rebuild what is derived from them."""
        ...


def net_change(before: list[Fact], after: list[Fact]) -> list[Fact]:
    """The facts that turn ``before`` into ``after``: unchanged facts cancel out, so they
    never touch (and needlessly revise) closed windows."""
    delta: dict[tuple[int, str, Dims], int] = {}
    for ts, b, dims, v in before:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) - v
    for ts, b, dims, v in after:
        k = (ts, b, dims)
        delta[k] = delta.get(k, 0) + v
    return [(ts, b, dims, v) for (ts, b, dims), v in delta.items() if v]


class DimsMemo:
    """One tuple for equal dims: a tracker keeps the dims of every send, session or visitor
    it holds, and a tuple built per event (three of them, 168 bytes) was held once per key
    while a handful of campaigns and channels make them all. Bounded: cleared when full
    (what is held keeps its tuples)."""

    __slots__ = ("_limit", "_memo")

    def __init__(self, limit: int = 65_536):
        self._memo: dict[Dims, Dims] = {}
        self._limit = limit

    def __call__(self, dims: Dims) -> Dims:
        got = self._memo.get(dims)
        if got is None:
            if len(self._memo) >= self._limit:
                self._memo.clear()
            got = self._memo[dims] = dims
        return got


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Keyed(Generic[K, V]):
    """A tracker's keyed state, filed by the hour of the time it expires by (``ts_of``):
    expiry drops whole hours, and a commit writes the hours that changed (``dirty``), not
    the whole state. A value changed in place is ``touch``ed."""

    __slots__ = ("_canon", "by_hour", "data", "dirty", "hours", "ts_of")

    def __init__(self, ts_of: Callable[[V], int]):
        self.ts_of = ts_of
        self.data: dict[K, V] = {}
        self.hours: dict[K, int] = {}  # key -> the hour it is filed under
        self.by_hour: dict[int, set[K]] = {}
        self.dirty: set[int] = set()  # hours changed since the last ``drain``
        self._canon: dict[int, int] = {}  # hour -> the one int object filed for it

    def get(self, key: K) -> V | None:
        return self.data.get(key)

    def __contains__(self, key: K) -> bool:
        return key in self.data

    def __len__(self) -> int:
        return len(self.data)

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.touch(key)

    def touch(self, key: K) -> None:
        hour = self.ts_of(self.data[key]) // HOUR_MS
        old = self.hours.get(key)
        if old != hour:
            if old is not None:
                self._unfile(key, old)
            # one int object per hour, not one per key (32 bytes each)
            hour = self._canon.setdefault(hour, hour)
            bucket = self.by_hour.get(hour)
            if bucket is None:
                self.by_hour[hour] = {key}
            else:
                bucket.add(key)
            self.hours[key] = hour
        self.dirty.add(hour)

    def delete(self, key: K) -> V:
        value = self.data.pop(key)
        self._unfile(key, self.hours.pop(key))
        return value

    def _unfile(self, key: K, hour: int) -> None:
        bucket = self.by_hour[hour]
        bucket.discard(key)
        if not bucket:
            del self.by_hour[hour]
            del self._canon[hour]
        self.dirty.add(hour)

    def sweep(self, cutoff_ts: int) -> list[tuple[K, V]]:
        """Delete the keys of the hours before the one holding ``cutoff_ts``; returns them."""
        cutoff_h = cutoff_ts // HOUR_MS
        removed: list[tuple[K, V]] = []
        for hour in [h for h in self.by_hour if h < cutoff_h]:
            del self._canon[hour]
            for key in self.by_hour.pop(hour):
                del self.hours[key]
                removed.append((key, self.data.pop(key)))
            self.dirty.add(hour)
        return removed

    def drop(self, cutoff_ts: int) -> int:
        """``sweep`` when the values are not wanted; returns how many keys went."""
        return len(self.sweep(cutoff_ts))

    def hour(self, hour: int) -> dict[K, V]:
        """The keys filed under an hour, with their values (what a commit writes of it)."""
        return {k: self.data[k] for k in self.by_hour.get(hour, ())}

    def drain(self) -> set[int]:
        dirty, self.dirty = self.dirty, set()
        return dirty

    def filed(self) -> Collection[int]:
        """The hours some key is filed under."""
        return self.by_hour.keys()

    def resident(self) -> Iterable[V]:
        """The values held in memory (all of them)."""
        return self.data.values()

    def items(self) -> Iterable[tuple[K, V]]:
        """Every key with its value (a walk over the table)."""
        return self.data.items()

    def replace(self, data: dict[K, V]) -> None:
        """Start over from a restored state (every hour dirty: nothing written yet)."""
        self.data, self.hours, self.by_hour, self._canon = {}, {}, {}, {}
        self.fill(data)

    def fill(self, data: dict[K, V], hour: int | None = None) -> None:
        """Add keys (a takeover's parts; ``hour``: the part's, values as ``part_type``)."""
        for key, value in data.items():
            self.put(key, value)

    def part_type(self, declared: Any) -> Any:
        """The type a part of this table is decoded as (``declared``: the tracker's)."""
        return declared

    def commit(self, full: bool) -> TableCommit:
        """What a commit writes of it: the hours changed since the last one (every hour
        when ``full``); never a delta (the tables that write deltas are on disk)."""
        dirty = self.drain()
        return TableCommit(set(self.by_hour) if full else dirty, [], None)

    def delta_type(self, declared: Any) -> Any:
        return tuple[self.part_type(declared), list[get_args(declared)[0]]]  # type: ignore[misc]

    def load_delta(self, n: int, delta: tuple[dict[K, V], list[K]]) -> None:
        """Apply a restored delta (a table on disk wrote it: streams/table_disk.py)."""
        puts, gone = delta
        for key, value in puts.items():
            self.put(key, value)
        for key in gone:
            if key in self.data:
                self.delete(key)


class TableCommit(NamedTuple):
    """What a commit writes of a keyed table (``Table.commit``)."""

    hours: set[int]  # the hours written whole
    deltas: list[int]  # the deltas the state still needs, in order (the new one's included)
    #: the new delta, if any: its number, and what builds its data (the changed keys' values
    #: encoded, and the keys gone)
    delta: tuple[int, Callable[[], Any]] | None


class Table(Protocol[K, V]):
    """What a tracker and a commit ask of a keyed table: ``Keyed``, or in a worker one on
    disk (streams/table_disk.py) for the tables that grow with the audience."""

    def get(self, key: K) -> V | None: ...
    def __contains__(self, key: K) -> bool: ...
    def __len__(self) -> int: ...
    def put(self, key: K, value: V) -> None: ...
    def touch(self, key: K) -> None: ...
    def delete(self, key: K) -> V: ...
    def sweep(self, cutoff_ts: int) -> list[tuple[K, V]]: ...
    def drop(self, cutoff_ts: int) -> int: ...
    def hour(self, hour: int) -> Any: ...  # a dict[K, V], or its msgpack bytes (msgspec.Raw)
    def drain(self) -> set[int]: ...
    def filed(self) -> Collection[int]: ...
    def resident(self) -> Iterable[V]: ...
    def items(self) -> Iterable[tuple[K, V]]: ...
    def replace(self, data: dict[K, V]) -> None: ...
    def fill(self, data: dict[K, V], hour: int | None = None) -> None: ...
    def part_type(self, declared: Any) -> Any: ...
    def commit(self, full: bool) -> TableCommit: ...
    def delta_type(self, declared: Any) -> Any: ...
    def load_delta(self, n: int, delta: Any) -> None: ...
    @property
    def data(self) -> dict[K, V]: ...


class TableFactory(Protocol):
    """Makes a table on disk: its name, what its values expire by, its key and value types,
    and what a value read back from disk goes through before the tracker sees it (``canon``:
    a value decoded apart holds its own dims tuples and strings, ~400 bytes a dims, which
    the tracker's memos share among the values it made). A ``cold`` table is read at the
    pace of rare events (the CRM's, orders) and keeps a small cache: a year of leads and
    deals all fit the default one, so on disk they were all still in memory."""

    def __call__(self, name: str, ts_of: Callable[[Any], int], key_type: Any,
                 value_type: Any, canon: Callable[[Any], Any] | None = None,
                 cold: bool = False) -> Table[Any, Any]: ...
