"""Every generated function agrees with its interpreted twin on random input, and its source
is kept: a traceback shows the generated line, ``sources()`` lists it."""

from __future__ import annotations

import linecache
import traceback
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kpi_engine.generator import GeneratorConfig
from metrics import codegen
from metrics.catalog import load_catalog
from metrics.engine import EngineConfig, KpiEngine
from metrics.events import TYPES, Event, Invalid, check_fields, event_fields
from metrics.plans import (
    apply_expand,
    apply_update,
    compile_expand,
    compile_updates,
    fields_read,
)
from tests.helpers import DEFAULT_CATALOG, generated_events

CATALOG = DEFAULT_CATALOG
BY_EVENT: dict[str, list[Any]] = {}
for _agg in CATALOG.aggregates.values():
    if _agg.event is not None:
        BY_EVENT.setdefault(_agg.event, []).append(_agg)


def _traffic(seed: int) -> tuple[list[Event], int]:
    return generated_events(GeneratorConfig(rate=40, duration_s=900, seed=seed,
                                            history_days=2, duplicates=0.02, late=0.01,
                                            late_after_s=200, disorder_s=90))


def test_the_generated_engine_equals_the_interpreted_one_on_random_traffic() -> None:
    """Ingest, updates, expansions and KPI formulas all generated, or all interpreted: the
    same records, bit for bit, on disordered traffic with duplicates and late events."""
    for seed in (3, 11):
        evs, _ = _traffic(seed)
        outs = []
        for generated in (True, False):
            engine = KpiEngine(CATALOG, EngineConfig(idle_timeout_ms=0, generated=generated))
            recs: list[dict[str, Any]] = []
            for i, ev in enumerate(evs):
                engine.ingest(ev, source=i % 2)
                if engine.due:
                    recs += engine.advance()
            recs += engine.flush()
            outs.append(([(r["kpi"], r["window"], r["end"], r["dims"], r["numerator"],
                           r["denominator"], r["revision"]) for r in recs],
                         engine.events_total, engine.late_total))
        assert outs[0] == outs[1]
        assert len(outs[0][0]) > 1000


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_generated_updates_and_expansions_equal_their_twins(data: st.DataObject) -> None:
    type_ = data.draw(st.sampled_from(sorted(BY_EVENT)))
    aggs = BY_EVENT[type_]
    fields = sorted(event_fields(type_))
    values = st.one_of(st.none(), st.sampled_from(["a", "b", "unknown", "", "x\x1fy"]),
                       st.floats(0, 1e6, allow_nan=False), st.integers(0, 10))
    data_obj = type("Data", (), {f: data.draw(values, label=f) for f in fields})()
    got: dict[Any, int] = {}
    want: dict[Any, int] = {}
    try:
        compile_updates(type_, aggs, CATALOG.breakdowns, event_fields(type_))(got, data_obj)
    except TypeError:  # a float where a string belongs: the twin must fail alike
        with pytest.raises(TypeError):
            apply_update(aggs, CATALOG.breakdowns, want, data_obj)
        return
    apply_update(aggs, CATALOG.breakdowns, want, data_obj)
    assert got == want
    sig = (type_, *(getattr(data_obj, f, None) for f in fields_read(aggs, CATALOG.breakdowns)))
    n = data.draw(st.integers(1, 5))
    got_e: dict[Any, int] = {}
    want_e: dict[Any, int] = {}
    compile_expand(type_, aggs, CATALOG.breakdowns)(got_e, sig, n)
    apply_expand(aggs, CATALOG.breakdowns, want_e, sig, n)
    assert got_e == want_e == {k: v * n for k, v in want.items()}


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(TYPES)), st.dictionaries(
    st.sampled_from(["campaign_id", "contact_id", "client", "bounce", "session_id", "page",
                     "duration_s", "goal", "cart_id", "amount", "lead_id", "channel", "deal_id",
                     "stage", "score", "network", "count", "kind", "currency", "segment",
                     "account_id", "url", "visitor_id"]),
    st.one_of(st.none(), st.text(max_size=3), st.sampled_from(["won", "hard", "like", "EUR",
                                                                "mobile", "x" * 200]),
              st.integers(-2, 12), st.floats(-1, 1e3, allow_nan=False), st.booleans())))
def test_generated_field_checks_equal_their_twin(type_: str, fields: dict[str, Any]) -> None:
    d = {**fields, "type": type_, "event_id": "e", "ts": "2026-01-01T00:00:00Z"}
    from metrics.events import validate
    got = validate(d, now_ms=2**50)
    want = check_fields(type_, d, "e", 1767225600000, "EUR")
    if isinstance(want, Invalid):
        assert got == want
    else:
        assert isinstance(got, Event) and got == want and got.data == want.data


def test_generated_source_is_kept_and_shown_in_tracebacks() -> None:
    catalog = load_catalog()
    engine = KpiEngine(catalog)
    kept = codegen.sources()
    kinds = {name.split()[1] for name in kept}
    assert {"update", "expand", "ingest", "kpi", "check", "finish"} <= kinds
    count = engine._count["email.opened"]  # the generated function itself
    filename = count.__code__.co_filename
    assert filename in kept and "def count(ev, fw):" in kept[filename]
    assert linecache.getline(filename, 1).startswith("def count")

    class Broken:
        ts_ms = 0
        type = "email.opened"

        @property
        def data(self) -> Any:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError) as info:
        count(Broken(), engine.windows["email"])  # type: ignore[arg-type]
    text = "".join(traceback.format_exception(info.value))
    assert "<generated ingest email.opened" in text and "data = ev.data" in text


def test_the_same_source_is_compiled_once() -> None:
    before = len(codegen.sources())
    KpiEngine(load_catalog())
    after_one = len(codegen.sources())
    KpiEngine(load_catalog())
    assert len(codegen.sources()) == after_one >= before
