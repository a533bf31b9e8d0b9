"""A shard's open-window values on `kpi-updates`: sent when they changed, not every emit."""

from __future__ import annotations

from typing import Any

import orjson

from metrics.engine import KpiEngine
from metrics.records import update_key
from streams.shard_ports import ShardIO


class OpenValues:
    """The open records as of the engine's change mark (an idle shard reuses them), and per
    `kpi-updates` key what was last sent: only changed values go out again."""

    def __init__(self) -> None:
        self.mark: tuple[Any, ...] | None = None
        self.records: list[dict[str, Any]] = []
        self.sent: dict[str, tuple[Any, ...]] = {}

    def forget(self) -> None:
        """Send all of them next (another owner may have sent newer values since)."""
        self.mark, self.sent = None, {}

    async def emit(self, engine: KpiEngine, io: ShardIO, topic: str) -> list[dict[str, Any]]:
        """The current open records, after sending those changed since they last went out.
        They follow only the events counted and the watermarks (closes, settling and
        expiry move with them): an unchanged mark means unchanged values, and at rest
        nothing is recomputed (the idle worker's CPU)."""
        mark = engine.change_mark()
        if mark == self.mark:
            return self.records
        self.mark, self.records = mark, engine.open_records()
        sent, self.sent = self.sent, {}
        for rec in self.records:
            key = update_key(rec)
            sig = (rec["start"], rec["end"], rec["numerator"], rec["denominator"],
                   rec.get("lower"), rec.get("upper"))
            self.sent[key] = sig
            if sent.get(key) != sig:  # unchanged since it was last sent: not again
                await io.send(topic, key.encode(), orjson.dumps(rec))
        return self.records
