"""The first step of all SSH work: does the node's address answer at all?

A TCP connect is cheap (a socket, no thread), so the daemon makes many at once
(``[controller] max_probes``) and only a node whose address answered takes one
of the few SSH slots (``max_parallel``).  The connected socket is not wasted:
it becomes the SSH session's socket, so a registration still costs the node one
connection.

:func:`dial` runs on the event loop (``loop.sock_connect`` on a non-blocking
socket, bounded by ``asyncio.timeout``); OS errors are mapped here, at the I/O
boundary, to :class:`~registration._exceptions.NodeUnreachable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import resource
import socket
import time
from typing import Final

from .._exceptions import NodeUnreachable

__all__ = ["FD_RESERVE", "Dialed", "dial", "probe_capacity"]

#: File descriptors kept free of dials for everything else the daemon opens (the
#: store, SSH sessions, hooks' pipes, the mDNS sockets, logs).
FD_RESERVE: Final = 512


@dataclasses.dataclass(eq=False, slots=True)
class Dialed:
    """What dialling a node found.

    ``sock``: connected to ``address`` (the SSH session may use it, once);
    ``error``: why the direct address did not answer; ``reachable``: whether any
    path is left to try (another path, such as a proxy, may still work when the
    direct one failed).  No socket and no error: the direct path was not dialled
    (another path comes first), the SSH step connects itself.
    """

    sock: socket.socket | None = None
    error: str | None = None
    reachable: bool = True
    address: tuple[str, int] | None = None
    at: float = dataclasses.field(default_factory=time.monotonic)

    def take(self) -> socket.socket | None:
        """The connected socket, handed over once (the caller closes it from now on)."""
        sock, self.sock = self.sock, None
        return sock

    def close(self) -> None:
        sock = self.take()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


async def dial(host: str, port: int, *, timeout: float) -> socket.socket:
    """A TCP connection to ``host:port`` (blocking mode, ``TCP_NODELAY``) or
    :class:`NodeUnreachable` saying why not, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError as exc:
        raise NodeUnreachable(f"not an address: {host!r}", host=host, port=port) from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        # The SSH handshake is a ping-pong of small packets: without this, Nagle's
        # algorithm meets the peer's delayed ACK and a round trip can cost 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
    except TimeoutError as exc:
        sock.close()
        raise NodeUnreachable(
            f"no answer within {timeout:g}s (connect_timeout)", host=host, port=port
        ) from exc
    except OSError as exc:
        sock.close()
        # asyncio's strerror is "Connect call failed (addr)": name the errno instead
        why = os.strerror(exc.errno).lower() if exc.errno else str(exc) or type(exc).__name__
        raise NodeUnreachable(why, host=host, port=port) from exc
    except BaseException:
        sock.close()
        raise
    sock.setblocking(True)
    return sock


def probe_capacity(wanted: int) -> int:
    """How many dials may be open at once: ``wanted``, within the file descriptor limit.

    The soft limit is raised to the hard one first (systemd's default soft limit is
    1024, its hard limit far higher); FD_RESERVE descriptors stay free for the rest.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))
