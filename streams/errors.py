"""Errors of the streaming shell (the core's root class is metrics.errors.KpiEngineError)."""

from __future__ import annotations

import sys

from metrics.errors import KpiEngineError

#: exit codes besides 0: usage, settings, catalog or input errors; the broker unreachable
EXIT_USAGE, EXIT_BROKER, EXIT_INTERRUPTED = 2, 3, 130


class BrokerError(KpiEngineError):
    """The broker (embedded or a cluster) could not be started or reached."""


class SettingsError(KpiEngineError):
    """A flag or KPI_ environment variable has an unusable value."""


def report(exc: KpiEngineError) -> int:
    """An error's one line on stderr and its exit code: the CLI's, and its child processes'
    (streams/topics.py) that the worker returns as its own."""
    print(f"kpi-engine: {exc}", file=sys.stderr)
    return EXIT_BROKER if isinstance(exc, BrokerError) else EXIT_USAGE
