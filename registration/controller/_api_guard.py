"""What keeps the HTTPS endpoint serving whatever is thrown at it: per-source limits.

Two layers, both keyed by the peer's address:

- :class:`ConnectionGate`, before TLS: a connection over the per-source or the
  global cap, or beyond the per-source rate of new connections, is dropped before
  any handshake work; one that passes gets ``HANDSHAKE_TIMEOUT`` for its TLS
  handshake and lives ``CONNECTION_LIFETIME`` at most (then it is closed after
  the request in progress, and cut ``CLOSE_GRACE`` later), so idle or slow
  clients cannot pin file descriptors;
- :class:`RateLimiter`, per request: a token bucket per source (``[controller]
  listen_rate`` per second, bursts of ``BURST`` times that); beyond it the
  answer is 429 with ``Retry-After``.

Both tables are bounded (``MAX_SOURCES``, least recently seen forgotten first).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, Final

__all__ = [
    "CONNECTION_LIFETIME",
    "HANDSHAKE_TIMEOUT",
    "MAX_CONNECTIONS",
    "MAX_PER_SOURCE",
    "ConnectionGate",
    "RateLimiter",
]

log = logging.getLogger(__name__)

#: Sources whose buckets and connection counts are kept at most.
MAX_SOURCES: Final = 4096
#: A bucket holds this many seconds' worth of requests (the burst a source may make).
BURST: Final = 3.0
#: Connections open at once: from one source, and in all.
MAX_PER_SOURCE: Final = 16
MAX_CONNECTIONS: Final = 512
#: Seconds for the TLS handshake, and for a whole connection (keep-alive included).
HANDSHAKE_TIMEOUT: Final = 10.0
CONNECTION_LIFETIME: Final = 30.0
CLOSE_GRACE: Final = 5.0


class RateLimiter:
    """Token buckets per source: ``rate`` per second, at most ``rate * BURST`` saved up."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate * BURST)
        self._clock = clock
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def take(self, source: str) -> float:
        """0.0 when ``source`` may go on now, else the seconds until it may."""
        now = self._clock()
        tokens, last = self._buckets.pop(source, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > MAX_SOURCES:
            self._buckets.popitem(last=False)
        return wait


class _Relay(asyncio.Protocol):
    """aiohttp's handler behind TLS, with the gate told (once) when the connection ends.

    Data that arrives between the end of the handshake and :meth:`start` (the request
    may come in the same segment as the client's last handshake message) is held.
    """

    def __init__(self, gate: ConnectionGate, handler: Any, source: str) -> None:
        self._gate = gate
        self._handler = handler
        self._source = source
        self.transport: asyncio.BaseTransport | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._early: list[bytes] = []
        self._early_eof = False
        self._ended = False

    def start(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self._timers = [
            loop.call_later(CONNECTION_LIFETIME, self._handler.close),
            loop.call_later(CONNECTION_LIFETIME + CLOSE_GRACE, self.abort),
        ]
        self._handler.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._handler.data_received(data)
        if self._early_eof:
            self._handler.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            self._early.append(data)
            return
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.transport is None:
            self._early_eof = True
            return None
        result: bool | None = self._handler.eof_received()
        return result

    def pause_writing(self) -> None:
        if self.transport is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self._handler.connection_lost(exc)
        self.end()

    def end(self) -> None:
        """The connection is over (or never got past TLS): free its place, once."""
        if self._ended:
            return
        self._ended = True
        for timer in self._timers:
            timer.cancel()
        self._gate.release(self._source, self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


class _Accept(asyncio.Protocol):
    """A fresh TCP connection: admitted (then TLS, then HTTP) or dropped at once."""

    def __init__(self, gate: ConnectionGate) -> None:
        self._gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if peer else "?"
        if not self._gate.admit(source):
            transport.abort()  # type: ignore[attr-defined]
            return
        transport.pause_reading()  # type: ignore[attr-defined]  # start_tls takes over
        self._gate.spawn(self._gate.upgrade(transport, source))

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused
        pass


class ConnectionGate:
    """Admission before TLS, the TLS upgrade, and the bookkeeping of live connections.

    ``handler_factory`` makes aiohttp's per-connection protocol (``web.Server``).
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        handler_factory: Callable[[], Any],
        *,
        rate: float,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._context = context
        self._factory = handler_factory
        self._open: dict[str, int] = {}
        self._total = 0
        self._new = RateLimiter(rate)
        self._on_refused = on_refused
        self._relays: set[_Relay] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closing = False

    def protocol(self) -> asyncio.Protocol:
        return _Accept(self)

    def admit(self, source: str) -> bool:
        reason = None
        if self.closing:
            reason = "closing"
        elif self._total >= MAX_CONNECTIONS:
            reason = "too-many-connections"
        elif self._open.get(source, 0) >= MAX_PER_SOURCE:
            reason = "too-many-from-source"
        elif len(self._open) >= MAX_SOURCES and source not in self._open:
            reason = "too-many-sources"
        elif self._new.take(source) > 0:
            reason = "connection-rate"
        if reason is not None:
            self._on_refused(reason)
            return False
        self._open[source] = self._open.get(source, 0) + 1
        self._total += 1
        return True

    def release(self, source: str, relay: _Relay | None = None) -> None:
        count = self._open.get(source, 0) - 1
        if count > 0:
            self._open[source] = count
        else:
            self._open.pop(source, None)
        self._total = max(0, self._total - 1)
        if relay is not None:
            self._relays.discard(relay)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def upgrade(self, transport: asyncio.BaseTransport, source: str) -> None:
        relay = _Relay(self, self._factory(), source)
        self._relays.add(relay)
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,  # type: ignore[arg-type]
                relay,
                self._context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            )
        except (OSError, TimeoutError, RuntimeError) as exc:  # ssl.SSLError is one
            log.debug("TLS handshake with %s failed: %s", source, exc)
            self._on_refused("tls-handshake")
            transport.abort()  # type: ignore[attr-defined]
            relay.end()
            return
        except asyncio.CancelledError:
            transport.abort()  # type: ignore[attr-defined]
            relay.end()
            raise
        if tls is None or self.closing:  # pragma: no cover - closed meanwhile
            transport.abort()  # type: ignore[attr-defined]
            relay.end()
            return
        relay.start(tls)

    @property
    def open_connections(self) -> int:
        return self._total

    async def close(self) -> None:
        """Refuse new connections, cut the handshakes in progress and every relay."""
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for relay in list(self._relays):
            relay.abort()
        self._relays.clear()
