"""Which record holds each of a shard's parts: the map a snapshot carries (streams/state.py).

Part name -> (seq of the commit that wrote its current record, crc32 of that record). A
year-long table has a part per hour, so the map holds tens of thousands of names once the
horizon has filled, and every commit carries it whole. It is kept as the names' stems (the
name but for its last field, a number, metrics/snapshot.py) -> number -> ``seq << 32 | crc``:
one int per part rather than a string and a tuple. A snapshot holds it as three columns per
stem, numbers, seqs and crcs (``columns``: format 5; a seq outgrows 32 bits after 4,096
takeovers, so the packed ints do not fit MessagePack's 64). Format 4 wrote a flat name ->
(seq, crc) map: ``PartMap.of`` reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final

from metrics.errors import StateError
from metrics.snapshot import PartNames

#: a stem's parts in a snapshot: their numbers, the seqs of their records, their crc32s
Columns = tuple[list[int], list[int], list[int]]

_CRC: Final = (1 << 32) - 1


def _split(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("|")
    return stem, int(number)


class PartMap:
    """A commit makes a new map from the last one (``kept``, then ``put``), and drops the
    records the new one no longer names (``replaced``). Most stems are unchanged from one
    commit to the next: those are copied, compared and encoded as whole dicts and lists,
    not a part at a time."""

    def __init__(self, stems: dict[str, dict[int, int]] | None = None,
                 columns: dict[str, Columns] | None = None):
        self.stems: dict[str, dict[int, int]] = {} if stems is None else stems
        #: per stem unchanged since encoded
        self._columns: dict[str, Columns] = {} if columns is None else columns

    @classmethod
    def of(cls, parts: Mapping[str, tuple[int, int]]) -> PartMap:
        """A format 4 map (name -> (seq, crc))."""
        out = cls()
        for name, (seq, crc) in parts.items():
            out.put(name, seq, crc)
        return out

    @classmethod
    def from_columns(cls, stems: Mapping[str, Columns]) -> PartMap:
        """A snapshot's map (``columns``); ``StateError`` when it is not one."""
        out: dict[str, dict[int, int]] = {}
        for stem, (numbers, seqs, crcs) in stems.items():
            if not len(numbers) == len(seqs) == len(crcs) or \
                    not all(s >= 0 and 0 <= c <= _CRC for s, c in zip(seqs, crcs, strict=True)):
                raise StateError(f"the part map of {stem!r} is unreadable")
            out[stem] = {n: s << 32 | c for n, s, c in zip(numbers, seqs, crcs, strict=True)}
        return cls(out)

    def columns(self) -> dict[str, Columns]:
        out = {}
        for stem, numbers in self.stems.items():
            cols = self._columns.get(stem)
            if cols is None:
                cols = self._columns[stem] = (list(numbers), [v >> 32 for v in numbers.values()],
                                              [v & _CRC for v in numbers.values()])
            out[stem] = cols
        return out

    def put(self, name: str, seq: int, crc: int) -> None:
        stem, number = _split(name)
        self.stems.setdefault(stem, {})[number] = seq << 32 | crc
        self._columns.pop(stem, None)

    def get(self, name: str) -> tuple[int, int] | None:
        stem, number = _split(name)
        packed = self.stems.get(stem, {}).get(number)
        return None if packed is None else (packed >> 32, packed & _CRC)

    def items(self) -> Iterator[tuple[str, tuple[int, int]]]:
        """(name, (seq, crc)) of every part, by stem and number."""
        for stem in sorted(self.stems):
            numbers = self.stems[stem]
            for n in sorted(numbers):
                packed = numbers[n]
                yield f"{stem}|{n}", (packed >> 32, packed & _CRC)

    def kept(self, names: PartNames) -> PartMap:
        """A new map of the parts among ``names`` (the engine's parts now)."""
        stems: dict[str, dict[int, int]] = {}
        columns: dict[str, Columns] = {}
        for stem, numbers in names.stems.items():
            held = self.stems.get(stem)
            if not held:
                continue
            if len(held) == len(numbers) and held.keys() == numbers:  # a set compare, in C
                stems[stem] = dict(held)
                if stem in self._columns:
                    columns[stem] = self._columns[stem]
            elif kept := {n: held[n] for n in numbers if n in held}:
                stems[stem] = kept
        return PartMap(stems, columns)

    def replaced(self, new: PartMap) -> Iterator[tuple[str, int]]:
        """(name, seq) of the records this map names and ``new`` no longer does: a part
        written again, or gone."""
        for stem, numbers in self.stems.items():
            now = new.stems.get(stem, {})
            if now == numbers:
                continue
            for n, packed in numbers.items():
                other = now.get(n)
                if other is None or other >> 32 != packed >> 32:
                    yield f"{stem}|{n}", packed >> 32

    def __len__(self) -> int:
        return sum(len(n) for n in self.stems.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartMap) and other.stems == self.stems

    __hash__ = None  # type: ignore[assignment]  # mutable
