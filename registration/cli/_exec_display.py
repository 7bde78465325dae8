"""What ``autoreg exec`` shows: node output, a live line on a terminal, the summary.

On a terminal the last line is a progress line, redrawn in place (carriage
return, erase line) whenever a node starts or ends, and erased before anything
else is written, so node output never mixes with it.  When stdout is not a
terminal (a pipe, a file, a script reading ``--json``) there is no progress
line at all: only plain lines, exactly the node output and then the summary.

Node output is the admin's own command's, shown as OpenSSH would show it; the
summary (names, paths, errors quoting what a peer sent) goes through
:func:`format_table` / :func:`emit_json`, which escape it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from typing import Final, TextIO

import click

from .._follow import FollowResult
from .._remote import ExecProgress, ExecResult
from ._output import emit_json, format_table

__all__ = ["ExecDisplay", "exec_summary", "follow_summary", "progress_text"]

#: Moves to the start of the line and erases it (CR, then CSI K: erase to the end).
ERASE: Final = "\r\x1b[K"


def progress_text(progress: ExecProgress) -> str:
    """``exec: 12 done, 1 failed, 10 running, 27 waiting (of 50)``."""
    return (
        f"exec: {progress.done} done, {progress.failed} failed, "
        f"{progress.running} running, {progress.waiting} waiting (of {progress.total})"
    )


class ExecDisplay:
    """Node output lines, plus the live progress line when ``live``.

    ``out`` and ``err`` are where node stdout and stderr lines go (the CLI's own
    stdout and stderr); the progress line is drawn on ``out``, which must be a
    terminal for it to make sense (:meth:`for_terminal` decides).
    """

    def __init__(self, out: TextIO, err: TextIO, *, live: bool, width: int = 80) -> None:
        self._out = out
        self._err = err
        self._live = live
        self._width = max(20, width)
        self._shown = ""  # the progress line on screen now ("" when none)
        self._last: ExecProgress | None = None

    @classmethod
    def for_terminal(cls, out: TextIO, err: TextIO) -> ExecDisplay:
        """Live when ``out`` is a terminal, plain otherwise."""
        live = out.isatty()
        width = shutil.get_terminal_size().columns if live else 80
        return cls(out, err, live=live, width=width)

    @property
    def live(self) -> bool:
        return self._live

    def line(self, name: str, stream: str, text: str) -> None:
        """One line of a node's output, prefixed with its name (as ``autoreg exec`` always did)."""
        self._erase()
        click.echo(f"[{name}] {text}", file=self._err if stream == "err" else self._out)
        self._draw()

    def progress(self, progress: ExecProgress) -> None:
        self._last = progress
        self._draw()

    def close(self) -> None:
        """Erase the progress line (before the summary, or on the way out)."""
        self._erase()
        self._last = None

    def _erase(self) -> None:
        if self._shown:
            self._out.write(ERASE)
            self._out.flush()
            self._shown = ""

    def _draw(self) -> None:
        if not self._live or self._last is None:
            return
        text = progress_text(self._last)[: self._width - 1]  # never wrap: CR must reach it
        self._out.write(ERASE + text)
        self._out.flush()
        self._shown = text


def exec_summary(results: Sequence[ExecResult], *, as_json: bool) -> None:
    """The table of exit statuses after the output (or, with ``as_json``, one JSON document)."""
    if as_json:
        emit_json([dataclasses.asdict(r) for r in results])
        return
    click.echo(
        format_table(
            ["NODE", "PATH", "EXIT", "SECONDS", "ERROR"],
            [
                [
                    r.name,
                    r.path,
                    "-" if r.returncode is None else str(r.returncode),
                    f"{r.duration:.2f}",
                    r.error,
                ]
                for r in results
            ],
        )
    )


def follow_summary(followed: FollowResult, *, as_json: bool) -> None:
    """``exec --follow``'s summary: the table, then when and why it stopped (on stderr).

    With ``as_json``: ``{"converged_after": s, "converged_timeout": s, "results": [...]}``,
    each result as plain ``exec --json`` lists it.
    """
    if as_json:
        emit_json(
            {
                "converged_after": round(followed.converged_after, 3),
                "converged_timeout": followed.quiet,
                "results": [dataclasses.asdict(r) for r in followed.results],
            }
        )
        return
    exec_summary(followed.results, as_json=False)
    click.echo(
        f"converged after {followed.converged_after:.1f}s: nothing changed for {followed.quiet:g}s",
        err=True,
    )
