"""Workers scale out by owning different shards of the catalog (``Catalog.shards``): groups of
families no KPI spans. One engine per shard, each fed only its families' topics, must
publish exactly what one engine over the whole catalog publishes."""

from __future__ import annotations

from typing import Any

import orjson

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.catalog import Catalog, build_catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import ACCOUNTS, FAMILY_TOPIC, Event, parse_event
from metrics.feed import FEEDING_FAMILIES, copy_for_accounts
from tests.helpers import DEFAULT_CATALOG, final_values, ms, replay

START = ms("2026-09-01T00:00:00+00:00")
NOW = START + 60 * 86_400_000
TOPIC_FAMILY = {t: f for f, t in FAMILY_TOPIC.items()}


def test_default_catalog_shards_keep_multi_family_kpis_whole() -> None:
    shards = DEFAULT_CATALOG.shards()
    assert shards == {"accounts": ("accounts",), "crm+spend": ("crm", "spend"),
                      "email": ("email",), "social": ("social",), "web": ("web",)}
    parts = [DEFAULT_CATALOG.restrict(fams) for fams in shards.values()]
    # every KPI and aggregate lives in exactly one shard
    assert sorted(k for p in parts for k in p.kpis) == sorted(DEFAULT_CATALOG.kpis)
    assert sorted(a for p in parts for a in p.aggregates) == sorted(DEFAULT_CATALOG.aggregates)
    assert set(parts[1].kpis) >= {"cost_per_lead", "cost_per_acquisition", "romi"}


def test_a_kpi_over_two_families_joins_their_shards() -> None:
    doc: dict[str, Any] = {
        "version": 1, "hops": {"1h": "5m"},
        "families": {f: {"grace": "2m", "windows": ["1h"]} for f in FAMILY_TOPIC},
        "aggregates": {"sent": {"event": "email.sent"}, "views": {"event": "page.viewed"},
                       "posts": {"event": "social.interaction", "sum": "count"},
                       "spend": {"event": "spend.recorded", "sum": "amount"}},
        "kpis": {"views_per_send": {"numerator": "views", "denominator": "sent",
                                    "unit": "ratio"},
                 "spend_per_post": {"numerator": "spend", "denominator": "posts",
                                    "unit": "ratio"}},
    }
    catalog = build_catalog(doc)
    assert catalog.shards() == {"crm": ("crm",), "email+web": ("email", "web"),
                                "social+spend": ("social", "spend")}


def test_one_engine_per_shard_publishes_what_one_engine_over_everything_does() -> None:
    gen = Generator(GeneratorConfig(rate=60, duration_s=3600, seed=5, start_ms=START,
                                    history_days=3, invalid=0.01, duplicates=0.02, late=0.01,
                                    late_after_s=600, disorder_s=60))
    messages = [(topic, raw) for _, (topic, raw) in gen.messages()]
    whole = replay([raw for _, raw in messages], now_ms=NOW)
    sharded: list[dict[str, Any]] = []
    for fams in DEFAULT_CATALOG.shards().values():
        part = DEFAULT_CATALOG.restrict(fams)
        if fams == (ACCOUNTS,):  # fed the other shards' copies (streams/feed.py)
            records = accounts_shard(messages, part)
        else:
            mine = [raw for topic, raw in messages if TOPIC_FAMILY[topic] in fams]
            records = replay(mine, part, now_ms=NOW)
        assert records and {r["kpi"] for r in records} <= set(part.kpis)
        sharded += records
    assert len(whole) > 5000
    # the revision counter counts republishes, so it follows how often windows are
    # published (any family's close publishes all pending revisions); the values may not
    expected, got = final_values(whole), final_values(sharded)
    assert len(expected) > 50_000
    assert got == expected


def accounts_shard(messages: list[tuple[str, bytes]], part: Catalog) -> list[dict[str, Any]]:
    """The accounts stage's shard: the copies of the feeding families' valid events, and
    their event time as progress (what streams/feed.py carries between shards)."""
    engine = KpiEngine(part, EngineConfig(idle_timeout_ms=0))
    out: list[dict[str, Any]] = []
    for topic, raw in messages:
        if TOPIC_FAMILY[topic] not in FEEDING_FAMILIES:
            continue
        ev = parse_event(raw, now_ms=NOW, topic_family=TOPIC_FAMILY[topic])
        if type(ev) is not Event:
            continue
        copy = copy_for_accounts(ev)
        if copy is None:
            engine.progress(ACCOUNTS, 0, ev.ts_ms)
        else:
            engine.ingest(copy)
        if engine.due:
            out += engine.advance()
    return out + engine.flush()


def test_an_event_id_repeats_only_within_a_shard() -> None:
    """Dedup is per shard, as the worker owning a shard sees ids: the same id on the email
    and crm topics is two events, on the crm and spend topics (one shard) a duplicate."""
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig())
    ts = "2026-09-01T10:00:00Z"
    events = [
        {"event_id": "x", "ts": ts, "type": "email.sent", "campaign_id": "c", "contact_id": "k"},
        {"event_id": "x", "ts": ts, "type": "email.sent", "campaign_id": "c", "contact_id": "k"},
        {"event_id": "x", "ts": ts, "type": "survey.answered", "score": 9},
        {"event_id": "x", "ts": ts, "type": "spend.recorded", "amount": 5, "channel": "email"},
    ]
    got = []
    for e in events:
        ev = parse_event(orjson.dumps(e), now_ms=NOW)
        assert isinstance(ev, Event)
        got.append(engine.ingest(ev))
    assert got == ["ok", "duplicate", "ok", "duplicate"]
    # the email shard's, crm+spend's, and the accounts stage's for the spend's copy
    assert engine.state_sizes()["dedup_ids"] == 3
