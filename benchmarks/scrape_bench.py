"""HTTP latency under concurrent scrapes: `kpi-engine demo` runs (events flowing), then
rounds of N concurrent GETs of /metrics, /kpis and /health; prints p50 / p95 per path.

    .venv/bin/python benchmarks/scrape_bench.py [--concurrency 200] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp

from streams.broker import free_port


def wait_active(port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return  # 200: shards active
        except OSError:
            time.sleep(0.5)
    raise SystemExit("the demo never became healthy")


async def burst(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    async def one() -> float:
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
        return time.perf_counter() - t0
    return list(await asyncio.gather(*(one() for _ in range(n))))


async def measure(port: int, concurrency: int, rounds: int) -> None:
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        for path in ("/metrics", "/kpis", "/health"):
            lat: list[float] = []
            for _ in range(rounds):
                lat += await burst(session, f"http://127.0.0.1:{port}{path}", concurrency)
                await asyncio.sleep(0.5)
            lat.sort()
            print(f"{path:9s} {concurrency} concurrent x {rounds}: "
                  f"p50 {statistics.median(lat) * 1000:.0f} ms, "
                  f"p95 {lat[int(len(lat) * 0.95)] * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    port = free_port()
    demo = subprocess.Popen([sys.executable, "-m", "kpi_engine.cli", "demo", "--web-port",
                             str(port), "--duration", "300"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_active(port)
        time.sleep(10)  # windows filled: a realistic exposition
        asyncio.run(measure(port, args.concurrency, args.rounds))
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
