"""Parse + validate throughput on one core (issue target: >= 300k events/s).

    python benchmarks/parse_bench.py [N]
"""

from __future__ import annotations

import gc
import sys
import time

from kpi_engine.generator import Generator, GeneratorConfig
from metrics.events import Event, event_parser


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500_000
    gen = Generator(GeneratorConfig(rate=500, duration_s=n / 500 + 60, seed=1, history_days=0))
    lines = [raw for _, (_, raw) in gen.messages()][:n]
    size = sum(map(len, lines)) / len(lines)
    now = time.time_ns() // 1_000_000
    gc.set_threshold(50_000, 50, 100)
    parse = event_parser(now_ms=now)  # as replay and the worker do: one parser per batch
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        ok = sum(1 for raw in lines if type(parse(raw)) is Event)
        best = max(best, len(lines) / (time.perf_counter() - t0))
    assert ok == len(lines)
    print(f"parse+validate: {best:,.0f} events/s ({len(lines):,} events, "
          f"{size:.0f} bytes avg, best of 3)")


if __name__ == "__main__":
    main()
