"""Equal keys of a restored state are one object (metrics/sharing.py)."""

from __future__ import annotations

from typing import Any

from metrics.sharing import share_keys


def test_equal_keys_of_several_dicts_become_one_object() -> None:
    memo: dict[Any, Any] = {}
    dims = (("campaign_id", "c1"), ("channel", "email"))
    a = share_keys({("opens", "campaign_id", "c1"): 3, tuple(list(dims)): 1}, memo)
    b = share_keys({("opens", "campaign_id", "c" + "1"): 4,
                    tuple((k, v) for k, v in dims): 2}, memo)
    assert a == {("opens", "campaign_id", "c1"): 3, dims: 1}  # values untouched
    assert b == {("opens", "campaign_id", "c1"): 4, dims: 2}
    for ka, kb in zip(a, b, strict=True):
        assert ka is kb


def test_values_are_never_merged() -> None:
    """1 == 1.0 == True: sharing values would publish one for another."""
    memo: dict[Any, Any] = {}
    a = share_keys({"x": (1, 2.0)}, memo)
    b = share_keys({"x": (1.0, 2)}, memo)
    assert type(a["x"][0]) is int and type(b["x"][0]) is float
