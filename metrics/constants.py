"""Constants every part of the core shares (one home, so no part imports another for them)."""

from __future__ import annotations

from typing import Final

#: breakdown name of the total over all dimensions
TOTAL: Final = ""
#: the value of a dimension an event does not carry
UNKNOWN: Final = "unknown"
#: sums of money and durations are kept in millionths (exact integers)
MICRO: Final = 1_000_000
#: a watermark or frontier that was never set
NEVER: Final = -(2**62)
NEVER_END: Final = 2**62  # a time no event reaches
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 86_400_000
