"""The transport interface: publish and browse DNS-SD services.

Implementations: python-zeroconf (embedded, the default).  ``async_*``
methods run on the event loop only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ._zeroconf import BrowseListener, Published

__all__ = ["Transport"]


class Transport(Protocol):
    @property
    def name(self) -> str: ...

    async def async_start(self) -> None: ...

    async def async_close(self) -> None: ...

    async def async_publish(
        self,
        service_type: str,
        instance: str,
        *,
        host: str,
        ip: str,
        port: int,
        txt: Mapping[str, str],
        probe: bool,
    ) -> Published: ...

    async def async_update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None: ...

    async def async_withdraw(self, published: Published) -> None: ...

    async def async_browse(self, service_type: str, listener: BrowseListener) -> None: ...
