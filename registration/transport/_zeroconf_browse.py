"""Browsing with python-zeroconf so that a burst of thousands of nodes loses none.

What a browser may miss, and how this one recovers (docs/protocol.md, "What a
browser may miss"):

- **Records evicted from python-zeroconf's cache.**  Current releases cap the
  cache at 10,000 records (about 2,500 nodes: PTR, SRV, TXT and A each) and
  evict the records closest to expiry first, the SRV and A records; 0.47
  (Debian 12) has no cap.  The cap is compiled in and cannot be raised, so the
  browser does not depend on the cache: it listens to every record as it
  arrives (a ``RecordUpdateListener``, called before the cache is touched) and
  keeps each instance's port and TXT itself, bounded by MAX_INSTANCES (least
  recently announced first out).  A resolve (a query) is needed only when an
  instance's SRV or TXT never arrived.
- **Datagrams dropped by the kernel** when the receive buffer overflows during a
  burst.  The mDNS sockets get RECEIVE_BUFFER bytes (``SO_RCVBUFFORCE`` when
  allowed, else ``SO_RCVBUF``, which ``net.core.rmem_max`` caps), and while the
  namespace's UDP ``RcvbufErrors`` counter grows the browser asks again: a PTR
  query carrying the answers it already has (RFC 6762 §7.1 known-answer
  suppression, so only nodes it missed answer), at least QUERY_MIN_INTERVAL
  apart and backing off to QUERY_MAX_INTERVAL (§5.2).  Nodes also announce
  again until they hold their receipt (``node._announcer``).
- **A resolve that finds nothing** (records still in flight): retried with
  bounded backoff, and a periodic sweep delivers what arrived since.

Every coroutine and callback here runs on the event loop only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import socket
import time
from pathlib import Path
from typing import Any, Final

from zeroconf import BadTypeInNameException, RecordUpdateListener, ServiceStateChange

# The record classes and the packet builder, from the modules that define them (the
# package re-exports them only for compatibility; both 0.47 and current have these).
from zeroconf._dns import DNSQuestion, DNSService, DNSText
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _CLASS_IN, _FLAGS_QR_QUERY, _TYPE_PTR

from ._base import BrowseListener, ResolvedService

__all__ = [
    "MAX_INSTANCES",
    "RECEIVE_BUFFER",
    "Browser",
    "parse_txt",
    "size_receive_buffers",
    "udp_receive_errors",
]

log = logging.getLogger(__name__)

#: Milliseconds one resolve waits for answers (python-zeroconf's default, 3 s).
RESOLVE_TIMEOUT_MS: Final = 3000
#: Resolve attempts per name before it is left to the sweep.
RESOLVE_ATTEMPTS: Final = 4
#: Seconds before the first resolve retry; doubles per attempt.
RESOLVE_BACKOFF: Final = 0.5
#: Resolves running at once at most (each is a query on the wire).
RESOLVE_PARALLEL: Final = 32
#: Seconds between sweeps that deliver what arrived for every known name.  TTLs are
#: no liveness signal (RFC 6762 §10: 75 min for SRV/TXT), so this only repairs
#: missed resolves; removal comes from goodbye packets (§10.1).
SWEEP_INTERVAL: Final = 10.0
#: Instances whose port and TXT the browser keeps, at most.
MAX_INSTANCES: Final = 50_000
#: Bytes of receive buffer asked for each mDNS socket (the kernel doubles it for its
#: bookkeeping): room for a few thousand announcements in one burst.
RECEIVE_BUFFER: Final = 4 * 1024 * 1024
#: Seconds between looks at the UDP drop counter.
DROP_CHECK_INTERVAL: Final = 1.0
#: Seconds between queries sent because datagrams were dropped: at least one second
#: apart (RFC 6762 §5.2), doubling while drops go on, up to the maximum.
QUERY_MIN_INTERVAL: Final = 1.0
QUERY_MAX_INTERVAL: Final = 60.0

_SNMP: Final = Path("/proc/net/snmp")
#: Linux's SO_RCVBUFFORCE (asm-generic/socket.h), which Python's socket module lacks.
_SO_RCVBUFFORCE: Final = 33


@dataclasses.dataclass(slots=True)
class _Instance:
    port: int | None = None
    text: bytes | None = None


class Browser(RecordUpdateListener):
    """Browse one service type; report instances to ``listener`` (see the module doc)."""

    def __init__(self, aiozc: AsyncZeroconf, service_type: str, listener: BrowseListener) -> None:
        super().__init__()
        self._aiozc = aiozc
        self._type = service_type
        self._suffix = "." + service_type.lower()
        self._listener = listener
        # Names the browser announced (PTR), as received, by lower-case key, and what
        # was last delivered for each.
        self._known: dict[str, str] = {}
        self._delivered: dict[str, tuple[int, bytes]] = {}
        self._records: collections.OrderedDict[str, _Instance] = collections.OrderedDict()
        self._arrived: set[str] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._resolve_slots = asyncio.Semaphore(RESOLVE_PARALLEL)
        self._again: set[str] = set()
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.queries_sent = 0
        self.evicted = 0

    def start(self) -> None:
        zc = self._aiozc.zeroconf
        zc.async_add_listener(self, None)
        self._browser = AsyncServiceBrowser(zc, self._type, handlers=[self._on_change])
        self._tasks = [
            asyncio.ensure_future(self._sweep()),
            asyncio.ensure_future(self._watch_drops()),
        ]

    async def cancel(self) -> None:
        tasks = [*self._tasks, *self._resolving.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._aiozc.zeroconf.async_remove_listener(self)
        if self._browser is not None:
            await self._browser.async_cancel()

    # -- records as they arrive (python-zeroconf calls these on the loop) -----------------

    def async_update_records(self, zc: Any, now: float, records: list[Any]) -> None:
        for update in records:
            record = update.new
            key = record.key
            if not key.endswith(self._suffix) or record.ttl == 0 or record.is_expired(now):
                # Another service; a goodbye (the PTR's says it, below); or python-zeroconf
                # reporting a cached record that expired, such as the previous TXT it
                # flushed (RFC 6762 §10.2: cache-flush records live on for one second)
                # -- old news, which must not overwrite what arrived since.
                continue
            if isinstance(record, DNSService):
                self._instance(key).port = record.port
            elif isinstance(record, DNSText):
                self._instance(key).text = record.text
            else:
                continue
            self._arrived.add(key)

    def async_update_records_complete(self) -> None:
        arrived, self._arrived = self._arrived, set()
        for key in arrived:
            if key in self._known:
                self._deliver(key)

    def _instance(self, key: str) -> _Instance:
        entry = self._records.get(key)
        if entry is None:
            entry = self._records[key] = _Instance()
            if len(self._records) > MAX_INSTANCES:
                old, _ = self._records.popitem(last=False)
                self._delivered.pop(old, None)
                self.evicted += 1
                if self.evicted == 1 or self.evicted % 1000 == 0:
                    log.warning(
                        "browsing %s: more than %d instances; %d forgotten so far "
                        "(the least recently announced)",
                        self._type,
                        MAX_INSTANCES,
                        self.evicted,
                    )
        else:
            self._records.move_to_end(key)
        return entry

    # -- instances (the ServiceBrowser reports PTR additions and goodbyes) ----------------

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        key = name.lower()
        if state_change is ServiceStateChange.Removed:
            self._known.pop(key, None)
            self._delivered.pop(key, None)
            self._records.pop(key, None)
            task = self._resolving.pop(key, None)
            if task is not None:
                task.cancel()
            self._listener.service_removed(name)
            return
        if key not in self._known:
            if not self._valid(name):
                return
            self._known[key] = name
        if not self._deliver(key):
            self._schedule(key)

    def _valid(self, name: str) -> bool:
        """A name python-zeroconf can resolve; else the listener is told why not."""
        try:
            AsyncServiceInfo(self._type, name)
        except (BadTypeInNameException, ValueError) as exc:
            self._listener.service_unusable(name, str(exc))
            return False
        return True

    def _deliver(self, key: str) -> bool:
        """Hand the instance's port and TXT to the listener if they are new; False when
        either has not arrived."""
        entry = self._records.get(key)
        name = self._known.get(key)
        if entry is None or name is None or entry.port is None or entry.text is None:
            return False
        seen = (entry.port, entry.text)
        if self._delivered.get(key) != seen:
            self._delivered[key] = seen
            self._listener.service_resolved(
                ResolvedService(name=name, port=entry.port, properties=parse_txt(entry.text))
            )
        return True

    def _schedule(self, key: str) -> None:
        if key in self._resolving:
            self._again.add(key)  # look again once the running resolve finishes
            return
        self._resolving[key] = asyncio.ensure_future(self._resolve(key))

    async def _resolve(self, key: str) -> None:
        """Ask for an instance's SRV and TXT; what comes back arrives through
        :meth:`async_update_records` like everything else."""
        try:
            delay = RESOLVE_BACKOFF
            for attempt in range(1, RESOLVE_ATTEMPTS + 1):
                name = self._known.get(key)
                if name is None:
                    return
                async with self._resolve_slots:
                    if self._deliver(key):
                        return
                    info = AsyncServiceInfo(self._type, name)
                    await info.async_request(self._aiozc.zeroconf, RESOLVE_TIMEOUT_MS)
                if self._deliver(key):
                    return
                log.debug("resolve of %s found nothing (attempt %d/%d)", name, attempt,
                          RESOLVE_ATTEMPTS)  # fmt: skip
                if attempt < RESOLVE_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
            log.warning("could not resolve %s after %d attempts; the sweep will retry",
                        self._known.get(key, key), RESOLVE_ATTEMPTS)  # fmt: skip
        finally:
            self._resolving.pop(key, None)
            if key in self._again and key in self._known:
                self._again.discard(key)
                self._schedule(key)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for key in list(self._known):
                if key not in self._resolving and not self._deliver(key):
                    self._schedule(key)

    # -- dropped datagrams: ask again -------------------------------------------------------

    async def _watch_drops(self) -> None:
        last = udp_receive_errors()
        interval = QUERY_MIN_INTERVAL
        next_query = 0.0
        quiet_since = time.monotonic()
        while True:
            await asyncio.sleep(DROP_CHECK_INTERVAL)
            now = time.monotonic()
            errors = udp_receive_errors()
            if last is None or errors is None or errors <= last:
                last = errors
                if now - quiet_since > QUERY_MAX_INTERVAL:
                    interval = QUERY_MIN_INTERVAL
                continue
            dropped, last, quiet_since = errors - last, errors, now
            if now < next_query:
                continue
            known = self._query()
            log.info(
                "%d UDP datagram(s) dropped (receive buffer full): asked for %s again, "
                "%d known answer(s) given; next query no sooner than %.0fs",
                dropped,
                self._type,
                known,
                interval,
            )
            next_query = now + interval
            interval = min(QUERY_MAX_INTERVAL, interval * 2)

    def _query(self) -> int:
        """One PTR query listing the instances already complete here (RFC 6762 §7.1);
        how many known answers it carried."""
        zc = self._aiozc.zeroconf
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(self._type, _TYPE_PTR, _CLASS_IN))
        now = time.time() * 1000
        known = 0
        for record in zc.cache.get_all_by_details(self._type, _TYPE_PTR, _CLASS_IN):
            alias = getattr(record, "alias", "").lower()
            if alias in self._delivered and not record.is_stale(now):
                out.add_answer_at_time(record, now)
                known += 1
        zc.async_send(out)
        self.queries_sent += 1
        return known


def parse_txt(text: bytes) -> dict[bytes, bytes | None]:
    """DNS-SD TXT strings (RFC 6763 §6) as python-zeroconf reads them: ``key=value``,
    or ``key`` alone (present, no value); the first of a repeated key wins (§6.4).
    The codec (``protocol``) judges what the keys and values mean."""
    out: dict[bytes, bytes | None] = {}
    i, end = 0, len(text)
    while i < end:
        length = text[i]
        item = text[i + 1 : i + 1 + length]
        i += 1 + length
        key, sep, value = item.partition(b"=")
        if key not in out:
            out[key] = value if sep else None
    return out


def udp_receive_errors() -> int | None:
    """UDP ``RcvbufErrors`` (else ``InErrors``) of this network namespace, or None."""
    try:
        lines = [ln.split() for ln in _SNMP.read_text().splitlines() if ln.startswith("Udp:")]
    except OSError:
        return None
    if len(lines) < 2:
        return None
    fields = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    value = fields.get("RcvbufErrors", fields.get("InErrors"))
    return int(value) if value is not None and value.isdigit() else None


def size_receive_buffers(aiozc: AsyncZeroconf, size: int = RECEIVE_BUFFER) -> str:
    """Give python-zeroconf's sockets ``size`` bytes of receive buffer; what they got,
    for the log (``SO_RCVBUFFORCE`` needs CAP_NET_ADMIN, ``SO_RCVBUF`` stops at
    ``net.core.rmem_max``)."""
    engine = aiozc.zeroconf.engine
    sockets: list[socket.socket] = []
    for attribute in ("_listen_socket", "_respond_sockets"):
        value = getattr(engine, attribute, None)
        if isinstance(value, socket.socket):
            sockets.append(value)
        elif isinstance(value, list | tuple):
            sockets.extend(s for s in value if isinstance(s, socket.socket))
    if not sockets:
        return "receive buffers left as they are (no socket found in this python-zeroconf)"
    got: set[int] = set()
    how = "SO_RCVBUFFORCE"
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
        except OSError:
            how = "SO_RCVBUF"
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        with contextlib.suppress(OSError):
            got.add(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    smallest = min(got) if got else 0
    text = f"mDNS receive buffers: {smallest // 1024} KiB ({how}, asked {size // 1024} KiB)"
    if smallest < size:
        text += "; capped by net.core.rmem_max: raise it for bursts of thousands of nodes"
    return text
