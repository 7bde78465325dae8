"""The node side: ``autoreg announce`` publishes this host and keeps it current.

It publishes ``_autoreg._tcp`` with the node's role, cluster, preferred
address and sshd host-key fingerprint, re-announces when any of those or its
registration standing changes, and sends goodbye packets when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .._config import Config
from .._exceptions import AutoregError
from ..protocol import NODE_SERVICE_TYPE, Announcement, encode_node
from ..transport import Publication, Transport, create_transport
from ._identity import NodeIdentity, self_registration_state

__all__ = ["Announcer"]

log = logging.getLogger(__name__)


class Announcer:
    """Publishes one node and keeps its announcement in step with reality."""

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._publication: Publication | None = None
        self._current: Announcement | None = None
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _snapshot(self) -> Announcement:
        identity = NodeIdentity.from_config(self.config)
        standing = self_registration_state(self.config.node)
        return identity.announcement(self.config.node, registered=standing is not None)

    async def run(self) -> None:
        """Publish, then re-check every ``poll_interval`` until stopped; goodbye on exit."""
        ann = self._snapshot()
        if self._transport is None:
            # `auto` asks D-Bus whether avahi-daemon answers: blocking, so in a thread.
            self._transport = await asyncio.to_thread(create_transport, self.config, bind=ann.ip)
        self._publication = Publication(
            self._transport,
            NODE_SERVICE_TYPE,
            role=ann.role,
            node_id=ann.node_id,
            probe=self.config.node.probe,
        )
        await self._transport.start()
        try:
            await self._publish(ann)
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.node.poll_interval)
                if self._stopping.is_set():
                    break
                try:
                    await self._publish(self._snapshot())
                    if await self._publication.maintain():
                        log.info(
                            "re-announced %s after the responder lost it", self._publication.name
                        )
                except AutoregError as exc:  # e.g. interface lost its address: keep going
                    log.warning("cannot refresh the announcement: %s", exc)
        finally:
            if await self._publication.withdraw():
                log.info("withdrew %s (goodbye sent)", self._publication.name)
            await self._transport.close()

    async def _publish(self, ann: Announcement) -> None:
        assert self._publication is not None
        if ann == self._current:
            return
        started = time.monotonic()
        first = await self._publication.set(ip=ann.ip, port=ann.port, txt=encode_node(ann))
        verb = "announced" if first else "re-announced"
        self._current = ann
        where = f" of cluster {ann.cluster}" if ann.cluster else ""
        log.info(
            "%s %s%s id=%s at %s:%d fp=%s state=%s (%.0f ms)",
            verb,
            ann.role,
            where,
            ann.node_id,
            ann.ip,
            ann.port,
            ann.fingerprint,
            ann.state,
            (time.monotonic() - started) * 1000,
        )
