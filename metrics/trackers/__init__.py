"""Stateful aggregates (trackers), made additive: one module each, registered in registry.py."""

from metrics.trackers.base import Fact, Tracker, net_change
from metrics.trackers.registry import BUILTINS, MICRO_BUILTINS, TRACKERS

__all__ = ["BUILTINS", "MICRO_BUILTINS", "TRACKERS", "Fact", "Tracker", "net_change"]
