"""The accounts stage (metrics/feed.py, streams/feed.py): KPIs over several families computed
from copies of their events, in a family of its own, so no shard has to merge with another.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import orjson
import pytest

from metrics.catalog import build_catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.errors import CatalogError
from metrics.events import (
    ACCOUNTS,
    FAMILY_TOPIC,
    TYPES,
    Event,
    Invalid,
    event_parser,
    parse_event,
)
from metrics.feed import FEEDING_FAMILIES, copy_for_accounts
from streams.feed import FRAME_BYTES, FeedIn, FeedOut, feed_of, frames
from streams.settings import Settings
from streams.shard import Shard
from streams.shard_ports import Outputs
from streams.topics import placement_topics, stage_partner, state_partitions
from tests.helpers import DEFAULT_CATALOG, HOUR, finals, ms, pick, replay
from tests.unit.test_shard import SETTINGS, FakeIO, FakeTable, History, Msg
from tests.unit.test_shards import accounts_shard
from tests.unit.test_state_store import run

T0 = ms("2026-03-02T00:00:00+00:00")
NOW = T0 + 400 * 86_400_000


def ev(eid: str, type_: str, hours: float, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": type_, "ts": T0 + int(hours * HOUR), **fields}


def deal(eid: str, deal_id: str, stage: str, hours: float, **fields: Any) -> dict[str, Any]:
    return ev(eid, "deal.stage_changed", hours, deal_id=deal_id, stage=stage, **fields)


#: spend 1,140 against orders 2,000 and won deals 13,000 in the day from T0
DAY_ONE = [
    ev("s1", "spend.recorded", 1, amount=1000, channel="paid_search", category="content"),
    ev("s2", "spend.recorded", 2, amount=140, campaign_id="c1", category="analytics"),
    ev("o1", "order.placed", 3, cart_id="k1", amount=2000, account_id="a1"),
    deal("d1", "D1", "opportunity", 1),
    deal("d2", "D1", "won", 4, amount=9000, account_id="a2"),
    # won, then lost: its last stage decides
    deal("d3", "D2", "won", 5, amount=5000),
    deal("d4", "D2", "lost", 6),
    # won, reopened, won again with a new amount: once, with its latest amount
    deal("d5", "D3", "won", 7, amount=3000),
    deal("d6", "D3", "proposal", 8),
    deal("d7", "D3", "won", 9, amount=4000),
    # touches of accounts a1 and a2 before their purchases (attribution), and one after
    ev("c1", "email.clicked", 0.5, campaign_id="mail", contact_id="k", account_id="a1"),
    ev("v1", "page.viewed", 2.5, session_id="y", page="/pricing", campaign_id="ads",
       channel="paid_search", account_id="a1"),
    ev("l1", "lead.created", 3.5, lead_id="L", channel="events", campaign_id="fair",
       account_id="a2"),
    ev("i1", "social.interaction", 3.8, network="linkedin", kind="like", campaign_id="abm",
       account_id="a2"),
    ev("v2", "page.viewed", 5.5, session_id="y", page="/", campaign_id="ads",
       account_id="a1"),
    ev("p1", "page.viewed", 30, session_id="x", page="/"),
]
DAY_END = "2026-03-03T00:00:00Z"


def test_spend_share_of_revenue_by_hand() -> None:
    records = replay(DAY_ONE, now_ms=NOW)
    total = pick(records, "marketing_spend_share_of_revenue", "24h", DAY_END)
    assert (total["numerator"], total["denominator"]) == (1140, 15000)
    assert total["value"] == pytest.approx(1140 / 15000)
    content = pick(records, "marketing_spend_share_of_revenue", "24h", DAY_END,
                   category="content")
    # a breakdown revenue does not carry: the category's spend against all revenue
    assert (content["numerator"], content["denominator"]) == (1000, 15000)
    # the stage's won revenue is the pipeline's: the same deals, the same amounts
    deals = pick(records, "avg_deal_size", "24h", DAY_END)
    assert (deals["numerator"], deals["denominator"]) == (13000, 2)
    # before the last deal came back won, the window ending at 08:00 held D1 and the order
    early = pick(records, "marketing_spend_share_of_revenue", "24h", "2026-03-02T08:00:00Z")
    assert (early["numerator"], early["denominator"]) == (1140, 11000)
    # attribution: a1's order (2,000) after its click and page view; D1 (9,000, a2) after
    # a2's lead and LinkedIn like; D3 has no account: unknown
    linear = {r["dims"]["campaign_id"]: r["value"] for r in finals(records).values()
              if r["kpi"] == "attributed_revenue" and r["end"] == DAY_END
              and r["window"] == "24h" and r["dims"].get("model") == "linear"
              and "campaign_id" in r["dims"]}
    assert linear == {"mail": 1000, "ads": 1000, "fair": 4500, "abm": 4500, "unknown": 4000}


def test_arrival_order_within_grace_changes_nothing() -> None:
    """Copies come from three families read at their own pace: the stage's windows depend
    on the set of events, not their order (within its grace)."""
    def finals_of(events: list[dict[str, Any]]) -> dict[Any, Any]:
        return {(r["window"], r["end"], tuple(r["dims"].items())): (r["numerator"],
                                                                     r["denominator"])
                for r in replay(events, now_ms=NOW)
                if r["kpi"] in ("marketing_spend_share_of_revenue", "attributed_revenue",
                                "attributed_romi") and r["final"]}
    ordered = finals_of(DAY_ONE)
    # every deal stage first, newest first, then the rest: each at most 50 minutes late
    shuffled = sorted(DAY_ONE[:-1], key=lambda e: (e["ts"] // (HOUR * 3), -e["ts"]))
    assert [e["event_id"] for e in shuffled] != [e["event_id"] for e in DAY_ONE[:-1]]
    assert finals_of([*shuffled, DAY_ONE[-1]]) == ordered
    assert len(ordered) > 50


def test_a_copy_keeps_the_event_and_moves_it_to_the_accounts_family() -> None:
    raw = orjson.dumps(ev("o1", "order.placed", 3, cart_id="k1", amount=20.5, account_id="a1",
                          campaign_id="c9"))
    order = parse_event(raw, now_ms=NOW, topic_family="web")
    assert type(order) is Event
    copy = copy_for_accounts(order)
    assert copy is not None
    assert (copy.event_id, copy.type, copy.ts_ms, copy.family) == (
        "o1", "account.order", order.ts_ms, ACCOUNTS)
    assert (copy.get("amount"), copy.get("account_id"), copy.get("campaign_id"),
            copy.get("channel")) == (20.5, "a1", "c9", "web")
    # an engagement is copied when it names its account (lead scoring; attribution's
    # touches are those naming a campaign too), not without
    view = parse_event(orjson.dumps(ev("p", "page.viewed", 1, session_id="s", page="/",
                                       account_id="a1")), now_ms=NOW)
    assert type(view) is Event
    copied_view = copy_for_accounts(view)
    assert copied_view is not None and copied_view.type == "account.page_view"
    anonymous = parse_event(orjson.dumps(ev("p", "page.viewed", 1, session_id="s", page="/",
                                            campaign_id="c")), now_ms=NOW)
    assert type(anonymous) is Event and copy_for_accounts(anonymous) is None
    opened = parse_event(orjson.dumps(ev("m", "email.opened", 1, campaign_id="c",
                                         contact_id="k", account_id="a1")), now_ms=NOW)
    assert type(opened) is Event
    copied_open = copy_for_accounts(opened)
    assert copied_open is not None and copied_open.type == "account.email_open"
    sent = parse_event(orjson.dumps(ev("m2", "email.sent", 1, campaign_id="c",
                                       contact_id="k", account_id="a1")), now_ms=NOW)
    assert type(sent) is Event and copy_for_accounts(sent) is None
    # every lead, account or not (the denominator of mql_rate)
    lead = parse_event(orjson.dumps(ev("l", "lead.created", 1, lead_id="L", channel="web")),
                       now_ms=NOW)
    assert type(lead) is Event and copy_for_accounts(lead) is not None
    assert {"email", "web", "crm", "social", "spend"} == FEEDING_FAMILIES


@pytest.mark.parametrize("family", [None, "web", "spend"])
def test_no_input_carries_the_stage_types(family: str | None) -> None:
    """The copies' types are the engine's own: no topic and no replay line may bring one."""
    raw = orjson.dumps(ev("x", "account.spend", 1, amount=5, channel="email"))
    assert parse_event(raw, now_ms=NOW, topic_family=family) == Invalid("unknown_type")
    assert "account.spend" not in TYPES


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []
        self.stamps: list[float | None] = []

    async def send(self, topic: str, key: bytes | None, value: bytes,
                   timestamp: float | None = None) -> None:
        self.messages.append((topic, key, value))
        self.stamps.append(timestamp)


async def test_a_shard_copies_what_the_stage_reads_and_marks_the_rest() -> None:
    settings = Settings(topic_prefix="t.")
    out = feed_of(settings, DEFAULT_CATALOG, ("web",))
    assert isinstance(out, FeedOut)
    assert isinstance(feed_of(settings, DEFAULT_CATALOG, ("email",)), FeedOut)
    parse = event_parser(now_ms=NOW)
    web, crm = ("t.web-events", 2), ("t.crm-events", 0)
    batch = [(web, ev("v1", "page.viewed", 1, session_id="s", page="/")),
             (web, ev("o1", "order.placed", 2, cart_id="k", amount=7)),
             (crm, deal("d1", "D", "won", 3, amount=9)),
             (web, ev("v2", "page.viewed", 4, session_id="s", page="/"))]
    for tp, e in batch:
        raw = orjson.dumps(e)
        parsed = parse(raw)
        assert type(parsed) is Event
        out.add(tp, parsed, raw, 100.0 + len(raw))
    io = Sent()
    await out.send(io)
    assert [(t, k) for t, k, _ in io.messages] == [
        ("t.kpi-account-events", b"t.web-events|2"), ("t.kpi-account-events", b"t.crm-events|0"),
        ("t.kpi-account-events", b"t.web-events|2")]
    # the copies are the input messages as they were, framed with their timestamps (ms);
    # web went past its copy: a mark
    raws = [orjson.dumps(e) for _, e in batch]
    assert io.messages[0][2] == b"\x01" + len(raws[1]).to_bytes(4, "big") + round(
        (100.0 + len(raws[1])) * 1000).to_bytes(8, "big") + raws[1]
    assert io.messages[2][2] == b"\x00" + str(T0 + 4 * HOUR).encode()
    # the input's timestamps go with them: a frame's last copy's, a mark's event's (v2)
    assert io.stamps == [100.0 + len(raws[1]), 100.0 + len(raws[2]), 100.0 + len(raws[3])]
    await out.send(io)  # nothing more: a batch's copies go once
    assert len(io.messages) == 3

    fed = feed_of(settings, DEFAULT_CATALOG, (ACCOUNTS,))
    assert isinstance(fed, FeedIn)
    assert len(fed.sources) == 5 * settings.partitions

    def read(key: bytes | None, value: bytes) -> tuple[Any, list[tuple[Any, Any, Any]]]:
        return fed.read(Msg("t.kpi-account-events", 0, 7, value, key, 50.0), value, parse)
    got = [read(k, v) for _, k, v in io.messages]
    assert got[0][0] == web and len(got[0][1]) == 1
    ref, order, arrival = got[0][1][0]
    assert type(order) is Event and order.type == "account.order"
    assert arrival == round((100.0 + len(raws[1])) * 1000)  # the copy's, not the frame's
    assert (ref.topic, ref.offset, ref.value) == ("t.kpi-account-events", 7, raws[1])
    assert got[1][1][0][1].type == "account.deal"
    assert got[2] == (web, [(ANY, T0 + 4 * HOUR, 50_000)])
    assert read(None, b"{}")[1][0][1] == Invalid("bad_value:key")
    view = orjson.dumps(ev("v", "page.viewed", 1, session_id="s", page="/"))
    assert read(b"t.web-events|1", view)[1][0][1] == Invalid("wrong_topic")  # unframed
    assert read(b"t.web-events|1", b"\x00soon")[1][0][1] == Invalid("bad_value:ts")
    cut = read(b"t.web-events|1", io.messages[0][2][:-3])[1]  # a frame cut short
    assert [p for _, p, _ in cut] == [Invalid("bad_value:frame")]


def test_a_batch_of_copies_goes_in_frames_of_bounded_size() -> None:
    raws = [bytes([65 + i % 26]) * (1000 + i) for i in range(700)]  # 944,650 bytes of copies
    copies = [(r, 10.0 + i) for i, r in enumerate(raws)]
    out = list(frames(copies))
    assert len(out) == 4  # each as full as the next copy allows
    assert all(FRAME_BYTES - 1712 < len(f) <= FRAME_BYTES + 1 for f, _ in out[:-1])
    fed = FeedIn(Settings())
    parse = event_parser(now_ms=NOW)
    back: list[bytes] = []
    for f, stamp in out:
        _, got = fed.read(Msg("kpi-account-events", 0, 1, f, b"web-events|0", stamp), f,
                          parse)
        back += [ref.value for ref, _, _ in got]
        assert stamp == copies[len(back) - 1][1]  # the frame's: its last copy's
    assert back == raws  # every copy, in order, unchanged


def test_the_stage_engine_fed_copies_publishes_what_replay_does() -> None:
    """A worker's accounts shard: an engine over the stage's part of the catalog, fed the
    copies (and marks) of the other shards, gives replay's records for its KPIs."""
    part = DEFAULT_CATALOG.restrict((ACCOUNTS,))
    assert set(part.kpis) == {"marketing_spend_share_of_revenue", "attributed_revenue",
                              "attributed_romi", "purchase_frequency",
                              "customer_lifetime_value", "rfm_segment_share", "mql_rate",
                              "lead_velocity"}
    out = accounts_shard([(FAMILY_TOPIC[TYPES[e["type"]].family], orjson.dumps(e))
                          for e in DAY_ONE], part)
    whole = [r for r in replay(DAY_ONE, now_ms=NOW) if r["kpi"] in part.kpis]

    def values(rs: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        return {(r["window"], r["end"], tuple(r["dims"].items()), r["numerator"],
                 r["denominator"], r["final"]) for r in rs}
    assert values(out) == values(whole) and len(whole) > 50


def test_a_catalog_without_the_stage_has_no_copies() -> None:
    doc: dict[str, Any] = {
        "version": 1, "hops": {"1h": "5m"},
        "families": {f: {"grace": "2m", "windows": ["1h"]}
                     for f in ("email", "web", "crm", "social", "spend")},
        "aggregates": {"orders": {"event": "order.placed"}},
        "kpis": {"orders": {"numerator": "orders", "denominator": "orders", "unit": "ratio"}},
    }
    catalog = build_catalog(doc)
    assert ACCOUNTS not in catalog.shards()
    assert feed_of(Settings(), catalog, ("web",)) is None
    doc["families"][ACCOUNTS] = {"grace": "1h", "windows": ["1h"]}
    doc["aggregates"]["won"] = {"builtin": "account_won_amount"}
    doc["kpis"]["mixed"] = {"numerator": "won", "denominator": "orders", "unit": "ratio"}
    with pytest.raises(CatalogError, match=r"kpis\.mixed: reads the accounts stage and input"):
        build_catalog(doc)
    assert KpiEngine(catalog).ingest.__func__ is KpiEngine.ingest  # type: ignore[attr-defined]
    assert KpiEngine(DEFAULT_CATALOG).ingest.__func__ is not KpiEngine.ingest  # type: ignore[attr-defined]


def test_the_stage_lives_with_crm_and_every_shard_keeps_its_state_partition() -> None:
    """The state table has a changelog partition per shard; the stage shares crm's, and one
    worker owns both. A deployment upgrading to a catalog with the stage reads each shard's
    state where it was, from a changelog with as many partitions as before (4: what the
    embedded broker auto-creates when a retried write finds it gone)."""
    before = DEFAULT_CATALOG.restrict(("email", "web", "social", "crm", "spend"))
    assert ACCOUNTS not in before.shards() and stage_partner(before) is None
    old, new = state_partitions(before), state_partitions(DEFAULT_CATALOG)
    assert {n: new[n] for n in old} == old
    assert stage_partner(DEFAULT_CATALOG) == "crm+spend"
    assert new[ACCOUNTS] == old["crm+spend"] and len(set(new.values())) == 4
    settings = Settings()
    placed = placement_topics(settings, DEFAULT_CATALOG)
    assert placed[settings.topic("kpi-account-events")] == "crm+spend"
    assert set(placed.values()) == set(old)


def test_a_copy_far_behind_what_its_partitions_reached_is_late_as_in_replay() -> None:
    """Before the stage starts (not every feeding partition has spoken) its copies are held;
    the progress marks held with them say how far event time went, so a copy more than
    the stage's reach (30 d + 1 h) behind a mark that reached the broker before it is late,
    as replay, which reads every event of the feeding families, finds it."""
    part = DEFAULT_CATALOG.restrict((ACCOUNTS,))
    parse = event_parser(now_ms=NOW)
    old = parse(orjson.dumps(ev("o-old", "order.placed", 0, cart_id="k", amount=5)))
    assert type(old) is Event
    copy = copy_for_accounts(old)
    assert copy is not None
    far = T0 + 40 * 86_400_000
    stage = KpiEngine(part, EngineConfig(idle_timeout_ms=0))
    stage.assign_source(ACCOUNTS, "web-0")
    stage.assign_source(ACCOUNTS, "web-1")
    stage.progress(ACCOUNTS, "web-0", far - 5, arrival=1)
    stage.progress(ACCOUNTS, "web-0", far, arrival=1)  # one moment: one mark, the furthest
    assert stage.held_total == 1
    assert stage.ingest(copy, "web-1", arrival=3) == "late"
    assert stage.late_total[ACCOUNTS] == 1 and stage.held_total == 0
    # the mark came after it: counted (the broker took the order first)
    stage = KpiEngine(part, EngineConfig(idle_timeout_ms=0))
    stage.assign_source(ACCOUNTS, "web-0")
    stage.assign_source(ACCOUNTS, "web-1")
    assert stage.ingest(copy, "web-1", arrival=1) == "held"
    stage.progress(ACCOUNTS, "web-0", far, arrival=2)
    stage.advance()
    assert stage.late_total[ACCOUNTS] == 0 and stage.events_total == {"account.order": 1}
    # replay: a page view 40 days on, then the old order
    whole = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    view = parse(orjson.dumps(ev("v", "page.viewed", 40 * 24, session_id="s", page="/")))
    assert type(view) is Event
    whole.ingest(view)
    assert whole.ingest(old) == "late"  # for web too
    assert whole.late_total[ACCOUNTS] == 1


def test_the_accounts_shard_commits_and_hands_over_what_it_holds(tmp_path: Path) -> None:
    """The accounts shard (its input the internal topic) holds its copies and marks until
    every feeding partition has spoken; a commit in between writes them, and the next owner
    continues from them (a mark has no message behind it: nothing to route)."""
    settings = replace(SETTINGS, partitions=2)
    part = DEFAULT_CATALOG.restrict((ACCOUNTS,))
    topic = settings.topic("kpi-account-events")
    out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                  lambda s: None)
    table = FakeTable()

    def stage(io: FakeIO, where: str) -> Shard:
        io.tps = {(topic, 0), (topic, 1)}
        return Shard(ACCOUNTS, part, {topic}, settings, io, table, out, tmp_path / where,
                     FeedIn(settings))

    order = orjson.dumps(ev("o1", "order.placed", 2, cart_id="k", amount=70))
    first = [Msg(topic, 0, 0, b"\x00" + str(T0 + 3 * HOUR).encode(), b"web-events|0", 1.0),
             Msg(topic, 1, 0, order, b"web-events|1", 2.0)]

    async def go() -> Shard:
        one = stage(FakeIO(), "1")
        await one.activate(table.records(ACCOUNTS), 0.0)
        await one.handle(first)
        assert one.engine.held_total == 2  # the other feeding families have not spoken
        assert await one.snapshot(force=True)
        one.dedup.close()
        two = stage(FakeIO(), "2")
        await two.activate(table.records(ACCOUNTS), 0.0)
        assert two.engine.held_total == 2
        rest = [Msg(topic, 0, 1 + i, b"\x00" + str(T0 + 4 * HOUR).encode(), key, 3.0)
                for i, key in enumerate([b"crm-events|0", b"crm-events|1", b"spend-events|0",
                                         b"spend-events|1", b"web-events|1", b"email-events|0",
                                         b"email-events|1", b"social-events|0",
                                         b"social-events|1"])]
        await two.handle(rest)
        await two.snapshot(force=True)
        return two

    two = run(go())
    assert two.engine.held_total == 0 and two.engine.events_total == {"account.order": 1}
    assert two.engine.windows[ACCOUNTS].started


def test_the_stage_copies_only_what_the_catalog_reads() -> None:
    """The copies come from the catalog: without lead scoring (its KPIs and builtins
    removed) email opens and anonymous leads' engagement cost no copy, in replay and in a
    worker alike; the default catalog copies every fed type."""
    from metrics.feed import ALL_COPIES, stage_reads
    from tests.unit.test_catalog_blocks import load_yaml

    assert stage_reads(DEFAULT_CATALOG) == ALL_COPIES
    doc = load_yaml()
    for agg in ("account_leads", "account_mqls", "account_mql_leads", "account_prior_mqls"):
        del doc["aggregates"][agg]
    for kpi in ("mql_rate", "lead_velocity"):
        del doc["kpis"][kpi]
    catalog = build_catalog(doc)
    reads = stage_reads(catalog)
    assert "account.email_open" not in reads and "account.order" in reads
    opened = parse_event(orjson.dumps({
        "event_id": "o1", "type": "email.opened", "ts": T0, "campaign_id": "c",
        "contact_id": "k", "account_id": "acme"}), now_ms=NOW)
    order = parse_event(orjson.dumps({
        "event_id": "p1", "type": "order.placed", "ts": T0, "order_id": "x", "cart_id": "c1",
        "amount": 10,
        "account_id": "acme"}), now_ms=NOW)
    assert type(opened) is Event and type(order) is Event
    assert copy_for_accounts(opened) is not None  # the whole stage reads it
    assert copy_for_accounts(opened, reads) is None and copy_for_accounts(order, reads)
    out = feed_of(Settings(), catalog, ("email",))
    assert isinstance(out, FeedOut) and out.reads == reads
    out.add(("email-events", 0), opened, b"{}", None)
    assert out._copies == {}
    engine = KpiEngine(catalog, EngineConfig(idle_timeout_ms=0))
    engine.ingest(opened)
    engine.ingest(order)
    assert "account.email_open" not in engine.events_total
    assert engine.events_total.get("account.order") == 1


def test_the_accounts_shard_routes_a_framed_copy_by_itself(tmp_path: Path) -> None:
    """A late or unusable copy in a frame goes to `kpi-late` / `kpi-dlq` alone, its own
    value with the frame's coordinates; the frame's other copies count."""
    settings = replace(SETTINGS, partitions=1)
    part = DEFAULT_CATALOG.restrict((ACCOUNTS,))
    topic = settings.topic("kpi-account-events")
    out = Outputs("kpi-windows", "kpi-updates", "kpi-dlq", "kpi-late", History(),
                  lambda s: None)

    class Routing(FakeIO):
        def __init__(self) -> None:
            super().__init__()
            self.values: list[bytes] = []

        async def route(self, topic: str, msg: Any, reason: str) -> None:
            await super().route(topic, msg, reason)
            self.values.append(msg.value)

    io = Routing()
    io.tps = {(topic, 0)}
    shard = Shard(ACCOUNTS, part, {topic}, settings, io, FakeTable(), out, tmp_path,
                  FeedIn(settings))
    far = T0 + 40 * 24 * HOUR
    marks = [Msg(topic, 0, i, b"\x00" + str(far).encode(), f"{t}|0".encode(), 1.0)
             for i, t in enumerate(["crm-events", "spend-events", "web-events",
                                    "email-events", "social-events"])]
    new = orjson.dumps(ev("o2", "order.placed", 40 * 24, cart_id="k", amount=5))
    old = orjson.dumps(ev("o1", "order.placed", 2, cart_id="k", amount=7))
    junk = b'{"event_id": "j"}'
    (frame, _), = frames([(new, 2.0), (old, 2.0), (junk, 2.0)])

    async def go() -> None:
        await shard.activate([], 0.0)
        await shard.handle([*marks, Msg(topic, 0, 5, frame, b"web-events|0", 2.0)])
    run(go())
    assert shard.engine.events_total == {"account.order": 1}
    assert sorted(io.routed) == [("kpi-dlq", 0, 5, "missing_field:type"),
                                 ("kpi-late", 0, 5, "late")]
    assert sorted(io.values) == sorted([old, junk])


def test_a_copy_larger_than_a_frame_goes_alone_as_it_was() -> None:
    """Framed, an input message at the broker's size limit would pass it: it goes as the
    input message it copies, between the frames of the copies before and after it."""
    small, big = b'{"a": 1}', b"{" + b" " * FRAME_BYTES + b"}"
    out = list(frames([(small, 1.0), (big, 2.0), (small, 3.0)]))
    assert [len(f) for f, _ in out] == [1 + 12 + len(small), len(big), 1 + 12 + len(small)]
    assert out[1] == (big, 2.0) and [s for _, s in out] == [1.0, 2.0, 3.0]
    fed = FeedIn(Settings())
    _, got = fed.read(Msg("kpi-account-events", 0, 1, big, b"web-events|0", 2.0), big,
                      event_parser(now_ms=NOW))
    assert [(ref.value, arrival) for ref, _, arrival in got] == [(big, 2000)]
