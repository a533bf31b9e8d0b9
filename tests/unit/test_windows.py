"""Panes and rolling windows: running sums close windows exactly, a late update patches
the closed windows it falls in (marked dirty for a revision), and the typed state
round-trips."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from kpi_engine.generator import GeneratorConfig
from metrics.windows import FamilyWindows, WindowsState
from tests.helpers import DEFAULT_CATALOG, ms

CFG = DEFAULT_CATALOG.families["email"]  # 5m/1m, 1h/5m, 24h/1h; grace 2m
M = 60_000
K = ("sent", "", "")
T0 = ms("2026-01-05T00:00:00+00:00")


def fresh() -> FamilyWindows:
    fw = FamilyWindows(CFG)
    fw.start(10 * M)
    return fw


def test_closed_windows_sum_their_panes_and_a_late_update_revises_them() -> None:
    fw = fresh()
    for minute in range(10, 20):
        fw.add(minute * M, K, 1)
    closed = {(s.name, end): snap for s, end, snap in fw.close_until(20 * M)}
    assert closed[("5m", 15 * M)] == {K: 5}  # minutes 10..14
    assert not fw.dirty
    fw.add(14 * M, K, 1)  # late, within grace of the open windows
    assert ("5m", 15 * M) in fw.dirty
    assert fw.closed_snapshot("5m", 15 * M) == {K: 6}
    assert fw.open_snapshot(CFG.windows[0], 21 * M) == {K: 4}  # 16..19 (+0 at 20)


def test_the_state_round_trips_and_closes_on_identically() -> None:
    a = fresh()
    for minute in range(10, 40, 3):
        a.add(minute * M, K, minute)
    a.close_until(30 * M)
    b = FamilyWindows(CFG)
    b.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot()), type=WindowsState))
    for fw in (a, b):
        fw.add(35 * M, K, 7)
    assert [(s.name, e, snap) for s, e, snap in a.close_until(3 * 3_600_000)] == \
        [(s.name, e, snap) for s, e, snap in b.close_until(3 * 3_600_000)]


def test_skipping_empty_windows_changes_no_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sparse traffic with gaps of days, disorder and late events: the records are
    the same whether empty spans are skipped or every window is closed one by one."""
    from metrics.engine import EngineConfig, KpiEngine
    from tests.helpers import generated_events

    evs: list[Any] = []
    for i, gap_days in enumerate((0, 2, 9)):
        part, _ = generated_events(GeneratorConfig(
            rate=5, duration_s=900, seed=i, history_days=1, late=0.02, late_after_s=300,
            disorder_s=60, start_ms=T0 + gap_days * 86_400_000))
        evs += part

    def run() -> list[tuple[Any, ...]]:
        engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
        recs = []
        for n, ev in enumerate(evs):
            engine.ingest(ev, source=n % 2)
            if engine.due:
                recs += engine.advance()
        recs += engine.flush()
        return [(r["kpi"], r["window"], r["end"], tuple(r["dims"].items()), r["numerator"],
                 r["denominator"], r["revision"]) for r in recs]

    skipped = run()
    monkeypatch.setattr(FamilyWindows, "_empty_until", lambda self, last_end, *a: last_end)
    assert run() == skipped and len(skipped) > 1000


def test_a_jump_of_decades_closes_in_constant_time() -> None:
    fw = fresh()
    fw.add(10 * M, K, 1)
    fw.close_until(20 * M, 0)
    far = 30 * 365 * 86_400_000
    fw.add(far, K, 1)
    closed = fw.close_until(far + 3_600_000, far)
    # only the windows near the old and the new data are closed, never the decades between
    ends = [end for _, end, _ in closed]
    assert ends and all(end <= 10 * M + 25 * 3_600_000 or end >= far for end in ends)
    assert len(ends) < 200 and fw.frontier > far
