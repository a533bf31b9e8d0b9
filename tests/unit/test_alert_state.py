"""Breaches under way are committed with the shard's state (issue 18): a worker taking over
resolves the breach its predecessor fired, with the same `since`, instead of forgetting it
(which would leave it firing on the compacted `kpi-alerts` forever)."""

from __future__ import annotations

from typing import Any

import orjson

from metrics.alerts import AlertEvaluator, HeldBreach
from tests.helpers import DEFAULT_CATALOG, ms
from tests.unit.test_shard import TOPIC, FakeIO, FakeTable, Msg, new_shard, run

T0 = ms("2026-11-03T09:00:00+00:00")
MIN = 60_000


class Feed:
    """Email traffic for one campaign, spread over two partitions, in offset order."""

    def __init__(self) -> None:
        self.offsets = [0, 0]
        self.n = 0

    def minute(self, at: int, opened: bool) -> list[Msg]:
        """300 sends in the minute starting ``at``; each opened 10 s later if ``opened``."""
        out = []
        for i in range(300):
            t = at + i * 200
            c = f"k{self.n}"
            self.n += 1
            lines = [{"event_id": f"s-{c}", "type": "email.sent", "ts": t,
                      "campaign_id": "drop", "contact_id": c}]
            if opened:
                lines.append({"event_id": f"o-{c}", "type": "email.opened", "ts": t + 10_000,
                              "campaign_id": "drop", "contact_id": c})
            for line in lines:
                p = self.n % 2
                out.append(Msg(TOPIC, p, self.offsets[p], orjson.dumps(line)))
                self.offsets[p] += 1
        return out


def alerts(io: FakeIO) -> list[dict[str, Any]]:
    return [orjson.loads(v) for t, _, v in io.sent if t == "kpi-alerts"]


def test_a_takeover_resolves_the_breach_its_predecessor_fired() -> None:
    feed, table = Feed(), FakeTable()
    io1, io2 = FakeIO(), FakeIO()

    async def go() -> None:
        first = new_shard(io1, table)
        await first.activate([], 0.0)
        for m in range(10):  # sends nobody opens: the open rate collapses
            await first.handle(feed.minute(T0 + m * MIN, opened=False))
            await first.tick()
        await first.snapshot(force=True)
        second = new_shard(io2, table)
        await second.activate(table.records("email"), 0.0)
        for m in range(10, 20):  # opened again
            await second.handle(feed.minute(T0 + m * MIN, opened=True))
            await second.tick()

    run(go())
    fired = [a for a in alerts(io1) if a["alert"] == "EmailOpenRateLow"
             and a["dims"] == {"campaign_id": "drop"}]
    assert [a["state"] for a in fired] == ["firing"]
    after = [a for a in alerts(io2) if a["alert"] == "EmailOpenRateLow"
             and a["dims"] == {"campaign_id": "drop"}]
    assert [a["state"] for a in after] == ["resolved"]
    assert after[0]["since"] == fired[0]["since"]


def test_breaches_of_alerts_the_catalog_dropped_are_not_restored() -> None:
    ev = AlertEvaluator(DEFAULT_CATALOG)
    ev.restore([HeldBreach("EmailOpenRateLow", "campaign_id=a", "firing", T0, "t"),
                HeldBreach("GoneAlert", "", "firing", T0, "t")])
    assert ev.firing() == [("EmailOpenRateLow", "campaign_id=a")]
    assert ev.snapshot() == [HeldBreach("EmailOpenRateLow", "campaign_id=a", "firing", T0,
                                        "t")]
