"""The Faust seam's overrides stay what they replace (faust-streaming is pinned; a new
version that changes the overridden code fails here, not in production)."""

from __future__ import annotations

import asyncio
import inspect
import textwrap
from typing import Any

from faust.tables import TableManager

from metrics.catalog import load_catalog
from streams.faust_table import PromptTableManager
from streams.settings import load_settings


def _body(fn: object) -> list[str]:
    lines = textwrap.dedent(inspect.getsource(fn)).splitlines()  # type: ignore[arg-type]
    return [ln.strip() for ln in lines[1:] if ln.strip() and not ln.strip().startswith('"""')]


def test_the_table_manager_is_fausts_less_its_fixed_sleep() -> None:
    ours, theirs = _body(PromptTableManager.on_start), _body(TableManager.on_start)
    assert "await self.sleep(1.0)" in theirs
    assert [ln for ln in theirs if ln != "await self.sleep(1.0)"] == ours


def test_the_worker_app_uses_it_with_its_state_table_added_before_start() -> None:
    """The sleep waited for tables defined late; the worker's one table is added by
    make_app, before Faust's table manager starts (and finalizes its tables)."""
    from streams.faust_app import make_app

    async def build() -> tuple[object, list[str]]:
        settings = load_settings({"broker": "kafka://127.0.0.1:1"}, {})
        app, _ = make_app(settings, load_catalog())
        return app.tables, list(app.tables)

    tables, names = asyncio.run(build())
    assert type(tables) is PromptTableManager
    assert names == ["kpi-state"]


def test_an_empty_fetch_is_held_half_a_second_not_fausts_one_and_a_half() -> None:
    """aiokafka keeps one fetch in flight per broker: input partitions resumed after a
    restore wait for it, so a restart counted its first event up to 1.5 s after Ready."""
    from streams.faust_app import FETCH_MAX_WAIT_MS, make_app

    async def build() -> int:
        settings = load_settings({"broker": "kafka://127.0.0.1:1"}, {})
        app, _ = make_app(settings, load_catalog())
        faust_consumer: Any = app.consumer
        consumer = faust_consumer._thread._create_worker_consumer(app.transport)
        await consumer.stop()
        return int(consumer._fetch_max_wait_ms)

    assert FETCH_MAX_WAIT_MS == 500
    assert asyncio.run(build()) == FETCH_MAX_WAIT_MS
