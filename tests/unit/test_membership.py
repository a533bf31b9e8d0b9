"""The member id a restarted worker rejoins its group under (streams/membership.py)."""

from __future__ import annotations

from pathlib import Path

from streams.membership import MemberMemory


def test_a_kept_id_is_recalled_by_the_next_process_on_the_same_directory(
        tmp_path: Path) -> None:
    path = tmp_path / "kpi-state" / "group" / "member-id"
    assert MemberMemory(path).recall() is None  # first start: nothing to rejoin under
    MemberMemory(path).keep("faust-0.15.3-c50901fc")
    assert MemberMemory(path).recall() == "faust-0.15.3-c50901fc"


def test_a_new_id_replaces_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "member-id"
    memory = MemberMemory(path)
    memory.keep("a")
    memory.keep("b")  # the coordinator had forgotten "a" and gave a new id
    assert MemberMemory(path).recall() == "b"
    assert not path.with_suffix(".tmp").exists()


def test_a_copied_data_directory_gives_no_id(tmp_path: Path) -> None:
    """Two live workers under one id would take turns evicting each other: a directory
    copied to start another worker joins as a new member."""
    first = tmp_path / "one" / "member-id"
    MemberMemory(first).keep("faust-a")
    copy = tmp_path / "two" / "member-id"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    assert MemberMemory(copy).recall() is None
    assert MemberMemory(first).recall() == "faust-a"


def test_an_unreadable_file_gives_no_id(tmp_path: Path) -> None:
    path = tmp_path / "member-id"
    owner = MemberMemory(path).owner
    for junk in (b"", b"\xff\xfe", owner.encode(), f"{owner}\n\n".encode(),
                 f"{owner}\nid\x1b[2J\n".encode(), f"{owner}\n{'x' * 2000}\n".encode()):
        path.write_bytes(junk)
        assert MemberMemory(path).recall() is None, junk


def test_an_unwritable_directory_only_costs_the_fast_rejoin(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    memory = MemberMemory(blocker / "member-id")  # its parent is a file
    memory.keep("a")  # logs a warning, never raises
    assert memory.recall() is None
