"""Progress of long commands (replay, produce, generate) on stderr: a line redrawn in place
on a terminal, a periodic status line otherwise (logs, CI), and a final summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, TypeVar

T = TypeVar("T")


class Progress:
    """Counts items and reports ``what: N unit (R/s)`` now and then: every 0.2 s on a
    terminal, every ``every_s`` seconds otherwise. Cheap per item: the clock is read once
    every 1,000 items."""

    def __init__(self, what: str, unit: str = "events", total: int | None = None,
                 stream: IO[str] | None = None, every_s: float = 10.0):
        self.what, self.unit, self.total = what, unit, total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = 0.2 if self.tty else every_s
        self.count = 0
        self.t0 = self._last = time.monotonic()
        self._check_at = 1000
        self.shown = False

    def add(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self._check_at:
            self._check_at = self.count + 1000
            now = time.monotonic()
            if now - self._last >= self.every_s:
                self._last = now
                self._show(now, final=False)

    def wrap(self, items: Iterable[T]) -> Iterator[T]:
        for item in items:
            self.add()
            yield item

    def batches(self, batches: Iterable[list[T]]) -> Iterator[list[T]]:
        for batch in batches:
            self.add(len(batch))
            yield batch

    def done(self) -> None:
        """The summary line (on a terminal, it replaces the live one)."""
        if self.shown or self.tty:
            self._show(time.monotonic(), final=True)

    def _show(self, now: float, final: bool) -> None:
        elapsed = max(now - self.t0, 1e-9)
        of = f"/{self.total:,}" if self.total else ""
        pct = f" {100 * self.count / self.total:.0f} %" if self.total else ""
        line = (f"{self.what}: {self.count:,}{of} {self.unit}{pct} in {elapsed:.0f} s "
                f"({self.count / elapsed:,.0f}/s)")
        if self.tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.shown = True
