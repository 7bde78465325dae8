"""One way in: every announcement, whatever its source, enters through :func:`ingest`.

mDNS browsing (the daemon), a manual registration (``autoreg register``), and any
later source call this one function.  It checks that the node is this
registrar's business, then hands the announcement to the store, whose ``ingest``
applies the pure rules of ``state._ingest.absorb`` in one transaction and marks
the node present for that source and instance.
"""

from __future__ import annotations

import dataclasses

from ..protocol import Announcement
from ..state import Absorbed, Source, StateStore
from ._rules import Registrar, owns

__all__ = ["Ingested", "ingest"]


@dataclasses.dataclass(frozen=True, slots=True)
class Ingested:
    """What became of an announcement: absorbed into a record, or why it was not mine."""

    absorbed: Absorbed | None
    not_mine: str | None = None


async def ingest(
    store: StateStore,
    me: Registrar | None,
    ann: Announcement,
    *,
    source: Source,
    instance: str,
    observer: str = "",
    lease: float | None = None,
) -> Ingested:
    """Take in ``ann`` from ``source``; ``me`` None skips the ownership check."""
    if me is not None:
        not_mine = owns(me, ann.role, ann.cluster)
        if not_mine:
            return Ingested(None, not_mine)
    absorbed = await store.ingest(
        ann, source=source, instance=instance, observer=observer, lease=lease
    )
    return Ingested(absorbed)
