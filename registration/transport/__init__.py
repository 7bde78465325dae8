"""Discovery transports (mDNS/DNS-SD)."""

from __future__ import annotations

import logging

from .._config import Config
from .._netif import resolve_interfaces
from ._avahi import AvahiTransport, avahi_available
from ._base import BrowseListener, Published, ResolvedService, Transport
from ._publication import PUBLISH_TIMEOUT, Publication
from ._zeroconf import ZeroconfTransport

__all__ = [
    "PUBLISH_TIMEOUT",
    "AvahiTransport",
    "BrowseListener",
    "Publication",
    "Published",
    "ResolvedService",
    "Transport",
    "ZeroconfTransport",
    "create_transport",
]

log = logging.getLogger(__name__)


def create_transport(config: Config, *, bind: str | None = None) -> Transport:
    """The configured transport, bound to ``[autoreg] interfaces`` (else ``bind``, else all).

    ``transport = auto`` picks avahi-daemon when it answers on the system bus (a
    second responder beside it would answer for the host twice), else the
    embedded python-zeroconf responder; the log says which and why.
    """
    addresses = resolve_interfaces(config.interfaces) or ([bind] if bind else None)
    choice = config.transport
    if choice == "auto":
        version = avahi_available()
        choice = "avahi" if version else "zeroconf"
        log.info(
            "transport auto: %s",
            f"avahi-daemon {version} answers on the system bus: publishing through it"
            if version
            else "no avahi-daemon on the system bus: using the embedded zeroconf responder",
        )
    if choice == "avahi":
        return AvahiTransport(addresses)
    return ZeroconfTransport(addresses)
