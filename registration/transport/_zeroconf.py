"""The embedded mDNS/DNS-SD transport, on python-zeroconf's asyncio API.

Browsing must never lose a node: a resolve can come back empty while the
records already sit in the cache (common for concurrent resolves on a freshly
started browser), so every resolve reads the cache first, asks the network,
reads the cache again, retries with bounded backoff, and a periodic sweep
re-reads the cache for every name the browser knows.  All methods named
coroutine runs on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

from zeroconf import BadTypeInNameException, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .._exceptions import TransportError
from ._base import BrowseListener, Published, ResolvedService

__all__ = ["ZeroconfPublished", "ZeroconfTransport"]

log = logging.getLogger(__name__)

#: Milliseconds one resolve waits for answers (python-zeroconf's default, 3 s).
RESOLVE_TIMEOUT_MS: Final = 3000
#: Resolve attempts per name before it is left to the sweep.
RESOLVE_ATTEMPTS: Final = 4
#: Seconds before the first resolve retry; doubles per attempt.
RESOLVE_BACKOFF: Final = 0.5
#: Seconds between sweeps that re-read the cache for every known name.  TTLs are
#: no liveness signal (RFC 6762 §10: 75 min for SRV/TXT), so this only repairs
#: missed resolves and TXT updates; removal comes from goodbye packets (§10.1).
SWEEP_INTERVAL: Final = 10.0


@dataclasses.dataclass(slots=True)
class ZeroconfPublished(Published):
    info: AsyncServiceInfo | None = None


class ZeroconfTransport:
    """One python-zeroconf instance bound to the configured interfaces."""

    name: Final = "zeroconf"

    def __init__(self, addresses: list[str] | None = None) -> None:
        self._addresses = addresses
        self._aiozc: AsyncZeroconf | None = None
        self._browsers: list[_Browser] = []

    @property
    def zeroconf(self) -> AsyncZeroconf:
        if self._aiozc is None:
            raise TransportError("transport is not started")
        return self._aiozc

    async def start(self) -> None:
        kwargs: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if self._addresses:
            kwargs["interfaces"] = self._addresses
        try:
            self._aiozc = AsyncZeroconf(**kwargs)
        except OSError as exc:
            raise TransportError(f"cannot open the mDNS socket: {exc}") from exc

    async def close(self) -> None:
        for browser in self._browsers:
            await browser.cancel()
        self._browsers.clear()
        if self._aiozc is not None:
            aiozc, self._aiozc = self._aiozc, None
            await aiozc.async_close()

    # -- publishing --------------------------------------------------------------

    async def publish(
        self,
        service_type: str,
        instance: str,
        *,
        host: str,
        ip: str,
        port: int,
        txt: Mapping[str, str],
        probe: bool,
    ) -> Published:
        info = _service_info(service_type, instance, host=host, ip=ip, port=port, txt=txt)
        try:
            await (
                await self.zeroconf.async_register_service(info, cooperating_responders=not probe)
            )
        except Exception as exc:
            raise TransportError(f"cannot publish {instance}: {exc}") from exc
        return ZeroconfPublished(name=info.name, info=info)

    async def update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None:
        assert isinstance(published, ZeroconfPublished) and published.info is not None
        old = published.info
        info = _service_info(
            old.type,
            old.name[: -len(old.type) - 1],
            host=old.server or "",
            ip=ip,
            port=port,
            txt=txt,
        )
        published.info = info
        await (await self.zeroconf.async_update_service(info))

    async def withdraw(self, published: Published) -> None:
        """Send goodbye packets (TTL 0, RFC 6762 §10.1)."""
        assert isinstance(published, ZeroconfPublished)
        if published.info is None:
            return
        with contextlib.suppress(Exception):
            await (await self.zeroconf.async_unregister_service(published.info))

    async def maintain(self, published: Published) -> bool:
        """Nothing to repair: the embedded responder lives and dies with this process."""
        return False

    # -- browsing ----------------------------------------------------------------

    async def browse(self, service_type: str, listener: BrowseListener) -> None:
        browser = _Browser(self.zeroconf, service_type, listener)
        self._browsers.append(browser)
        browser.start()


def _service_info(
    service_type: str, instance: str, *, host: str, ip: str, port: int, txt: Mapping[str, str]
) -> AsyncServiceInfo:
    return AsyncServiceInfo(
        service_type,
        f"{instance}.{service_type}",
        addresses=[socket.inet_aton(ip)],
        port=port,
        properties=dict(txt),
        server=host,
    )


class _Browser:
    def __init__(self, aiozc: AsyncZeroconf, service_type: str, listener: BrowseListener) -> None:
        self._aiozc = aiozc
        self._type = service_type
        self._listener = listener
        self._known: dict[str, tuple[int, tuple[tuple[bytes, bytes | None], ...]] | None] = {}
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._browser: AsyncServiceBrowser | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._browser = AsyncServiceBrowser(
            self._aiozc.zeroconf, self._type, handlers=[self._on_change]
        )
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def cancel(self) -> None:
        tasks = [t for t in (self._sweeper, *self._resolving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._browser is not None:
            await self._browser.async_cancel()

    def _info(self, name: str) -> AsyncServiceInfo | None:
        """A resolver for ``name``; None (and the listener told why) for a hostile name."""
        try:
            return AsyncServiceInfo(self._type, name)
        except (BadTypeInNameException, ValueError) as exc:
            self._known.pop(name, None)
            self._listener.service_unusable(name, str(exc))
            return None

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._known.pop(name, None)
            task = self._resolving.pop(name, None)
            if task is not None:
                task.cancel()
            self._listener.service_removed(name)
            return
        self._known.setdefault(name, None)
        self._schedule(name)

    def _schedule(self, name: str) -> None:
        if name in self._resolving:
            self._again.add(name)  # re-read once the running resolve finishes
            return
        self._resolving[name] = asyncio.ensure_future(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        try:
            delay = RESOLVE_BACKOFF
            for attempt in range(1, RESOLVE_ATTEMPTS + 1):
                info = self._info(name)
                if info is None:
                    return
                zc = self._aiozc.zeroconf
                if (
                    info.load_from_cache(zc)
                    or await info.async_request(zc, RESOLVE_TIMEOUT_MS)
                    or info.load_from_cache(zc)
                ):
                    self._deliver(name, info)
                    return
                log.debug(
                    "resolve of %s came back empty (attempt %d/%d)", name, attempt, RESOLVE_ATTEMPTS
                )
                if attempt < RESOLVE_ATTEMPTS:
                    await asyncio.sleep(delay)
                    delay *= 2
            log.warning(
                "could not resolve %s after %d attempts; the sweep will retry",
                name,
                RESOLVE_ATTEMPTS,
            )
        finally:
            self._resolving.pop(name, None)
            if name in self._again and name in self._known:
                self._again.discard(name)
                self._schedule(name)

    def _deliver(self, name: str, info: AsyncServiceInfo) -> None:
        if name not in self._known:
            return  # removed while we resolved
        properties = dict(info.properties or {})
        signature = (info.port or 0, tuple(sorted(properties.items())))
        if self._known.get(name) == signature:
            return  # nothing new: the daemon has seen exactly this already
        self._known[name] = signature
        self._listener.service_resolved(
            ResolvedService(name=name, port=info.port or 0, properties=properties)
        )

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            for name in list(self._known):
                if name in self._resolving:
                    continue
                info = self._info(name)
                if info is None:
                    continue
                if info.load_from_cache(self._aiozc.zeroconf):
                    self._deliver(name, info)
                elif self._known.get(name) is None:
                    self._schedule(name)
