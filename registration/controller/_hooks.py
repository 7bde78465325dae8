"""Running the admin's per-role registration hooks (see docs/hooks.md).

A hook is ``<hooks_dir>/<role>``: a regular executable file.  It runs in its
own process group with a private working directory, no stdin, a clean
environment and a bounded run time.  Its output is kept (bounded, control
characters escaped) so the event log can show why it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from .._exceptions import HookError
from .._text import escape_controls

__all__ = ["EXIT_DECLINED", "HookResult", "find_hook", "run_hook", "sanitize_output"]

#: Exit status by which a hook declines a node (sysexits EX_NOPERM): not retried.
EXIT_DECLINED: Final = 77
#: Bytes of stdout and of stderr kept per run (the tail; docs/hooks.md, "Output").
OUTPUT_LIMIT: Final = 16 * 1024
#: Seconds between SIGTERM and SIGKILL when a hook overruns its time.
KILL_GRACE: Final = 5.0
_PASSED_THROUGH: Final = ("PATH", "LANG", "LC_ALL", "TZ")


@dataclasses.dataclass(frozen=True, slots=True)
class HookResult:
    command: str
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    #: The daemon was stopped while the hook ran: it was terminated, output kept so far.
    interrupted: bool = False
    pid: int | None = None
    timeout: float | None = None
    #: Lines the hook printed on each stream, all of them (the text keeps the tail).
    stdout_lines: int = 0
    stderr_lines: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.interrupted

    @property
    def status(self) -> str:
        """How the run ended, in words: "exit 3", "killed after hook_timeout (20 s)"."""
        if self.timed_out:
            return f"killed after hook_timeout ({self.timeout:g} s)"
        if self.interrupted:
            return "terminated: the daemon was stopped"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by signal {-self.returncode}"
        return f"exit {self.returncode}"

    def to_error(self) -> HookError:
        what = f"timed out: {self.status}" if self.timed_out else f"failed ({self.status})"
        return HookError(
            f"hook {what}",
            command=self.command,
            returncode=self.returncode,
            stdout=self.stdout,
            stderr=self.stderr,
            timed_out=self.timed_out,
        )


def find_hook(hooks_dir: Path, role: str) -> Path | None:
    """The hook for ``role``, None when there is none; HookError when it is unusable."""
    path = hooks_dir / role
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HookError(
            f"cannot inspect hook: {exc.strerror}", command=str(path), returncode=None
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        raise HookError("hook is not a regular file", command=str(path), returncode=None)
    if not os.access(path, os.X_OK):
        raise HookError(
            "hook is not executable (chmod +x it, or remove it)", command=str(path), returncode=None
        )
    return path


async def run_hook(
    path: Path,
    env: Mapping[str, str],
    *,
    timeout: float,
    on_start: Callable[[int], None] | None = None,
    interrupt: asyncio.Event | None = None,
) -> HookResult:
    """Run one hook to completion (or to its time limit) and collect its output.

    Setting ``interrupt`` terminates the hook's process group (the daemon is
    stopping); the result says so and keeps the output so far.
    """
    full_env = {k: os.environ[k] for k in _PASSED_THROUGH if k in os.environ}
    full_env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    full_env.update(env)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autoreg-hook-") as workdir:
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                cwd=workdir,
                env=full_env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise HookError(
                f"cannot start hook: {exc.strerror}", command=str(path), returncode=None
            ) from exc
        if on_start is not None:
            on_start(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        out_task = asyncio.ensure_future(_tail(proc.stdout))
        err_task = asyncio.ensure_future(_tail(proc.stderr))
        timed_out = interrupted = False
        waiter = asyncio.ensure_future(proc.wait())
        stopper = asyncio.ensure_future((interrupt or asyncio.Event()).wait())
        try:
            finished, _ = await asyncio.wait(
                {waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in finished:
                timed_out = stopper not in finished
                interrupted = not timed_out
                await _terminate_group(proc)
        except asyncio.CancelledError:
            await _terminate_group(proc)
            raise
        finally:
            waiter.cancel()
            stopper.cancel()
            # The group may have children that keep the pipes open: bound the wait.
            done, pending = await asyncio.wait({out_task, err_task}, timeout=KILL_GRACE)
            for task in pending:
                task.cancel()
        stdout, stdout_lines = out_task.result() if out_task in done else (b"", 0)
        stderr, stderr_lines = err_task.result() if err_task in done else (b"", 0)
    return HookResult(
        command=str(path),
        returncode=proc.returncode,
        stdout=sanitize_output(stdout),
        stderr=sanitize_output(stderr),
        stdout_lines=stdout_lines,
        stderr_lines=stderr_lines,
        duration=time.monotonic() - started,
        timed_out=timed_out,
        interrupted=interrupted,
        pid=proc.pid,
        timeout=timeout,
    )


async def _tail(stream: asyncio.StreamReader) -> tuple[bytes, int]:
    """The last :data:`OUTPUT_LIMIT` bytes of ``stream``, and how many lines it had in all."""
    kept = bytearray()
    newlines = 0
    last = b"\n"
    while chunk := await stream.read(65536):
        kept += chunk
        newlines += chunk.count(b"\n")
        last = chunk[-1:]
        if len(kept) > 2 * OUTPUT_LIMIT:
            del kept[:-OUTPUT_LIMIT]
    return bytes(kept[-OUTPUT_LIMIT:]), newlines + (last != b"\n")


async def _terminate_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the hook's whole process group; whatever is left after the grace, SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)
    # Children that ignored SIGTERM survive their leader: the group id stays theirs.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_GRACE)


def sanitize_output(data: bytes) -> str:
    """Decode hook output for logs: invalid UTF-8 replaced, control characters escaped.

    Newlines and tabs are kept; everything else that could steer a terminal is
    escaped by the one rule every outside text follows (:func:`escape_controls`).
    """
    return escape_controls(data.decode("utf-8", errors="replace"), multiline=True)
