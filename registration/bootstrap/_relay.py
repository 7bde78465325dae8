"""The registrar's endpoint, carried back over a bootstrap SSH connection.

A machine that cannot reach the registrar (only its SSH port is open inbound)
still registers: its sshd listens on a port of its own loopback (a remote
forward of the bootstrap connection), and every connection there is relayed
here to the registrar's HTTPS endpoint.  TLS runs end to end inside it: the
node still pins the registrar's certificate, the relay sees only ciphertext.

Each relayed connection is pumped by one thread; at most ``MAX_RELAYED`` per
machine at once (an agent makes one at a time), and every pump ends when
either side closes, or the SSH connection does.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from typing import Final

import paramiko

__all__ = ["Relay"]

log = logging.getLogger(__name__)

#: Relayed connections per machine at once; more are closed at once.
MAX_RELAYED: Final = 8
#: Seconds to connect to the registrar's endpoint.
CONNECT_TIMEOUT: Final = 10.0
#: Seconds a relayed connection may stay silent both ways before it is closed.
IDLE_TIMEOUT: Final = 300.0
CHUNK: Final = 65536


class Relay:
    """Connections arriving on a machine's forwarded port, relayed to ``endpoint``."""

    def __init__(self, endpoint: tuple[str, int], label: str) -> None:
        self.endpoint = endpoint
        self.label = label
        self._slots = threading.BoundedSemaphore(MAX_RELAYED)
        self.relayed = 0

    def __call__(self, channel: paramiko.Channel) -> None:
        """paramiko's transport thread hands over a channel: never block here."""
        if not self._slots.acquire(blocking=False):
            log.warning("%s: more than %d relayed connections at once; closed one",
                        self.label, MAX_RELAYED)  # fmt: skip
            channel.close()
            return
        self.relayed += 1
        name = f"autoreg-relay-{self.label}"
        threading.Thread(target=self._pump, args=(channel,), name=name, daemon=True).start()

    def _pump(self, channel: paramiko.Channel) -> None:
        try:
            with contextlib.closing(channel):
                try:
                    upstream = socket.create_connection(self.endpoint, timeout=CONNECT_TIMEOUT)
                except OSError as exc:
                    log.warning("%s: cannot reach the registrar's endpoint %s:%d to relay: %s",
                                self.label, *self.endpoint, exc)  # fmt: skip
                    return
                with upstream:
                    upstream.settimeout(None)
                    _shuttle(channel, upstream)
        finally:
            self._slots.release()


def _shuttle(channel: paramiko.Channel, upstream: socket.socket) -> None:
    """Copy both ways until one side closes or both are idle for IDLE_TIMEOUT."""
    sides: list[socket.socket | paramiko.Channel] = [channel, upstream]
    while True:
        ready, _, _ = select.select(sides, [], [], IDLE_TIMEOUT)
        if not ready:
            return
        for side in ready:
            try:
                data = side.recv(CHUNK)
            except OSError:
                return
            if not data:
                return
            (upstream if side is channel else channel).sendall(data)
