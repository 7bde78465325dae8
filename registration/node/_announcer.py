"""The node side: ``autoreg announce`` publishes this host and keeps it current.

It publishes ``_autoreg._tcp`` with the node's role, cluster, preferred
address and sshd host-key fingerprint, re-announces when any of those or its
registration standing changes, and sends goodbye packets when it stops.

Until it holds its receipt it also announces again, unchanged: after
REANNOUNCE_INITIAL seconds, then at doubling intervals up to REANNOUNCE_MAX,
each jittered by ±REANNOUNCE_JITTER (RFC 6762 §8.3 asks for intervals that at
least double, §6.2 for at most one multicast of a record per second; §8.3's
"up to eight" is exceeded on purpose, at one packet a minute, because a node
nobody registered must not fall silent: the seed spec's registration job keeps
going "until it has successfully registered").  A registrar that lost the
first burst (its receive buffer overflowed when a rack booted) so hears the
node again within a minute, whatever the browser's own query schedule.  Once
registered, the node answers queries only.

With a join token (``[node] token``, ``token_file`` or ``AUTOREG_TOKEN``) every
announcement is signed, and signed again before its timestamp ages out of the
registrar's window.  Once the node holds its receipt, a ``token_file`` is
deleted: the guest-agent seed's "read once, and destroyed".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Final

from .._clock import wait_event
from .._config import Config
from .._exceptions import AnnouncementError, AutoregError, ConfigError
from ..protocol import (
    NODE_SERVICE_TYPE,
    SIGNATURE_WINDOW,
    Announcement,
    JoinToken,
    encode_node,
    parse_token,
)
from ..transport import Publication, Transport, create_transport
from ._identity import NodeIdentity, self_registration_state
from ._report import NodeReport

__all__ = ["Announcer", "load_token"]

log = logging.getLogger(__name__)

#: Re-sign when the signature is this old: well inside the registrar's window.
RESIGN_AFTER: Final = SIGNATURE_WINDOW / 2
#: Seconds before the first unchanged re-announcement (the responder's own initial
#: announcements, RFC 6762 §8.3, come before), the cap of the doubling interval, and
#: the jitter (a fraction either way) that keeps a rack from announcing in step.
REANNOUNCE_INITIAL: Final = 2.0
REANNOUNCE_MAX: Final = 60.0
REANNOUNCE_JITTER: Final = 0.2


def load_token(config: Config) -> JoinToken | None:
    """The node's join token, from ``[node] token`` (or AUTOREG_TOKEN) or ``token_file``."""
    node = config.node
    text = node.token
    source = "[node] token"
    if text is None and node.token_file is not None:
        source = str(node.token_file)
        try:
            text = node.token_file.read_text(encoding="ascii")
        except FileNotFoundError:
            return None  # used and deleted, or never given: announce unsigned
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the join token: {exc}", source=source) from exc
    if text is None:
        return None
    try:
        return parse_token(text, source="token")
    except AnnouncementError as exc:
        raise ConfigError(exc.reason, source=source) from exc


class Announcer:
    """Publishes one node and keeps its announcement in step with reality.

    ``transport``: a started transport the caller owns (and closes), shared by several
    announcers in one process; without it the announcer makes, starts and closes its own.
    """

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._owns_transport = transport is None
        self._publication: Publication | None = None
        self._current: Announcement | None = None
        self._stopping = asyncio.Event()
        self._token: JoinToken | None = None
        self._signed_at = 0.0
        self._token_discarded = False
        self._changed = asyncio.Event()  # a new announcement went out: back off anew
        self.reannounced = 0
        #: Why it is not registered yet (logged, `autoreg status`); HTTPS with [node] registrar.
        self.report = NodeReport(config, token=lambda: self._token)

    def stop(self) -> None:
        self._stopping.set()

    def _snapshot(self) -> Announcement:
        identity = NodeIdentity.from_config(self.config)
        standing = self_registration_state(self.config.node)
        if standing is not None:
            self._discard_token()
        return identity.announcement(self.config.node, registered=standing is not None)

    def _discard_token(self) -> None:
        """Registered: a single-use token in token_file has done its job (one try)."""
        path = self.config.node.token_file
        if path is not None and not self._token_discarded and path.exists():
            self._token_discarded = True
            try:
                path.unlink()
                log.info("registered: deleted the join token %s (no longer needed)", path)
            except OSError as exc:
                log.warning("registered, but cannot delete the join token %s: %s", path, exc)
        self._token = None

    async def run(self) -> None:
        """Publish, then re-check every ``poll_interval`` until stopped; goodbye on exit."""
        self._token = load_token(self.config)
        ann = self._snapshot()
        if self._token is not None:
            log.info("signing announcements with join token %s", self._token.token_id)
        if self._transport is None:
            # `auto` asks D-Bus whether avahi-daemon answers: blocking, so in a thread.
            self._transport = await asyncio.to_thread(create_transport, self.config, bind=ann.ip)
            await self._transport.start()
        self._publication = Publication(
            self._transport,
            NODE_SERVICE_TYPE,
            role=ann.role,
            node_id=ann.node_id,
            probe=self.config.node.probe,
        )
        self.report.start(ann)
        keeper = asyncio.ensure_future(self._announce_until_registered())
        try:
            await self._publish(ann)
            while not self._stopping.is_set():
                await wait_event(self._stopping, self.config.node.poll_interval)
                if self._stopping.is_set():
                    break
                self.report.tick()
                try:
                    await self._publish(self._snapshot())
                    if await self._publication.maintain():
                        log.info(
                            "re-announced %s after the responder lost it", self._publication.name
                        )
                except AutoregError as exc:  # e.g. interface lost its address: keep going
                    log.warning("cannot refresh the announcement: %s", exc)
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            await self.report.close()
            if await self._publication.withdraw():
                log.info("withdrew %s (goodbye sent)", self._publication.name)
            if self._owns_transport:
                await self._transport.close()

    async def _announce_until_registered(self) -> None:
        """Announce again, unchanged, with backoff, while the node has no receipt."""
        delay = REANNOUNCE_INITIAL
        while True:
            jittered = delay * (1 + random.uniform(-REANNOUNCE_JITTER, REANNOUNCE_JITTER))  # noqa: S311
            await wait_event(self._changed, jittered)
            if self._changed.is_set():  # the announcement changed: that was an announcement
                self._changed.clear()
                delay = REANNOUNCE_INITIAL
                continue
            current = self._current
            if current is None or current.state != "ready" or self._publication is None:
                delay = REANNOUNCE_INITIAL
                continue
            try:
                if await self._publication.reannounce():
                    self.reannounced += 1
                    log.debug("announced %s again (no receipt yet); next in about %.0fs",
                              self._publication.name, min(REANNOUNCE_MAX, delay * 2))  # fmt: skip
            except AutoregError as exc:
                log.warning("cannot announce again: %s", exc)
            delay = min(REANNOUNCE_MAX, delay * 2)

    async def _publish(self, ann: Announcement) -> None:
        assert self._publication is not None
        self.report.update(ann)  # HTTPS too: even when the mDNS responder fails below
        now = time.time()
        resign = self._token is not None and now - self._signed_at >= RESIGN_AFTER
        if ann == self._current and not resign:
            return
        started = time.monotonic()
        signing = self._token if ann.state == "ready" else None
        txt = encode_node(ann, token=signing, now=now)
        first = await self._publication.set(ip=ann.ip, port=ann.port, txt=txt)
        self._signed_at = now if signing is not None else 0.0
        verb = "announced" if first else "re-announced"
        unchanged = ""
        if ann.state != "ready" and self.reannounced:
            unchanged = f"; {self.reannounced} unchanged announcement(s) before"
        self._current = ann
        self._changed.set()
        where = f" of cluster {ann.cluster}" if ann.cluster else ""
        log.info(
            "%s %s%s id=%s at %s:%d fp=%s state=%s%s (%.0f ms%s)",
            verb,
            ann.role,
            where,
            ann.node_id,
            ann.ip,
            ann.port,
            ann.fingerprint,
            ann.state,
            f" signed ({signing.token_id})" if signing is not None else "",
            (time.monotonic() - started) * 1000,
            unchanged,
        )
