"""The state table's local copy: what it holds and the changelog offset it covers."""

from __future__ import annotations

from pathlib import Path

from streams.table_copy import MAX_PENDING, LocalCopy, checksum


def test_records_read_from_the_log_are_covered_up_to_the_last_one(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    assert copy.covered(0) is None
    # offsets skipped by the log (compacted) are no gap in what was read
    copy.read_from_log([(0, 0, b"a|1", b"x"), (0, 3, b"a|2", b"y"), (0, 5, b"a|1", None),
                        (1, 7, b"b|1", b"z")])
    assert copy.mark(0) == (5, checksum(b"a|1", None))
    assert copy.covered(1) == 7
    assert list(copy.records(b"a|")) == [(b"a|2", b"y")]
    assert list(copy.records(b"b|")) == [(b"b|1", b"z")]


def test_own_writes_are_covered_once_every_offset_below_is(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    copy.start(0)  # an empty changelog
    assert copy.mark(0) == (-1, 0)
    copy.written([(0, 1, b"a|2", b"y")])  # acknowledged before offset 0's record
    assert copy.covered(0) == -1
    copy.written([(0, 0, b"a|1", b"x")])
    assert copy.mark(0) == (1, checksum(b"a|2", b"y"))
    # another writer's record at offset 2: never covered past it until read from the log
    copy.written([(0, 3, b"a|3", b"w")])
    assert copy.covered(0) == 1
    assert dict(copy.records(b"a|")) == {b"a|1": b"x", b"a|2": b"y", b"a|3": b"w"}


def test_nothing_is_covered_before_recovery_said_where_the_log_starts(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    copy.written([(0, 0, b"a|1", b"x")])
    assert copy.covered(0) is None  # offset 0 may not be the log's first: read it whole


def test_the_copy_survives_a_reopen_and_a_drop_forgets_one_partition(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    copy.read_from_log([(0, 4, b"a|1", b"x"), (1, 9, b"b|1", b"z")])
    copy.close()
    copy = LocalCopy(tmp_path / "t")
    assert copy.covered(0) == 4 and copy.covered(1) == 9
    copy.drop(0, b"a|")
    assert copy.covered(0) is None and list(copy.records(b"a|")) == []
    assert copy.covered(1) == 9 and list(copy.records(b"b|")) == [(b"b|1", b"z")]


def test_waiting_writes_are_bounded(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    copy.start(0)
    copy.written([(0, o, b"a|%d" % o, b"v") for o in range(2, MAX_PENDING + 3)])
    assert copy.covered(0) == -1
    copy.written([(0, 0, b"a|0", b"v"), (0, 1, b"a|1", b"v")])
    assert copy.covered(0) == 1  # the ones waiting were let go: read from the log instead


def test_a_junk_record_read_from_the_log_is_covered_not_kept(tmp_path: Path) -> None:
    copy = LocalCopy(tmp_path / "t")
    copy.read_from_log([(0, 0, None, b"x"), (0, 1, b"a|1", b"y")])
    assert copy.covered(0) == 1
    assert list(copy.records(b"a|")) == [(b"a|1", b"y")]
