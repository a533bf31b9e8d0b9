"""The event-id store's lookups as it grows: RocksDB with the worker's options against the
previous ones (one whole bloom filter per table file, through the block cache).

    python benchmarks/rocksdb_bench.py [N ...]   (default 1,000,000 and 3,000,000 ids)

For each N: N ids written in batches as commits write them, flushed and compacted into one
table file (what a store holding N ids settles into), then 20,000 lookups of ids it lacks
(a new event: the common case) and 20,000 of ids it holds (a duplicate), in µs each. Then
the same lookups with the ids last written still in the memtables (not flushed: a busy
store's recent ids), with and without the memtables' own filter.
"""

from __future__ import annotations

import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable

import rocksdict

from streams.dedup_disk import CACHE_MB, store_options

LOOKUPS = 20_000


def whole_filter() -> rocksdict.Options:
    """The options before stop 29: the same, with one filter block per table file."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(10, False)
    table.set_block_cache(rocksdict.Cache(CACHE_MB * 1024 * 1024))
    table.set_cache_index_and_filter_blocks(True)
    opts.set_block_based_table_factory(table)
    opts.set_write_buffer_size(8 * 1024 * 1024)
    opts.set_max_write_buffer_number(2)
    return opts


def no_memtable_filter() -> rocksdict.Options:
    """The worker's options before stop 68: the memtables without a filter."""
    opts = store_options()
    opts.set_memtable_prefix_bloom_ratio(0.0)
    opts.set_memtable_whole_key_filtering(False)
    return opts


def measure(n: int, options: Callable[[], rocksdict.Options], settle: bool = True
            ) -> tuple[float, float]:
    path = tempfile.mkdtemp()
    db = rocksdict.Rdict(path, options=options())
    try:
        batch = rocksdict.WriteBatch(raw_mode=True)
        for i in range(n):
            batch.put(b"im%d" % i, struct.pack(">q", i))
            if i % 100_000 == 99_999:
                db.write(batch)
                batch = rocksdict.WriteBatch(raw_mode=True)
        db.write(batch)
        if settle:
            db.flush()
            db.compact_range(None, None)
        t = time.perf_counter()
        for i in range(n, n + LOOKUPS):
            db.get(b"im%d" % i)
        miss = (time.perf_counter() - t) / LOOKUPS * 1e6
        t = time.perf_counter()
        for i in range(LOOKUPS):
            db.get(b"im%d" % (i * 37 % n))
        hit = (time.perf_counter() - t) / LOOKUPS * 1e6
        return miss, hit
    finally:
        db.close()
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 3_000_000]
    for n in sizes:
        for label, options in (("worker's options", store_options),
                               ("one whole filter", whole_filter)):
            miss, hit = measure(n, options)
            print(f"{n:>12,} ids, {label}: new id {miss:8.1f} us, known id {hit:8.1f} us",
                  flush=True)
        for label, options in (("worker's options", store_options),
                               ("no memtable filter", no_memtable_filter)):
            miss, hit = measure(n, options, settle=False)
            print(f"{n:>12,} ids, the last in memtables, {label}: new id {miss:8.2f} us, "
                  f"known id {hit:8.2f} us", flush=True)


if __name__ == "__main__":
    main()
