"""The transport interface: publish and browse DNS-SD services.

Implementations: python-zeroconf (embedded) and avahi-daemon over D-Bus.  Every
method is a coroutine and runs on the event loop only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Protocol

__all__ = ["BrowseListener", "Published", "ResolvedService", "Transport"]


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedService:
    """A resolved DNS-SD instance: what the protocol codec needs."""

    name: str
    port: int
    properties: Mapping[bytes, bytes | None]


class BrowseListener(Protocol):
    def service_resolved(self, service: ResolvedService) -> None: ...

    def service_removed(self, name: str) -> None: ...

    def service_unusable(self, name: str, reason: str) -> None:
        """An instance that cannot even be resolved (its name is not a valid DNS-SD
        name, say); ``name`` is as received: render it escaped."""
        ...


@dataclasses.dataclass(slots=True)
class Published:
    """A service this process publishes; each transport keeps its own handle in a subclass."""

    name: str


class Transport(Protocol):
    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

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
    ) -> Published: ...

    async def update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None: ...

    async def withdraw(self, published: Published) -> None: ...

    async def reannounce(self, published: Published) -> bool:
        """Announce the publication once more, unchanged (RFC 6762 §8.3 unsolicited
        responses); False when this transport cannot (the node relies on queries)."""
        ...

    async def maintain(self, published: Published) -> bool:
        """Repair the publication if the responder lost it; True when it re-published."""
        ...

    async def browse(self, service_type: str, listener: BrowseListener) -> None: ...
