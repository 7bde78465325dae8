"""One way in: every announcement, whatever its source, passes :func:`screen`.

:func:`screen` checks that the node is this registrar's business and that its
address is one to connect to; then the store's ``ingest`` (one announcement:
``autoreg register``) or ``ingest_many`` (a burst: the daemon's ``_intake``)
applies the pure rules of ``state._ingest.absorb`` in one transaction and marks
the node present for that source and instance.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from ..protocol import Announcement, address_problem
from ..state import Absorbed, Source, StateStore
from ._rules import Registrar, owns

__all__ = ["AddressPolicy", "Ingested", "ingest", "screen"]


@dataclasses.dataclass(frozen=True, slots=True)
class Ingested:
    """What became of an announcement: absorbed into a record, not mine, or refused."""

    absorbed: Absorbed | None
    not_mine: str | None = None
    refused: str | None = None  # why its address is not one to connect to


@dataclasses.dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which announced addresses a registrar connects to (docs/security.md).

    Not loopback, link-local, unspecified or multicast (nor their IPv4-mapped
    forms) unless ``allow`` admits them; never one of the registrar's own.
    """

    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    own: frozenset[str] = frozenset()

    def problem(self, ip: str) -> str | None:
        problem = address_problem(ip, allow=self.allow)
        if problem is None and ip in self.own:
            problem = f"{ip} is one of this registrar's own addresses"
        return problem


def screen(
    me: Registrar | None, ann: Announcement, policy: AddressPolicy | None
) -> Ingested | None:
    """Why ``ann`` goes no further (not this registrar's, or an address refused), or
    None: it may be stored.  Pure; ``me`` None skips the ownership check."""
    if me is not None:
        not_mine = owns(me, ann.role, ann.cluster)
        if not_mine:
            return Ingested(None, not_mine)
    problem = (policy or AddressPolicy()).problem(ann.ip)
    if problem:
        return Ingested(None, refused=f"announced address refused: {problem}")
    return None


async def ingest(
    store: StateStore,
    me: Registrar | None,
    ann: Announcement,
    *,
    source: Source,
    instance: str,
    observer: str = "",
    lease: float | None = None,
    policy: AddressPolicy | None = None,
    auth: str = "",
    token_id: str | None = None,
) -> Ingested:
    """Take in ``ann`` from ``source``; ``me`` None skips the ownership check."""
    stop = screen(me, ann, policy)
    if stop is not None:
        return stop
    absorbed = await store.ingest(
        ann,
        source=source,
        instance=instance,
        observer=observer,
        lease=lease,
        auth=auth,
        token_id=token_id,
    )
    return Ingested(absorbed)
