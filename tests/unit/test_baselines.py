"""Seasonal baselines and anomaly alerts (issue 18 item 3): quiet on the generator's normal
traffic, firing when leads stop, resolved when they come back, kept across a restore."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
import pytest
import yaml

from kpi_engine.generator import Generator, GeneratorConfig
from kpi_engine.replay import replay_lines
from metrics.baselines import Baselines, BaselineState, slot_of
from metrics.catalog import build_catalog
from metrics.errors import CatalogError
from tests.helpers import DEFAULT_CATALOG, ms
from tests.tools import ROOT

DAY = 86_400_000
CFG = GeneratorConfig(rate=1, duration_s=60, seed=11, history_days=90)


@cache
def history() -> list[bytes]:
    return [raw for _, (_, raw) in Generator(CFG).messages()]


def closed(lines: list[bytes]) -> list[list[dict[str, Any]]]:
    """The batches of closed-window records replay publishes, in order."""
    end = Generator(CFG).end_ms
    # the windows past the input's end are flushed partial: none of them is a real day
    return [[r for r in item if ms(r["end"].replace("Z", "+00:00")) <= end]
            for kind, item in replay_lines(lines, DEFAULT_CATALOG, now_ms=end + 60_000)
            if kind == "records"]


def anomalies(batches: list[list[dict[str, Any]]], base: Baselines | None = None
              ) -> tuple[list[dict[str, Any]], Baselines]:
    base = base or Baselines(DEFAULT_CATALOG)
    out: list[dict[str, Any]] = []
    for batch in batches:
        if batch:
            out += base.observe(batch, batch[0]["emitted_at"])
    return out, base


def test_slots_are_hours_of_the_week() -> None:
    monday = ms("2026-11-02T00:00:00+00:00")  # a Monday
    hour = 3_600_000
    first = slot_of(monday + hour)  # the window ending at 01:00 on Monday
    assert slot_of(monday + hour + 7 * DAY) == first
    assert slot_of(monday + 2 * hour) == slot_of(monday + 90 * 60_000) == (first + 1) % 168
    assert len({slot_of(monday + h * hour) for h in range(1, 24 * 7 + 1)}) == 168


def test_leads_are_quiet_for_months_of_normal_traffic() -> None:
    found, base = anomalies(closed(history()))
    assert found == []
    # not quiet by never judging: every hour of the week of the total has learnt for weeks
    slots = [s for (k, d, _), s in base.slots.items() if k == "leads" and d == ""]
    assert len(slots) == 168 and all(s.n >= 8 for s in slots)


def test_leads_stopping_fire_an_anomaly_that_resolves_when_they_return() -> None:
    lines = history()
    stop = Generator(CFG).end_ms - 30 * DAY  # two days without a lead, a month before the end
    kept = [raw for raw in lines
            if not (b'"lead.created"' in raw and stop <= _ts(raw) < stop + 2 * DAY)]
    found, _ = anomalies(closed(kept))
    leads = [e for e in found if e["alert"] == "LeadsAnomaly"]
    assert [e["state"] for e in leads] == ["firing", "resolved"], leads
    fired, resolved = leads
    assert fired["kind"] == "anomaly" and fired["direction"] == "below"
    assert fired["value"] < fired["band_lower"] == fired["threshold"] < fired["baseline"]
    assert fired["window"] == "24h" and fired["dims"] == {}
    assert stop < ms(fired["since"].replace("Z", "+00:00")) < stop + DAY
    assert resolved["since"] == fired["since"]


def test_a_restored_baseline_judges_as_if_it_never_stopped() -> None:
    batches = closed(history())
    half = len(batches) // 2
    _, first = anomalies(batches[:half])
    state = first.snapshot()
    again = Baselines(DEFAULT_CATALOG)
    again.restore(orjson_roundtrip(state))
    _, again = anomalies(batches[half:], again)
    _, whole = anomalies(batches)
    assert again.slots == whole.slots and again.slots


def orjson_roundtrip(state: BaselineState) -> BaselineState:
    import msgspec

    return msgspec.msgpack.decode(msgspec.msgpack.encode(state), type=BaselineState)


def test_anomaly_settings_are_checked() -> None:
    raw = yaml.safe_load((ROOT / "metrics" / "catalog.yaml").read_text())
    raw["kpis"]["leads"]["anomaly"] = {"window": "5m", "band": -1, "colour": "red"}
    with pytest.raises(CatalogError) as err:
        build_catalog(raw)
    text = str(err.value)
    assert "kpis.leads.anomaly" in text and "'5m'" in text and "band" in text
    assert "colour" in text


def _ts(raw: bytes) -> int:
    value = orjson.loads(raw).get("ts")
    if isinstance(value, int):
        return value
    try:
        return ms(str(value).replace("Z", "+00:00"))
    except ValueError:
        return 0


def test_a_worker_taking_over_keeps_the_baselines_and_reports_on_kpi_alerts() -> None:
    """Through the shard: anomalies go out on `kpi-alerts`, and the baselines are committed:
    the worker taking over 13 days before the leads stop (far less than the 4 weeks a slot
    needs) still knows the usual weekdays and fires."""
    from dataclasses import replace

    from streams.shard import Shard
    from streams.shard_ports import Outputs
    from tests.unit.test_shard import SETTINGS, FakeIO, FakeTable, History, Msg, run

    cfg = replace(CFG, history_days=60)
    gen = Generator(cfg)
    stop = gen.end_ms - 10 * DAY
    topics = ("crm-events", "spend-events")
    msgs: list[Msg] = []
    offsets = dict.fromkeys(topics, 0)
    handover = 0
    for ts, (topic, raw) in gen.messages():
        if topic not in topics or (b'"lead.created"' in raw and stop <= ts < stop + 2 * DAY):
            continue
        msgs.append(Msg(topic, 0, offsets[topic], raw))
        offsets[topic] += 1
        if ts < stop - 13 * DAY:
            handover = len(msgs)
    catalog = DEFAULT_CATALOG.restrict(("crm", "spend"))
    table = FakeTable()

    def shard(io: FakeIO) -> Shard:
        io.tps = {(t, 0) for t in topics}
        out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                      lambda s: None)
        return Shard("crm+spend", catalog, set(topics), SETTINGS, io, table, out)

    io1, io2 = FakeIO(), FakeIO()

    async def go() -> None:
        first = shard(io1)
        await first.activate([], 0.0)
        for i in range(0, handover, 500):
            await first.handle(msgs[i:min(i + 500, handover)])
        await first.snapshot(force=True)
        second = shard(io2)
        await second.activate(table.records("crm+spend"), 0.0)
        for i in range(0, len(msgs), 500):
            await second.handle(msgs[i:i + 500])

    run(go())
    sent = [orjson.loads(v) for t, _, v in io1.sent + io2.sent if t == "kpi-alerts"]
    assert [(e["alert"], e["state"]) for e in sent] == [("LeadsAnomaly", "firing"),
                                                        ("LeadsAnomaly", "resolved")]
    assert all(any(t == "kpi-alerts" for t, _, _ in io.sent) is (io is io2)
               for io in (io1, io2))
