"""The embedded mDNS/DNS-SD transport, on python-zeroconf's asyncio API.

Publishing is python-zeroconf's responder; browsing is ``_zeroconf_browse``,
which keeps what it needs outside python-zeroconf's cache and asks again when
datagrams were dropped.  Every coroutine runs on the event loop only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

from zeroconf import IPVersion
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
from zeroconf.const import _FLAGS_AA, _FLAGS_QR_RESPONSE

from .._exceptions import TransportError
from ._base import BrowseListener, Published
from ._zeroconf_browse import Browser, size_receive_buffers

__all__ = ["ZeroconfPublished", "ZeroconfTransport"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class ZeroconfPublished(Published):
    info: AsyncServiceInfo | None = None


class ZeroconfTransport:
    """One python-zeroconf instance bound to the configured interfaces."""

    name: Final = "zeroconf"

    def __init__(self, addresses: list[str] | None = None) -> None:
        self._addresses = addresses
        self._aiozc: AsyncZeroconf | None = None
        self._browsers: list[Browser] = []

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

    async def reannounce(self, published: Published) -> bool:
        """One unsolicited response with the service's records (RFC 6762 §8.3)."""
        assert isinstance(published, ZeroconfPublished)
        info = published.info
        if info is None:
            return False
        out = DNSOutgoing(_FLAGS_QR_RESPONSE | _FLAGS_AA)
        for record in (
            info.dns_pointer(),
            info.dns_service(),
            info.dns_text(),
            *info.dns_addresses(),
        ):
            out.add_answer_at_time(record, 0)
        self.zeroconf.zeroconf.async_send(out)
        return True

    async def maintain(self, published: Published) -> bool:
        """Nothing to repair: the embedded responder lives and dies with this process."""
        return False

    # -- browsing ----------------------------------------------------------------

    async def browse(self, service_type: str, listener: BrowseListener) -> None:
        if not self._browsers:
            log.info("%s", size_receive_buffers(self.zeroconf))
        browser = Browser(self.zeroconf, service_type, listener)
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
