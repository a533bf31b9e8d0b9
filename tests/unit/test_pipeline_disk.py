"""The pipeline's leads, deals and accounts, and the accounts' deals, on disk (a worker's,
``spill``) give the facts they give in memory, event by event, with a cache far smaller
than the deals (every read a miss now and then): deals reopened, won again at a new
amount, moved to another account, their lead arriving before or after them, expiry; and the
accounts' purchases."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import orjson

from metrics.constants import DAY_MS, HOUR_MS
from metrics.events import Event, parse_event
from metrics.trackers.account_purchases import AccountPurchases
from metrics.trackers.pipeline import Pipeline
from streams.table_disk import DiskKeyed, DiskTables

T0 = 1_767_225_600_000  # 2026-01-01
STAGES = ["sql", "opportunity", "proposal", "won", "lost"]


def crm_events(seed: int, n: int) -> list[Event]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * 2 * HOUR_MS + rnd.randrange(-3 * DAY_MS, 0)  # out of order
        lead = f"L{rnd.randrange(150)}"
        if rnd.random() < 0.2:
            ev: dict[str, Any] = {"type": "lead.created", "lead_id": lead,
                                  "channel": rnd.choice(["web", "events", "paid_search"]),
                                  "campaign_id": f"c{rnd.randrange(4)}"}
        else:
            ev = {"type": "deal.stage_changed", "deal_id": f"D{rnd.randrange(120)}",
                  "stage": rnd.choice(STAGES), "lead_id": lead,
                  "account_id": f"A{rnd.randrange(40)}", "amount": rnd.randrange(1, 90) * 100,
                  "channel": "web"}
        raw = orjson.dumps({"event_id": f"e{i}", "ts": ts, **ev})
        parsed = parse_event(raw, now_ms=T0 + 400 * DAY_MS)
        assert isinstance(parsed, Event), parsed
        out.append(parsed)
    return out


def test_the_pipeline_on_disk_gives_the_facts_it_gives_in_memory(tmp_path: Path) -> None:
    tables = DiskTables(tmp_path / "tables", cache_keys=8)
    mem, disk = Pipeline(30 * DAY_MS), Pipeline(30 * DAY_MS)
    disk.spill(tables.table)
    assert all(isinstance(t, DiskKeyed) for t in disk.tables().values())
    facts = 0
    for i, ev in enumerate(crm_events(3, 3000)):
        got, want = disk.observe(ev), mem.observe(ev)
        assert got == want, (i, ev)
        facts += len(want)
        if i % 400 == 399:
            wm = ev.ts_ms
            mem.expire(wm)
            disk.expire(wm)
            assert len(mem) == len(disk)
            assert mem.deals_by_lead == disk.deals_by_lead
    assert facts > 3000
    assert mem.snapshot() == disk.snapshot()
    # a takeover rebuilds the index of deals by lead from the deals on disk
    index = {lead: deals for lead, deals in mem.deals_by_lead.items() if deals}
    disk.loaded()
    assert disk.deals_by_lead == index and len(index) > 20
    tables.close()


def purchase_events(seed: int, n: int) -> list[Event]:
    """The accounts stage's deals (as ``crm_events``) and orders, some naming no account,
    some repeating an amount at the same time (alike purchases)."""
    rnd = random.Random(seed)
    out = []
    for ev in crm_events(seed, n):
        if ev.type == "deal.stage_changed":
            out.append(msgspec.structs.replace(ev, type="account.deal"))
        if rnd.random() < 0.4:
            account = {"account_id": f"A{rnd.randrange(40)}"} if rnd.random() < 0.9 else {}
            raw = orjson.dumps({"event_id": f"o{len(out)}", "type": "order.placed",
                                "ts": ev.ts_ms - rnd.choice([0, 0, HOUR_MS, DAY_MS]),
                                "cart_id": "c", "amount": rnd.choice([100, 250]), **account})
            order = parse_event(raw, now_ms=T0 + 400 * DAY_MS)
            assert isinstance(order, Event), order
            out.append(msgspec.structs.replace(order, type="account.order"))
    return out


def windowed(t: AccountPurchases, end: int) -> list[list[Any]]:
    """Every windowed value of the days and months before ``end``, and RFM at it."""
    return [sorted(t.window_values(end - span, end)) for span in (DAY_MS, 30 * DAY_MS)
            ] + [sorted((a, tuple(msgspec.structs.astuple(r))) for a, r in t.rfm(end).items())]


def test_the_accounts_purchases_on_disk_give_the_values_they_give_in_memory(
        tmp_path: Path) -> None:
    """Deals and purchases on disk against memory; what RFM reads, kept per account as
    purchases come, change and expire, against the same rebuilt from the purchases."""
    tables = DiskTables(tmp_path / "tables", cache_keys=8)
    mem, disk = AccountPurchases(30 * DAY_MS), AccountPurchases(30 * DAY_MS)
    disk.spill(tables.table)
    assert isinstance(disk.deals, DiskKeyed) and isinstance(disk.purchases, DiskKeyed)
    checked = 0
    for i, ev in enumerate(purchase_events(4, 3000)):
        disk.observe(ev)
        mem.observe(ev)
        if i % 400 == 399:
            end = ev.ts_ms - ev.ts_ms % HOUR_MS
            mem.expire(end)
            disk.expire(end)
            assert len(mem) == len(disk)
            rebuilt = AccountPurchases(30 * DAY_MS)
            rebuilt.restore(mem.snapshot())
            # kept 60 days (unconfigured): at 35 days back, RFM reads what expiry dropped
            for at in (end, end - 20 * DAY_MS, end - 35 * DAY_MS, end + 10 * DAY_MS):
                got = windowed(disk, at)
                assert got == windowed(mem, at) == windowed(rebuilt, at), (i, at)
                checked += len(got[2])
    assert checked > 200  # accounts scored in all
    end = T0 + 3000 * 2 * HOUR_MS
    assert mem.purchases.data == disk.purchases.data and len(mem.purchases.data) > 10
    assert mem.rfm(end) == disk.rfm(end)
    assert mem.snapshot() == disk.snapshot()
    disk.loaded()  # a takeover: rebuilt from the purchases on disk
    assert windowed(disk, end) == windowed(mem, end)
    tables.close()
