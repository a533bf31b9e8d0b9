"""Email rates by send cohort (CONTRACT.md §2): responses count at the send they answer."""

from __future__ import annotations

import random
from typing import Any

import orjson

from metrics.events import Event, parse_event
from metrics.trackers.cohorts import SendCohorts
from tests.helpers import final_values, ms, pick, replay

T10 = ms("2026-11-02T10:00:00+00:00")
MIN, HOUR = 60_000, 3_600_000


def ev(eid: str, type_: str, at: int, contact: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": eid, "type": type_, "ts": at, "campaign_id": "blast",
            "contact_id": contact, **fields}


def blast() -> list[dict[str, Any]]:
    """100 sends at 10:00, delivered within seconds; 60 opened 1-3 h later (10 of them twice),
    12 clicks, 5 bounces (2 hard), 1 unsubscribe."""
    rnd = random.Random(3)
    out = []
    for i in range(100):
        c = f"p{i}"
        out.append(ev(f"s{i}", "email.sent", T10 + i * 100, c, segment="cfo"))
        if i < 5:
            out.append(ev(f"b{i}", "email.bounced", T10 + i * 100 + 2000, c,
                          bounce="hard" if i < 2 else "soft"))
            continue
        out.append(ev(f"d{i}", "email.delivered", T10 + i * 100 + 3000, c))
        if i < 65:
            t = T10 + HOUR + rnd.randrange(2 * HOUR)
            out.append(ev(f"o{i}", "email.opened", t, c))
            if i < 15:
                out.append(ev(f"r{i}", "email.opened", t + 5 * MIN, c))
            if i < 17:
                out.append(ev(f"k{i}", "email.clicked", t + MIN, c))
    out.append(ev("u1", "email.unsubscribed", T10 + 2 * HOUR, "p50"))
    out.sort(key=lambda e: e["ts"])
    return out


def test_a_blast_answered_hours_later_counts_at_its_send_and_never_exceeds_100_percent() -> None:
    records = replay(blast(), now_ms=T10 + 40 * HOUR)
    at_send = {k: pick(records, k, "1h", "2026-11-02T11:00:00Z")
               for k in ("email_open_rate", "email_click_rate", "email_click_through_rate",
                         "email_bounce_rate", "email_hard_bounce_rate",
                         "email_unsubscribe_rate", "email_undelivered_rate")}
    got = {k: (r["numerator"], r["denominator"]) for k, r in at_send.items()}
    assert got == {"email_open_rate": (60, 100), "email_click_rate": (12, 60),
                   "email_click_through_rate": (12, 95), "email_bounce_rate": (5, 100),
                   "email_hard_bounce_rate": (2, 100), "email_unsubscribe_rate": (1, 95),
                   "email_undelivered_rate": (5, 100)}
    rates = [r["value"] for r in records
             if r["kpi"].startswith("email_") and r["value"] is not None
             and r["kpi"] != "email_open_share"]
    assert rates and max(rates) <= 1.0
    # the hours of the opens hold no sends: no open rate there, rather than one above 100 %
    later = [r for r in final_values(records).values() if r["kpi"] == "email_open_rate"
             and r["window"] == "1h" and r["end"] > "2026-11-02T11:05:00Z"]
    assert all(r["value"] is None or r["value"] == 0 for r in later), later
    assert all(r["numerator"] == 0 for r in later)


def test_the_cohort_finals_do_not_depend_on_arrival_order() -> None:
    events = blast()
    oracle = final_values(replay(events, now_ms=T10 + 40 * HOUR))
    rnd = random.Random(11)
    for _ in range(3):
        # shuffled within a minute: responses may come before their send
        shuffled = sorted(events, key=lambda e: e["ts"] + rnd.randrange(MIN))
        assert final_values(replay(shuffled, now_ms=T10 + 40 * HOUR)) == oracle


def test_a_response_answers_the_latest_send_before_it() -> None:
    events = [ev("s1", "email.sent", T10, "p"), ev("s2", "email.sent", T10 + 2 * HOUR, "p"),
              ev("o1", "email.opened", T10 + 3 * HOUR, "p"),
              ev("o0", "email.opened", T10 - HOUR, "p")]  # before any send: no cohort
    records = replay(events, now_ms=T10 + 40 * HOUR)
    first = pick(records, "email_open_rate", "1h", "2026-11-02T11:00:00Z")
    second = pick(records, "email_open_rate", "1h", "2026-11-02T13:00:00Z")
    assert (first["numerator"], first["denominator"]) == (0, 1)
    assert (second["numerator"], second["denominator"]) == (1, 1)


def test_the_facts_emitted_add_up_to_a_recount_whatever_the_order() -> None:
    """The in-order fast path and the recount agree: what observe() emitted, summed, is
    what counting the final cohorts from scratch gives, on mostly ordered input with ties
    and stragglers."""
    from collections import Counter

    import orjson

    from metrics.events import Event, parse_event
    from metrics.trackers.cohorts import SendCohorts, _facts

    rnd = random.Random(7)
    kinds = ["email.sent", "email.delivered", "email.opened", "email.clicked",
             "email.bounced", "email.unsubscribed"]
    for trial in range(30):
        tracker = SendCohorts(10 * HOUR)
        emitted: Counter[tuple[int, str, Any]] = Counter()
        t = T10
        for i in range(300):
            t += rnd.choice([0, 0, 1000, 60_000])  # ties and steps
            at = t - (rnd.randrange(3 * MIN) if rnd.random() < 0.15 else 0)  # stragglers
            kind = rnd.choice(kinds)
            raw = ev(f"{trial}-{i}", kind, at, f"p{rnd.randrange(4)}", segment="cfo",
                     **({"bounce": rnd.choice(["hard", "soft"])} if kind == "email.bounced"
                        else {}))
            event = parse_event(orjson.dumps(raw), now_ms=T10 + 40 * HOUR)
            assert isinstance(event, Event)
            for ts, b, dims, v in tracker.observe(event):
                emitted[(ts, b, dims)] += v
        recount: Counter[tuple[int, str, Any]] = Counter()
        for cohort in tracker.cohorts.data.values():
            for ts, b, dims, v in _facts(cohort):
                recount[(ts, b, dims)] += v
        assert +emitted == recount and recount


def test_the_sends_of_a_blast_hold_one_dims_tuple_between_them() -> None:
    """Each send built its own dims (three tuples, 168 bytes) and every cohort held it."""
    tracker = SendCohorts(24 * HOUR)
    for e in blast():
        parsed = parse_event(orjson.dumps(e), now_ms=T10 + 40 * HOUR)
        assert type(parsed) is Event
        if parsed.type in SendCohorts.consumes:
            tracker.observe(parsed)
    dims = [d for c in tracker.cohorts.data.values() for _, d in c.sends]
    assert len(dims) == 100 and len({id(d) for d in dims}) == 1
