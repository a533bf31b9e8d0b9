"""External programs the tests drive (promtool, amtool, prometheus, chromium, npm tools).

A missing one fails the test under CI (CI=true): a skipped check is a failed one there.
Elsewhere it skips with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "bash scripts/install-test-deps.sh"


def require(program: str) -> str:
    """The path of an executable, or fail (CI) / skip (elsewhere) saying how to install it."""
    path = shutil.which(program) if os.sep not in program else (
        program if os.access(program, os.X_OK) else None)
    if path is None:
        msg = f"{program} is not installed: run {INSTALL}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path
