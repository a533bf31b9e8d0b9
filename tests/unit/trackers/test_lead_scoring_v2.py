"""Lead scoring's hours packed in 32 bits (version 2; version 1 packed 64): the crossings,
the MQL announcements and the accounts' scores are those version 1 gave, from scratch and
continued from a version 1 state (tests/fixtures/lead_scoring_v1.msgpack, written by main
e6dc761 from this stream's first half), and an hour costs 8 bytes, not 16."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import msgspec

from metrics.catalog import load_catalog
from metrics.trackers.lead_scoring import LeadScoring, LeadScoringState
from streams.table_disk import DiskKeyed, DiskTables
from tests.helpers import HOUR
from tests.unit.trackers.test_lead_scoring import DAY, T0, ev, lead, stage

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "lead_scoring_v1.msgpack"


def stream(seed: int = 5, days: int = 150) -> list[dict[str, Any]]:
    """Six accounts' engagement (opens, clicks, page views, pricing pages, goals, social
    interactions counted 1-5 times; busy and quiet days) and two leads a day, arriving up to
    two days off event time."""
    rng = random.Random(seed)
    out: list[tuple[float, dict[str, Any]]] = []
    n = 0
    for day in range(days):
        for a in range(6):
            for _ in range(rng.choice([0, 2, 6, 20])):
                n += 1
                at = day * 24 + rng.random() * 24
                kind = rng.randrange(6)
                acc = f"a{a}"
                if kind < 2:
                    e = ev(f"e{n}", ["email.opened", "email.clicked"][kind], at,
                           campaign_id="nl", contact_id="k", account_id=acc)
                elif kind < 4:
                    e = ev(f"e{n}", "page.viewed", at, session_id="s",
                           page=rng.choice(["/blog", "/pricing/team"]), account_id=acc)
                elif kind == 4:
                    e = ev(f"e{n}", "goal.converted", at, session_id="s", goal="demo",
                           account_id=acc)
                else:
                    e = ev(f"e{n}", "social.interaction", at, network="linkedin",
                           kind="share", count=rng.randrange(1, 6), account_id=acc)
                out.append((at + rng.random() * 48, e))
        for i in range(2):
            n += 1
            at = day * 24 + rng.random() * 24
            out.append((at + rng.random() * 48,
                        lead(f"e{n}", at, f"a{rng.randrange(7)}", f"L{day}-{i}")))
    out.sort(key=lambda x: (x[0], x[1]["event_id"]))
    return [e for _, e in out]


def run(t: LeadScoring, events: list[dict[str, Any]], seen: int = 0) -> tuple[str, int]:
    """Feed the events, expiring at a watermark three days behind the latest each new day,
    and at each new day also announcing and reading every account's score; a digest of it
    all (the facts, the announced leads and hours, the scores)."""
    h = hashlib.sha256()
    for e in stage(events):
        facts = t.observe(e)
        h.update(msgspec.msgpack.encode(sorted(facts)))
        if e.ts_ms // DAY > seen // DAY:
            seen = e.ts_ms
            t.expire(seen - 3 * DAY)
            h.update(msgspec.msgpack.encode(
                [(k, lead.qualified, round(lead.score, 9)) for k, lead in t.announce()]))
            h.update(msgspec.msgpack.encode(sorted(t.scores(seen).items())))
        seen = max(seen, e.ts_ms)
    return h.hexdigest(), seen


def scoring() -> LeadScoring:
    t = LeadScoring(365 * DAY)
    t.configure(load_catalog())
    return t


class Fixture(msgspec.Struct):
    half: int  # events fed before the state was taken
    seen: int  # the latest event time then
    state: msgspec.Raw  # LeadScoringState version 1
    all: str  # version 1's digest over the whole stream
    second_half: str  # ... over the second half, continued from ``state``


def write_fixture() -> None:
    """Run by main e6dc761 (version 1) to write the fixture."""
    events = stream()
    half = len(events) // 2
    whole, _ = run(scoring(), events)
    t = scoring()
    _, seen = run(t, events[:half])
    state = msgspec.msgpack.encode(t.snapshot())
    second, _ = run(t, events[half:], seen)
    FIXTURE.write_bytes(msgspec.msgpack.encode(
        Fixture(half, seen, msgspec.Raw(state), whole, second)))


def fixture() -> Fixture:
    return msgspec.msgpack.decode(FIXTURE.read_bytes(), type=Fixture)


def test_version_2_scores_what_version_1_scored() -> None:
    digest, _ = run(scoring(), stream())
    assert digest == fixture().all


def test_a_version_1_state_is_converted_and_goes_on_scoring_the_same() -> None:
    fx, events = fixture(), stream()
    old = msgspec.msgpack.decode(fx.state, type=LeadScoringState)
    assert old.version == 1 and {a.packing for a in old.accounts.values()} == {"q"}
    held = sum(len(a.hours) for a in old.accounts.values())
    t = scoring()
    t.restore(old)
    assert {a.packing for a in t.accounts.data.values()} == {"i"}
    assert sum(len(a.hours) for a in t.accounts.data.values()) * 2 == held > 8 * 1000
    digest, _ = run(t, events[fx.half:], fx.seen)
    assert digest == fx.second_half
    # and from its own snapshot, as version 2
    again = scoring()
    again.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(t.snapshot()),
                                         type=LeadScoringState))
    assert again.snapshot() == t.snapshot() and again.snapshot().version == 2


def test_an_hour_costs_8_bytes_and_its_points_saturate() -> None:
    """A social interaction counted 2^62 times earns 2^63 points: version 1's 64-bit sum
    overflowed (an exception in the tracker); the hour's points now stop at 2^31 - 1."""
    t = scoring()
    for e in stage([ev("i1", "social.interaction", 1.5, network="x", kind="like",
                       count=2**62, account_id="a"),
                    ev("i2", "social.interaction", 1.6, network="x", kind="like",
                       count=2**62, account_id="a"),
                    ev("p1", "page.viewed", 2.5, session_id="s", page="/", account_id="a")]):
        t.observe(e)
    acc = t.accounts.data["a"]
    assert len(acc.hours) == len(acc.points) == 8  # two hours, 4 bytes each
    assert t.current_score("a", T0 + 2 * HOUR) == (2**31 - 1) * 2 ** (-1 / 336) + 1


def test_on_disk_with_a_cache_of_two_accounts_it_scores_what_it_scores_in_memory(
        tmp_path: Path) -> None:
    """A worker's accounts on disk (``spill``: a cold table, a 25th of the cache's keys):
    with room for 2 of the 7 accounts every account is read back from disk again and again,
    and the crossings, announcements and scores are version 1's, as in memory."""
    tables = DiskTables(tmp_path / "t", cache_keys=50)
    t = scoring()
    t.spill(tables.table)
    assert isinstance(t.accounts, DiskKeyed) and t.accounts.cache_keys == 2
    digest, _ = run(t, stream())
    assert digest == fixture().all
    assert len(t.accounts.cache) <= 2 and len(t.accounts) >= 6
    tables.close()


def test_a_version_1_state_restored_on_disk_is_converted_as_it_is_read(
        tmp_path: Path) -> None:
    """Version 1's 64-bit accounts are filled onto disk as they are, and converted when the
    tracker reads them (into its cache, or to score them all): it goes on scoring as version
    1 did, and what it changed is written back as version 2."""
    fx, events = fixture(), stream()
    old = msgspec.msgpack.decode(fx.state, type=LeadScoringState)
    tables = DiskTables(tmp_path / "t", cache_keys=50)
    t = scoring()
    t.spill(tables.table)
    t.restore(old)
    assert {a.packing for a in t.accounts.data.values()} == {"q"}  # as stored
    digest, _ = run(t, events[fx.half:], fx.seen)
    assert digest == fx.second_half
    assert {a.packing for a in t.accounts.data.values()} == {"i"}
    tables.close()
