"""Per-account scores through the real broker: the accounts stage sends each account's RFM
on `kpi-accounts` (key account_id, the latest wins) and serves the same on /accounts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
import pytest

from metrics.events import FAMILY_TOPIC
from streams.broker import EmbeddedBroker
from streams.settings import Settings
from tests.helpers import DAY, HOUR, SENTINEL, ms
from tests.integration.conftest import WorkerProc, wait_for
from tests.integration.test_streaming_equals_replay import drain, produce
from tests.unit.trackers.test_account_purchases import RFM_STORY

pytestmark = pytest.mark.integration

AT = ms("2026-09-01T00:00:00+00:00")


def test_account_scores_on_the_topic_and_over_http(
        broker: EmbeddedBroker, isolated: Settings,
        start_worker: Callable[[Settings], WorkerProc]) -> None:
    worker = start_worker(isolated)
    orders = sorted(
        ((AT - days * DAY, {"event_id": f"{a}{i}", "type": "order.placed", "cart_id": f"{a}{i}",
                            "amount": amount, "account_id": a})
         for a, buys in RFM_STORY.items() for i, (days, amount) in enumerate(buys)),
        key=lambda x: x[0])
    messages: list[tuple[str, bytes, int | None]] = [
        (isolated.topic("web-events"), orjson.dumps({**ev, "ts": ts}), None)
        for ts, ev in orders]
    # every input partition moves on past AT: the stage closes the 30 d window ending
    # there (and the hours after, up to the sentinel less its grace)
    messages += [(isolated.topic(FAMILY_TOPIC[fam]), orjson.dumps(
        {"event_id": f"sentinel-{fam}-{p}", "ts": AT + 3 * HOUR, **extra}), p)
        for fam, extra in SENTINEL.items() for p in range(isolated.partitions)]
    asyncio.run(produce(broker.bootstrap, messages))

    def accounts() -> list[dict[str, object]]:
        return list(orjson.loads(worker.get("/accounts"))["accounts"])

    wait_for(lambda: len(accounts()) == 5, 90, "the five accounts' scores on /accounts",
             worker)
    served = {r["account_id"]: r for r in accounts()}
    # as in tests/unit/trackers/test_account_purchases.py: the scores' ranks are those of AT
    assert {a: (r["recency_score"], r["frequency_score"], r["monetary_score"],
                r["rfm_segment"]) for a, r in served.items()} == {
        "A": (5, 4, 3, "champions"), "B": (4, 3, 4, "loyal"), "C": (3, 1, 2, "potential"),
        "D": (2, 5, 1, "at_risk"), "E": (1, 1, 5, "lost")}
    assert served["B"]["monetary"] == 2000 and served["D"]["frequency"] == 4
    assert served["A"]["last_purchase"] == "2026-08-31T00:00:00Z"
    assert orjson.loads(worker.get("/accounts?rfm_segment=loyal"))["accounts"] == [served["B"]]

    # the topic: keyed by account, its latest record per key is what /accounts serves
    published = asyncio.run(drain(broker.bootstrap, isolated.topic("kpi-accounts")))
    latest = {m.key.decode(): orjson.loads(m.value) for m in published}
    assert latest == served
    # a record per change only: as the hours after AT closed, the scores stayed put
    assert len(published) == len({(m.key, orjson.dumps({k: v for k, v in orjson.loads(
        m.value).items() if k not in ("as_of", "emitted_at")})) for m in published})
