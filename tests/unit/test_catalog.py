"""Loading a catalog: every problem listed at once; shards and restriction."""

from __future__ import annotations

from typing import Any

import pytest

from metrics.catalog import build_catalog
from metrics.errors import CatalogError


def test_every_problem_is_listed() -> None:
    doc: dict[str, Any] = {
        "version": 1,
        "families": {"email": {"grace": "soon", "windows": ["1h"]}},
        "aggregates": {"x": {"builtin": "no_such"}, "y": {"event": "no.such"}},
        "kpis": {"k": {"numerator": "zz", "denominator": "y", "unit": "furlongs"}},
    }
    with pytest.raises(CatalogError) as info:
        build_catalog(doc)
    text = "\n".join(info.value.problems)
    assert len(info.value.problems) >= 4, text
    assert "no_such" in text and "no.such" in text and "kpis.k.unit" in text
