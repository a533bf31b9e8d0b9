"""Errors of the streaming shell (the core's root class is metrics.errors.KpiEngineError)."""

from __future__ import annotations

from metrics.errors import KpiEngineError


class BrokerError(KpiEngineError):
    """The broker (embedded or a cluster) could not be started or reached."""


class SettingsError(KpiEngineError):
    """A flag or KPI_ environment variable has an unusable value."""
