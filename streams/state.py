"""Durable worker state: a shard's engine snapshot and the input offsets it covers.

A snapshot is written as chunks, then a manifest naming them; the manifest is the commit
point, so a crash mid-write leaves the previous snapshot in force. Snapshots alternate
between two key slots, so the one in force is never overwritten by the next (in the table,
or on a compacted changelog). Each owner of a shard writes slots of its own epoch, numbered
above its predecessor's, so a predecessor that was paused and writes late neither overwrites
nor outranks it. The records live in the group's Faust table (streams/faust_app.py: StateTable).

Offsets are committed to the consumer group only up to what a durable snapshot covers
(``clamp_commits``): after a crash the worker re-reads from there, and skips what the
restored state already applied. Nothing is lost, nothing is counted twice.

Event ids, the state that grows with traffic, are not in the snapshot: each commit writes
the ids remembered since the previous one as *segments*, one record per hour of event time
(``{group}|dd|{seq}|{hour}``), before its manifest. A snapshot's ``chain`` names the commits
whose segments make its ids (per epoch, the last one): a former owner's late segments are
outside it. Segments go when their hour expires; nothing is ever rewritten whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from metrics.alerts import HeldBreach
from metrics.baselines import BaselineState
from metrics.catalog import Catalog
from metrics.errors import StateError
from metrics.records import held_json, window_key
from metrics.snapshot import EngineState
from streams.part_map import Columns, PartMap

log = logging.getLogger("kpi_engine.state")

CHUNK_BYTES: Final = 512 * 1024
_SEQ = struct.Struct(">Q")
#: snapshot seqs of one owner's tenure of a shard stay within one epoch (``next_epoch``)
EPOCH: Final = 1 << 20

#: the layout of a stored snapshot; raised when it changes (2: events hold msgspec structs,
#: combined breakdown values are tuples; 3: typed MessagePack records, no pickle; 4: event
#: ids as segments, a lineage and a chain; 5: the part map by stem, streams/part_map.py;
#: 3 is read and migrated, 4 read in place)
STATE_FORMAT: Final = 5
READS_FORMATS: Final = (3, 4, 5)

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> last offset applied


__all__ = ["StateError"]


@dataclass
class Snapshot:
    seq: int
    engine: EngineState
    applied: Offsets
    invalid: dict[str, int]
    #: closed-window records the state counts as published; sent once the snapshot is
    #: durable (and again after a restore), so every revision on kpi-windows belongs to a
    #: durable history and a crash can never leave a higher stale revision behind. Their
    #: JSON, as sent (earlier versions wrote maps: ``decode`` makes them JSON)
    outbox: list[bytes]
    #: epoch -> the last commit of that epoch whose segments belong to this state
    chain: dict[int, int] = dataclasses.field(default_factory=dict)
    #: names the shard's state history since it was first created (a local store made for
    #: another history, e.g. another broker's, is never taken for this one)
    lineage: str = ""
    format: int = STATE_FORMAT
    #: aggregate -> fingerprint of its definition when the state was written (None: not
    #: known, format 3: the whole catalog was the same)
    aggregates: dict[str, str] | None = None
    #: the engine's parts (metrics/snapshot.py): name -> (seq of the commit that wrote its
    #: current record, crc32 of it); the engine state above is the core without them
    parts: PartMap = dataclasses.field(default_factory=PartMap)
    #: the alert breaches under way: kpi-alerts goes on from them after a restart
    alerts: list[HeldBreach] = dataclasses.field(default_factory=list)
    baselines: BaselineState = dataclasses.field(default_factory=BaselineState)

    def resend(self) -> list[tuple[bytes, bytes]]:
        """The outbox as (key, JSON value) records for `kpi-windows`; a record that is not a
        closed window's gives a ``StateError``, not a worker stopped at its first send."""
        out = []
        for i, rec in enumerate(self.outbox):
            try:
                out.append((window_key(orjson.loads(rec)).encode(), rec))
            except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
                raise StateError(f"outbox record {i}: not a closed window's ({exc!r})") \
                    from exc
        return out


class SourceRef(NamedTuple):
    """What routing an input message to kpi-dlq / kpi-late needs, serialisable."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def source_ref(msg: Any) -> SourceRef | None:
    """None for what no message stands behind (the accounts stage's progress marks)."""
    return None if msg is None else SourceRef(msg.topic, msg.partition, msg.offset, msg.key,
                                              msg.value)




class StoredSnapshot(msgspec.Struct, gc=False):
    """What a snapshot's chunks hold, MessagePack: decoded against this schema into plain
    data only, so a hostile record can fail to decode but never run code."""

    engine: EngineState
    applied: dict[tuple[str, int], int]
    invalid: dict[str, int]
    outbox: Sequence[bytes | dict[str, Any]]  # maps: as earlier versions wrote them
    chain: dict[int, int] = {}
    lineage: str = ""
    parts: dict[str, tuple[int, int]] = {}  # format 4's map: ``part_map`` since
    #: the alert breaches under way (metrics/alerts.py), the seasonal baselines and
    #: anomalies under way (metrics/baselines.py)
    alerts: list[HeldBreach] = []
    baselines: BaselineState = msgspec.field(default_factory=BaselineState)
    part_map: dict[str, Columns] = {}  # ``PartMap.columns``


_ENCODE: Final = msgspec.msgpack.Encoder().encode
_DECODE: Final = msgspec.msgpack.Decoder(StoredSnapshot).decode


def _digest(fmt: int, data: Any) -> str:
    canonical = orjson.dumps(data, default=lambda o: sorted(o, key=str),
                             option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(b"%d|" % fmt + canonical).hexdigest()[:16]


def catalog_fingerprint(catalog: Catalog, fmt: int = STATE_FORMAT) -> str:
    """What the stored state's layout depends on: the currency amounts are kept in and each
    family's windows and grace (format 3: the whole catalog). Stable across processes. KPIs,
    thresholds, alerts, titles, units and dashboards are not in it: editing them keeps the
    state; an aggregate's own definition is fingerprinted apart (``aggregate_fingerprints``)."""
    if fmt == 3:
        return _digest(fmt, dataclasses.asdict(catalog))
    return _digest(fmt, {"currency": catalog.currency,
                         "families": {n: {"name": f.name, "grace_ms": f.grace_ms,
                                          "windows": [dataclasses.asdict(w) for w in f.windows]}
                                      for n, f in catalog.families.items()}})


#: format 3 fingerprinted the whole catalog: the shipped default's (per shard) as the
#: previous release wrote it -> its windows, grace and currency in format 4's terms. A state
#: written with it is read when the catalog in use still has those windows, grace and
#: currency (later KPI edits and new aggregates are what format 4 tolerates anyway).
_PREVIOUS_DEFAULTS: Final = {
    "456788d610e72abe": "bb4b3f4f3bec9895",  # crm+spend
    "5bc7cc750624cdd0": "8b20df8f2023ad6e",  # email
    "94045dc75b408b61": "cc280965da693d2f",  # social
    "5f42ebecf988c360": "f24294ebcf1f340d",  # web
    "df476e2d621bde9d": "e983e21768850935",  # all families
}


def reads(catalog: Catalog, fmt: int, fingerprint: str) -> bool:
    """Whether a state of this format and catalog fingerprint is readable with ``catalog``."""
    if fmt not in READS_FORMATS:
        return False
    if fingerprint == catalog_fingerprint(catalog, fmt):
        return True
    return fmt == 3 and _PREVIOUS_DEFAULTS.get(fingerprint) == catalog_fingerprint(catalog, 4)


def aggregate_fingerprints(catalog: Catalog) -> dict[str, str]:
    """Per aggregate, its definition: a restored state keeps the values of the aggregates
    whose definition is unchanged, and only those (digested as format 4 did: no later format
    changed what an aggregate holds)."""
    return {n: _digest(4, dataclasses.asdict(a)) for n, a in catalog.aggregates.items()}


def slot_of(seq: int) -> str:
    """The key slot a snapshot is written to: its owner's epoch, then one of two slots that
    alternate, so the snapshot in force is never overwritten by the next one."""
    return f"{seq // EPOCH}.{seq % 2}"


def claim_key(group: str) -> bytes:
    return f"{group}|claim".encode()


def owner_epoch(records: Iterable[tuple[bytes, bytes | None]], group: str,
                restored_seq: int) -> int:
    """The epoch a new owner of a shard takes: above the last one claimed (every owner claims
    its epoch before it counts anything) and above the snapshot it restored. Its snapshots
    are numbered from ``epoch * EPOCH``, in key slots of that epoch. A former owner that was
    paused and comes back may still write a snapshot or two: in its own, lower epoch, it
    never overwrites the new owner's keys and never outranks its snapshots."""
    claimed = 0
    key = claim_key(group)
    for k, v in records:
        if k == key and v is not None:
            with contextlib.suppress(ValueError):  # a junk claim: decode reported it
                claimed = max(claimed, int(v))
        elif (e := record_epoch(k, group)) is not None:  # above unclaimed ones too (orphaned)
            claimed = max(claimed, e)
    return max(claimed, restored_seq // EPOCH) + 1


def orphaned(records: Iterable[tuple[bytes, bytes | None]], group: str) -> bool:
    """Whether the table holds ``group``'s state records but no owner's claim. Every owner
    claims its epoch before it writes anything, and the claim is never deleted: records
    without one are a commit that was in flight when the broker went away, written again to
    a broker that came back empty. Its offsets are the old log's and its parts are gone;
    the shard starts from what the new broker holds, as after losing the changelog."""
    key, found = claim_key(group), False
    for k, v in records:
        if k == key and v is not None:
            return False
        found = found or record_epoch(k, group) is not None
    return found


def record_epoch(key: bytes, group: str) -> int | None:
    """The epoch of any of ``group``'s snapshot records (chunk, manifest, segment, part)."""
    if (e := key_epoch(key, group)) is not None:
        return e
    for parse in (segment_of, part_of):
        with contextlib.suppress(ValueError):
            return parse(key, group)[0] // EPOCH
    return None


def key_epoch(key: bytes, group: str) -> int | None:
    """The epoch of one of ``group``'s chunk or manifest keys; None for any other key."""
    prefix = f"{group}|".encode()
    if not key.startswith(prefix) or key == claim_key(group):
        return None
    try:
        return _slot_epoch(key[len(prefix):].decode().removeprefix("manifest|").split("|")[0])
    except ValueError:  # not a key this module writes
        return None


def superseded(keys: Iterable[bytes], group: str, seq: int,
               chain: dict[int, int] | None = None,
               parts: PartMap | None = None) -> list[bytes]:
    """Keys of ``group``'s earlier epochs, once snapshot ``seq`` is durable: what a new owner
    deletes so the table (and a compacted changelog) keeps one epoch per shard; of their
    segments and parts, those the snapshot does not hold (``chain``, ``parts``): a former
    owner's late writes."""
    epoch = seq // EPOCH
    seg_tag, part_tag = f"{group}|dd|".encode(), f"{group}|pt|".encode()
    held = {part_key(group, s, n) for n, (s, _) in (parts or PartMap()).items()}
    out = []
    for k in keys:
        if k.startswith(seg_tag):
            with contextlib.suppress(ValueError):
                s, _ = segment_of(k, group)
                if s // EPOCH < epoch and not in_chain(s, chain or {}):
                    out.append(k)
        elif k.startswith(part_tag):
            with contextlib.suppress(ValueError):
                s, _ = part_of(k, group)
                if s // EPOCH < epoch and k not in held:
                    out.append(k)
        elif (e := key_epoch(k, group)) is not None and e < epoch:
            out.append(k)
    return out


def segment_key(group: str, seq: int, hour: int) -> bytes:
    return f"{group}|dd|{seq}|{hour}".encode()


def segment_of(key: bytes, group: str) -> tuple[int, int]:
    """(seq, hour) of a segment key; ValueError when it is not one."""
    _, tag, seq, hour = key.decode().split("|")
    if tag != "dd" or key != segment_key(group, int(seq), int(hour)):
        raise ValueError(f"no segment key: {key!r}")
    return int(seq), int(hour)


def in_chain(seq: int, chain: dict[int, int]) -> bool:
    """Whether commit ``seq`` belongs to the history ``chain`` describes."""
    return seq <= chain.get(seq // EPOCH, -1)


_SEGMENT: Final = msgspec.msgpack.Decoder(list[tuple[str, int]]).decode


def encode_segments(by_hour: dict[int, list[str]], ids: Mapping[str, int], group: str,
                    seq: int) -> list[tuple[bytes, bytes]]:
    """One commit's ids, one record per hour of event time: (id, event time) pairs, made
    for one hour at a time (``ids``: their times)."""
    return [(segment_key(group, seq, hour),
             zlib.compress(_ENCODE([(eid, ids[eid]) for eid in hour_ids]), 1))
            for hour, hour_ids in sorted(by_hour.items())]


def decode_segment(key: bytes, value: bytes) -> list[tuple[str, int]]:
    """A segment's ids; ``StateError`` naming the key when it is not one this module wrote
    (checked against the schema: a hostile record fails to decode, it never runs code)."""
    try:
        return _SEGMENT(zlib.decompress(value))
    except (zlib.error, msgspec.DecodeError, ValueError) as exc:
        raise StateError(f"state record {key!r} is unreadable: {exc}") from None


def segments(records: Iterable[tuple[bytes, bytes | None]], group: str
             ) -> dict[bytes, tuple[int, int]]:
    """The segment keys among a table's records, with their (seq, hour)."""
    out: dict[bytes, tuple[int, int]] = {}
    tag = f"{group}|dd|".encode()
    for key, value in records:
        if key.startswith(tag) and value is not None:
            with contextlib.suppress(ValueError):  # malformed: decode reported it
                out[key] = segment_of(key, group)
    return out


def part_key(group: str, seq: int, name: str) -> bytes:
    return f"{group}|pt|{seq}|{name}".encode()


def part_of(key: bytes, group: str) -> tuple[int, str]:
    """(seq, part name) of a part key; ValueError when it is not one."""
    prefix, tag, seq, name = key.decode().split("|", 3)
    if prefix != group or tag != "pt" or key != part_key(group, int(seq), name):
        raise ValueError(f"no part key: {key!r}")
    return int(seq), name


def parts_of(group: str, parts: PartMap, values: dict[bytes, bytes]
             ) -> Iterator[tuple[str, bytes]]:
    """The records of a snapshot's parts, checked against its map, one at a time;
    ``StateError`` naming the key of one missing or damaged."""
    for name, (seq, crc) in parts.items():
        key = part_key(group, seq, name)
        value = values.get(key)
        if value is None:
            raise StateError(f"state record {key!r} is missing")
        if zlib.crc32(value) != crc:
            raise StateError(f"state record {key!r} is corrupt (checksum)")
        try:
            data = zlib.decompress(value)
        except zlib.error as exc:
            raise StateError(f"state record {key!r} is unreadable: {exc}") from None
        yield name, data


def encode(snap: Snapshot, group: str, catalog: Catalog) -> list[tuple[bytes, bytes]]:
    """(key, value) records: the chunks, then the manifest last; keys start ``{group}|``."""
    blob = zlib.compress(_ENCODE(StoredSnapshot(snap.engine, snap.applied, snap.invalid,
                                                snap.outbox, snap.chain, snap.lineage,
                                                {}, snap.alerts, snap.baselines,
                                                snap.parts.columns())), 1)
    seq = _SEQ.pack(snap.seq)
    slot = slot_of(snap.seq)
    chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    out = [(f"{group}|{slot}|{i}".encode(), seq + c) for i, c in enumerate(chunks)]
    manifest = {"seq": snap.seq, "slot": slot, "chunks": len(chunks), "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "catalog": catalog_fingerprint(catalog), "format": STATE_FORMAT,
                "aggregates": aggregate_fingerprints(catalog)}
    out.append((f"{group}|manifest|{slot}".encode(), orjson.dumps(manifest)))
    return out


class Manifest(msgspec.Struct, frozen=True):
    """A snapshot's commit record (JSON): which chunks make it, and their checksum."""

    seq: int
    slot: str
    chunks: int
    bytes: int
    sha256: str
    catalog: str
    format: int = 3  # a format 3 manifest does not say
    aggregates: dict[str, str] | None = None


_MANIFEST: Final = msgspec.json.Decoder(Manifest).decode

#: told of every record ``decode`` passes over as malformed: (key, why)
OnSkip = Callable[[bytes, str], None]


def _skip_logged(key: bytes, why: str) -> None:
    log.error("state record %r skipped: %s", key[:200], why)


def decode(records: Iterable[tuple[bytes, bytes | None]], group: str, catalog: Catalog,
           on_skip: OnSkip = _skip_logged) -> Snapshot | None:
    """The newest snapshot whose chunks are all there and intact, from records in log order
    (or a table's latest value per key; a None value deletes its key). Newest is the highest
    seq, not the last written: a former owner's late write never wins (``owner_epoch``).
    A snapshot cut short by a crash is passed over for the one before it. A record that is
    not one this module writes (a junk key, a manifest that does not parse) is passed over
    and reported to ``on_skip``: it cannot stop the shard, nor hide a good snapshot."""
    prefix = f"{group}|".encode()
    chunks: dict[tuple[str, int], bytes] = {}
    manifests: dict[str, Manifest] = {}
    for key, value in records:
        if not key.startswith(prefix):
            continue  # another consumer group's state
        try:
            rest = key[len(prefix):].decode()
            if rest == "claim":
                if value is not None:
                    int(value)  # owner_epoch reads it
                continue
            if rest.startswith("dd|"):
                segment_of(key, group)  # read by ``segments``: only checked here
                continue
            if rest.startswith("pt|"):
                part_of(key, group)  # read by ``parts_of``: only checked here
                continue
            if rest.startswith("manifest|"):
                slot = rest[9:]
                if value is None:
                    manifests.pop(slot, None)
                    continue
                manifest = _MANIFEST(value)
                if manifest.slot != slot:
                    raise ValueError(f"manifest of slot {manifest.slot!r} under {slot!r}")
                manifests[slot] = manifest
                continue
            chunk_slot, index = rest.split("|")
            _slot_epoch(chunk_slot)
            if value is None:
                chunks.pop((chunk_slot, int(index)), None)
            else:
                chunks[(chunk_slot, int(index))] = value
        except (ValueError, msgspec.DecodeError) as exc:
            on_skip(key, str(exc) or type(exc).__name__)
    if not manifests:
        return None
    if not all(reads(catalog, m.format, m.catalog) for m in manifests.values()):
        raise StateError(f"the stored state of group {group!r} was built with other windows, "
                         "grace or currency, or by an engine version this one does not read: "
                         "start the worker with a new --group-id")
    failed: list[StateError] = []
    for manifest in sorted(manifests.values(), key=lambda m: -m.seq):
        try:
            snap = _assemble(manifest, chunks)
        except StateError as exc:
            failed.append(exc)
            continue
        if failed:
            log.warning("%s: restoring snapshot %d, not a newer one: %s", group, snap.seq,
                        "; ".join(map(str, failed)))
        return snap
    raise failed[0]


def _slot_epoch(slot: str) -> int:
    """The epoch of a key slot (``slot_of``); ValueError when it is not one."""
    epoch, _, half = slot.partition(".")
    if half not in ("0", "1"):
        raise ValueError(f"no key slot: {slot!r}")
    return int(epoch)


def _assemble(manifest: Manifest, chunks: dict[tuple[str, int], bytes]) -> Snapshot:
    if not 0 <= manifest.seq < 1 << 64:
        raise StateError(f"snapshot {manifest.seq}: no such sequence number")
    seq = _SEQ.pack(manifest.seq)
    parts = []
    for i in range(manifest.chunks):
        part = chunks.get((manifest.slot, i))
        if part is None or not part.startswith(seq):
            raise StateError(f"state chunk {i} of snapshot {manifest.seq} is missing")
        parts.append(part[len(seq):])
    blob = b"".join(parts)
    if hashlib.sha256(blob).hexdigest() != manifest.sha256:
        raise StateError(f"snapshot {manifest.seq} is corrupt (checksum)")
    try:
        data = _DECODE(zlib.decompress(blob))
        # maps as earlier versions wrote them: their JSON (``Snapshot.resend`` checks them)
        outbox = [r if isinstance(r, bytes) else held_json(r) for r in data.outbox]
        part_map = (PartMap.from_columns(data.part_map) if data.part_map
                    else PartMap.of(data.parts))  # format 4's
    except (zlib.error, msgspec.DecodeError, ValueError, TypeError) as exc:
        raise StateError(f"snapshot {manifest.seq} is unreadable: {exc!r}") from None
    return Snapshot(manifest.seq, data.engine, data.applied, data.invalid, outbox, data.chain,
                    data.lineage, manifest.format, manifest.aggregates, part_map,
                    data.alerts, data.baselines)
