"""Panes and rolling windows: running sums close windows exactly, a late update patches
the closed windows it falls in (marked dirty for a revision), and the typed state
round-trips."""

from __future__ import annotations

import msgspec

from metrics.windows import FamilyWindows, WindowsState
from tests.helpers import DEFAULT_CATALOG

CFG = DEFAULT_CATALOG.families["email"]  # 5m/1m, 1h/5m, 24h/1h; grace 2m
M = 60_000
K = ("sent", "", "")


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
