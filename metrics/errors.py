"""The one exception hierarchy of the engine. Bad *input events* are values, not exceptions."""

from __future__ import annotations


class KpiEngineError(Exception):
    """Root of every error the engine raises on purpose."""


class CatalogError(KpiEngineError):
    """A catalog file is unreadable or inconsistent. ``problems`` lists every issue found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid catalog:\n  " + "\n  ".join(problems))


class StateError(KpiEngineError):
    """Stored state cannot be used: corrupt, hostile, or built with another catalog."""
