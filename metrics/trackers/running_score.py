"""Lead scores carried from one hour to the next instead of summed afresh
(metrics/trackers/lead_scoring.py: ``LeadScoring.scores``).

An account's score at hour H is the sum over its hours h in (H - lookback, H] of their points
× 2^(-(H - h) / half-life). Summed afresh, it costs every hour with points in the lookback:
up to 2,160 of them, ~0.3 ms in Python, and with most accounts engaged every hour that made
most of the time of a month-long backlog (benchmarks/scores_bench.py, the default mix: 37.7
us an engagement event at 30 days, 84.9 at 90; carried, 8.8 and 8.0). The score at H' > H is
the one at H decayed by H' - H hours, less the hours that left the lookback, plus those
that entered: a few terms an hour.

The two differ only by float rounding, which is bounded (``bound``: every operation since
the last sum afresh, each off by at most half an ulp of the largest value it saw). Where that
bound could change the whole number shown (a score within it of a half point), the score is
summed afresh: the whole numbers are those of summing afresh, at every hour.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Final

#: a float operation's relative error, doubled (half an ulp is 2^-53)
_EPS: Final = 2.0**-52
#: operations carried before the next scoring sums afresh (keeps the bound ~1e-12 relative)
_REFRESH: Final = 4_096


class RunningScores:
    """Per account: the hour scored last, its score, the largest value its sums saw since
    they were last summed afresh, and the operations since. Derived: dropped with the
    account, or whenever its hours before the one scored change."""

    def __init__(self) -> None:
        self.sums: dict[str, tuple[int, float, float, int]] = {}
        self.configure([1.0], 1, 1.0)

    def configure(self, decay: Sequence[float], lookback_h: int, half_life_h: float) -> None:
        """The settings' decay table (by age in hours, over the lookback)."""
        self._decay, self._lookback_h, self._half_life_h = decay, lookback_h, half_life_h
        self.clear()

    def clear(self) -> None:
        """Every account summed afresh next (a restore: the points are another state's)."""
        self.sums.clear()

    def changed(self, account: str, hour: int) -> None:
        """Points of the account at ``hour`` changed (or some of its hours were cut)."""
        entry = self.sums.get(account)
        if entry is not None and entry[0] >= hour:
            del self.sums[account]

    def forget(self, account: str) -> None:
        self.sums.pop(account, None)

    def carried(self, account: str, hours: Sequence[int], points: Sequence[int], hour: int
                ) -> float | None:
        """The account's score at ``hour`` carried from the one before, given its ``hours``
        with points (ascending) and their ``points``: within ``bound`` of the sum afresh and
        on the same side of every half point. None: sum it afresh, then ``start``."""
        entry = self.sums.get(account)
        lookback = self._lookback_h
        if entry is None or not 0 <= hour - entry[0] < lookback or entry[3] > _REFRESH:
            return None
        at, value, mass, ops = entry
        if hour == at:  # as taken then: nothing at or before it changed since (``changed``)
            return value
        decay = self._decay
        value *= decay[hour - at]
        # the hours that left the lookback, (at - lookback, hour - lookback], and those
        # that entered it, (at, hour]
        lo = bisect.bisect_right(hours, at - lookback)
        first = bisect.bisect_right(hours, hour - lookback, lo)
        out = 0.0
        for i in range(lo, first):
            out += points[i] * 2.0 ** (-(hour - hours[i]) / self._half_life_h)
        hi = bisect.bisect_right(hours, at, first)
        end = bisect.bisect_right(hours, hour, hi)
        new = 0.0
        for i in range(hi, end):
            new += points[i] * decay[hour - hours[i]]
        mass = max(mass, value + new)
        # the decay (its table's rounding and the product's), a term's power or table
        # entry, product and sum, the two sums joined
        ops += 4 + 3 * (first - lo + end - hi)
        value = value - out + new
        terms = end - first
        # the sum afresh it stands for is off too: by its terms' operations
        if _near_half(value, bound(mass, ops + 2 * terms)):
            return None
        self.sums[account] = (hour, value, mass, ops)
        return value

    def start(self, account: str, hours: Sequence[int], hour: int, value: float) -> None:
        """The account's score at ``hour``, summed afresh: carried from here on."""
        terms = bisect.bisect_right(hours, hour) - bisect.bisect_right(hours,
                                                                     hour - self._lookback_h)
        self.sums[account] = (hour, value, value, 2 * terms)  # its own rounding


def bound(mass: float, ops: int) -> float:
    """How far a running score can be from the sum afresh, ``ops`` operations between them
    in all, each off by at most half an ulp of a value at most ``mass`` (all terms are
    positive: no partial sum exceeds the largest total), doubled for safety."""
    return 2 * (ops + 1) * _EPS * mass


def _near_half(value: float, within: float) -> bool:
    """The score's whole number could differ from the sum afresh's (or its sign)."""
    return abs(value - math.floor(value) - 0.5) <= within
