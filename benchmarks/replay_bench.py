"""`replay` throughput with the full default catalog, and peak memory.

    python benchmarks/replay_bench.py [N]     (default 1,000,000 events)

Generates N events of live traffic (after 30 days of CRM/spend history) to a temporary
file, then runs `kpi-engine replay` on it as a user would, output to /dev/null.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    rate = 300
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        subprocess.run([sys.executable, "-m", "kpi_engine.cli", "generate", "--rate", str(rate),
                        "--duration", str(n / rate), "--seed", "1", "--out", path],
                       check=True, stderr=subprocess.DEVNULL)
        with open(path, "rb") as fh:
            lines = sum(1 for _ in fh)
        t0 = time.perf_counter()
        with open(os.devnull, "wb") as out:
            res = subprocess.run([sys.executable, "-m", "kpi_engine.cli", "replay", path],
                                 stdout=out, stderr=subprocess.PIPE, check=True)
        elapsed = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(res.stderr.decode().strip().splitlines()[-1])
    print(f"replay: {lines / elapsed:,.0f} events/s ({lines:,} events in {elapsed:.1f} s, "
          f"process start included), peak RSS {peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
