"""What a worker knows of its own health beyond the counters: whether the broker answers,
and client logs that stay readable while it does not.

``/health`` is 503 with the reasons whenever the worker cannot do its job (streams/worker.py:
``KpiShell.problems``): the broker unreachable, no shard active, a shard that failed to
activate. The Kafka client retries on its own; what it logs on every retry is thinned here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

#: /health fields summed over the shards a worker owns (and over a worker's processes)
SUMMED: Final = ("events", "invalid", "duplicates", "late", "held", "replayed_skipped",
                 "stale_skipped", "state_skipped", "snapshot_seq", "pending_finals")
#: how /health's problem begins when a worker owns no shard
NO_SHARD_ACTIVE: Final = "no shard active"
#: the client loggers that repeat a line per retry while the broker is away
CLIENT_LOGGERS: Final = ("aiokafka", "aiokafka.conn", "aiokafka.client",
                         "aiokafka.cluster", "aiokafka.consumer.fetcher",
                         "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender",
                         "aiokafka.producer.producer")
FETCHER_LOGGER: Final = "aiokafka.consumer.fetcher"

log = logging.getLogger("kpi_engine.worker")


async def connect_error(bootstrap: str, timeout_s: float) -> str | None:
    """None when a TCP connection to one of the bootstrap servers opens within timeout_s,
    else what each attempt met."""
    errors = []
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)),
                                               timeout_s)
        except (OSError, ValueError, TimeoutError) as exc:
            errors.append(f"{server}: {exc or type(exc).__name__}")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
    return "; ".join(errors)


class BrokerWatch:
    """Whether the broker answers, from probes made beside the worker's own traffic (an
    emit stuck on a send must not hold the verdict back)."""

    def __init__(self, bootstrap: str, timeout_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic):
        self.bootstrap = bootstrap
        self.timeout_s = timeout_s
        self.clock = clock
        self.down_since: float | None = None
        self.error = ""

    async def probe(self) -> None:
        error = await connect_error(self.bootstrap, self.timeout_s)
        if error is None:
            if self.down_since is not None:
                log.warning("broker reachable again at %s after %.0f s", self.bootstrap,
                            self.clock() - self.down_since)
            self.down_since = None
            return
        if self.down_since is None:
            self.down_since = self.clock()
            log.error("broker unreachable at %s: %s", self.bootstrap, error)
        self.error = error

    def problem(self) -> str | None:
        if self.down_since is None:
            return None
        return (f"broker unreachable at {self.bootstrap} for "
                f"{self.clock() - self.down_since:.0f} s: {self.error}")


class Thinned(logging.Filter):
    """Lets a log line through once per ``every_s`` per logger and message template; the next
    one through says how many like it were held back."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held and last is not None:
            record.msg = f"{record.getMessage()} ({held} more like it in {now - last:.0f} s)"
            record.args = ()
        return True


class OffsetReset(logging.Filter):
    """The client notes at INFO that a fetch offset is out of range (the broker lost its
    data, or retention passed it) and resets by the policy: say it as a warning, with the
    policy. Other INFO lines of that logger stay below the worker's level."""

    def __init__(self, policy: str, level: Callable[[], int]):
        super().__init__()
        self.policy = policy
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Fetch offset %s is out of range"):
            record.msg = (f"{record.getMessage()}: the broker no longer holds it; reading "
                          f"from the {self.policy} offset (auto_offset_reset={self.policy})")
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        return record.levelno >= self.level()


def tame_client_logs(reset_policy: str, every_s: float = 30.0,
                     debug: bool = False) -> None:
    """Thin the client's retry lines; log offset resets as warnings. Unless the worker logs
    at DEBUG, the client's debug lines are not even made (aiokafka formats one per message
    sent: a fifth of a quiet worker's time, measured with py-spy)."""
    if not debug:
        logging.getLogger("aiokafka").setLevel(logging.INFO)
    fetcher = logging.getLogger(FETCHER_LOGGER)
    fetcher.addFilter(OffsetReset(reset_policy, logging.getLogger().getEffectiveLevel))
    fetcher.setLevel(logging.INFO)  # the reset line is INFO: let it reach the filter
    thinned = Thinned(every_s)
    for name in CLIENT_LOGGERS:
        logging.getLogger(name).addFilter(thinned)
