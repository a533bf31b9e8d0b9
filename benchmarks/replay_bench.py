"""`replay` throughput with the full default catalog, and peak memory.

    python benchmarks/replay_bench.py [N] [RUNS]   (default 1,000,000 events, 3 runs)

Generates N events of live traffic (after 30 days of CRM/spend history) to a temporary
file, then runs `kpi-engine replay` on it RUNS times as a user would, output to /dev/null,
and prints every run, the best and the median. Each run is timed from process start to
exit; its peak RSS is the replay process's own (os.wait4), not the generator's.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time


def run_once(path: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, the replay's summary line)."""
    with open(os.devnull, "wb") as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "replay", path],
                                stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        summary = err.read().decode().strip().splitlines()[-1]
    if proc.returncode != 0:
        raise SystemExit(f"replay failed ({proc.returncode}): {summary}")
    return elapsed, usage.ru_maxrss / 1024, summary


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rate = 300
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        subprocess.run([sys.executable, "-m", "kpi_engine.cli", "generate", "--rate", str(rate),
                        "--duration", str(n / rate), "--seed", "1", "--out", path],
                       check=True, stderr=subprocess.DEVNULL)
        with open(path, "rb") as fh:
            lines = sum(1 for _ in fh)
        rates, peaks = [], []
        for i in range(runs):
            elapsed, peak_mb, summary = run_once(path)
            rates.append(lines / elapsed)
            peaks.append(peak_mb)
            if i == 0:
                print(summary)
            print(f"run {i + 1}: {lines / elapsed:,.0f} events/s ({lines:,} events in "
                  f"{elapsed:.2f} s), peak RSS {peak_mb:,.0f} MB")
    print(f"replay: best {max(rates):,.0f} events/s, median {statistics.median(rates):,.0f} "
          f"over {runs} runs (process start and writing the records included), "
          f"peak RSS {max(peaks):,.0f} MB")


if __name__ == "__main__":
    main()
