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
