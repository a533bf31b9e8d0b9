"""Progress of long commands: periodic lines off a terminal, a redrawn line on one."""

from __future__ import annotations

import io
import time

from streams.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_a_status_line_now_and_then_and_a_summary() -> None:
    out = io.StringIO()
    p = Progress("replay", "lines", stream=out, every_s=0.05)
    for _ in range(5):
        p.add(1000)
        time.sleep(0.06)
    p.done()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and "\r" not in out.getvalue()
    assert lines[-1].startswith("replay: 5,000 lines in ")
    quiet = io.StringIO()
    q = Progress("replay", "lines", stream=quiet)
    q.add(10)
    q.done()  # a short run says nothing: its summary is the command's own
    assert quiet.getvalue() == ""


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    out = Tty()
    p = Progress("generate", "messages", total=4000, stream=out)
    for _ in range(4):
        p.add(1000)
        time.sleep(0.21)
    p.done()
    text = out.getvalue()
    assert text.count("\r\033[K") >= 3 and text.endswith("\n")
    assert "generate: 4,000/4,000 messages 100 %" in text
