"""The shard's state on disk and in the changelog: event ids as per-commit segments, the local
store reused when it belongs to the restored history and rebuilt from the changelog when
not (a former owner's late commits never leak in), the previous format migrated, catalog
edits that keep the state, and hostile records that fail to decode without running code.
The I/O is the recording fake of test_shard; the store is a real RocksDB."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import yaml

from metrics.catalog import Catalog, build_catalog
from metrics.errors import StateError
from streams.shard import Shard
from streams.shard_ports import Outputs
from streams.state import EPOCH, STATE_FORMAT, decode_segment, key_epoch, part_key, segment_of
from tests.helpers import final_values, ms, replay
from tests.tools import ROOT
from tests.unit.test_shard import (
    EMAIL,
    GEN,
    SETTINGS,
    TOPIC,
    FakeIO,
    FakeTable,
    History,
    Msg,
    batches,
    first_run_counts,
    oracle,
    traffic,
)

FIXTURE = ROOT / "tests" / "fixtures" / "state_format3.msgpack"


class RecordingTable(FakeTable):
    """The fake state table, keeping every write in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[list[tuple[bytes, bytes]]] = []

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        self.writes.append(list(records))
        await super().write(records)


def shard(io: FakeIO, table: FakeTable, state_dir: Path, catalog: Catalog = EMAIL) -> Shard:
    out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                  lambda s: None)
    return Shard("email", catalog, {TOPIC}, SETTINGS, io, table, out, state_dir)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def committed(table: FakeTable, state_dir: Path, todo: list[list[Msg]] | None = None,
                    io: FakeIO | None = None) -> Shard:
    """A shard that took over from ``table``, counted ``todo`` (a few batches by default)
    and committed them."""
    sh = shard(io or FakeIO(), table, state_dir)
    await sh.activate(table.records("email"), 0.0)
    for b in batches(traffic())[:3] if todo is None else todo:
        await sh.handle(b)
    await sh.snapshot(force=True)
    return sh


def segment_ids(records: list[tuple[bytes, bytes]]) -> int:
    return sum(len(decode_segment(k, v)) for k, v in records if b"|dd|" in k)


def test_a_commit_writes_only_the_ids_remembered_since_the_last_one(tmp_path: Path) -> None:
    parts = batches(traffic())
    io, table = FakeIO(), RecordingTable()
    sh = shard(io, table, tmp_path)

    async def go() -> None:
        await sh.activate([], 0.0)
        for b in parts[:20]:
            await sh.handle(b)
        await sh.snapshot(force=True)
        first = [r for w in table.writes for r in w]
        table.writes.clear()
        held = len(sh.engine.dedup["email"])
        for b in parts[20:21]:
            await sh.handle(b)
        await sh.snapshot(force=True)
        second = [r for w in table.writes for r in w]
        new = len(sh.engine.dedup["email"]) - held
        assert 0 < new <= 200
        assert segment_ids(first) == held > 3000
        assert segment_ids(second) == new  # the commit's ids, not the store's
        seg_bytes = sum(len(v) for k, v in second if b"|dd|" in k)
        assert seg_bytes < sum(len(v) for k, v in first if b"|dd|" in k) / 10
        # and of the engine's state, the parts that changed (test_parts.py measures it)
        written = [k for k, _ in second if b"|pt|" in k]
        assert 0 < len(written) < len(sh.durable.parts)  # not every part again

    run(go())


def test_a_restart_reuses_the_local_store_and_applies_only_later_commits(
        tmp_path: Path) -> None:
    lines = traffic()
    parts = batches(lines)
    table = FakeTable()
    mine, other = tmp_path / "mine", tmp_path / "other"
    io1, io2, io3 = FakeIO(), FakeIO(), FakeIO()

    async def go() -> Shard:
        first = await committed(table, mine, parts[:15], io1)
        first.dedup.close()  # the process dies: its RocksDB lock goes with it
        second = shard(io2, table, other)  # another worker owns the shard meanwhile
        await second.activate(table.records("email"), 0.0)
        assert second.durable.ids_loaded["from"] == "changelog"
        for b in parts[15:30]:
            await second.handle(b)
        await second.snapshot(force=True)
        await second.deactivate()
        third = shard(io3, table, mine)  # back on the first machine: its store is behind
        await third.activate(table.records("email"), 0.0)
        loaded = third.durable.ids_loaded
        assert loaded["from"] == "local store"
        # only the second owner's commit came from the changelog
        assert loaded["ids"] == len(second.engine.dedup["email"]) - len(
            first.engine.dedup["email"]) > 0
        for b in parts:
            await third.handle(b)
        await third.snapshot(force=True)
        return third

    third = run(go())
    got = final_values(io1.windows() + io2.windows() + io3.windows())
    want = oracle(lines)
    assert got and all(got[k] == want[k] for k in got)
    assert third.engine.events_total == first_run_counts(lines)
    assert third.engine.duplicates_total > 0


def test_a_local_store_ahead_of_the_history_is_rebuilt(tmp_path: Path) -> None:
    """A former owner, paused past its session, commits once more after the new owner took
    over: its segments and its local store's marker are outside the new owner's history.
    Taking the shard back on that machine must not trust the store."""
    lines = traffic()
    parts = batches(lines)
    table = FakeTable()
    mine = tmp_path / "mine"
    io1, io2, io3 = FakeIO(), FakeIO(), FakeIO()

    async def go() -> Shard:
        zombie = await committed(table, mine, parts[:10], io1)
        owner = shard(io2, table, tmp_path / "owner")
        await owner.activate(table.records("email"), 0.0)
        for b in parts[10:30]:  # the zombie counts on, past what the owner will have
            await zombie.handle(b)  # counted, and commits: its store's marker moves on
        await zombie.snapshot(force=True)
        zombie.dedup.close()
        for b in parts[10:25]:
            await owner.handle(b)
        await owner.snapshot(force=True)
        await owner.deactivate()
        back = shard(io3, table, mine)
        await back.activate(table.records("email"), 0.0)
        assert back.durable.ids_loaded["from"] == "changelog"
        for b in parts:
            await back.handle(b)
        await back.snapshot(force=True)
        return back

    back = run(go())
    got = final_values(io2.windows() + io3.windows())
    want = oracle(lines)
    assert got and all(got[k] == want[k] for k in got)
    assert back.engine.events_total == first_run_counts(lines)


FIXTURE_CATALOG = build_catalog(yaml.safe_load(
    (ROOT / "tests" / "fixtures" / "state_format3_catalog.yaml").read_text())).restrict(("email",))


def _continued(tmp_path: Path, path: Path, catalog: Catalog, ids_from: str,
               restored: Callable[[Shard], None] = lambda sh: None
               ) -> tuple[Shard, FakeIO, FakeTable, dict[str, Any]]:
    """A fixture (a shard's state table as an earlier format wrote it) restored by a shard
    with ``catalog`` (then checked by ``restored``), which then reads the whole traffic
    (its first half again: skipped)."""
    fixture = msgspec.msgpack.decode(path.read_bytes())
    io, table = FakeIO(), FakeTable()
    table.data.update((bytes(k), bytes(v)) for k, v in fixture["records"])
    sh = shard(io, table, tmp_path, catalog)

    async def go() -> None:
        await sh.activate(table.records("email"), 0.0)
        assert sh.durable.ids_loaded["from"] == ids_from
        assert sum(sh.applied.values()) + len(sh.applied) == fixture["messages"]
        restored(sh)
        for b in batches(traffic()):
            await sh.handle(b)
        await sh.snapshot(force=True)

    run(go())
    assert sh.replayed_skipped == fixture["messages"]
    assert sh.engine.events_total == first_run_counts(traffic())
    return sh, io, table, fixture


def _migrate(tmp_path: Path, catalog: Catalog) -> tuple[Shard, FakeIO, dict[str, Any]]:
    """The format 3 fixture restored by a shard with ``catalog``, which then reads the whole
    traffic."""
    assert not any(b"|dd|" in bytes(k) for k, _ in
                   msgspec.msgpack.decode(FIXTURE.read_bytes())["records"])
    sh, io, table, fixture = _continued(tmp_path, FIXTURE, catalog, "format 3 snapshot")
    # once migrated, the table holds the new format only: segments, no format 3 manifest
    keys = [k for k, _ in table.records("email")]
    assert any(b"|dd|" in k for k in keys)
    assert all(orjson.loads(v).get("format") == STATE_FORMAT for k, v in table.records("email")
               if b"|manifest|" in k)
    return sh, io, fixture


def test_a_format_3_state_is_migrated(tmp_path: Path) -> None:
    """The fixture is a shard's state table as the previous format wrote it (every event id
    inside the pickle-free snapshot), after the first half of the traffic, with the catalog
    of that release (tests/fixtures/state_format3_catalog.yaml): continued with that
    catalog, every window equals replay's."""
    _, io, _ = _migrate(tmp_path, FIXTURE_CATALOG)
    want = final_values(replay(traffic(), FIXTURE_CATALOG, now_ms=GEN.end_ms + 60_000))
    got = final_values(io.windows())
    assert got and all(got[k] == want[k] for k in got)


def test_a_format_3_state_continues_under_the_current_catalog(tmp_path: Path) -> None:
    """Upgraded to the current catalog, the migrated state keeps what both define (the sends
    counted before the restart); the send cohorts, new since, count from the restart on:
    their numerators can only fall short of a replay of the whole history."""
    _, io, fixture = _migrate(tmp_path, EMAIL)
    want, got = oracle(traffic()), final_values(io.windows())
    rates = [k for k, r in got.items() if r["kpi"] == "email_open_rate"]
    assert rates and all(got[k]["denominator"] == want[k]["denominator"] for k in rates)
    assert all(got[k]["numerator"] <= want[k]["numerator"] for k in rates)
    assert any(got[k]["numerator"] < want[k]["numerator"] for k in rates)
    # a window of sends all made after the restart has all their responses too
    stamps = []
    for raw in traffic()[:fixture["messages"]]:
        try:
            ts = orjson.loads(raw)["ts"]
            stamps.append(ms(ts.replace("Z", "+00:00")) if isinstance(ts, str) else int(ts))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            pass  # the traffic's invalid lines
    restart = max(t for t in stamps if t <= GEN.end_ms)  # not the invalid far-future ones
    after = [k for k in rates if ms(got[k]["start"].replace("Z", "+00:00")) > restart]
    assert after and all(got[k] == want[k] for k in after)


FIXTURE_4 = ROOT / "tests" / "fixtures" / "state_format4.msgpack"


def test_a_format_4_state_is_read_and_written_again_as_format_5(tmp_path: Path) -> None:
    """The fixture is the email shard's state table as format 4 wrote it (a part map of one
    name per part), after the first half of the traffic and two commits (written by main
    be77866). Restored, it goes on to every window replay gives; the next commit writes
    format 5, and the table keeps the parts its map names, and only those."""
    records = msgspec.msgpack.decode(FIXTURE_4.read_bytes())["records"]
    assert {orjson.loads(bytes(v))["format"] for k, v in records
            if b"|manifest|" in bytes(k)} == {4}
    stored = len([k for k, _ in records if b"|pt|" in bytes(k)])

    def every_part(sh: Shard) -> None:
        assert len(sh.durable.parts) == stored > 20  # every part, none lost

    sh, io, table, _ = _continued(tmp_path, FIXTURE_4, EMAIL, "changelog", every_part)
    want, got = oracle(traffic()), final_values(io.windows())
    assert len(got) > 10 and all(got[k] == want[k] for k in got)
    now = dict(table.records("email"))
    assert {orjson.loads(v)["format"] for k, v in now.items() if b"|manifest|" in k} \
        == {STATE_FORMAT}
    named = {part_key("email", seq, n) for n, (seq, _) in sh.durable.parts.items()}
    assert {k for k in now if b"|pt|" in k} == named


def _attack(tmp_path: Path) -> tuple[bytes, Path]:
    """A pickle that creates a file when loaded."""
    target = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(target), "w"))

    return pickle.dumps(Exploit()), target




def test_a_crafted_pickle_in_a_segment_fails_by_name_and_runs_nothing(tmp_path: Path) -> None:
    payload, target = _attack(tmp_path)
    table = FakeTable()

    async def go() -> None:
        await committed(table, tmp_path / "a")
        key = next(k for k in table.data if b"|dd|" in k)
        for value in (payload, zlib.compress(payload)):
            table.data[key] = value
            other = shard(FakeIO(), table, tmp_path / "b")
            with pytest.raises(StateError, match=key.decode().replace("|", r"\|")):
                await other.activate(table.records("email"), 0.0)

    run(go())
    assert not target.exists()


def test_a_crafted_pickle_snapshot_with_a_valid_checksum_runs_nothing(tmp_path: Path) -> None:
    payload, target = _attack(tmp_path)
    table = FakeTable()

    async def go() -> None:
        await committed(table, tmp_path / "a")
        manifest_key = next(k for k in table.data if b"|manifest|" in k)
        manifest = orjson.loads(table.data[manifest_key])
        slot = manifest["slot"]
        for blob in (payload, zlib.compress(payload)):
            # the attacker rewrites the chunk and a manifest that vouches for it
            seq = manifest["seq"].to_bytes(8, "big")
            table.data[f"email|{slot}|0".encode()] = seq + blob
            table.data[manifest_key] = orjson.dumps(
                {**manifest, "chunks": 1, "bytes": len(blob),
                 "sha256": hashlib.sha256(blob).hexdigest()})
            other = shard(FakeIO(), table, tmp_path / "b")
            with pytest.raises(StateError, match="unreadable"):
                await other.activate(table.records("email"), 0.0)

    run(go())
    assert not target.exists()


def edited(edit: Any) -> Catalog:
    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    edit(raw)
    return build_catalog(raw).restrict(("email",))


def _continue_with(catalog: Catalog, tmp_path: Path) -> tuple[Shard, FakeIO]:
    """Half the traffic counted with the shipped catalog, the rest by a worker restarted
    with ``catalog``."""
    lines = traffic()
    parts = batches(lines)
    table = FakeTable()
    io1, io2 = FakeIO(), FakeIO()

    async def go() -> Shard:
        first = await committed(table, tmp_path / "1", parts[:len(parts) // 2], io1)
        first.dedup.close()
        second = shard(io2, table, tmp_path / "2", catalog)
        await second.activate(table.records("email"), 0.0)
        for b in parts:
            await second.handle(b)
        await second.snapshot(force=True)
        return second

    return run(go()), io2


def test_thresholds_alerts_and_titles_edited_keep_the_state(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        kpi = raw["kpis"]["email_open_rate"]
        kpi["alert"]["below"] = 0.5
        kpi["alert"]["severity"] = "critical"
        kpi["description"] = "edited"

    catalog = edited(edit)
    second, io = _continue_with(catalog, tmp_path)
    assert second.replayed_skipped > 0  # it continued from the state, it did not start over
    want = oracle(traffic())
    got = final_values(io.windows())
    assert got and all(got[k] == want[k] for k in got)


def test_a_kpi_removed_keeps_every_other_kpis_state(tmp_path: Path) -> None:
    removed = "email_hard_bounce_rate"

    def edit(raw: dict[str, Any]) -> None:
        del raw["kpis"][removed]

    catalog = edited(edit)
    second, io = _continue_with(catalog, tmp_path)
    assert second.replayed_skipped > 0
    want = oracle(traffic())
    got = final_values(io.windows())
    assert got and not any(r["kpi"] == removed for r in got.values())
    assert all(got[k] == want[k] for k in got)


def test_a_kpi_added_keeps_every_other_kpis_state(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["kpis"]["email_sent_per_open"] = {
            "description": "Emails sent per unique open.", "numerator": "email_sent",
            "denominator": "email_opened_sends", "unit": "ratio", "dims": ["campaign_id"]}

    catalog = edited(edit)
    assert "email_sent_per_open" in catalog.kpis
    second, io = _continue_with(catalog, tmp_path)
    assert second.replayed_skipped > 0
    want = oracle(traffic())
    got = final_values(io.windows())
    assert any(r["kpi"] == "email_sent_per_open" for r in got.values())
    kept = {k: v for k, v in got.items() if v["kpi"] != "email_sent_per_open"}
    assert kept and all(kept[k] == want[k] for k in kept)


def test_a_redefined_aggregate_drops_its_values_only(tmp_path: Path) -> None:
    def edit(raw: dict[str, Any]) -> None:
        raw["aggregates"]["email_opens"]["where"] = {"segment": ["cfo"]}  # another definition

    catalog = edited(edit)
    lines = traffic()
    parts = batches(lines)
    table = FakeTable()

    async def go() -> Shard:
        first = await committed(table, tmp_path / "1", parts[:len(parts) // 2])
        first.dedup.close()
        second = shard(FakeIO(), table, tmp_path / "2", catalog)
        await second.activate(table.records("email"), 0.0)
        return second

    second = run(go())
    fw = second.engine.windows["email"]
    keys = {k[0] for pane in fw.panes.values() for k in pane}
    assert "email_opens" not in keys
    assert {"email_sent", "email_opened_sends"} <= keys  # the others kept their values


def test_a_million_ids_held_survive_a_crash_without_loss_or_double_count(
        tmp_path: Path) -> None:
    """1 M event ids held; the worker dies, another rebuilds them from the changelog; the
    whole log is delivered again with old ids resent and new ones: each counts once."""
    n = 1_000_000
    t0 = 1_767_225_600_000  # 2026-01-01
    step = 400  # ms: 1 M events over ~4.6 days, all within the dedup horizon

    def line(i: int) -> bytes:
        return (b'{"event_id":"m%d","type":"email.sent","ts":%d,"campaign_id":"c%d",'
                b'"contact_id":"k%d"}' % (i, t0 + i * step, i % 7, i))

    msgs = [Msg(TOPIC, 0, i, line(i)) for i in range(n)]
    io1 = FakeIO(partitions=1)
    table = FakeTable()

    async def go() -> Shard:
        first = shard(io1, table, tmp_path / "1")
        await first.activate([], 0.0)
        for i in range(0, n, 20_000):
            await first.handle(msgs[i:i + 20_000])
        await first.snapshot(force=True)
        assert len(first.engine.dedup["email"]) == n
        first.dedup.close()  # dies
        second = shard(FakeIO(partitions=1), table, tmp_path / "2")
        await second.activate(table.records("email"), 0.0)
        loaded = second.durable.ids_loaded
        assert loaded["from"] == "changelog" and loaded["ids"] == n
        # redelivery of the log (already applied), then 1,000 resent ids and 1,000 new ones
        for i in range(0, n, 50_000):
            await second.handle(msgs[i:i + 50_000])
        extra = [Msg(TOPIC, 0, n + j, line(j * 997) if j < 1000 else line(n + j))
                 for j in range(2000)]
        await second.handle(extra)
        return second

    second = run(go())
    assert second.replayed_skipped == n
    assert second.engine.duplicates_total == 1000
    assert second.engine.events_total["email.sent"] == n + 1000
    assert len(second.engine.dedup["email"]) == n + 1000


def test_segment_keys_name_their_commit_and_hour() -> None:
    assert segment_of(b"email|dd|1048577|493000", "email") == (1048577, 493000)
    for bad in (b"email|dd|x|1", b"email|dd|1", b"email|dd|01|2", b"other|dd|1|2"):
        with pytest.raises(ValueError):
            segment_of(bad, "email")


def test_the_fixture_is_the_previous_format() -> None:
    fixture = msgspec.msgpack.decode(FIXTURE.read_bytes())
    manifests = [orjson.loads(bytes(v)) for k, v in fixture["records"]
                 if b"|manifest|" in bytes(k)]
    assert manifests and all("format" not in m for m in manifests)
    assert os.path.getsize(FIXTURE) < 200_000


def test_a_crafted_pickle_as_a_part_fails_by_name_and_runs_nothing(tmp_path: Path) -> None:
    payload, target = _attack(tmp_path)
    engine = shard(FakeIO(), FakeTable(), tmp_path / "a").engine
    for name in ("w|email|p|0", "p|email|5m|0", "t|send_cohorts|cohorts|5",
                 "t|send_cohorts|cohorts|d|3", "t|send_cohorts|cohorts|d|x"):
        with pytest.raises(StateError, match=name.replace("|", r"\|")):
            engine.load_parts([(name, payload)])
    table = FakeTable()

    async def go() -> None:
        await committed(table, tmp_path / "b")
        key = next(k for k in table.data if b"|pt|" in k)
        table.data[key] = zlib.compress(payload)  # its checksum in the snapshot differs
        other = shard(FakeIO(), table, tmp_path / "c")
        with pytest.raises(StateError, match="corrupt"):
            await other.activate(table.records("email"), 0.0)

    run(go())
    assert not target.exists()


def test_events_held_across_a_takeover_keep_their_source_and_commit_again(
        tmp_path: Path) -> None:
    """A partition that has not spoken holds its family's events back; they are in the
    state, with where they came from, and the next owner commits them again."""
    lines = traffic()[:300]
    msgs = [Msg(TOPIC, 0, i, raw) for i, raw in enumerate(lines)]  # partition 1 silent
    table = FakeTable()

    async def go() -> Shard:
        first = await committed(table, tmp_path / "1", [msgs])
        assert first.engine.held_total > 0
        first.dedup.close()
        second = shard(FakeIO(), table, tmp_path / "2")
        await second.activate(table.records("email"), 0.0)
        assert second.engine.held_total == first.engine.held_total
        await second.handle([Msg(TOPIC, 0, 300, traffic()[300])])
        assert await second.snapshot(force=True)  # the held events' refs encoded again
        return second

    second = run(go())
    refs = [ref for _, ref in second.engine.held("email")]
    assert refs and all(ref.topic == TOPIC and ref.partition == 0 for ref in refs)


def test_the_epochs_held_are_known_as_written_not_read_from_the_table(tmp_path: Path) -> None:
    """/health's ``state_epochs`` (read every 0.2 s by some monitors) comes from what the
    shard wrote and restored, and equals what the table holds, through a takeover."""
    table = FakeTable()

    def held() -> list[int]:
        return sorted({e for k, _ in table.records("email")
                       if (e := key_epoch(k, "email")) is not None})

    async def go() -> None:
        first = await committed(table, tmp_path / "a")
        epoch = first.snapshot_seq // EPOCH
        assert first.health()["state_epochs"] == [epoch] == held()
        first.dedup.close()
        second = shard(FakeIO(), table, tmp_path / "b")
        await second.activate(table.records("email"), 0.0)
        assert second.health()["state_epochs"] == [epoch] == held()  # none of its own yet
        for b in batches(traffic())[3:6]:
            await second.handle(b)
        await second.snapshot(force=True)
        assert second.health()["state_epochs"] == [epoch + 1] == held()

    run(go())
