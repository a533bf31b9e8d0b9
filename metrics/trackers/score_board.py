"""The lead scores `kpi-accounts` shows, kept current without scoring every account at every
hour (metrics/trackers/lead_scoring.py: ``LeadScoring.scores``).

With no new points, an account's score only decays, s × 2^(-t / half-life) after t hours,
until the oldest of its hours in the lookback leaves it or a later hour with points (seen
already: the stage scores its newest closed window, behind the newest events) enters it. Its
whole-number score can change only at one of those hours, or once the decay takes it to the
half point below it. So an account is scored again at the first of those hours (a little
early rather than late: the sums' rounding), or when its points change, and its whole number
stands in between. The result is that of scoring every account at every hour, for the cost
of the accounts whose number can have changed (each one a disk read in a worker).
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Sequence
from typing import Final

#: the half point is approached by this much (relative) before it is trusted: scored again a
#: little early, never late (the sums' float rounding is ~1e-15)
_MARGIN: Final = 1e-9


def next_due(hours: Sequence[int], hour: int, lookback_h: int, half_life_h: float,
             score: float) -> int | None:
    """The first hour after ``hour`` at which the whole-number score of an account with
    points at ``hours`` (ascending) and ``score`` at ``hour`` can change with no new points,
    or an hour before it; None: never."""
    hi = bisect.bisect_right(hours, hour)
    due = hours[hi] if hi < len(hours) else None  # a later hour's points enter
    lo = bisect.bisect_right(hours, hour - lookback_h, 0, hi)
    if lo < hi and (due is None or hours[lo] + lookback_h < due):
        due = hours[lo] + lookback_h  # the oldest hour in the lookback leaves it
    shown = round(score)
    if shown > 0:  # it decays to the half point below: score × 2^(-t / h) <= shown - 0.5
        half = (shown - 0.5) * (1 + _MARGIN)
        t = hour + (max(1, math.floor(half_life_h * math.log2(score / half)))
                    if score > half else 1)
        if due is None or t < due:
            due = t
    return due


class ScoreBoard:
    """Each account's score as last shown (whole points, those above 0) and the hour it is
    due again. Derived: rebuilt by a full scan after a restore or a change of settings."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Next time, every account is scored (``hour`` None)."""
        self.hour: int | None = None
        self.shown: dict[str, int] = {}
        #: the accounts whose shown number changed since ``take_moved``; None: any (scored
        #: all over again)
        self.moved: set[str] | None = None
        self.touched: set[str] = set()  # points changed since the last scoring
        self._due_at: dict[str, int] = {}
        #: (hour, account), the ones no longer in ``_due_at`` skipped: a heap entry is
        #: cheaper to leave than to find and remove (most accounts are scored every hour)
        self._heap: list[tuple[int, str]] = []

    def touch(self, account: str) -> None:
        if self.hour is not None:
            self.touched.add(account)

    def due(self, hour: int) -> set[str]:
        """The accounts to score at ``hour`` (not before the last one): those touched since,
        and those due by it. Each is then ``show``-n."""
        assert self.hour is not None and hour >= self.hour
        out, self.touched = self.touched, set()
        heap, due_at = self._heap, self._due_at
        while heap and heap[0][0] <= hour:
            h, account = heapq.heappop(heap)
            if due_at.get(account) == h:
                del due_at[account]
                out.add(account)
        self.hour = hour
        return out

    def take_moved(self) -> set[str] | None:
        moved, self.moved = self.moved, set()
        return moved

    def show(self, account: str, score: int, due: int | None) -> None:
        """An account scored: its whole number (0: not shown) and when it is due again."""
        was = self.shown.pop(account, 0) if score <= 0 else self.shown.get(account, 0)
        if score > 0:
            self.shown[account] = score
        if was != score and self.moved is not None:
            self.moved.add(account)
        if due is None:
            self._due_at.pop(account, None)
            return
        if self._due_at.get(account) != due:
            self._due_at[account] = due
            heapq.heappush(self._heap, (due, account))
            if len(self._heap) > 2 * len(self._due_at) + 1_000:  # mostly stale: rebuilt
                self._heap = [(h, a) for a, h in self._due_at.items()]
                heapq.heapify(self._heap)
