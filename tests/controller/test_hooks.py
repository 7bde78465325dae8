"""Finding and running role hooks (registration/controller/_hooks.py) with real scripts.

The contract is docs/hooks.md: own process group, private scratch directory,
stdin from /dev/null, a clean environment, a time limit that takes the whole
group down, bounded and sanitized output.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration._exceptions import HookError
from registration.controller import _hooks
from registration.controller._hooks import (
    EXIT_DECLINED,
    OUTPUT_LIMIT,
    HookResult,
    find_hook,
    run_hook,
    sanitize_output,
)

pytestmark = pytest.mark.timeout(60)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(autouse=True)
def _short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM→SIGKILL grace and the pipe-drain bound are 5 s in production; keep tests fast."""
    monkeypatch.setattr(_hooks, "KILL_GRACE", 0.5)


def make_hook(directory: Path, name: str, body: str, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def run(path: Path, env: dict[str, str] | None = None, timeout: float = 20.0) -> HookResult:
    return asyncio.run(run_hook(path, env or {}, timeout=timeout))


def is_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited, possibly an unreaped zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def survivors() -> Iterator[list[int]]:
    """PIDs a test may leave behind when the code under test fails; killed afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not is_gone(pid):
            os.kill(pid, signal.SIGKILL)


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


# -- find_hook ----------


def test_find_hook_missing(tmp_path: Path) -> None:
    assert find_hook(tmp_path, "nc") is None
    assert find_hook(tmp_path / "no-such-dir", "nc") is None


def test_find_hook_regular_executable(tmp_path: Path) -> None:
    hook = make_hook(tmp_path, "nc", "exit 0\n")
    make_hook(tmp_path, "nc.sh", "exit 0\n")
    assert find_hook(tmp_path, "nc") == hook
    assert find_hook(tmp_path, "cc") is None


def test_find_hook_symlink_to_executable(tmp_path: Path) -> None:
    target = make_hook(tmp_path / "shipped", "nc", "exit 0\n")
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    (hooks / "nc").symlink_to(target)
    assert find_hook(hooks, "nc") == hooks / "nc"


def test_find_hook_dangling_symlink_is_missing(tmp_path: Path) -> None:
    (tmp_path / "nc").symlink_to(tmp_path / "gone")
    assert find_hook(tmp_path, "nc") is None


def test_find_hook_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "nc").mkdir()
    with pytest.raises(HookError, match="not a regular file") as info:
        find_hook(tmp_path, "nc")
    assert info.value.command == str(tmp_path / "nc")
    assert info.value.returncode is None


def test_find_hook_not_executable_is_an_error(tmp_path: Path) -> None:
    make_hook(tmp_path, "nc", "exit 0\n", mode=0o644)
    with pytest.raises(HookError, match="not executable"):
        find_hook(tmp_path, "nc")


# -- environment, directory, stdin ----------


def test_environment_is_clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOREG_TEST_LEAK", "must-not-be-seen")
    monkeypatch.setenv("HOME", "/root-home")
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/agent")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("LC_ALL", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    hook = make_hook(tmp_path, "nc", "exec env\n")
    result = run(hook, {"AUTOREG_ROLE": "nc", "AUTOREG_NODE_ID": "n1abc", "LANG": "C"})
    assert result.ok
    seen = dict(line.split("=", 1) for line in result.stdout.splitlines())
    seen.pop("PWD", None)  # dash exports its working directory
    assert seen == {
        "PATH": "/usr/bin:/bin",
        "LANG": "C",  # the hook's env wins over the inherited one
        "TZ": "UTC",
        "AUTOREG_ROLE": "nc",
        "AUTOREG_NODE_ID": "n1abc",
    }


def test_default_path_when_the_daemon_has_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PATH")
    hook = make_hook(tmp_path, "nc", 'printf %s "$PATH"\n')
    assert run(hook).stdout == DEFAULT_PATH


def test_private_working_directory_removed_afterwards(tmp_path: Path) -> None:
    hook = make_hook(
        tmp_path,
        "nc",
        'echo scratch > scratch.txt\npwd\nstat -c %a .\n[ "$(cat scratch.txt)" = scratch ]\n',
    )
    first = run(hook)
    second = run(hook)
    assert first.ok, first.stderr
    workdir, mode = first.stdout.splitlines()
    assert Path(workdir).name.startswith("autoreg-hook-")
    assert mode == "700"
    assert not Path(workdir).exists()
    assert second.stdout.splitlines()[0] != workdir  # fresh every time


def test_stdin_is_dev_null(tmp_path: Path) -> None:
    hook = make_hook(tmp_path, "nc", "readlink /proc/self/fd/0\ncat\necho read-done\n")
    result = run(hook, timeout=10)
    assert not result.timed_out
    assert result.stdout == "/dev/null\nread-done\n"


def test_on_start_gets_the_pid_of_a_group_leader(tmp_path: Path) -> None:
    hook = make_hook(tmp_path, "nc", "echo $$\ncut -d' ' -f5 /proc/$$/stat\n")
    pids: list[int] = []
    result = asyncio.run(run_hook(hook, {}, timeout=10, on_start=pids.append))
    own_pid, pgrp = (int(x) for x in result.stdout.split())
    assert pids == [own_pid]
    assert pgrp == own_pid  # its own process group
    assert pgrp != os.getpgrp()


# -- exit status ----------


@pytest.mark.parametrize("code", [0, 1, 64, 75, EXIT_DECLINED])
def test_exit_codes(tmp_path: Path, code: int) -> None:
    hook = make_hook(tmp_path, "nc", f"echo out\necho err >&2\nexit {code}\n")
    result = run(hook)
    assert result.returncode == code
    assert result.ok is (code == 0)
    assert not result.timed_out
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert result.command == str(hook)
    assert result.duration >= 0


def test_death_by_signal(tmp_path: Path) -> None:
    result = run(make_hook(tmp_path, "nc", "kill -KILL $$\n"))
    assert result.returncode == -signal.SIGKILL
    assert not result.ok


def test_to_error_carries_the_evidence(tmp_path: Path) -> None:
    result = run(make_hook(tmp_path, "nc", "echo progress\necho boom >&2\nexit 3\n"))
    error = result.to_error()
    assert isinstance(error, HookError)
    assert (error.returncode, error.stdout, error.stderr) == (3, "progress\n", "boom\n")
    assert not error.timed_out
    assert "hook failed" in str(error)
    assert str(error).endswith("exit 3)")


def test_unstartable_hook(tmp_path: Path) -> None:
    path = tmp_path / "nc"
    path.write_bytes(b"\x7fELF-not-really\x00\x01")
    path.chmod(0o755)
    with pytest.raises(HookError, match="cannot start hook"):
        run(path)


# -- time limit ----------


def test_timeout_kills_the_whole_process_group(tmp_path: Path, survivors: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    hook = make_hook(
        tmp_path,
        "nc",
        'sleep 1000 &\necho $! > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"\n'
        "echo started\nwait\necho not-reached\n",
    )
    started = time.monotonic()
    result = run(hook, {"PIDFILE": str(pidfile)}, timeout=0.5)
    elapsed = time.monotonic() - started
    child = read_pid(pidfile)
    survivors.append(child)
    assert result.timed_out
    assert not result.ok
    assert result.returncode == -signal.SIGTERM
    assert result.stdout == "started\n"
    assert elapsed < 5
    assert wait_gone(child, within=2.0), f"background child {child} survived the timeout"
    error = result.to_error()
    assert error.timed_out
    assert "timed out" in str(error)


def test_hook_that_ignores_sigterm_is_killed(tmp_path: Path, survivors: list[int]) -> None:
    pidfile = tmp_path / "hook.pid"
    hook = make_hook(
        tmp_path,
        "nc",
        "trap '' TERM\necho $$ > \"$PIDFILE\"\nwhile :; do sleep 0.05; done\n",
    )
    result = run(hook, {"PIDFILE": str(pidfile)}, timeout=0.5)
    survivors.append(read_pid(pidfile))
    assert result.timed_out
    assert result.returncode == -signal.SIGKILL
    assert is_gone(read_pid(pidfile))


def test_cancellation_kills_the_whole_process_group(tmp_path: Path, survivors: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    hook = make_hook(
        tmp_path,
        "nc",
        'sleep 1000 &\necho $! > "$PIDFILE.tmp" && mv "$PIDFILE.tmp" "$PIDFILE"\nwait\n',
    )
    leaders: list[int] = []

    async def scenario() -> None:
        task = asyncio.ensure_future(
            run_hook(hook, {"PIDFILE": str(pidfile)}, timeout=60, on_start=leaders.append)
        )
        deadline = time.monotonic() + 10
        while not pidfile.exists():  # wait for the condition, not for a fixed time
            assert time.monotonic() < deadline, "hook never started its child"
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    child = read_pid(pidfile)
    survivors.extend([child, *leaders])
    assert wait_gone(leaders[0], within=2.0)
    assert wait_gone(child, within=2.0)


def test_timeout_kills_children_that_ignore_sigterm(tmp_path: Path, survivors: list[int]) -> None:
    pidfile = tmp_path / "child.pid"
    hook = make_hook(
        tmp_path,
        "nc",
        'sh -c \'trap "" TERM; echo $$ > "$PIDFILE.tmp"; mv "$PIDFILE.tmp" "$PIDFILE"; '
        "exec sleep 1000' >/dev/null 2>&1 &\n"
        'while [ ! -s "$PIDFILE" ]; do sleep 0.01; done\nwait\n',
    )
    result = run(hook, {"PIDFILE": str(pidfile)}, timeout=0.5)
    child = read_pid(pidfile)
    survivors.append(child)
    assert result.timed_out
    assert wait_gone(child, within=0.5), f"child {child} ignoring SIGTERM survived"


# -- output ----------


def test_output_is_truncated_to_the_tail(tmp_path: Path) -> None:
    hook = make_hook(
        tmp_path,
        "nc",
        'i=0\nwhile [ $i -lt 4000 ]; do echo "line $i of the noisy hook"; '
        'echo "err $i of the noisy hook" >&2; i=$((i+1)); done\n'
        "echo THE-END\necho ERR-END >&2\n",
    )
    result = run(hook)
    assert result.ok
    for text, prefix, end in (
        (result.stdout, "line", "THE-END"),
        (result.stderr, "err", "ERR-END"),
    ):
        assert OUTPUT_LIMIT - 100 < len(text.encode()) <= OUTPUT_LIMIT
        assert text.endswith(f"{prefix} 3999 of the noisy hook\n{end}\n")
        assert f"{prefix} 0 of" not in text
    # What was printed in all, so that `autoreg show` can say how much was cut.
    assert (result.stdout_lines, result.stderr_lines) == (4001, 4001)


def test_lines_are_counted_with_an_unterminated_last_line(tmp_path: Path) -> None:
    result = run(make_hook(tmp_path, "nc", "printf 'one\\ntwo'\nprintf 'x\\n' >&2\n"))
    assert (result.stdout, result.stdout_lines, result.stderr_lines) == ("one\ntwo", 2, 1)
    assert run(make_hook(tmp_path, "cc", "true\n")).stdout_lines == 0


def test_binary_and_escape_sequences_are_sanitized(tmp_path: Path) -> None:
    hook = make_hook(
        tmp_path,
        "nc",
        "printf 'a\\033[31mred\\033[0m\\r\\n\\tTab\\000nul\\377\\n'\n"
        "printf '\\033]0;title\\007' >&2\n",
    )
    result = run(hook)
    for text in (result.stdout, result.stderr):
        assert "\x1b" not in text
        assert "\x07" not in text
        assert "\x00" not in text
        assert "\r" not in text
    assert result.stdout == "a\\x1b[31mred\\x1b[0m\\x0d\n\tTab\\x00nul\ufffd\n"
    assert result.stderr == "\\x1b]0;title\\x07"


def test_sanitize_output_escapes_non_latin_controls() -> None:
    assert sanitize_output("a\u2028b\u202ec".encode()) == "a\\u2028b\\u202ec"
    assert sanitize_output("caf\u00e9 \u2713\n".encode()) == "caf\u00e9 \u2713\n"
