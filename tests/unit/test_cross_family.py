"""KPIs over two families (cost per lead, cost per acquisition, ROMI: crm + spend) are
final only once both families closed the window, whatever order their topics are read in.

A worker reads each topic's partitions at its own pace: one family can run days ahead of
the other, or close windows before the other has delivered anything at all. Replay reads
one time-ordered file. Their finals must be equal.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import FAMILY_TOPIC, Event, parse_event
from tests.helpers import (
    DAY,
    DEFAULT_CATALOG,
    HOUR,
    SENTINEL,
    SENTINEL_AFTER,
    assert_finals_equal,
    closed_by,
    final_values,
    ms,
    replay,
)

START = ms("2026-09-01T00:00:00+00:00")
NOW = START + 60 * 86_400_000
TOPIC_FAMILY = {t: f for f, t in FAMILY_TOPIC.items()}
PARTITIONS = 3
ARRIVAL: dict[bytes, int] = {}  # message -> when it reached the broker


def parse(raw: bytes, topic: str) -> Event | None:
    ev = parse_event(raw, now_ms=NOW, topic_family=TOPIC_FAMILY[topic])
    return ev if type(ev) is Event else None


@pytest.fixture(scope="module")
def partitioned() -> tuple[dict[tuple[str, int], list[bytes]], dict[str, dict[str, Any]],
                           dict[str, int]]:
    """A generated stream spread over partitions, each closed by a sentinel at its end, and
    replay's finals for it (the windows the sentinels leave open are left out)."""
    gen = Generator(GeneratorConfig(rate=12, duration_s=600, seed=11, start_ms=START,
                                    history_days=2, invalid=0.005, duplicates=0.01,
                                    late=0.003, late_after_s=120, disorder_s=60))
    stream = [(t, raw) for _, (t, raw) in gen.messages()]
    assert {TOPIC_FAMILY[t] for t, _ in stream} >= {"crm", "spend"}
    last_ts = max(ev.ts_ms for t, raw in stream if (ev := parse(raw, t)) is not None)
    rng = random.Random(5)
    parts: dict[tuple[str, int], list[bytes]] = {}
    for i, (t, raw) in enumerate(stream):
        parts.setdefault((t, rng.randrange(PARTITIONS)), []).append(raw)
        ARRIVAL[raw] = i  # the broker's record timestamp: the order it was produced in
    lines = [raw for _, raw in stream]
    for fam, extra in SENTINEL.items():
        for p in range(PARTITIONS):
            raw = orjson.dumps({"event_id": f"sentinel-{fam}-{p}",
                                "ts": last_ts + SENTINEL_AFTER[fam], **extra})
            parts.setdefault((FAMILY_TOPIC[fam], p), []).append(raw)
            ARRIVAL[raw] = len(lines)
            lines.append(raw)

    cutoff = {fam: last_ts + SENTINEL_AFTER[fam] for fam in SENTINEL_AFTER}
    return parts, closed_by(final_values(replay(lines, now_ms=NOW)), cutoff), cutoff


def stream_finals(parts: dict[tuple[str, int], list[bytes]],
                  chunks: list[tuple[tuple[str, int], int]]) -> dict[str, dict[str, Any]]:
    """Feed the partitions in the given chunk order, like a worker's batches."""
    e = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0), clock=lambda: NOW)
    for t, p in parts:
        e.assign_source(TOPIC_FAMILY[t], (t, p))
    pos = dict.fromkeys(parts, 0)
    out: list[dict[str, Any]] = []
    for tp, n in chunks:
        for raw in parts[tp][pos[tp]:pos[tp] + n]:
            ev = parse(raw, tp[0])
            if ev is not None:
                e.ingest(ev, tp, arrival=ARRIVAL[raw])
        pos[tp] += n
        if e.due:
            out += e.advance()
    assert all(pos[tp] >= len(parts[tp]) for tp in parts), "every message fed"
    out += e.advance()
    return final_values(out)


def assert_same(streamed: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]],
                cutoff: dict[str, int]) -> int:
    """Finals equal replay's; returns how many cost-per-lead windows were compared."""
    assert_finals_equal(expected, streamed, cutoff, at_least=1000)
    return sum(1 for k in expected if k.startswith("cost_per_lead|"))


def test_one_topic_read_to_its_end_before_the_next(partitioned: Any) -> None:
    """crm first, then spend (the order a lagging fetch of one topic produces): crm closes
    every cost-per-lead window before spend has said a word."""
    parts, expected, cutoff = partitioned
    for first in ("crm", "spend"):
        order = sorted(parts, key=lambda tp: (TOPIC_FAMILY[tp[0]] != first, tp))
        chunks = [(tp, len(parts[tp])) for tp in order]
        assert assert_same(stream_finals(parts, chunks), expected, cutoff) > 100


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_interleaving_of_partition_batches(partitioned: Any, seed: int) -> None:
    parts, expected, cutoff = partitioned
    rng = random.Random(seed)
    left = {tp: len(v) for tp, v in parts.items()}
    chunks: list[tuple[tuple[str, int], int]] = []
    while left:
        tp = rng.choice(sorted(left))
        n = min(left[tp], rng.randint(1, 400))
        chunks.append((tp, n))
        left[tp] -= n
        if not left[tp]:
            del left[tp]
    assert_same(stream_finals(parts, chunks), expected, cutoff)


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def crm_lead(ts: int, lead: str) -> Event:
    ev = parse_event(orjson.dumps({"event_id": lead, "type": "lead.created", "ts": ts,
                                   "lead_id": lead, "channel": "email"}), now_ms=NOW)
    assert isinstance(ev, Event)
    return ev


def spend(ts: int, amount: float, eid: str) -> Event:
    ev = parse_event(orjson.dumps({"event_id": eid, "type": "spend.recorded", "ts": ts,
                                   "amount": amount, "channel": "email"}), now_ms=NOW)
    assert isinstance(ev, Event)
    return ev


def cpl_24h(records: list[dict[str, Any]], end: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kpi"] == "cost_per_lead" and r["window"] == "24h"
            and r["dims"] == {} and r["end"] == end]


def test_a_family_that_never_delivers_stops_holding_its_partners_once_idle() -> None:
    """With the idle timeout on, a spend topic nobody writes to must not freeze cost per
    lead for ever: once its partition is idle the windows go out without spend."""
    clock = Clock(0)
    e = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=30_000), clock=clock)
    e.assign_source("crm", "crm-0")
    e.assign_source("spend", "spend-0")  # silent
    e.ingest(crm_lead(START + HOUR, "l1"), "crm-0")
    e.ingest(crm_lead(START + 3 * DAY, "l2"), "crm-0")
    assert cpl_24h(e.advance(), "2026-09-02T00:00:00Z") == []  # spend may still speak
    clock.t = 10_000
    e.ingest(crm_lead(START + 3 * DAY + 1, "l3"), "crm-0")
    assert cpl_24h(e.advance(), "2026-09-02T00:00:00Z") == []
    clock.t = 31_000  # spend-0 quiet for 31 s: idle, it no longer holds anything
    e.ingest(crm_lead(START + 3 * DAY + 2, "l4"), "crm-0")
    (rec,) = cpl_24h(e.advance(), "2026-09-02T00:00:00Z")
    assert (rec["numerator"], rec["denominator"]) == (0, 1)


def test_spend_read_after_crm_closed_the_window_still_counts() -> None:
    e = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0), clock=lambda: 0)
    e.assign_source("crm", "crm-0")
    e.assign_source("spend", "spend-0")
    e.ingest(crm_lead(START + HOUR, "l1"), "crm-0")
    e.ingest(crm_lead(START + 40 * DAY, "l2"), "crm-0")  # crm runs 40 days ahead
    assert cpl_24h(e.advance(), "2026-09-02T00:00:00Z") == []
    e.ingest(spend(START + 2 * HOUR, 250.0, "s1"), "spend-0")
    e.ingest(spend(START + 40 * DAY, 1.0, "s2"), "spend-0")
    (rec,) = cpl_24h(e.advance(), "2026-09-02T00:00:00Z")
    assert (rec["numerator"], rec["denominator"], rec["revision"]) == (250, 1, 0)
