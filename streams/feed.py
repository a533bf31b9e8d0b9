"""The accounts stage in a worker (metrics/feed.py): shards copy the events it reads onto the
internal topic `kpi-account-events`, and the accounts shard reads them from there.

Each message names the input partition its events came from (the key,
``{topic}|{partition}``), which is the copies' watermark source in the accounts shard: its
event time is the minimum over the input partitions that feed it, however they spread over
the internal topic's partitions (one input partition's messages always land in the same one,
in order). A message is a frame of the copies of a batch from one input partition (``\\x01``,
then per copy its length, its input message's timestamp and its value, unchanged), up to
``FRAME_BYTES``: one Kafka record per copied event cost a send and a fetched record each
(37k of them in stream_bench's 283k events). After every batch a shard also sends, per
input partition, a progress mark (``\\x00`` + event time) when its events went further than
its copies, so a partition with nothing to copy never holds the stage back. A copy larger
than a frame goes alone, unframed, as the input message it copies (which the broker took):
the reader takes a message that is not a frame or a mark as one copy.

A shard's copies are out before its commit counts the input they copy (the commit flushes
the producer first), and a shard re-reading input after a crash copies it again: the
accounts shard counts each event id once, so nothing is lost or counted twice.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson

from metrics.account_scores import AccountScores
from metrics.catalog import Catalog
from metrics.clock import Source
from metrics.events import ACCOUNTS, Event, Invalid, Parser
from metrics.feed import FEEDING_FAMILIES, copied, copy_for_accounts, stage_reads
from metrics.records import iso_ms
from metrics.trackers.account_purchases import AccountPurchases
from metrics.trackers.lead_scoring import LeadScoring, mql_record
from streams.settings import Settings
from streams.shard_ports import InputRecord
from streams.topics import ACCOUNTS_TOPIC, MQL_TOPIC, SCORES_TOPIC, family_topic

if TYPE_CHECKING:
    from metrics.engine import KpiEngine

_MARK: Final = b"\x00"
_FRAME: Final = b"\x01"
#: a framed copy's head: its length, and its input message's timestamp (ms; -1: none)
_HEAD: Final = struct.Struct(">Iq")
#: the most bytes of copies in one message (Kafka's default limit is 1 MiB)
FRAME_BYTES: Final = 256 * 1024


class Sends(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes,
                   timestamp: float | None = None) -> None: ...


class FeedOut:
    """What a shard of a feeding family copies to the accounts stage, batch by batch. A copy
    keeps its input message's timestamp (when the broker took it), and so does a mark (that
    of the event it reports): the stage judges what it holds in the order the input reached
    the broker, as the input's own shard does (metrics/clock.py: judge_held)."""

    def __init__(self, settings: Settings, reads: frozenset[str]):
        self.topic = settings.topic(ACCOUNTS_TOPIC)
        self.reads = reads  # the copy types the stage reads (metrics/feed.py: stage_reads)
        #: per input partition in this batch: its copies (value, timestamp)
        self._copies: dict[tuple[str, int], list[tuple[bytes, float | None]]] = {}
        #: per input partition in this batch: its latest event time and that event's
        #: timestamp, and its latest copy's event time
        self._reached: dict[tuple[str, int], tuple[int, float | None, int]] = {}

    def add(self, tp: tuple[str, int], ev: Event, raw: bytes, stamp: float | None) -> None:
        """A valid input event (whatever the shard's verdict: the stage judges it anew);
        ``stamp``: its message's timestamp, in seconds."""
        ts = ev.ts_ms
        seen, seen_at, last_copy = self._reached.get(tp, (0, None, 0))
        if copied(ev, self.reads):
            copies = self._copies.get(tp)
            if copies is None:
                self._copies[tp] = [(raw, stamp)]
            else:
                copies.append((raw, stamp))
            last_copy = max(last_copy, ts)
        if ts > seen:
            seen, seen_at = ts, stamp
        self._reached[tp] = (seen, seen_at, last_copy)

    async def send(self, io: Sends) -> None:
        """The batch's copies, framed, then the progress marks their events went beyond."""
        copies, self._copies = self._copies, {}
        reached, self._reached = self._reached, {}
        for tp, tp_copies in copies.items():
            key = _key(tp)
            for frame, stamp in frames(tp_copies):
                await io.send(self.topic, key, frame, stamp)
        for tp, (seen, seen_at, last_copy) in reached.items():
            if seen > last_copy:
                await io.send(self.topic, _key(tp), _MARK + str(seen).encode(), seen_at)


def frames(copies: Iterable[tuple[bytes, float | None]]
           ) -> Iterator[tuple[bytes, float | None]]:
    """Copies (value, timestamp in seconds) as frames of at most ``FRAME_BYTES``, each with
    the timestamp of its last copy; a larger copy alone and unframed (framed, an input
    message at the broker's size limit would pass it)."""
    parts: list[bytes] = [_FRAME]
    size = 0
    last: float | None = None
    head = _HEAD.pack
    for raw, stamp in copies:
        n = len(raw) + _HEAD.size
        if size and size + n > FRAME_BYTES:
            yield b"".join(parts), last
            parts, size = [_FRAME], 0
        if n > FRAME_BYTES:
            yield raw, stamp
            continue
        parts += (head(len(raw), -1 if stamp is None else round(stamp * 1000)), raw)
        size += n
        last = stamp
    if size:
        yield b"".join(parts), last


class FeedIn:
    """The accounts shard's side: the input partitions it is fed from (its watermark's
    sources), the copies read back as the stage's events, and what the stage tells of
    accounts and leads (`kpi-accounts`, `kpi-mql`)."""

    def __init__(self, settings: Settings, currency: str = "EUR", lifespan_years: float = 3.0):
        self.sources: list[tuple[str, int]] = [
            (family_topic(settings, f), p) for f in sorted(FEEDING_FAMILIES)
            for p in range(settings.partitions)]
        self.scores = AccountScores(currency, lifespan_years)
        self.scores_topic = settings.topic(SCORES_TOPIC)
        self.mql_topic = settings.topic(MQL_TOPIC)

    async def send_stage(self, engine: KpiEngine, io: Sends, records: list[dict[str, Any]]
                         ) -> None:
        """The new MQLs (`kpi-mql`, at once: sales systems wait for them), and with closed
        windows the account scores that changed."""
        emitted_at = records[0]["emitted_at"] if records else iso_ms(round(time.time() * 1000))
        scoring = engine.trackers.get(LeadScoring.name)
        if isinstance(scoring, LeadScoring) and scoring.unannounced:
            for lead_id, lead in scoring.announce():
                rec = mql_record(lead_id, lead, scoring.cfg.threshold, emitted_at)
                await io.send(self.mql_topic, lead_id.encode(), orjson.dumps(rec))
        if records:
            await self.send_scores(engine, io, emitted_at)

    async def send_scores(self, engine: KpiEngine, io: Sends, emitted_at: str) -> None:
        """The scores that changed, once the stage closed a newer longest window."""
        purchases = engine.trackers.get(AccountPurchases.name)
        scoring = engine.trackers.get(LeadScoring.name)
        fw = engine.windows[ACCOUNTS]
        if not fw.started:
            return
        at = fw.last_end(max(fw.cfg.windows, key=lambda w: w.size_ms).name)
        if at is None:
            return
        for account, rec in self.scores.update(
                purchases if isinstance(purchases, AccountPurchases) else None, at,
                emitted_at, scoring if isinstance(scoring, LeadScoring) else None):
            await io.send(self.scores_topic, account.encode(), orjson.dumps(rec))

    def read(self, msg: Any, raw: bytes, parse: Parser
             ) -> tuple[Source, list[tuple[Any, Event | Invalid | int, int | None]]]:
        """A message of the internal topic: its source, and per copy in it the message to
        route it by, the copy (an event of the accounts family) or why it is unusable, and
        its input message's timestamp (ms); or the event time its progress mark says.
        ``parse`` takes any input type (the copies come from several topics)."""
        stamp = msg.timestamp
        arrival = round(stamp * 1000) if stamp else None
        source = _source(msg.key)
        if source is None:
            return "", [(msg, Invalid("bad_value:key"), arrival)]
        head = raw[:1]
        if head == _MARK:
            digits = raw[1:]
            return source, [(msg, int(digits) if digits.isdigit() else Invalid("bad_value:ts"),
                             arrival)]
        if head != _FRAME:  # one copy, unframed
            return source, [(msg, _copy(raw, parse), arrival)]
        out: list[tuple[Any, Event | Invalid | int, int | None]] = []
        at, end, size = 1, len(raw), _HEAD.size
        while at < end:
            n, ms = _HEAD.unpack_from(raw, at) if at + size <= end else (end, 0)
            at += size
            if at + n > end:  # cut short
                out.append((msg, Invalid("bad_value:frame"), arrival))
                break
            value = raw[at:at + n]
            at += n
            copy_at = None if ms < 0 else ms
            # routed (late, or invalid) as itself, with the frame's coordinates
            ref = InputRecord(msg.topic, msg.partition, msg.offset, copy_at, msg.key, value)
            out.append((ref, _copy(value, parse), copy_at))
        return source, out

    def take(self, engine: KpiEngine, msg: Any, raw: bytes, parse: Parser,
             rejected: list[tuple[Any, str]]) -> None:
        """Apply a message of the internal topic; what is unusable goes to ``rejected``."""
        source, copies = self.read(msg, raw, parse)
        for ref, parsed, arrival in copies:
            if type(parsed) is int:
                engine.progress(ACCOUNTS, source, parsed, arrival)
            elif type(parsed) is Event:
                engine.ingest(parsed, source, ref, arrival)
            else:
                rejected.append((ref, parsed.reason))  # type: ignore[union-attr]

    def register(self, engine: KpiEngine) -> None:
        """Every feeding partition holds the stage's watermark until it speaks (or goes
        quiet for the idle timeout), as an assigned input partition does."""
        have = engine.watermarks[ACCOUNTS].sources
        for src in self.sources:
            if src not in have:
                engine.assign_source(ACCOUNTS, src)


def feed_of(settings: Settings, catalog: Catalog, families: tuple[str, ...]
            ) -> FeedIn | FeedOut | None:
    """A shard's part in the accounts stage, when the catalog has one: the accounts shard
    reads it, the shards of feeding families feed it."""
    if ACCOUNTS not in catalog.families:
        return None
    if ACCOUNTS in families:
        ltv = catalog.kpis.get("customer_lifetime_value")  # its scale: the lifespan assumed
        return FeedIn(settings, catalog.currency, ltv.scale if ltv is not None else 3.0)
    return FeedOut(settings, stage_reads(catalog)) if FEEDING_FAMILIES & set(families) else None


def _copy(raw: bytes, parse: Parser) -> Event | Invalid:
    ev = parse(raw)
    if type(ev) is not Event:
        return ev
    copy = copy_for_accounts(ev)
    return copy if copy is not None else Invalid("wrong_topic")


def _key(tp: tuple[str, int]) -> bytes:
    return f"{tp[0]}|{tp[1]}".encode()


def _source(key: bytes | None) -> tuple[str, int] | None:
    if not key:
        return None
    topic, sep, part = key.decode(errors="replace").rpartition("|")
    return (topic, int(part)) if sep and part.isdigit() else None
