"""The map of a shard's parts (streams/part_map.py) and the engine's part names
(metrics/snapshot.py ``PartNames``): one int per part, kept by stem."""

from __future__ import annotations

import re
from collections.abc import Collection

import msgspec
import pytest

from metrics.errors import StateError
from metrics.snapshot import PartNames
from streams.part_map import Columns, PartMap


def names(**stems: Collection[int]) -> PartNames:
    out = PartNames()
    for stem, numbers in stems.items():
        out.add(stem.replace("_", "|"), numbers)
    return out


def test_names_by_stem_answer_in_and_list_each_name_once() -> None:
    n = names(w_crm_p=[1, 2], t_pipeline_leads_d=[0], t_pipeline_leads=[], p_crm_7d=[5])
    assert sorted(n) == ["p|crm|7d|5", "t|pipeline|leads|d|0", "w|crm|p|1", "w|crm|p|2"]
    assert len(n) == 4 and "w|crm|p|2" in n and "t|pipeline|leads|d|0" in n
    assert "w|crm|p|3" not in n and "t|pipeline|leads|0" not in n  # the stem has none
    assert "w|crm|p|x" not in n and "w|crm|p" not in n and 7 not in n


def test_a_map_puts_gets_and_lists_every_part_with_its_seq_and_crc() -> None:
    m = PartMap()
    m.put("t|pipeline|leads|490000", 12, 0xFFFFFFFF)
    m.put("t|pipeline|leads|d|3", 1 << 40, 0)
    m.put("w|crm|c|30d|1796076000000", 7, 12345)
    assert m.get("t|pipeline|leads|490000") == (12, 0xFFFFFFFF)  # the crc's 32 bits whole
    assert m.get("t|pipeline|leads|d|3") == (1 << 40, 0)
    assert m.get("t|pipeline|leads|490001") is None and m.get("x|1") is None
    assert len(m) == 3
    assert dict(m.items()) == {"t|pipeline|leads|490000": (12, 0xFFFFFFFF),
                               "t|pipeline|leads|d|3": (1 << 40, 0),
                               "w|crm|c|30d|1796076000000": (7, 12345)}
    # format 4's flat map reads to the same
    assert PartMap.of(dict(m.items())) == m
    # and through MessagePack as a snapshot's columns, a seq past 32 bits included
    raw = msgspec.msgpack.encode(m.columns())
    assert PartMap.from_columns(msgspec.msgpack.decode(raw, type=dict[str, Columns])) == m


@pytest.mark.parametrize("columns", [([1, 2], [3], [4]), ([1], [-1], [4]), ([1], [3], [1 << 32])])
def test_columns_that_do_not_line_up_fail_by_name(columns: Columns) -> None:
    with pytest.raises(StateError, match=re.escape("part map of 'w|crm|p'")):
        PartMap.from_columns({"w|crm|p": columns})


def test_kept_and_replaced_follow_the_engines_names() -> None:
    old = PartMap.of({"w|crm|p|1": (5, 1), "w|crm|p|2": (5, 2), "w|crm|p|3": (6, 3),
                      "t|scoring|leads|9": (4, 4)})
    new = old.kept(names(w_crm_p=[2, 3, 4]))  # 1 and the table's hour gone; 4 is new
    assert dict(new.items()) == {"w|crm|p|2": (5, 2), "w|crm|p|3": (6, 3)}
    new.put("w|crm|p|3", 8, 30)  # written again by commit 8
    new.put("w|crm|p|4", 8, 40)
    assert sorted(old.replaced(new)) == [("t|scoring|leads|9", 4), ("w|crm|p|1", 5),
                                         ("w|crm|p|3", 6)]
    assert list(new.replaced(new)) == []
    assert old.get("w|crm|p|3") == (6, 3)  # kept() made a new map


def test_a_stem_unchanged_keeps_its_encoded_columns_and_a_put_renews_them() -> None:
    old = PartMap.of({"w|crm|p|1": (5, 1), "w|crm|p|2": (5, 2), "t|scoring|leads|9": (4, 4)})
    before = old.columns()
    new = old.kept(names(w_crm_p={1: None, 2: None}.keys(), t_scoring_leads=[9]))
    assert new.columns() == before and new.columns()["w|crm|p"] is before["w|crm|p"]
    new.put("w|crm|p|2", 9, 20)
    assert new.columns()["w|crm|p"] == ([1, 2], [5, 9], [1, 20])
    assert old.columns() == before  # the map it came from is left as it was
    assert sorted(old.replaced(new)) == [("w|crm|p|2", 5)]
    assert PartMap.from_columns(new.columns()) == new
