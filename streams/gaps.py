"""Where a fetched message stands against the state's gapless prefix of its partition.

Per partition the state holds a gapless prefix of the log: a message is applied only right
after the last one applied. A message that does not follow (a batch fetched before a revoke,
a restore or a rebalance, or still in the consumer's buffers after the seek that re-reads
a gap) is read again from where the state stops. Only a gap the broker confirms, the log's
own (transaction markers, records gone with retention), is passed over.

The broker is asked twice here: a partition's log start, for one the state holds nothing of,
and the first record after a gap that a re-read did not close. A broker that cannot answer
(away, or back empty and still electing leaders) never stops the worker: the message is read
again later, when it can.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiokafka.errors import KafkaError

log = logging.getLogger("kpi_engine.worker")

TP = tuple[str, int]

#: what a broker that is away or not ready raises to a question
BROKER_ERRORS: Final = (KafkaError, OSError, TimeoutError)


def follows(offset: int, last: int | None, first_after: int | None) -> str:
    """Where a fetched message stands against the state's gapless prefix of its partition
    (``last``: the last offset applied). 'apply': the next one (or the first one ever seen).
    'replayed': already applied. 'hole': offsets are missing in between (a batch fetched
    before a revoke, restore or rebalance, or still in the consumer's buffers after the
    seek that re-reads them): read again from last + 1, unless the broker said the log's
    first record after ``last`` is this one (``first_after``): a real gap in the log
    (transaction markers, records gone with retention)."""
    if last is None or offset == last + 1:
        return "apply"
    if offset <= last:
        return "replayed"
    return "apply" if first_after == offset else "hole"


class Gaps:
    """One shard's view of its partitions' logs, for ``follows``: what the broker said of
    them, and where each was last read again from."""

    def __init__(self) -> None:
        #: (partition, offset after the state's last) -> the log's first record from there
        self.first: dict[tuple[TP, int], int] = {}
        #: partitions the state holds nothing of: the offset before their log's start, what
        #: their first message must follow (``before_start``)
        self.before: dict[TP, int] = {}
        self.reread_from: dict[TP, int] = {}  # offset a partition was last read again from
        self._positions: dict[TP, int | None] = {}  # the consumer's, at the last look
        self._moved: set[TP] = set()  # partitions whose position moved since their re-read

    def restart(self) -> None:
        """A new tenure: the logs may have moved on since the last one, and what the last
        one read again went with its batches."""
        self.before = {}
        self._positions = {}
        self.reread_from = {}

    async def before_start(self, io: Any, tp: TP) -> int | None:
        """For a partition the state holds nothing of, the offset just before its log's
        start: its first message must follow it like any other. Faust drops a fetched batch
        it does not hand over (flow stopped, generation changed) and seeks back only to
        committed offsets, of which such a partition has none: without this, what it
        dropped would be skipped for good. None: the broker could not say."""
        before = self.before.get(tp)
        if before is None:
            try:
                start = await io.log_start(tp)
            except BROKER_ERRORS as exc:
                log.warning("%s[%d]: log start unknown (%s: %s); read again later", *tp,
                            type(exc).__name__, exc)
                return None
            before = self.before[tp] = start - 1
        return before

    async def where(self, io: Any, tp: TP, offset: int, last: int | None) -> str:
        """``follows``, asking the broker once a partition re-read from last + 1 still
        shows a gap: only the log's own gap is passed over, never a stale batch's."""
        if last is None or offset <= last + 1:
            return follows(offset, last, None)
        key = (tp, last + 1)
        first = self.first.get(key)
        if first is None and self.reread_from.get(tp) == last + 1:
            try:
                first = await io.first_offset(tp, last + 1)
            except BROKER_ERRORS as exc:  # not confirmed: read it again
                log.warning("%s[%d]: gap after %d not confirmed (%s: %s)", *tp, last,
                            type(exc).__name__, exc)
            if first is not None:
                self.first[key] = first
        return follows(offset, last, first)

    async def admit(self, io: Any, msg: Any, tp: TP, applied: dict[TP, int],
                    owned: set[TP], stale: dict[TP, int]) -> str:
        """Whether a fetched message that is not simply the next of its partition is
        applied: 'apply' (``applied`` moves to it), 'replayed' (already in the state), or
        'stale': skipped, as is the rest of its partition's batch (``stale``: where to read
        it again from)."""
        if tp in stale:
            return "stale"
        last = applied.get(tp)
        if last is None and msg.offset > 0:
            last = await self.before_start(io, tp)
            if last is None:  # the broker could not say where the log starts
                stale[tp] = msg.offset
                return "stale"
        if tp not in owned:
            # fetched before a revoke: its owner reads it from the committed offset, which
            # never passes what a snapshot holds
            stale[tp] = msg.offset if last is None else last + 1
            return "stale"
        if last is not None and msg.offset != last + 1:  # not the next one
            where = await self.where(io, tp, msg.offset, last)
            if where == "replayed":
                return "replayed"
            if where == "hole":
                stale[tp] = last + 1
                return "stale"
        applied[tp] = msg.offset
        return "apply"

    async def reread(self, io: Any, tp: TP, offset: int) -> None:
        log.warning("re-reading %s[%d] from %d", *tp, offset)
        self.reread_from[tp] = offset
        self._moved.discard(tp)
        await io.seek(tp, offset)

    async def find_skipped(self, io: Any, owned: set[TP], applied: dict[TP, int]) -> None:
        """Read again what the consumer passed without handing it over. A message the state
        lacks is noticed when the next one arrives (``where``); this finds the ones no
        message follows: the consumer's position stands still past the state's next offset
        (Faust drops a fetched batch it does not hand over, and seeks back only to committed
        offsets). A moving position has its messages on their way: left alone. A partition
        read again from where the state stops is read again once more only when the consumer
        has read on since and the broker has records there: what it read was dropped too (a
        rebalance), not a gap of the log's own (the kill loop's family waiting for good)."""
        for tp in sorted(owned):
            pos = await io.position(tp)
            seen, self._positions[tp] = self._positions.get(tp), pos
            if pos is None or pos != seen:
                if seen is not None:
                    self._moved.add(tp)
                continue
            last = applied.get(tp)
            if last is None:
                last = await self.before_start(io, tp)
                if last is None:
                    continue
            nxt = last + 1
            if pos <= nxt or (self.reread_from.get(tp) == nxt and not (
                    tp in self._moved and await self._has_records(io, tp, nxt, pos))):
                continue
            log.warning("%s[%d]: the consumer is at %d, the state at %d", *tp, pos, nxt)
            await self.reread(io, tp, nxt)

    async def _has_records(self, io: Any, tp: TP, start: int, end: int) -> bool:
        """Whether the log has a record from ``start`` before ``end`` (False: unknown).
        Asked once per move of the consumer since the re-read: a log ending on a gap of its
        own (transaction markers) would otherwise cost a fetch, waiting for a record that
        never comes, at every emit."""
        self._moved.discard(tp)
        try:
            first = await io.first_offset(tp, start)
        except BROKER_ERRORS:
            return False
        return first is not None and first < end
