"""Run the calling thread inside a lab host's network namespace (``setns``), for a while.

The contract tests drive an etcd store in-process: its sockets must live inside
the lab, never in the root namespace.  A network namespace is a per-thread
attribute: :func:`inside` moves the *calling* thread into ``host``'s namespace and
back again when the block ends, whatever happens in it.  Threads started meanwhile
(the store's executor, its watches) are created by this thread and inherit the
namespace.  Nothing else of the process moves.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

from .netlab import NETNS_DIR, Host

__all__ = ["inside"]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def inside(host: Host) -> Iterator[None]:
    """The calling thread runs in ``host``'s network namespace until the block ends."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(NETNS_DIR / host.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
