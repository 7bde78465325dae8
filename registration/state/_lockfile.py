"""One daemon per state directory: an exclusive ``flock`` on ``daemon.lock``.

The kernel drops the lock when its holder dies, so a second daemon is refused
while the first runs (``AlreadyRunning``, naming its pid), and never afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Final

from .._exceptions import AlreadyRunning, StateError

__all__ = ["LOCK_FILE", "lock_state_dir"]

LOCK_FILE: Final = "daemon.lock"


def lock_state_dir(directory: Path, owner: str) -> int:
    """Take ``directory/daemon.lock`` for ``owner``; the file descriptor (close it to unlock)."""
    lock_path = directory / LOCK_FILE
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise StateError(f"{lock_path}: cannot lock: {exc.strerror}") from exc
        pid = holder[0] if holder else "?"
        raise AlreadyRunning(
            f"another autoreg daemon already runs on {directory} (pid {pid}); "
            "one daemon per state directory (stop it first, or give this one its own "
            "--state-dir)"
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)
    return fd


def lock_holder(directory: Path) -> tuple[str, str] | None:
    """(pid, owner) written by the daemon that holds the lock, if one does."""
    lock_path = directory / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            words = os.pread(fd, 256, 0).decode("ascii", "replace").split()
            return (words[0], words[1]) if len(words) >= 2 else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
