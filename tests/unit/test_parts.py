"""Incremental commits: the state kept as a small core plus the parts that changed (panes,
closed windows, published rows, hours of tracker tables). Applying each commit's changed
parts to a store and restoring from it gives back exactly the engine's state, at any
commit, on shuffled input with duplicates and late events; and a commit under a trickle
writes a small fraction of the state."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from kpi_engine.generator import GeneratorConfig
from metrics.engine import EngineConfig, KpiEngine
from metrics.snapshot import EngineState, decode_part
from tests.helpers import DEFAULT_CATALOG, generated_events
from tests.unit.test_snapshot import events, new_engine, run

ENCODE = msgspec.msgpack.Encoder().encode


class Store:
    """What the changelog holds after each commit: the core and the parts by name."""

    def __init__(self) -> None:
        self.core = b""
        self.parts: dict[str, bytes] = {}
        self.written: list[int] = []  # bytes written per commit

    def commit(self, engine: KpiEngine, full: bool = False) -> None:
        core, changed, names = engine.durable(lambda r: r, full)
        self.core = ENCODE(core)
        encoded = {n: ENCODE(build()) for n, build in changed.items()}
        self.parts = {n: v for n, v in self.parts.items() if n in names}
        self.parts.update(encoded)
        listed = list(names)  # each name once, and known to ``in``
        assert set(self.parts) == set(listed) and len(listed) == len(names)
        assert all(n in names for n in listed) and "w|email|p|x" not in names
        # the event ids are in the core here (MemoryDedup); a worker writes them apart, one
        # commit's ids at a time (streams/dedup_disk.py): they are not counted
        self.written.append(len(self.core) - len(ENCODE(core.dedup))
                            + sum(map(len, encoded.values())))

    def restore(self) -> KpiEngine:
        engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
        engine.restore(msgspec.msgpack.decode(self.core, type=EngineState))
        engine.load_parts(sorted(self.parts.items()))
        return engine


def comparable(engine: KpiEngine) -> dict[str, Any]:
    """The engine's whole state as plain data, trackers decoded (dict order aside)."""
    st = engine.snapshot()
    out = msgspec.to_builtins(msgspec.structs.replace(st, trackers={}))
    for name, t in engine.trackers.items():
        out[f"tracker {name}"] = msgspec.to_builtins(
            decode_part(st.trackers[name], t.state_type, name))
    return dict(normalise(out))


def normalise(x: Any) -> Any:
    if isinstance(x, dict):
        return {repr(k): normalise(v) for k, v in sorted(x.items(), key=lambda kv: repr(kv[0]))}
    if isinstance(x, list):
        return [normalise(v) for v in x]
    return x


def test_restoring_from_the_parts_gives_the_same_state_at_every_commit() -> None:
    evs = events(seed=11)
    rnd = random.Random(3)
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    store = Store()
    records: list[dict[str, Any]] = []
    i = 0
    checked = 0
    while i < len(evs):
        n = rnd.randrange(1, 4000)
        run(engine, evs[i:i + n], records)
        i += n
        store.commit(engine)
        if rnd.random() < 0.3 or i >= len(evs):
            assert comparable(store.restore()) == comparable(engine)
            checked += 1
    assert checked >= 3 and len(store.written) > 10


def test_a_restored_engine_goes_on_as_the_original() -> None:
    evs = events(seed=12)
    cut = len(evs) // 2
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    store = Store()
    out_a: list[dict[str, Any]] = []
    run(engine, evs[:cut // 2], out_a)
    store.commit(engine)
    run(engine, evs[cut // 2:cut], out_a)
    store.commit(engine)
    restored = store.restore()
    out_b = list(out_a)
    run(engine, evs[cut:], out_a)
    run(restored, evs[cut:], out_b)
    strip = [{k: v for k, v in r.items() if k != "emitted_at"} for r in out_a]
    assert strip == [{k: v for k, v in r.items() if k != "emitted_at"} for r in out_b]
    assert len(out_a) > 100


def restored_whole() -> KpiEngine:
    """An engine restored from a full commit of the default traffic, checked equal to the
    original."""
    engine = new_engine()
    run(engine, events(), [])
    store = Store()
    store.commit(engine, full=True)
    restored = store.restore()
    assert comparable(restored) == comparable(engine)
    return restored


def assert_shared(objs: list[Any]) -> None:
    """Many equal objects (the same keys or dims everywhere), and equal ones one object."""
    assert len(objs) > 10 * len(set(objs))
    assert len({id(o) for o in objs}) == len(set(objs))


def test_a_restored_state_shares_its_keys_as_a_live_one_does() -> None:
    """Each pane and closed window decoded apart would hold its own copy of every key:
    restored, equal keys are one object again (metrics/sharing.py). Published rows are
    held encoded (metrics/publish.py): no keys of theirs to share."""
    restored = restored_whole()
    keys: list[Any] = [k for fw in restored.windows.values() for agg in fw.panes.values()
                       for k in agg]
    keys += [k for fw in restored.windows.values() for s in fw.specs
             for agg in s.closed.values() for k in agg]
    assert all(type(rows) is bytes for filed in restored.publisher.published.values()
               for rows, _ in filed.values())
    assert_shared(keys)


def test_a_restored_trackers_dims_are_one_tuple_each_again() -> None:
    """The send cohorts and visitors decoded from their parts: each send and first view
    held its own dims tuples; ``loaded`` makes equal ones one object."""
    t: dict[str, Any] = restored_whole().trackers
    dims = [d for c in t["send_cohorts"].cohorts.data.values() for _, d in c.sends]
    dims += [v.first[1] for v in t["visitors"].sessions.data.values() if v.first]
    dims += [d for _, facts in t["visitors"].visitors.data.values() for _, _, d, _ in facts]
    assert_shared(dims)


def test_a_commit_under_a_trickle_writes_a_small_part_of_the_state() -> None:
    evs, _ = generated_events(GeneratorConfig(rate=20, duration_s=6 * 3600, seed=4,
                                              history_days=0))
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    store = Store()
    records: list[dict[str, Any]] = []
    run(engine, evs[:-100], records)
    store.commit(engine, full=True)
    whole = store.written[-1]
    for k in range(10):  # 10 commits of 10 events each
        run(engine, evs[-100 + 10 * k:-90 + 10 * k or None], records)
        store.commit(engine)
    # the parts of the hour the trickle falls in, not the 6 hours held
    assert whole > 5_000_000
    assert max(store.written[1:]) < whole / 5, (whole, store.written)
    assert comparable(store.restore()) == comparable(engine)


def test_a_commit_builds_each_keyed_hour_only_when_it_encodes_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog's commit changes many hours of the keyed tables: built all at once they
    were the worker's largest burst of small objects (docs/benchmarks.md, stop 39)."""
    engine = KpiEngine(DEFAULT_CATALOG, EngineConfig(idle_timeout_ms=0))
    run(engine, events(seed=13), [])
    built: list[int] = []
    for cls in {type(t) for tr in engine.trackers.values() for t in tr.tables().values()}:
        def hour(self: Any, h: int, _hour: Any = cls.hour) -> Any:
            built.append(h)
            return _hour(self, h)
        monkeypatch.setattr(cls, "hour", hour)
    _, changed, names = engine.durable(lambda r: r, True)
    keyed = [n for n in changed if n.startswith("t|")]
    assert len(keyed) > 10 and set(changed) == set(names)
    assert built == []  # nothing built before the commit asks for it
    sizes = []
    for name in keyed:
        sizes.append(len(ENCODE(changed[name]())))
        assert len(built) == len(sizes)  # one hour per part, as it is encoded
    assert all(sizes)
