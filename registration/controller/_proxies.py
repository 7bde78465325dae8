"""One connection per proxy node, shared by every node reached through it.

``autoreg exec`` over twenty nodes behind one proxy needs one SSH handshake
with the proxy, not twenty: the first node that takes the proxy path opens,
verifies and authenticates the proxy session, the others wait for it and open
their ``direct-tcpip`` channels on the same connection.  The proxy's host key is
checked exactly as on its own (``open_verified``); a proxy that failed is not
dialled again in the same run: every node behind it gets the same reason, at
once, instead of one ``connect_timeout`` each.

Thread-safe and blocking: nodes connect in an executor's threads.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import paramiko

from .._exceptions import FingerprintMismatch, NodeUnreachable, SSHError
from ._ssh import SSHTarget, VerifiedSession, open_verified

__all__ = ["ProxyPool"]

Opener = Callable[[SSHTarget, paramiko.PKey], VerifiedSession]


def _open(target: SSHTarget, key: paramiko.PKey) -> VerifiedSession:
    return open_verified(target, key)


class ProxyPool:
    """Authenticated, verified sessions to proxy nodes, one per proxy, opened on demand.

    A session that dies is opened again by the next node that needs it.  ``close()``
    closes them all; the node sessions made through them belong to their callers
    (``open_verified(..., proxy_session=…)`` does not close a shared proxy).
    """

    def __init__(self, key: paramiko.PKey, *, opener: Opener = _open) -> None:
        self._key = key
        self._opener = opener
        self._lock = threading.Lock()
        self._per_proxy: dict[SSHTarget, threading.Lock] = collections.defaultdict(threading.Lock)
        self._sessions: dict[SSHTarget, VerifiedSession] = {}
        self._failed: dict[SSHTarget, SSHError] = {}
        self._closed = False
        #: Connections opened (or attempted) per proxy host: what the pool saved is
        #: the number of nodes behind a proxy minus this.
        self.opened: collections.Counter[str] = collections.Counter()

    def session(self, proxy: SSHTarget) -> VerifiedSession:
        """The shared session to ``proxy``; raises the SSHError its connection raised."""
        with self._lock:
            if self._closed:
                raise NodeUnreachable("the proxy pool is closed", host=proxy.host, port=proxy.port)
            lock = self._per_proxy[proxy]
        with lock:  # one handshake at a time per proxy; the others wait for its outcome
            failed = self._failed.get(proxy)
            if failed is not None:
                raise _again(failed) from failed
            session = self._sessions.get(proxy)
            if session is not None and session.alive():
                return session
            if session is not None:
                session.close()
            self.opened[proxy.host] += 1
            try:
                session = self._opener(proxy, self._key)
            except SSHError as exc:
                self._failed[proxy] = exc
                raise
            with self._lock:
                if self._closed:
                    session.close()
                    raise NodeUnreachable(
                        "the proxy pool is closed", host=proxy.host, port=proxy.port
                    )
                self._sessions[proxy] = session
            return session

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.close()


def _again(exc: SSHError) -> SSHError:
    """A fresh copy of an earlier proxy failure (one exception object per node)."""
    if isinstance(exc, FingerprintMismatch):
        return FingerprintMismatch(
            host=exc.host, port=exc.port, announced=exc.announced, actual=exc.actual
        )
    message = str(exc).removeprefix(f"{exc.host}:{exc.port}: ")
    cls = NodeUnreachable if isinstance(exc, NodeUnreachable) else SSHError
    return cls(message, host=exc.host, port=exc.port)
