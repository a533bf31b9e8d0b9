"""A worker frees reference cycles on its timer, not as allocations pile up; what it built
at start is never traversed again. Run in a child process: the collector is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from streams.cycles import FULL_EVERY

SCRIPT = textwrap.dedent("""
    import gc, json, weakref
    from streams.cycles import FULL_EVERY, Cycles, collect_on_clock

    class Node:
        pass

    def cycle():
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    before = cycle()  # garbage already: freed by the start's own collection
    kept = [Node() for _ in range(1000)]  # alive at the start: frozen
    collect_on_clock()
    out = {"before_freed": before() is None, "automatic": gc.isenabled(),
           "frozen": gc.get_freeze_count()}
    after = cycle()
    churn = [[i] for i in range(200_000)]  # ~300 young collections' worth at 700
    del churn
    out["after_alive_through_churn"] = after() is not None
    cycles = Cycles()
    freed = cycles.collect()
    out["after_freed"] = after() is None
    out["freed"] = freed
    out["health"] = cycles.health()
    out["kept_tracked"] = sum(1 for o in gc.get_objects() if type(o) is Node)
    # a cycle still in use at a collection is left to the full ones, FULL_EVERY apart
    a, b = Node(), Node()
    a.other, b.other = b, a
    older = weakref.ref(a)
    cycles.collect()  # the 2nd: it survives
    del a, b
    young = []
    while cycles.collections % FULL_EVERY:  # up to the full one, not included
        young.append(older() is not None)
        cycles.collect()
    out["older_kept_by_young"] = young
    out["older_freed_by_full"] = older() is None
    out["health_after"] = cycles.health()
    print(json.dumps(out))
""")


def test_cycles_wait_for_the_timer_and_the_start_is_frozen() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          check=True)
    out = json.loads(done.stdout)
    assert out["before_freed"]
    assert out["automatic"] is False
    assert out["frozen"] >= 1000  # at least the Nodes alive at the start
    # however much is allocated, no collection runs until the timer's
    assert out["after_alive_through_churn"]
    assert out["after_freed"]
    assert out["freed"] >= 2  # the cycle's two nodes (and their dicts)
    assert out["health"]["automatic"] is False
    assert (out["health"]["collections"], out["health"]["full"]) == (1, 0)
    assert out["health"]["freed"] == out["freed"]
    assert out["health"]["seconds"] >= 0
    # what was alive at the start is out of every collection (not among the tracked)
    assert out["kept_tracked"] == 0
    assert out["older_kept_by_young"] == [True] * (FULL_EVERY - 2)
    assert out["older_freed_by_full"]
    after = out["health_after"]
    assert (after["collections"], after["full"]) == (FULL_EVERY, 1)
