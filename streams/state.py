"""Durable worker state: a shard's engine snapshot and the input offsets it covers.

A snapshot is written as chunks, then a manifest naming them; the manifest is the commit
point, so a crash mid-write leaves the previous snapshot in force. Chunks alternate between
two slots (A/B) with fixed keys, so the slot the latest manifest names is never overwritten
while it is in force (in the table, or on a compacted changelog). The records live in the
group's Faust table (streams/state_table.py).

Offsets are committed to the consumer group only up to what a durable snapshot covers
(``clamp_commits``): after a crash the worker re-reads from there, and skips what the
restored state already applied. Nothing is lost, nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson

from metrics.catalog import Catalog
from metrics.errors import KpiEngineError

CHUNK_BYTES: Final = 512 * 1024
_SEQ = struct.Struct(">Q")

Offsets = dict[tuple[str, int], int]  # (topic, partition) -> last offset applied


def follows(offset: int, last: int | None, reread_from: int | None) -> str:
    """Where a fetched message stands against the state's gapless prefix of its partition
    (``last``: the last offset applied). 'apply': the next one (or the first one ever seen).
    'replayed': already applied. 'hole': offsets are missing in between (a batch fetched
    before a revoke, restore or rebalance): read again from last + 1, unless that was done
    already (``reread_from``), which makes it a real hole in the log (transaction markers)."""
    if last is None or offset == last + 1:
        return "apply"
    if offset <= last:
        return "replayed"
    return "apply" if reread_from == last + 1 else "hole"


class StateError(KpiEngineError):
    """The stored state cannot be used (corrupt, or built with another catalog)."""


@dataclass
class Snapshot:
    seq: int
    engine: dict[str, Any]
    applied: Offsets
    invalid: dict[str, int]
    #: closed-window records the state counts as published; sent once the snapshot is
    #: durable (and again after a restore), so every revision on kpi-windows belongs to a
    #: durable history and a crash can never leave a higher stale revision behind
    outbox: list[dict[str, Any]]


class SourceRef(NamedTuple):
    """What routing an input message to kpi-dlq / kpi-late needs, serialisable."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def source_ref(msg: Any) -> SourceRef:
    return SourceRef(msg.topic, msg.partition, msg.offset, msg.key, msg.value)


def catalog_fingerprint(catalog: Catalog) -> str:
    """Stable across processes (sets sorted), so a restart recognises its own catalog."""
    canonical = orjson.dumps(dataclasses.asdict(catalog), default=lambda o: sorted(o, key=str),
                             option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:16]


def encode(snap: Snapshot, group: str, catalog: Catalog, slot: str
           ) -> list[tuple[bytes, bytes]]:
    """(key, value) records: the chunks, then the manifest last; keys start ``{group}|``."""
    blob = zlib.compress(pickle.dumps(
        {"engine": snap.engine, "applied": snap.applied, "invalid": snap.invalid,
         "outbox": snap.outbox},
        protocol=pickle.HIGHEST_PROTOCOL), 1)
    seq = _SEQ.pack(snap.seq)
    chunks = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)] or [b""]
    out = [(f"{group}|{slot}|{i}".encode(), seq + c) for i, c in enumerate(chunks)]
    manifest = {"seq": snap.seq, "slot": slot, "chunks": len(chunks), "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "catalog": catalog_fingerprint(catalog)}
    out.append((f"{group}|manifest".encode(), orjson.dumps(manifest)))
    return out


def decode(records: list[tuple[bytes, bytes]], group: str, catalog: Catalog
           ) -> Snapshot | None:
    """The snapshot the last manifest names, from records in log order (or a table's
    latest value per key)."""
    prefix = f"{group}|".encode()
    chunks: dict[tuple[str, int], bytes] = {}
    manifest: dict[str, Any] | None = None
    for key, value in records:
        if not key.startswith(prefix):
            continue  # another consumer group's state
        rest = key[len(prefix):].decode()
        if rest == "manifest":
            manifest = orjson.loads(value)
        else:
            chunk_slot, index = rest.split("|")
            chunks[(chunk_slot, int(index))] = value
    if manifest is None:
        return None
    if manifest["catalog"] != catalog_fingerprint(catalog):
        raise StateError(f"the stored state of group {group!r} was built with another KPI "
                         "catalog: start the worker with a new --group-id")
    seq = _SEQ.pack(manifest["seq"])
    slot: str = manifest["slot"]
    parts = []
    for i in range(manifest["chunks"]):
        part = chunks.get((slot, i))
        if part is None or not part.startswith(seq):
            raise StateError(f"state chunk {i} of snapshot {manifest['seq']} is missing")
        parts.append(part[len(seq):])
    blob = b"".join(parts)
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        raise StateError(f"snapshot {manifest['seq']} is corrupt (checksum)")
    data = pickle.loads(zlib.decompress(blob))
    return Snapshot(manifest["seq"], data["engine"], data["applied"], data["invalid"],
                    data["outbox"])
