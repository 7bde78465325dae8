"""What ``autoreg exec`` writes while it runs (registration/cli/_exec_display.py).

The live line is drawn only on a terminal; off a terminal the output is the
plain lines ``exec`` always wrote.  The end-to-end run on a real pty is in
tests/integration/test_exec_fanout.py.
"""

from __future__ import annotations

import io
import json

import pytest

from registration._follow import FollowResult
from registration._remote import ExecProgress, ExecResult
from registration.cli._exec_display import ERASE, ExecDisplay, follow_summary, progress_text
from support.terminal import raw_control_bytes


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def screen(written: str) -> list[str]:
    """What a terminal shows: on each line, what follows the last erase."""
    return [line.rpartition(ERASE)[2] for line in written.split("\n")]


def test_progress_text_counts_every_node() -> None:
    p = ExecProgress(total=50, done=12, failed=1, running=10)
    assert p.waiting == 27
    assert progress_text(p) == "exec: 12 done, 1 failed, 10 running, 27 waiting (of 50)"


def test_on_a_terminal_the_last_line_is_the_progress_and_output_never_mixes_with_it() -> None:
    out = Tty()
    display = ExecDisplay.for_terminal(out, out)  # stdout and stderr: the same terminal
    assert display.live
    display.progress(ExecProgress(total=2))
    display.progress(ExecProgress(total=2, running=2))
    display.line("nc1", "out", "hello")
    display.line("nc2", "err", "warning: x")
    display.progress(ExecProgress(total=2, done=1, failed=1))
    assert screen(out.getvalue()) == [
        "[nc1] hello",
        "[nc2] warning: x",
        "exec: 1 done, 1 failed, 0 running, 0 waiting (of 2)",
    ]
    display.close()
    assert screen(out.getvalue())[-1] == ""  # erased: the summary starts on a clean line
    display.close()  # idempotent: nothing more written
    assert out.getvalue().endswith(ERASE)
    assert not out.getvalue().endswith(ERASE + ERASE)


def test_stderr_lines_erase_the_progress_line_on_stdout_first() -> None:
    out, err = Tty(), Tty()
    display = ExecDisplay(out, err, live=True)
    display.progress(ExecProgress(total=1, running=1))
    drawn = out.getvalue()
    display.line("nc1", "err", "oops")
    assert out.getvalue().startswith(drawn + ERASE)
    assert err.getvalue() == "[nc1] oops\n"


def test_the_progress_line_never_wraps() -> None:
    out = Tty()
    display = ExecDisplay(out, out, live=True, width=30)
    display.progress(ExecProgress(total=1000, running=100))
    assert len(screen(out.getvalue())[-1]) == 29


def test_off_a_terminal_plain_lines_only() -> None:
    out, err = io.StringIO(), io.StringIO()
    display = ExecDisplay.for_terminal(out, err)
    assert not display.live
    display.progress(ExecProgress(total=2))
    display.line("nc1", "out", "hello")
    display.line("nc1", "err", "warning")
    display.progress(ExecProgress(total=2, done=2))
    display.close()
    assert out.getvalue() == "[nc1] hello\n"
    assert err.getvalue() == "[nc1] warning\n"
    assert raw_control_bytes((out.getvalue() + err.getvalue()).encode()) == []


def test_follow_summary_says_when_it_converged(capsys: pytest.CaptureFixture[str]) -> None:
    results = [ExecResult("node-a", "a", "direct", 0, 0.5), ExecResult("node-b", "b", "-", None, 1)]
    followed = FollowResult(results, converged_after=12.3456, quiet=3.0)
    follow_summary(followed, as_json=True)
    doc = json.loads(capsys.readouterr().out)
    assert doc["converged_after"] == 12.346 and doc["converged_timeout"] == 3.0
    assert [(r["name"], r["returncode"]) for r in doc["results"]] == [("a", 0), ("b", None)]

    follow_summary(followed, as_json=False)
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["NODE", "PATH", "EXIT", "SECONDS", "ERROR"]
    assert len(out.splitlines()) == 3
    assert err == "converged after 12.3s: nothing changed for 3s\n"
