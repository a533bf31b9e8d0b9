"""Whether the state stays flat once its horizons are full: the worker's state path in one
process, over months of event time, measured day by day.

    python benchmarks/state_growth.py [--days 60] [--rate 4] [--every 2]

One engine holds every family, as a worker's shards do (the accounts stage fed its copies
in the engine, as replay feeds it): event ids (the stage's in a store of its own, as its
shard's), tracker tables and closed windows on disk with the worker's cache settings, a
commit every 20,000 events through the worker's own commit path (streams/durable.py) to a
state table that keeps the records' keys only. The input is ``kpi-engine generate --rate
R`` (the default mix after 30 days of CRM history, ending a day ago), read in event-time
order as fast as the engine goes.

Every ``--every`` days of event time, after a commit and a full garbage collection:

- ``live``: CPython's small objects in use (``sys._debugmallocstats``), what the state
  holds in Python;
- ``free``: free blocks in the pools CPython keeps, ``arenas``: its arenas in all;
- ``glibc``: glibc's heap in use (objects over 512 bytes, RocksDB's caches and memtables);
- ``rss``: the process's resident memory, then again after ``malloc_trim`` (what a worker
  does once it caught up);
- ``records``: the state records a restore would read;
- with ``--census``, the deep size of each part of the engine (objects reached from it and
  not from a part listed before it; the catalog first, so what it shares is its own; a
  tracker's keyed tables each, then the rest of it).

No Kafka client, no Faust and no backlog in flight: ``state_bench.py`` measures those. What
grows here grows with the days held, whatever the worker around it.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import msgspec

# run from a clone, a benchmark measures the clone: its checkout before the one an
# editable install points to (which a script's imports would find otherwise)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.baselines import BaselineState
from metrics.catalog import load_catalog
from metrics.constants import DAY_MS
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import ACCOUNTS, Event, event_parser
from metrics.timestamps import wall_ms
from streams.dedup_disk import DiskDedup, LazyStore, set_cache_mb
from streams.durable import Durable
from streams.heap import malloc_trim
from streams.settings import Settings
from streams.shelf_disk import ShardStore

COMMIT_EVERY = 20_000  # events between commits (a worker commits every 5 s, or sooner)
ADVANCE_EVERY = 2_000  # events between closes (a worker closes after each batch)


class KeysOnly:
    """The state table (streams/shard_ports.py: StateStore), holding its records' keys."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}

    async def write(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            self.keys[key] = len(value)

    async def delete(self, keys: list[bytes]) -> None:
        for key in keys:
            self.keys.pop(key, None)

    def records(self, shard: str) -> list[tuple[bytes, bytes]]:
        return []

    def forget(self, shard: str) -> None:
        pass


def pymalloc() -> tuple[int, int, int]:
    """CPython's small-object allocator: bytes in use, free in its pools, in its arenas."""
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    os.close(write)
    try:
        sys._debugmallocstats()  # prints to the C stderr only
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    os.set_blocking(read, False)
    chunks = []
    try:
        while chunk := os.read(read, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    os.close(read)
    text = b"".join(chunks).decode()

    def field(pattern: str) -> int:
        m = re.search(pattern + r"\s+=\s+([\d,]+)", text)
        return int(m.group(1).replace(",", "")) if m else -1

    return (field(r"# bytes in allocated blocks"), field(r"# bytes in available blocks"),
            field(r"\nTotal"))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def glibc_in_use() -> int:
    try:
        fn = ctypes.CDLL(None).mallinfo2
    except AttributeError:
        return -1
    fn.restype = _MallInfo2
    info = fn()
    return int(info.uordblks + info.hblkhd)


_OPAQUE = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
           types.MethodType, LazyStore)  # shared code, or a store every table points to


def deep_sizes(parts: list[tuple[str, Any]]) -> list[tuple[str, int]]:
    """Each part's objects, counted once: those reached from it and from no part before."""
    seen: set[int] = set()
    out = []
    for name, root in parts:
        size, stack = 0, [root]
        while stack:
            obj = stack.pop()
            if id(obj) in seen or isinstance(obj, _OPAQUE):
                continue
            seen.add(id(obj))
            size += sys.getsizeof(obj)
            # a struct untracked by the collector (gc=False) shows it no referents
            stack.extend(msgspec.structs.astuple(obj) if isinstance(obj, msgspec.Struct)
                         else gc.get_referents(obj))
        out.append((name, size))
    return out


def census(engine: KpiEngine, durable: Durable) -> str:
    parts: list[tuple[str, Any]] = [("catalog", engine.catalog)]
    parts += [(f"windows.{f}", w) for f, w in engine.windows.items()]
    parts += [("publisher", engine.publisher), ("part map", durable.parts)]
    for n, t in engine.trackers.items():  # each keyed table, then the rest of the tracker
        parts += [(f"{n}.{tn}", table) for tn, table in t.tables().items()]
        parts.append((f"tracker.{n}", t))
    sizes = deep_sizes(parts)
    return "  " + ", ".join(f"{n} {b / 1e6:.1f}" for n, b in sizes if b >= 100_000)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=4.0)
    ap.add_argument("--every", type=float, default=2.0, help="days of event time per line")
    ap.add_argument("--census", action="store_true", help="deep sizes by part, each line")
    args = ap.parse_args()
    settings = Settings()
    catalog = load_catalog(None)
    set_cache_mb(settings.state_cache_mb)
    base = Path(tempfile.mkdtemp(prefix="kpi-state-growth-"))
    # the input's ids in one store, the accounts stage's in its own, as its shard's: a copy
    # carries its event's id, and one store would drop every copy as a duplicate
    dedup = DiskDedup(base / "dedup")
    stage = DiskDedup(base / "dedup-accounts")
    tables = ShardStore(base / "tables", settings.state_cache_keys)
    engine = KpiEngine(catalog, EngineConfig(
        dedup_horizon_ms=int(settings.dedup_horizon_s * 1000), idle_timeout_ms=0),
        clock=wall_ms, dedup=lambda shard: stage if shard == ACCOUNTS else dedup,
        tables=tables.table, shelves=tables.shelf)
    store = KeysOnly()
    durable = Durable("all", catalog, store, dedup, tables)
    durable.restore(engine, [], None)
    loop = asyncio.new_event_loop()
    seq = 0

    def commit() -> None:
        nonlocal seq
        seq += 1
        loop.run_until_complete(durable.write(durable.prepare(
            engine, seq, {}, {}, [], [], BaselineState())))
        stage.persist(stage.drain(), (durable.lineage, seq))  # as its shard's commit would

    # the live span ends a day before now: the parser rejects events from the future
    now = wall_ms()
    start = now - now % DAY_MS - math.ceil(args.days + 1) * DAY_MS
    kpi_engine = Path(sys.executable).with_name("kpi-engine")
    gen = subprocess.Popen([str(kpi_engine), "generate", "--rate", str(args.rate),
                            "--duration", str(args.days * 86_400), "--start", str(start),
                            "--out", "-"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert gen.stdout is not None
    parse = event_parser(now_ms=now, currency=catalog.currency)
    trim = malloc_trim()
    step = int(args.every * DAY_MS)
    live_from: int | None = None  # ``start`` once the live span began (after the history)
    next_at = 0
    n = rejected = 0
    t0 = time.monotonic()
    print(f"{'day':>5} {'events':>11} {'live':>6} {'free':>6} {'arenas':>6} {'glibc':>6} "
          f"{'rss':>6} {'trimmed':>7} {'records':>8} {'events/s':>9}   (MB)", flush=True)
    for line in gen.stdout:
        ev = parse(line.rstrip(b"\n"))
        if not isinstance(ev, Event):
            rejected += 1
            continue
        if live_from is None and ev.family not in ("crm", "spend"):
            live_from = start
            next_at = live_from + step
        engine.ingest(ev)
        engine.late_refs.clear()
        n += 1
        if n % ADVANCE_EVERY == 0 and engine.due:
            engine.advance()
        if n % COMMIT_EVERY == 0:
            commit()
        if live_from is not None and ev.ts_ms >= next_at:
            engine.advance()
            commit()
            gc.collect()
            live, free, arenas = pymalloc()
            before = rss()
            if trim is not None:
                trim(0)
            mb = 1e6
            print(f"{(next_at - live_from) / DAY_MS:5.1f} {n:11,} {live / mb:6.1f} "
                  f"{free / mb:6.1f} {arenas / mb:6.1f} {glibc_in_use() / mb:6.1f} "
                  f"{before / mb:6.1f} {rss() / mb:7.1f} {len(store.keys):8,} "
                  f"{n / (time.monotonic() - t0):9,.0f}", flush=True)
            if args.census:
                print(census(engine, durable), flush=True)
            next_at += step
    gen.wait()
    if rejected:  # the generator's traffic is all valid: a rejection is this script's error
        sys.exit(f"{rejected:,} events rejected by the parser")


if __name__ == "__main__":
    main()
