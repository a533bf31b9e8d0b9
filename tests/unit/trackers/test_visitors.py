"""Visitors: counted once at their first page view, converting once at their first
conversion (and once per goal), conversions found through their session, in any order."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson

from metrics.events import Event, parse_event
from metrics.trackers.base import Fact, Keyed
from metrics.trackers.visitors import Visitors
from tests.helpers import DEFAULT_CATALOG, ms, pick, replay

T0 = ms("2026-11-01T10:00:00+00:00")
MIN = 60_000
NOW = T0 + 86_400_000
_ids = itertools.count()


def ev(type_: str, at: int, session: str, **kw: Any) -> Event:
    body = {"event_id": f"e{next(_ids)}", "type": type_, "ts": at, "session_id": session,
            "channel": "organic", **kw}
    if type_ == "page.viewed":
        body.setdefault("page", "/")
    out = parse_event(orjson.dumps(body), now_ms=NOW)
    assert isinstance(out, Event)
    return out


def net(facts: list[Fact]) -> dict[tuple[int, str, Any], int]:
    out: dict[tuple[int, str, Any], int] = {}
    for ts, b, dims, v in facts:
        out[(ts, b, dims)] = out.get((ts, b, dims), 0) + v
    return {k: v for k, v in out.items() if v}


def counts(facts: list[Fact]) -> dict[str, int]:
    out: dict[str, int] = {}
    for (_, b, _), v in net(facts).items():
        out[b] = out.get(b, 0) + v
    return out


STREAM = [
    ("page.viewed", 0, "s1", {"visitor_id": "v1"}),
    ("page.viewed", 5 * MIN, "s1", {"visitor_id": "v1"}),
    ("goal.converted", 6 * MIN, "s1", {"goal": "demo"}),
    ("page.viewed", 60 * MIN, "s2", {"visitor_id": "v1"}),  # v1 again, another session
    ("goal.converted", 61 * MIN, "s2", {"goal": "demo"}),
    ("goal.converted", 62 * MIN, "s2", {"goal": "whitepaper"}),
    ("page.viewed", 10 * MIN, "s3", {"visitor_id": "v2"}),
    ("page.viewed", 20 * MIN, "s4", {}),  # no visitor id: its session stands in
    ("goal.converted", 21 * MIN, "s4", {"goal": "demo"}),
]


def run(stream: list[tuple[str, int, str, dict[str, Any]]]) -> list[Fact]:
    t = Visitors(horizon_ms=86_400_000)
    facts: list[Fact] = []
    for type_, at, session, kw in stream:
        facts += t.observe(ev(type_, T0 + at, session, **kw))
    return facts


def test_visitors_and_converting_visitors_counted_once_at_their_firsts() -> None:
    facts = run(STREAM)
    assert counts(facts) == {"visitors": 3, "converting_visitors": 2, "goal_visitors": 3}
    dims = (("campaign_id", "unknown"), ("channel", "organic"))
    assert net(facts)[(T0 + 6 * MIN, "converting_visitors", dims)] == 1
    assert net(facts)[(T0 + 62 * MIN, "goal_visitors", (*dims, ("goal", "whitepaper")))] == 1


def test_a_conversion_before_its_sessions_page_view_moves_to_the_visitor() -> None:
    facts = run([("goal.converted", 6 * MIN, "s1", {"goal": "demo"}),
                 ("page.viewed", 0, "s1", {"visitor_id": "v1"})])
    assert counts(facts) == {"visitors": 1, "converting_visitors": 1, "goal_visitors": 1}


def test_any_arrival_order_gives_the_same_net_facts() -> None:
    expected = net(run(STREAM))
    rnd = random.Random(3)
    for _ in range(200):
        shuffled = STREAM[:]
        rnd.shuffle(shuffled)
        assert net(run(shuffled)) == expected, shuffled


def test_visitor_conversion_rate_by_replay() -> None:
    lines = [orjson.dumps({"event_id": f"r{i}", "type": t, "ts": T0 + at, "session_id": s,
                           "channel": "organic", **({"page": "/"} if t == "page.viewed"
                                                    else {}), **kw})
             for i, (t, at, s, kw) in enumerate(STREAM)]
    records = replay(lines, DEFAULT_CATALOG, now_ms=NOW)
    rec = pick(records, "web_visitor_conversion_rate", "24h", "2026-11-02T10:00:00Z")
    assert (rec["numerator"], rec["denominator"]) == (2, 3)
    demo = pick(records, "web_visitor_conversion_rate", "24h", "2026-11-02T10:00:00Z",
                goal="demo")
    assert (demo["numerator"], demo["denominator"]) == (2, 3)


def test_a_returning_visitor_is_remembered_from_its_latest_visit() -> None:
    """The horizon runs from a visitor's latest page view: one back every 7 hours over 21
    hours (horizon 10 hours) counts once, and is filed, for expiry and for the commit that
    writes its hour, at its latest visit even when no fact of it changed."""
    t = Visitors(horizon_ms=10 * 60 * MIN)
    facts: list[Fact] = []
    for i in range(4):
        at = T0 + i * 7 * 60 * MIN
        facts += t.observe(ev("page.viewed", at, f"s{i}", visitor_id="v1"))
        t.expire(at)
        held = t.visitors.get("v1")
        assert held is not None and held[0].sessions[-1] == f"s{i}"
        table = t.visitors
        assert isinstance(table, Keyed)
        assert table.hours["v1"] == at // 3_600_000  # filed at its latest visit
        assert at // 3_600_000 in table.drain()  # ... so the next commit writes it
    assert counts(facts) == {"visitors": 1}
