"""Attribution's touches kept per account and day (version 2): the credits are those version 1
gave, event by event, from scratch and from a version 1 state (tests/fixtures/
attribution_v1.msgpack, written by main 693031c from this stream's first half); on disk with
small caches as in memory; and what a day of touches costs stays that day's."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import msgspec

from metrics.events import Event, struct_of
from metrics.trackers.attribution import AccountTouches, Attribution, AttributionState
from metrics.trackers.base import Dims, Keyed
from streams.table_disk import DiskKeyed, DiskTables
from tests.unit.trackers.test_attribution import _Deal, _Order

DAY = 86_400_000
T0 = 1_772_409_600_000  # 2026-03-02
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "attribution_v1.msgpack"

Net = dict[tuple[int, str, Dims], int]


def stream(seed: int = 11, days: int = 200) -> list[Event]:
    """Four accounts' touches (eight a day each: email clicks, page views on two channels,
    four campaigns), orders every five days, deals won and some reopened and won again, in
    an arrival order up to two days off event time."""
    rng = random.Random(seed)
    out: list[tuple[int, Event]] = []
    n = 0

    def add(ts: int, type_: str, data: Any) -> None:
        nonlocal n
        n += 1
        out.append((ts + rng.randrange(2 * DAY), Event(f"e{n}", type_, ts, "accounts", data)))

    for a in range(4):
        acc = f"a{a}"
        for _ in range(days * 8):
            ts = T0 + rng.randrange(days * DAY)
            c = f"c{rng.randrange(4)}"
            if rng.random() < 0.3:
                add(ts, "account.email_click", struct_of("account.email_click")(
                    event_id="x", ts=0, campaign_id=c, contact_id="k", account_id=acc))
            else:
                ch = rng.choice([None, "paid_search"])
                add(ts, "account.page_view", struct_of("account.page_view")(
                    event_id="x", ts=0, session_id="s", page="/", campaign_id=c,
                    channel=ch, account_id=acc))
        for _ in range(days // 5):
            add(T0 + rng.randrange(days * DAY), "account.order",
                _Order(rng.randrange(1, 5000) + 0.25, acc))
        for i in range(days // 20):
            d = f"{acc}-d{i}"
            t = T0 + rng.randrange((days - 30) * DAY)
            add(t, "account.deal", _Deal(d, "proposal", 1000, acc))
            add(t + rng.randrange(10 * DAY), "account.deal", _Deal(d, "won", 2000 + i, acc))
            if rng.random() < 0.5:  # reopened, won again
                add(t + 11 * DAY, "account.deal", _Deal(d, "proposal", None, acc))
                add(t + rng.randrange(12 * DAY, 25 * DAY), "account.deal",
                    _Deal(d, "won", 3000 + i, acc))
    out.sort(key=lambda x: (x[0], x[1].event_id))
    return [e for _, e in out]


def run(tracker: Attribution, events: list[Event], seen: int = 0,
        each: Any = None) -> tuple[Net, int]:
    """Feed the events, expiring at a watermark three days behind the latest each new day;
    the net facts."""
    net: Net = {}
    for e in events:
        got = tracker.observe(e)
        if each is not None:
            each(e, got)
        for ts, b, dims, v in got:
            net[(ts, b, dims)] = net.get((ts, b, dims), 0) + v
        if e.ts_ms // DAY > seen // DAY:
            seen = e.ts_ms
            tracker.expire(seen - 3 * DAY)
        seen = max(seen, e.ts_ms)
    return net, seen


def digest(net: Net) -> str:
    rows = sorted((ts, b, [list(d) for d in dims], v) for (ts, b, dims), v in net.items() if v)
    return hashlib.sha256(msgspec.msgpack.encode(rows)).hexdigest()


class Fixture(msgspec.Struct):
    half: int  # events fed before the state was taken
    seen: int  # the latest event time then
    state: msgspec.Raw  # AttributionState version 1
    facts_all: str  # digest of version 1's net facts over the whole stream
    facts_second_half: str  # ... over the second half, continued from ``state``


def fixture() -> Fixture:
    return msgspec.msgpack.decode(FIXTURE.read_bytes(), type=Fixture)


def test_version_2_credits_what_version_1_credited() -> None:
    fx, events = fixture(), stream()
    t = Attribution(20 * DAY)
    net, _ = run(t, events)
    assert sum(1 for v in net.values() if v) > 3000
    assert digest(net) == fx.facts_all
    # the expiry reached the first days: their touches are gone, the rest kept by day
    days = {k.split("|")[1] for k in t.touches.data}
    assert len(t.touches.data) > 100 and min(map(int, days)) > T0 // DAY + 40
    assert all(not a.groups for a in t.accounts.data.values())


def test_a_version_1_state_is_moved_to_days_and_goes_on_crediting_the_same() -> None:
    fx, events = fixture(), stream()
    t = Attribution(20 * DAY)
    t.restore(msgspec.msgpack.decode(fx.state, type=AttributionState))
    held = sum(len(g.times) for a in t.accounts.data.values() for g in a.groups) // 8
    assert held > 2000 and not t.touches.data  # version 1: every touch in its account
    net, _ = run(t, events[fx.half:], fx.seen)
    assert digest(net) == fx.facts_second_half
    assert all(not a.groups for a in t.accounts.data.values())  # all moved


def test_on_disk_with_small_caches_as_in_memory(tmp_path: Path) -> None:
    tables = DiskTables(tmp_path / "tables", cache_keys=8)
    mem, disk = Attribution(20 * DAY), Attribution(20 * DAY)
    disk.spill(tables.table)
    assert all(isinstance(t, DiskKeyed) for t in disk.tables().values())
    fx, events = fixture(), stream()
    # from a version 1 state: the move to days goes through the small caches too
    state = msgspec.msgpack.decode(fx.state, type=AttributionState)
    mem.restore(state)
    disk.restore(msgspec.msgpack.decode(fx.state, type=AttributionState))
    wants: list[Any] = []
    run(mem, events[fx.half:], fx.seen, lambda e, got: wants.append(got))
    gots: list[Any] = []
    net, _ = run(disk, events[fx.half:], fx.seen, lambda e, got: gots.append(got))
    assert gots == wants and digest(net) == fx.facts_second_half
    assert len(disk) == len(mem) and disk.snapshot() == mem.snapshot()
    tables.close()


def test_a_touch_reads_and_writes_its_day_only() -> None:
    """A busy account's new touch changes one day's value, not its whole lookback."""
    t = Attribution(365 * DAY)
    data = struct_of("account.page_view")
    for i in range(60 * 24):  # an hourly touch for 60 days
        ts = T0 + i * 3_600_000
        t.observe(Event(f"t{i}", "account.page_view", ts, "accounts", data(
            event_id="x", ts=0, session_id="s", page="/", campaign_id="c", account_id="a")))
    assert len(t.touches.data) == 60
    assert {len(b.groups[0].times) for b in t.touches.data.values()} == {24 * 8}
    t.touches.drain()
    t.accounts.drain()
    t.observe(Event("new", "account.page_view", T0 + 59 * DAY + 1, "accounts", data(
        event_id="x", ts=0, session_id="s", page="/", campaign_id="c", account_id="a")))
    changed = t.touches.drain()
    assert len(changed) == 1  # one hour of one day's key


def test_a_touch_reads_only_the_purchases_it_may_credit() -> None:
    """Its account's purchases are filed with their times: a touch after them all reads
    none (the orders' table is on disk with a small cache in a worker), a late touch only
    those after it within the lookback, and a version 1 account reads each once."""
    reads: list[str] = []

    class Counted(Keyed[str, Any]):
        def get(self, key: str) -> Any:
            reads.append(key)
            return super().get(key)

    def tracker() -> Attribution:
        t = Attribution(365 * DAY)
        t.orders = Counted(lambda p: p.ts)
        return t

    page = struct_of("account.page_view")

    def touch(i: int, ts: int) -> Event:
        return Event(f"t{i}", "account.page_view", ts, "accounts", page(
            event_id="x", ts=0, session_id="s", page="/", campaign_id="c", account_id="a"))

    t = tracker()
    for i in range(50):  # an order a day
        t.observe(Event(f"o{i}", "account.order", T0 + i * DAY, "accounts", _Order(10, "a")))
    reads.clear()
    for i in range(100):
        t.observe(touch(i, T0 + 50 * DAY + i))
    assert reads == []
    moved = t.observe(touch(100, T0 + 45 * DAY + 1))  # late: before the last four orders
    assert sorted(reads) == [f"o:o{i}" for i in range(46, 50)]
    assert {ts for ts, *_ in moved} == {T0 + i * DAY for i in range(46, 50)}
    # a version 1 account: its purchases' times not filed, each read once, then known
    old = AccountTouches([], t.accounts.data["a"].purchases, T0 + 50 * DAY)
    again = tracker()
    again.restore(msgspec.structs.replace(
        t.snapshot(), accounts={"a": old}, version=1, touches={}))
    reads.clear()
    again.observe(touch(200, T0 + 60 * DAY))
    again.observe(touch(201, T0 + 60 * DAY + 1))
    assert sorted(reads) == sorted(f"o:o{i}" for i in range(50))
