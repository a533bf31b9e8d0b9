"""The catalog's settings blocks (metrics/catalog_blocks.py): `mql` and `attribution`
checked with every problem named, and windowed builtins kept with what revises them."""

from __future__ import annotations

from importlib import resources
from typing import Any

import pytest
import yaml

from metrics.catalog import build_catalog
from metrics.errors import CatalogError


def load_yaml() -> dict[str, Any]:
    return dict(yaml.safe_load(resources.files("metrics").joinpath("catalog.yaml").read_text()))


def test_the_catalog_block_is_checked() -> None:
    doc = load_yaml()
    doc["mql"] = {"threshold": 0, "points": {"email.sent": 1, "goal.converted": -1},
                  "pages": {"pricing": 5}, "half_life": "soon"}
    with pytest.raises(CatalogError) as err:
        build_catalog(doc)
    text = str(err.value)
    for part in ("mql.threshold", "mql.points.email.sent", "mql.points.goal.converted",
                 "mql.pages.pricing", "mql.half_life"):
        assert part in text
    doc = load_yaml()
    doc["mql"] = {"threshold": 12.5, "pages": {"/pricing": 5, "/pricing/enterprise": 9}}
    cfg = build_catalog(doc).mql
    assert cfg.threshold == 12.5 and cfg.pages[0] == ("/pricing/enterprise", 9)
    doc = load_yaml()
    del doc["aggregates"]["account_mqls"]
    doc["kpis"]["lead_velocity"]["numerator"] = "account_prior_mqls"
    with pytest.raises(CatalogError, match="needs one of 'mqls'"):
        build_catalog(doc)


def test_the_attribution_block_is_checked() -> None:
    doc = load_yaml()
    doc["attribution"] = {"lookback": "0d", "half_life": "a week"}
    with pytest.raises(CatalogError) as err:
        build_catalog(doc)
    assert "attribution.lookback: must be longer than 0" in str(err.value)
    assert "attribution.half_life" in str(err.value)
    doc["attribution"] = {"lookback": "30d"}
    cfg = build_catalog(doc).attribution
    assert (cfg.lookback_ms, cfg.half_life_ms) == (30 * 86_400_000, 7 * 86_400_000)
