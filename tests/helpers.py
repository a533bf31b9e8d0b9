"""Shared test helpers: run the pure core on in-memory events."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from kpi_engine.replay import replay_lines
from metrics.catalog import Catalog, load_catalog
from metrics.records import window_key

DEFAULT_CATALOG = load_catalog()
HOUR, DAY = 3_600_000, 86_400_000
#: per family, how far past the last event a sentinel must be to close every window
#: holding data: longest window + grace + a hop
SENTINEL_AFTER = {"email": 26 * HOUR, "web": 26 * HOUR, "social": 26 * HOUR,
                  "crm": 31 * DAY + 2 * HOUR, "spend": 31 * DAY + 2 * HOUR,
                  # fed by web, crm and spend (metrics/feed.py): it closes what web's
                  # sentinel lets it, less its grace
                  "accounts": 25 * HOUR}
SENTINEL: dict[str, dict[str, Any]] = {
    "email": {"type": "email.sent", "campaign_id": "sentinel", "contact_id": "s"},
    "web": {"type": "page.viewed", "session_id": "sentinel", "page": "/"},
    "social": {"type": "social.impressions", "network": "sentinel", "count": 1},
    "crm": {"type": "survey.answered", "score": 8},
    "spend": {"type": "spend.recorded", "amount": 1, "channel": "sentinel"},
}


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def replay(events: Iterable[dict[str, Any] | bytes], catalog: Catalog = DEFAULT_CATALOG,
           now_ms: int | None = None) -> list[dict[str, Any]]:
    lines = (e if isinstance(e, bytes) else orjson.dumps(e) for e in events)
    return [rec for kind, item in replay_lines(lines, catalog, now_ms=now_ms)
            if kind == "records" for rec in item]


def finals(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Last revision per kpi-windows key, without the wall-clock field."""
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        key = window_key(rec)
        prev = out.get(key)
        if prev is None or rec["revision"] > prev["revision"]:
            out[key] = {k: v for k, v in rec.items() if k != "emitted_at"}
    return out


def pick(records: Iterable[dict[str, Any]], kpi: str, window: str, end: str,
         **dims: str) -> dict[str, Any]:
    matches = [r for r in finals(records).values()
               if r["kpi"] == kpi and r["window"] == window and r["end"] == end
               and r["dims"] == dims]
    assert len(matches) == 1, f"no single record for {kpi} {window} {end} {dims}: {matches}"
    return matches[0]


def final_values(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """finals() without the revision counter, which counts republishes and so depends on
    arrival order; the values of the last revision must not."""
    return {k: {f: v for f, v in r.items() if f != "revision"}
            for k, r in finals(records).items()}


def closed_by(finals_: dict[str, dict[str, Any]], cutoff: dict[str, int]
              ) -> dict[str, dict[str, Any]]:
    """The windows ending by their family's cutoff (a stream's last events, the sentinels,
    leave their own windows open)."""
    def closed(rec: dict[str, Any]) -> bool:
        fam = DEFAULT_CATALOG.kpis[rec["kpi"]].families[0]
        return ms(rec["end"].replace("Z", "+00:00")) <= cutoff[fam]
    return {k: r for k, r in finals_.items() if closed(r)}


def assert_finals_equal(oracle: dict[str, dict[str, Any]], streaming: dict[str, dict[str, Any]],
                        cutoff: dict[str, int], at_least: int = 5000) -> int:
    """The streamed finals equal replay's, for every window closed by the cutoff; returns
    how many were compared."""
    expected = closed_by(oracle, cutoff)
    got = closed_by(streaming, cutoff)
    assert len(expected) >= at_least
    missing = sorted(set(expected) - set(got))[:5]
    extra = sorted(set(got) - set(expected))[:5]
    assert not missing and not extra, (missing, extra)
    diff = [k for k in expected if expected[k] != got[k]][:5]
    assert not diff, [(k, expected[k], got[k]) for k in diff]
    return len(expected)


def generated_events(cfg: Any) -> tuple[list[Any], int]:
    """The valid events of a generator run (``cfg``: a GeneratorConfig), parsed, and the
    run's end time."""
    from kpi_engine.generator import Generator
    from metrics.events import Event, parse_event

    gen = Generator(cfg)
    out = []
    for _, (_topic, raw) in gen.messages():
        ev = parse_event(raw, now_ms=gen.end_ms + 60_000)
        if type(ev) is Event:
            out.append(ev)
    return out, gen.end_ms
