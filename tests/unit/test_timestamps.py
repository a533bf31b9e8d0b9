"""Event time from ``ts``: the cached UTC fast path agrees with datetime, and malformed
times are refused."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("text", [
    "2026-11-01T00:12:34Z", "2026-11-01T00:12:34.567Z", "2026-11-01T23:59:59.999Z",
    "2024-02-29T12:00:00Z", "2026-11-01T00:12:34.5Z", "2026-11-01T00:12:34.567891Z",
    "2026-11-01T01:12:34+01:00", "2026-11-01 00:12:34Z",
])
def test_fast_utc_path_agrees_with_fromisoformat(text: str) -> None:
    from datetime import datetime

    from metrics.timestamps import parse_ts

    expected = int(datetime.fromisoformat(text).timestamp() * 1000)
    assert parse_ts(text) == expected


@pytest.mark.parametrize("text", ["2026-11-01T00:12:+4Z", "2026-11-01T00:12:60Z",
                                  "2026-13-01T00:12:34Z", "2026-11-01T00:12:3٤Z",
                                  "2026-11-01T00:12:34.+12Z", "2026-11-01T00:12:34"])
def test_malformed_utc_times_are_rejected(text: str) -> None:
    from metrics.timestamps import parse_ts

    assert parse_ts(text) is None


def test_the_fast_paths_caches_stay_bounded_and_right_across_a_reset() -> None:
    """Months of event time pass through the second and minute caches: they start over at
    their bound (a worker's memory), and times read after a reset are still right."""
    from datetime import UTC, datetime, timedelta

    from metrics.timestamps import _MINUTE_MS, CACHE_MAX, SECOND_MS, parse_ts

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(0, 3 * CACHE_MAX):
        t = t0 + timedelta(seconds=61 * i)  # a new minute and a new second every time
        assert parse_ts(t.strftime("%Y-%m-%dT%H:%M:%S.250Z")) == int(t.timestamp()) * 1000 + 250
        assert len(SECOND_MS) <= CACHE_MAX + 1 and len(_MINUTE_MS) <= CACHE_MAX + 1
