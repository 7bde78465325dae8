"""Discovery transports (mDNS/DNS-SD)."""

from __future__ import annotations

from .._config import Config
from .._netif import resolve_interfaces
from ._base import Transport
from ._publication import PUBLISH_TIMEOUT, Publication
from ._zeroconf import BrowseListener, Published, ResolvedService, ZeroconfTransport

__all__ = [
    "PUBLISH_TIMEOUT",
    "BrowseListener",
    "Publication",
    "Published",
    "ResolvedService",
    "Transport",
    "ZeroconfTransport",
    "create_transport",
]


def create_transport(config: Config, *, bind: str | None = None) -> Transport:
    """The configured transport, bound to ``[autoreg] interfaces`` (else ``bind``, else all)."""
    addresses = resolve_interfaces(config.interfaces) or ([bind] if bind else None)
    return ZeroconfTransport(addresses)
