"""`kpi-accounts`' lead scores alone, over weeks of event time: what scoring costs as the
hours each account holds grow (up to the 90-day lookback).

    python benchmarks/scores_bench.py [--accounts N] [--days D] [--per-day V] [--check]
    (default 2,000 accounts, 30 days, 58,000 page views a day: the default mix's)

Feeds the accounts stage's copies of page views (one in seven a pricing page) to
`LeadScoring` with the default catalog's MQL settings, hour by hour, and takes the scores
`kpi-accounts` carries at the end of every hour, as the stage does at each close. Prints the
time observing the events and the time scoring, each per engagement event. ``--check``
also sums every account afresh at every hour and compares the whole numbers.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

# run from a clone, a benchmark measures the clone (see stream_bench.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.catalog import load_catalog
from metrics.constants import HOUR_MS
from metrics.events import Event, struct_of
from metrics.trackers.lead_scoring import LeadScoring

T0 = 1_772_409_600_000  # 2026-03-02T00:00:00Z
DAY_MS = 24 * HOUR_MS


def views(rng: random.Random, hour: int, n: int, accounts: int) -> list[Event]:
    """The stage's copies of an hour's page views, in event-time order."""
    page_view = struct_of("account.page_view")
    out: list[Event] = []
    for ts in sorted(T0 + hour * HOUR_MS + rng.randrange(HOUR_MS) for _ in range(n)):
        eid = f"v{hour}-{len(out)}"
        page = "/pricing" if rng.random() < 1 / 7 else "/blog"
        data = page_view(event_id=eid, ts=0, session_id="s", page=page,
                         account_id=f"a{rng.randrange(accounts)}")
        out.append(Event(eid, "account.page_view", ts, "accounts", data))
    return out


def every_account(t: LeadScoring, hour: int) -> dict[str, int]:
    """The whole numbers of summing every account afresh at the hour."""
    out: dict[str, int] = {}
    for account, acc in t.accounts.items():
        if (score := round(sum(t._score_parts(acc, hour)))) > 0:
            out[account] = score
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=2_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--per-day", type=int, default=58_000)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    rng = random.Random(1)
    t = LeadScoring(365 * DAY_MS)
    t.set_config(load_catalog().mql)
    observing = scoring = 0.0
    n = 0
    for hour in range(args.days * 24):
        events = views(rng, hour, args.per_day // 24, args.accounts)
        t0 = time.perf_counter()
        for e in events:
            t.observe(e)
        t1 = time.perf_counter()
        shown = t.scores(T0 + hour * HOUR_MS + HOUR_MS - 1)
        scoring += time.perf_counter() - t1
        observing += t1 - t0
        n += len(events)
        if args.check and shown != every_account(t, T0 // HOUR_MS + hour):
            sys.exit(f"hour {hour}: the scores differ from summing every account afresh")
    print(f"{args.accounts:,} accounts, {args.days} days, {n:,} page views")
    print(f"observing: {observing:.2f} s, {observing / n * 1e6:.2f} us an event")
    print(f"scoring at every hour: {scoring:.2f} s, {scoring / n * 1e6:.2f} us an event")
    if args.check:
        print("scores: the same as summing every account afresh at every hour")


if __name__ == "__main__":
    main()
