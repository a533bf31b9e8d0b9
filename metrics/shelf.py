"""Where the engine keeps what it holds for a month but reads seldom: the snapshots of
closed windows and the rows of published windows, kept while a window can be revised (its
end + longest window + grace). For crm, spend and the accounts stage that is a month of
hourly 30-day windows, which grew the worker's memory with every day of its first month.

A ``Shelf`` maps a key to a value. The engine's own is a dict (``MemShelf``); a worker's
keeps only its keys in memory and the values on disk (streams/shelf_disk.py). A value from
``get`` is a copy or the one held: a change is made by putting it back (``shelf[key] =
value``), never in place only. ``flush`` writes what was put since the last one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, KeysView
from typing import Any, Protocol, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Shelf(Protocol[K, V]):
    def get(self, key: K) -> V | None: ...
    def __setitem__(self, key: K, value: V) -> None: ...
    def __delitem__(self, key: K) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __iter__(self) -> Iterator[K]: ...
    def __len__(self) -> int: ...
    def keys(self) -> KeysView[K]: ...
    def values(self) -> Iterable[V]: ...
    def items(self) -> Iterable[tuple[K, V]]: ...
    def clear(self) -> None: ...

    def patch(self, key: K, field: Any, amount: int) -> None:
        """Add ``amount`` to ``field`` of the value at ``key`` (a dict of ints, there): a
        shelf on disk keeps it as a delta until the value is read or written."""
        ...

    def order(self) -> None:
        """Sort the keys: they iterate in order after (closed windows expire oldest
        first)."""
        ...

    def flush(self) -> None: ...


class MemShelf(dict[K, V]):
    """A shelf in memory: the values are the ones held, so there is nothing to write."""

    def patch(self, key: K, field: Any, amount: int) -> None:
        value: Any = self[key]
        value[field] = value.get(field, 0) + amount

    def order(self) -> None:
        items = sorted(self.items())
        self.clear()
        self.update(items)

    def flush(self) -> None:
        pass


#: makes a shelf: its name (for errors), its key type and its value type (how a shelf on
#: disk decodes them)
ShelfFactory = Callable[[str, Any, Any], Shelf[Any, Any]]


def mem_shelf(name: str, key_type: Any, value_type: Any) -> Shelf[Any, Any]:
    """The engine's own factory: every value in memory."""
    return MemShelf()
