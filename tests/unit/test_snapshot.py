"""Engine snapshots: encoded mid-stream and restored into a fresh engine, the run goes on as
if nothing happened; and the state store's chunks and manifest round-trip and fail loudly."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest

from kpi_engine.generator import GeneratorConfig
from metrics.dedup import DedupState
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import Event
from metrics.records import window_key
from metrics.snapshot import EngineState, decode_state, encode_state
from streams.state import (
    CHUNK_BYTES,
    EPOCH,
    Snapshot,
    StateError,
    claim_key,
    decode,
    encode,
    owner_epoch,
    slot_of,
    superseded,
)
from tests.helpers import DEFAULT_CATALOG, final_values, generated_events


def events(seed: int = 5) -> list[Event]:
    return generated_events(GeneratorConfig(rate=50, duration_s=1800, seed=seed,
                                            history_days=3, duplicates=0.01, late=0.002,
                                            late_after_s=60, disorder_s=30))[0]


def run(engine: KpiEngine, evs: list[Event], records: list[dict[str, Any]]) -> None:
    for i, ev in enumerate(evs):
        engine.ingest(ev, source=i % 3)
        if engine.due:
            records += engine.advance()


def new_engine() -> KpiEngine:
    return KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))


_EMPTY = KpiEngine(DEFAULT_CATALOG).snapshot()


def state(**marks: int) -> EngineState:
    """An engine state told apart by ``marks`` (kept as its event counts)."""
    st = copy.deepcopy(_EMPTY)
    st.counters.events_total = dict(marks)
    return st


def flip_last(value: bytes) -> bytes:
    """The value with its last byte changed (whatever it was)."""
    return value[:-1] + bytes([value[-1] ^ 0xFF])


def mark(st: EngineState) -> dict[str, int]:
    return st.counters.events_total


def test_restored_engine_continues_exactly() -> None:
    evs = events()
    whole: list[dict[str, Any]] = []
    run(e := new_engine(), evs, whole)
    whole += e.flush()

    for cut in (len(evs) // 4, len(evs) * 2 // 3):
        parts: list[dict[str, Any]] = []
        first = new_engine()
        run(first, evs[:cut], parts)
        blob = encode_state(first.snapshot())
        second = new_engine()
        second.restore(decode_state(blob))
        run(second, evs[cut:], parts)
        parts += second.flush()
        assert final_values(parts) == final_values(whole)
        assert second.events_total == e.events_total
        assert second.duplicates_total == e.duplicates_total
        assert second.late_total == e.late_total


def test_held_events_survive_a_snapshot() -> None:
    first = new_engine()
    ev = events()[0]
    first.assign_source(ev.family, "p0")
    first.assign_source(ev.family, "p1")
    assert first.ingest(ev, source="p0", ref="ref-0") == "held"
    second = new_engine()
    # what the accounts stage holds of it (a copy, or a progress mark) has no ref: None
    second.restore(decode_state(encode_state(first.snapshot(
        ref=lambda r: None if r is None else r.upper()))),
        ref=lambda r: None if r is None else f"<{r}>")
    assert second.held_total == first.held_total
    (held, ref), = second.held(ev.family)
    assert ref == "<REF-0>" and held == ev and held.data == ev.data
    assert [(h.type, r) for h, r in second.held("accounts")] == [
        (h.type, None) for h, _ in first.held("accounts")]
    assert first.held("accounts")


def test_state_records_round_trip_across_slots_and_chunks() -> None:
    rnd = random.Random(1)  # ids that do not compress: several chunks
    big = state(n=7)
    big.dedup["email"] = DedupState(1, {rnd.randbytes(16).hex(): i
                                        for i in range(3 * CHUNK_BYTES // 32)})
    snap = Snapshot(7, big, {("email-events", 0): 41}, {"not_json": 2}, [b'{"kpi":"x"}'])
    records = encode(snap, "g1", DEFAULT_CATALOG)
    assert len(records) >= 3 and records[-1][0] == f"g1|manifest|{slot_of(7)}".encode()
    other = encode(Snapshot(1, state(), {}, {}, []), "other-group", DEFAULT_CATALOG)
    got = decode(other + records, "g1", DEFAULT_CATALOG)
    assert got is not None and got.seq == 7 and encode_state(got.engine) == encode_state(big)
    assert got.applied == {("email-events", 0): 41} and got.outbox == [b'{"kpi":"x"}']
    # the next snapshot writes the other slot; an unfinished one (no manifest) is ignored
    nxt = encode(Snapshot(8, state(n=8), {}, {}, []), "g1", DEFAULT_CATALOG)
    assert slot_of(8) != slot_of(7)
    assert decode(records + nxt[:-1], "g1", DEFAULT_CATALOG).seq == 7  # type: ignore[union-attr]
    assert decode(records + nxt, "g1", DEFAULT_CATALOG).seq == 8  # type: ignore[union-attr]
    # the one after that reuses seq 7's slot: cut short, its predecessor (8) is in force
    third = encode(Snapshot(9, state(n=9), {}, {}, []), "g1", DEFAULT_CATALOG)
    assert decode(records + nxt + third[:1], "g1", DEFAULT_CATALOG).seq == 8  # type: ignore[union-attr]
    assert decode([], "g1", DEFAULT_CATALOG) is None


def claim(group: str, epoch: int) -> list[tuple[bytes, bytes]]:
    return [(claim_key(group), str(epoch).encode())]


def test_a_former_owners_late_snapshot_neither_overwrites_nor_outranks_the_new_owners() -> None:
    """Owner 1 claims epoch 1 and writes snapshot 5 of it; it is paused past its session.
    Owner 2 restores that snapshot, claims the next epoch and goes on. Owner 1 wakes up and
    writes two more snapshots before it learns it was replaced. The state in force stays
    owner 2's, whatever the order of the writes."""
    e1 = owner_epoch([], "g", 0)
    first = claim("g", e1) + encode(Snapshot(e1 * EPOCH + 5, state(by=1), {}, {}, []), "g",
                                    DEFAULT_CATALOG)
    e2 = owner_epoch(first, "g", e1 * EPOCH + 5)
    assert e2 > e1
    second = [encode(Snapshot(e2 * EPOCH + i, state(by=2, n=i), {}, {}, []), "g",
                     DEFAULT_CATALOG) for i in (1, 2)]
    late = [encode(Snapshot(e1 * EPOCH + s, state(by=1), {}, {}, []), "g", DEFAULT_CATALOG)
            for s in (6, 7)]
    keys_2 = {k for recs in second for k, _ in recs}
    assert not keys_2 & {k for recs in late for k, _ in recs}  # keys of its own epoch
    log = first + claim("g", e2) + second[0] + late[0] + second[1] + late[1]
    got = decode(log, "g", DEFAULT_CATALOG)
    assert got is not None and got.seq == e2 * EPOCH + 2 and mark(got.engine) == {"by": 2, "n": 2}
    # owner 2 deletes what earlier epochs left (tombstones), once its first is durable
    stale = superseded([k for k, _ in log], "g", e2 * EPOCH + 1)
    assert set(stale) == {k for recs in [first[1:], *late] for k, _ in recs}
    after = decode(log + [(k, None) for k in stale], "g", DEFAULT_CATALOG)
    assert after is not None and after.seq == e2 * EPOCH + 2


def test_an_owner_that_never_wrote_still_loses_to_the_next() -> None:
    """Owner 1 claims an epoch and is paused before its first snapshot; owner 2 restores
    nothing but still takes a later epoch, because owner 1 claimed its own first."""
    e1 = owner_epoch([], "g", 0)
    e2 = owner_epoch(claim("g", e1), "g", 0)
    assert e2 > e1
    log = claim("g", e1) + claim("g", e2) + encode(
        Snapshot(e2 * EPOCH + 1, state(by=2), {}, {}, []), "g", DEFAULT_CATALOG) + encode(
        Snapshot(e1 * EPOCH + 1, state(by=1), {}, {}, []), "g", DEFAULT_CATALOG)
    assert mark(decode(log, "g", DEFAULT_CATALOG).engine) == {"by": 2}  # type: ignore[union-attr]
    # and a state restored from an epoch above every claim (claims lost) is outranked too
    assert owner_epoch(claim("g", 2), "g", 9 * EPOCH + 3) == 10


def test_a_damaged_newest_snapshot_gives_way_to_the_one_before() -> None:
    older = encode(Snapshot(3, state(n=3), {}, {}, []), "g", DEFAULT_CATALOG)
    newer = encode(Snapshot(4, state(n=4), {}, {}, []), "g", DEFAULT_CATALOG)
    key, value = newer[0]
    got = decode([*older, (key, flip_last(value)), *newer[1:]], "g", DEFAULT_CATALOG)
    assert got is not None and got.seq == 3


def test_damaged_or_foreign_state_fails_loudly() -> None:
    records = encode(Snapshot(3, state(a=1), {}, {}, []), "g", DEFAULT_CATALOG)
    with pytest.raises(StateError, match="missing"):
        decode(records[-1:], "g", DEFAULT_CATALOG)
    key, value = records[0]
    with pytest.raises(StateError, match="corrupt"):
        decode([(key, flip_last(value)), *records[1:]], "g", DEFAULT_CATALOG)
    import yaml

    from metrics.catalog import build_catalog
    from tests.tools import ROOT

    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["currency"] = "USD"
    with pytest.raises(StateError, match="other windows, grace or currency"):
        decode(records, "g", build_catalog(raw))


JUNK = [
    (b"g|junk", b"x"),  # the record that once stalled a shard for good
    (b"g|7.2|0", b"x"),  # no such slot
    (b"g|1.0|zero", b"x"),  # no chunk index
    (b"g|\xff\xfe|0", b"x"),  # not UTF-8
    (b"g|manifest|1.1", b"not json"),
    (b"g|manifest|1.1", b'{"seq": "3"}'),  # fields missing, a seq that is no number
    (b"g|manifest|1.0", b'{"seq": 9, "slot": "0.1", "chunks": 1, "bytes": 1, "sha256": "",'
                        b' "catalog": ""}'),  # filed under another slot than it names
    (b"g|claim", b"NaN"),
]


def test_malformed_records_are_passed_over_and_reported_the_snapshot_restored() -> None:
    records = encode(Snapshot(3, state(n=3), {("web-events", 1): 5}, {}, []), "g",
                     DEFAULT_CATALOG)
    skipped: list[tuple[bytes, str]] = []
    got = decode(JUNK[:4] + records + JUNK[4:], "g", DEFAULT_CATALOG,
                 on_skip=lambda k, why: skipped.append((k, why)))
    assert got is not None and got.seq == 3 and mark(got.engine) == {"n": 3}
    assert [k for k, _ in skipped] == [k for k, _ in JUNK] and all(w for _, w in skipped)
    # the junk claim is no epoch; junk under an earlier epoch's slot is deleted with it
    assert owner_epoch(JUNK + claim("g", 2), "g", 0) == 3
    assert set(superseded([k for k, _ in JUNK], "g", 5 * EPOCH)) == {
        b"g|1.0|zero", b"g|manifest|1.1", b"g|manifest|1.0"}


def test_an_outbox_written_as_maps_is_read_and_resent_as_the_same_json() -> None:
    """Earlier versions wrote the outbox's closed windows as MessagePack maps; this one
    holds and writes them as the JSON it sends. A state with maps restores to the records
    and keys those versions would have sent; a record that is no closed window's, or no
    JSON, stops the restore with a StateError, not the worker at its first send."""
    rec = {"kpi": "email_open_rate", "window": "1h", "start": "2026-01-01T00:00:00Z",
           "end": "2026-01-01T01:00:00Z", "dims": {"campaign_id": "c1"}, "value": 0.25,
           "numerator": 1, "denominator": 4, "unit": "ratio", "final": True,
           "revision": 0, "emitted_at": "2026-01-01T01:00:05.000Z"}
    old = Snapshot(3, state(), {}, {}, [rec])  # type: ignore[list-item]  # as written before
    got = decode(encode(old, "g1", DEFAULT_CATALOG), "g1", DEFAULT_CATALOG)
    assert got is not None and got.outbox == [orjson.dumps(rec)]
    assert got.resend() == [(window_key(rec).encode(), orjson.dumps(rec))]
    new = decode(encode(Snapshot(4, state(), {}, {}, got.outbox), "g1", DEFAULT_CATALOG),
                 "g1", DEFAULT_CATALOG)
    assert new is not None and new.resend() == got.resend()
    for bad in (b"not json", b'{"kpi": "x"}', b"[1, 2]"):
        snap = decode(encode(Snapshot(5, state(), {}, {}, [bad]), "g1", DEFAULT_CATALOG),
                      "g1", DEFAULT_CATALOG)
        assert snap is not None
        with pytest.raises(StateError, match="outbox record 0"):
            snap.resend()
    unjson = Snapshot(6, state(), {}, {}, [{"kpi": b"\x00"}])  # type: ignore[list-item]
    with pytest.raises(StateError, match="unreadable"):
        decode(encode(unjson, "g1", DEFAULT_CATALOG), "g1", DEFAULT_CATALOG)
