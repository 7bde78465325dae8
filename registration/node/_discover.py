"""Finding registrars: browse ``_autoreg-ctl._tcp`` ("I am the CLC", "cc foo is registered")."""

from __future__ import annotations

import asyncio
import logging

from .._config import Config
from .._exceptions import AnnouncementError
from ..protocol import CONTROLLER_SERVICE_TYPE, RegistrarAnnouncement, decode_registrar
from ..transport import ResolvedService, Transport, create_transport

__all__ = ["discover_registrars"]

log = logging.getLogger(__name__)


class _Collector:
    def __init__(self) -> None:
        self.found: dict[str, RegistrarAnnouncement] = {}

    def service_resolved(self, service: ResolvedService) -> None:
        try:
            self.found[service.name] = decode_registrar(service.properties, service.port)
        except AnnouncementError as exc:
            log.warning("ignoring malformed registrar announcement %s: %s", service.name, exc)

    def service_removed(self, name: str) -> None:
        self.found.pop(name, None)

    def service_unusable(self, name: str, reason: str) -> None:
        log.warning("ignoring registrar announcement %r: %s", name, reason)


async def discover_registrars(
    config: Config, *, timeout: float, transport: Transport | None = None
) -> list[RegistrarAnnouncement]:
    """Browse for ``timeout`` seconds and return the registrars that answered."""
    if transport is None:
        transport = await asyncio.to_thread(create_transport, config)
    collector = _Collector()
    await transport.start()
    try:
        await transport.browse(CONTROLLER_SERVICE_TYPE, collector)
        await asyncio.sleep(timeout)  # browsing window: answers arrive during it
    finally:
        await transport.close()
    return sorted(collector.found.values(), key=lambda a: (a.role, a.cluster or "", a.node_id))
