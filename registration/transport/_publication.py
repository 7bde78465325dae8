"""One service this process announces: published on first set, updated after, withdrawn."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Final

from ..protocol import instance_name
from ._base import Published, Transport

__all__ = ["PUBLISH_TIMEOUT", "Publication"]

#: Upper bound on one publish/update round trip before it is reported as stuck.
PUBLISH_TIMEOUT: Final = 30.0


class Publication:
    """A node's or registrar's own record (``<role>-<id>`` on host ``autoreg-<id>.local.``)."""

    def __init__(
        self, transport: Transport, service_type: str, *, role: str, node_id: str, probe: bool
    ) -> None:
        self._transport = transport
        self._type = service_type
        self._instance = instance_name(role, node_id)
        self._host = f"autoreg-{node_id}.local."
        self._probe = probe
        self._published: Published | None = None
        # One change at a time: a second publish while the first is still being
        # announced would register the same name twice.
        self._lock = asyncio.Lock()
        self._name = f"{self._instance}.{self._type}"

    @property
    def name(self) -> str:
        """The full service name; a transport may have renamed it after a collision."""
        return self._published.name if self._published is not None else self._name

    async def set(self, *, ip: str, port: int, txt: Mapping[str, str]) -> bool:
        """Publish or update; True when this call published for the first time."""
        async with self._lock:
            return await self._set(ip=ip, port=port, txt=txt)

    async def _set(self, *, ip: str, port: int, txt: Mapping[str, str]) -> bool:
        if self._published is None:
            self._published = await asyncio.wait_for(
                self._transport.publish(
                    self._type,
                    self._instance,
                    host=self._host,
                    ip=ip,
                    port=port,
                    txt=txt,
                    probe=self._probe,
                ),
                PUBLISH_TIMEOUT,
            )
            return True
        await asyncio.wait_for(
            self._transport.update(self._published, ip=ip, port=port, txt=txt),
            PUBLISH_TIMEOUT,
        )
        return False

    async def reannounce(self) -> bool:
        """Announce once more, unchanged; False when not published or not possible."""
        async with self._lock:
            if self._published is None:
                return False
            return await self._transport.reannounce(self._published)

    async def maintain(self) -> bool:
        """Let the transport repair a publication its responder lost (e.g. it restarted)."""
        async with self._lock:
            if self._published is None:
                return False
            return await self._transport.maintain(self._published)

    async def withdraw(self) -> bool:
        """Send goodbye packets; True when there was something to withdraw."""
        if self._published is None:
            return False
        published, self._published = self._published, None
        self._name = published.name  # what was withdrawn, for the log
        await self._transport.withdraw(published)
        return True
