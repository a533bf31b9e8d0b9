"""Marketing scenarios read the way a group reads them: partitions filled unevenly, one read
far ahead of the others, and the shard handed to another owner in the middle. The finals
must be the catalog's values for the scenario, and equal a straight read by one owner.

- an email blast: every open counts at its send, so the open rate stays at most 100 %
  whichever partition (sends or opens) was read first and whoever counted them;
- a 9-month B2B cycle: the deal won 270 days after its lead keeps the lead's channel, and
  its cycle is 270 days;
- a reopened deal (won, reopened, won again): one win at its latest amount; with a lost
  deal beside it, the win rate is 1/2.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from metrics.records import iso_ms
from streams.shard import Shard
from streams.shard_ports import Outputs
from tests.helpers import DAY, DEFAULT_CATALOG, HOUR, final_values, ms
from tests.unit.test_shard import SETTINGS, FakeIO, FakeTable, History, Msg

T0 = ms("2026-01-05T00:00:00+00:00")


def shard(family: str, io: FakeIO, table: FakeTable) -> Shard:
    out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                  lambda s: None)
    topic = f"{family}-events"
    return Shard(family, DEFAULT_CATALOG.restrict((family,)), {topic}, SETTINGS, io, table,
                 out)


def log(topic: str, partitions: list[list[dict[str, Any]]]) -> list[list[Msg]]:
    """Each partition's messages, at offsets from 0, sent as they happened (the record's
    timestamp is the event's time: what orders the events a family holds before it starts)."""
    return [[Msg(topic, p, i, orjson.dumps({**ev, "ts": iso_ms(ev["ts"])}),
                 timestamp=ev["ts"] / 1000) for i, ev in enumerate(evs)]
            for p, evs in enumerate(partitions)]


def read(msgs: list[list[Msg]], handed_over: list[int], family: str
         ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], Shard, Shard]:
    """The finals of two runs: partition p read up to ``handed_over[p]`` by a first owner,
    which is revoked, then the whole log read again by the next owner from the committed
    offsets; and a straight read by one owner, partition after partition."""
    table = FakeTable()
    io1, io2, io3 = (FakeIO(partitions=len(msgs)) for _ in range(3))
    for io in (io1, io2, io3):
        io.tps = {(f"{family}-events", p) for p in range(len(msgs))}
    first, second, straight = shard(family, io1, table), shard(family, io2, table), shard(
        family, io3, FakeTable())

    async def go() -> None:
        await first.activate([], 0.0)
        for p, upto in enumerate(handed_over):
            for m in msgs[p][:upto]:
                await first.handle([m])
        await first.on_revoked(set(io1.tps))
        await second.activate(table.records(family), 0.0)
        for part in msgs:
            for m in part:
                await second.handle([m])
        await second.snapshot(force=True)
        await straight.activate([], 0.0)
        for part in msgs:
            for m in part:
                await straight.handle([m])
        await straight.snapshot(force=True)

    asyncio.run(go())
    return (final_values(io1.windows() + io2.windows()), final_values(io3.windows()),
            second, straight)


def record(finals: dict[str, dict[str, Any]], kpi: str, window: str, end_ms: int,
           **dims: str) -> dict[str, Any]:
    end = iso_ms(end_ms).replace(".000", "")
    found = [r for r in finals.values() if r["kpi"] == kpi and r["window"] == window
             and r["end"].replace(".000", "") == end and r["dims"] == dims]
    assert len(found) == 1, f"no single {kpi} {window} {end} {dims}"
    return found[0]


def wins(finals: dict[str, dict[str, Any]], window: str, end_ms: int, channel: str) -> int:
    """Won deals in a window's final deal_win_rate (0 when it published none)."""
    end = iso_ms(end_ms).replace(".000", "")
    return sum(r["numerator"] for r in finals.values()
               if r["kpi"] == "deal_win_rate" and r["window"] == window
               and r["end"].replace(".000", "") == end and r["dims"] == {"channel": channel})


def test_a_blast_read_opens_first_and_handed_over_keeps_open_rates_at_their_sends() -> None:
    sends = [{"event_id": f"s{i}", "type": "email.sent", "ts": T0 + i * 30,
              "campaign_id": "blast", "contact_id": f"k{i}"} for i in range(2000)]
    # 1,200 sends opened, 300 of them twice; the opens come 2 to 50 minutes after the blast
    opens = [{"event_id": f"o{i}", "type": "email.opened", "ts": T0 + 120_000 + i * 1_000,
              "campaign_id": "blast", "contact_id": f"k{i % 1200}"} for i in range(1500)]
    tail = [{"event_id": f"t{p}", "type": "email.sent", "ts": T0 + 3 * HOUR,
             "campaign_id": "tail", "contact_id": f"t{p}"} for p in range(4)]
    # sends on partitions 0 and 1, opens on 2 and 3 (one duplicate delivery of each open
    # on partition 3): the first owner reads the opens first, the sends barely
    partitions = [sends[:1000], sends[1000:], opens[:750], opens[750:] + opens[700:800]]
    msgs = log("email-events", [[*evs, tail[p]] for p, evs in enumerate(partitions)])
    got, want, second, straight = read(msgs, [10, 0, len(msgs[2]), 400], "email")
    assert got == want
    assert second.engine.events_total == straight.engine.events_total
    hour = record(got, "email_open_rate", "1h", T0 + HOUR)
    assert (hour["numerator"], hour["denominator"], hour["value"]) == (1200, 2000, 0.6)
    blast = record(got, "email_open_rate", "1h", T0 + HOUR, campaign_id="blast")
    assert blast["value"] == 0.6
    rates = [r for r in got.values() if r["kpi"] == "email_open_rate"]
    assert len(rates) > 20 and all(r["numerator"] <= r["denominator"] for r in rates)


def test_a_long_cycle_and_a_reopened_deal_across_a_handover() -> None:
    def at(days: float) -> int:
        return T0 + int(days * DAY)

    def lead(eid: str, lead_id: str, days: float, channel: str) -> dict[str, Any]:
        return {"event_id": eid, "type": "lead.created", "ts": at(days), "lead_id": lead_id,
                "channel": channel}

    def stage(eid: str, deal: str, name: str, days: float, lead_id: str, **kw: Any
              ) -> dict[str, Any]:
        return {"event_id": eid, "type": "deal.stage_changed", "ts": at(days), "deal_id": deal,
                "stage": name, "lead_id": lead_id, **kw}

    partitions = [
        # D2: won, reopened, won again at a new amount
        [lead("l2", "L2", 0.5, "paid_search"), stage("d21", "D2", "won", 100.5, "L2",
                                                     amount=1000),
         stage("d22", "D2", "proposal", 101.5, "L2"),
         stage("d23", "D2", "won", 103.5, "L2", amount=3000)],
        # D3: lost, on a partition read to its end before the others moved
        [lead("l3", "L3", 1.5, "paid_search"), stage("d31", "D3", "opportunity", 60.5, "L3"),
         stage("d32", "D3", "lost", 120.5, "L3")],
        # D1: the 9-month cycle, its lead on another partition
        [stage("d11", "D1", "sql", 30.5, "L1"), stage("d12", "D1", "proposal", 200.5, "L1"),
         stage("d13", "D1", "won", 270.5, "L1", amount=120000)],
        [lead("l1", "L1", 0.5, "events")],
    ]
    msgs = log("crm-events", [[*evs, lead(f"z{p}", f"Z{p}", 300, "web")]
                              for p, evs in enumerate(partitions)])
    # handed over after D2's first win, with partition 1 read to its end and D1 unread
    got, want, second, straight = read(msgs, [2, len(msgs[1]), 1, 1], "crm")
    assert got == want
    assert second.engine.events_total == straight.engine.events_total
    day = "24h"
    long = record(got, "deal_win_rate", day, at(271), channel="events")
    assert (long["numerator"], long["denominator"]) == (1, 1)
    assert record(got, "sales_cycle_days", day, at(271), channel="events")["value"] == 270
    assert record(got, "avg_deal_size", day, at(271), channel="events")["value"] == 120000
    # D2's first win was taken back when it reopened, and counted at its second
    assert not wins(got, day, at(101), "paid_search")
    again = record(got, "deal_win_rate", day, at(104), channel="paid_search")
    assert (again["numerator"], again["denominator"]) == (1, 1)
    assert record(got, "avg_deal_size", day, at(104), channel="paid_search")["value"] == 3000
    month = record(got, "deal_win_rate", "30d", at(121), channel="paid_search")
    assert (month["numerator"], month["denominator"], month["value"]) == (1, 2, 0.5)
