"""Finding registrars: browse ``_autoreg-ctl._tcp`` ("I am the CLC", "cc foo is registered")."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

from .._config import Config
from .._exceptions import AnnouncementError
from .._netif import interface_address
from ..protocol import CONTROLLER_SERVICE_TYPE, RegistrarAnnouncement, decode_registrar
from ..transport import ResolvedService, Transport, create_transport

__all__ = ["browse_report", "discover_registrars"]

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


def browse_report(config: Config) -> tuple[str, list[str]]:
    """Where ``discover`` browses, in words, and what is wrong with it (nothing answered).

    The interfaces are ``[autoreg] interfaces`` (names or addresses), else every
    interface with an IPv4 address but loopback.  A problem is an interface that
    is down or has no carrier, or no interface at all.
    """
    problems: list[str] = []
    named: list[tuple[str | None, str]] = []  # (interface, address)
    if config.interfaces:
        by_address = {interface_address(n): n for _, n in socket.if_nameindex()}
        for item in config.interfaces:
            try:
                named.append((by_address.get(str(ipaddress.ip_address(item))), item))
            except ValueError:
                named.append((item, interface_address(item) or "no IPv4 address"))
    else:
        for _, name in socket.if_nameindex():
            address = interface_address(name)
            if address and not ipaddress.ip_address(address).is_loopback:
                named.append((name, address))
        if not named:
            problems.append("this host has no network interface with an IPv4 address but loopback")
    for interface, _ in named:
        state = _link_state(interface) if interface else None
        if state is not None and state != "up":
            problems.append(f"{interface} is {state}")
    where = ", ".join(f"{n} {address}" if n else address for n, address in named)
    return (
        f"browsed for {CONTROLLER_SERVICE_TYPE} (mDNS, 224.0.0.251 port 5353) "
        f"on {where or 'no interface'}",
        problems,
    )


def _link_state(name: str) -> str | None:
    """``up``, ``down``, ``up without a carrier`` (operstate), None when unknown."""
    try:
        operstate = Path(f"/sys/class/net/{name}/operstate").read_text().strip()
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        return None
    if not flags & 0x1:  # IFF_UP
        return "down"
    if operstate in ("down", "lowerlayerdown"):
        return "up without a carrier"
    return "up"
