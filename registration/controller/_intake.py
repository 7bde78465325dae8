"""The daemon's intake: browsed announcements, checked, queued (bounded), stored in batches.

The browser's callbacks (:class:`~registration.transport.BrowseListener`) run on
the loop and must not wait for the store: each announcement is decoded, screened
(``_ingest.screen``: whose it is, which address), authenticated against the
tokens the registrar knows, and queued.  One worker commits the queue in
batches (``StateStore.ingest_many``: one transaction for up to BATCH_MAX items),
so a rack booting at once costs a few commits, not one per node, and hands each
record to the reconciler.

A batch the store could not take (etcd without a quorum, say) goes back into the
queue and is tried again with backoff: the browser delivers each announcement
once, so dropping it would lose the node until it changed.

Bounded: the queue holds one entry per announcing instance (news of an
instance already queued replaces it) and at most QUEUE_MAX arrivals; beyond, an
arrival is counted and dropped (the node announces again until it is registered:
docs/protocol.md), and so are unsigned newcomers beyond ``[controller]
max_pending``.  Goodbyes are always queued: the browser reports only instances
it knew.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any, Final

from .._clock import Clock
from .._config import ControllerConfig
from .._exceptions import AnnouncementError, AutoregError
from ..protocol import Announcement, decode_node, verify
from ..state import (
    Absorbed,
    Arrival,
    Departure,
    NodeRecord,
    NodeState,
    Note,
    Source,
    StateStore,
)
from ..transport import ResolvedService
from ._ingest import AddressPolicy, Ingested, screen
from ._reconciler import Reconciler
from ._rules import Registrar

__all__ = ["BATCH_MAX", "DROP_REPORT_INTERVAL", "QUEUE_MAX", "Intake"]

log = logging.getLogger(__name__)

#: Items committed in one transaction at most.
BATCH_MAX: Final = 500
#: Arrivals (and notes) waiting to be stored at most; more are counted and dropped.
QUEUE_MAX: Final = 20_000
#: Seconds between events that say how many announcements were dropped.
DROP_REPORT_INTERVAL: Final = 60.0
#: Seconds before a batch the store refused is tried again: first, at most.
RETRY_INITIAL: Final = 0.5
RETRY_MAX: Final = 30.0


_ADVICE: Final = {
    "the approval queue is full ([controller] max_pending)": (
        "approve or deny pending nodes, or give nodes tokens"
    ),
    "the node table is full ([controller] max_nodes)": (
        "`autoreg forget` nodes that are gone, or raise max_nodes"
    ),
    "the intake queue is full": "the store is slower than the announcements: check its disk",
}


class Intake:
    """Browsed announcements in; records, in batches, to the store and the reconciler."""

    def __init__(
        self,
        store: StateStore,
        reconciler: Reconciler,
        *,
        registrar: Callable[[], Registrar],
        policy: Callable[[], AddressPolicy],
        observer: str,
        controller: ControllerConfig,
        clock: Clock,
    ) -> None:
        self._store = store
        self._recon = reconciler
        self._registrar = registrar
        self._policy = policy
        self._observer = observer
        self._ctl = controller
        self._clock = clock
        self._queue: dict[tuple[Any, ...], Arrival | Departure | Note] = {}
        self._arrivals = 0  # arrivals and notes in the queue
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._notes = itertools.count()
        self._newcomers: set[str] = set()  # unsigned newcomers queued, not stored yet
        self._incoming: set[str] = set()  # every node queued that is not stored yet
        # Announcements signed with a token this registrar did not know yet (the admin
        # created it a moment later): checked again as soon as tokens change.
        self._unverified: dict[str, Arrival] = {}
        self._dropped: dict[str, int] = {}
        self._drop_reported = -DROP_REPORT_INTERVAL
        self.committed = 0  # items stored so far (for status and benchmarks)

    # -- BrowseListener ------------------------------------------------------------------

    def service_resolved(self, service: ResolvedService) -> None:
        try:
            ann = decode_node(service.properties, service.port)
        except AnnouncementError as exc:
            log.warning("rejected announcement %s: %s", service.name, exc)
            self._note(
                None,
                "rejected-announcement",
                f"rejected announcement {service.name}: {exc}",
                {
                    "name": service.name,
                    "reason": exc.reason,
                    "field": exc.field,
                    "txt": _printable_txt(service.properties),
                },
            )
            return
        self.offer(ann, source=Source.MDNS, instance=service.name)

    def service_removed(self, name: str) -> None:
        key = (Source.MDNS, name)
        if isinstance(self._queue.pop(key, None), Arrival):
            self._arrivals -= 1
        self._queue[key] = Departure(source=Source.MDNS, instance=name, observer=self._observer)
        self._kick()

    def service_unusable(self, name: str, reason: str) -> None:
        log.warning("rejected announcement %r: %s", name, reason)
        self._note(
            None,
            "rejected-announcement",
            f"rejected announcement {name}: not a usable service name ({reason})",
            {"name": name, "reason": reason, "field": "instance"},
        )

    # -- the way in --------------------------------------------------------------------------

    def offer(
        self, ann: Announcement, *, source: Source, instance: str, lease: float | None = None
    ) -> bool:
        """Check ``ann`` and queue it; False when it goes no further (the log says why)."""
        me = self._registrar()
        stop = screen(me, ann, self._policy())
        if stop is not None:
            if stop.not_mine:
                log.debug("ignoring %s %s: %s", ann.role, ann.node_id, stop.not_mine)
            else:
                log.warning("rejected announcement %s: %s", instance, stop.refused)
                self._note(
                    ann.node_id,
                    "rejected-announcement",
                    f"rejected announcement {instance} of {ann.role} {ann.node_id}: "
                    f"{stop.refused}",
                    {"name": instance, "reason": stop.refused, "field": "ip",
                     "announcement": ann.summary()},
                )  # fmt: skip
            return False
        new = ann.node_id not in self._recon.index and ann.node_id not in self._incoming
        if new and len(self._recon.index) + len(self._incoming) >= self._ctl.max_nodes:
            self._drop("the node table is full ([controller] max_nodes)")
            return False
        auth, token_id = self._authenticate(ann)
        if self._untrusted_newcomer(me, ann, auth):
            if self._approval_queue_full():
                self._drop("the approval queue is full ([controller] max_pending)")
                return False
            self._newcomers.add(ann.node_id)
        arrival = Arrival(
            ann=ann,
            source=source,
            instance=instance,
            observer=self._observer if source is Source.MDNS else "",
            lease=lease,
            auth=auth,
            token_id=token_id,
        )
        if auth.startswith("unverified:"):
            if len(self._unverified) < self._ctl.max_pending:
                self._unverified[ann.node_id] = arrival
        else:
            self._unverified.pop(ann.node_id, None)
        key = (source, instance)
        if not isinstance(self._queue.get(key), Arrival):
            if self._arrivals >= QUEUE_MAX:
                self._newcomers.discard(ann.node_id)
                self._drop("the intake queue is full")
                return False
            self._queue.pop(key, None)  # a goodbye queued before: the node is back
            self._arrivals += 1
        if new:
            self._incoming.add(ann.node_id)
        self._queue[key] = arrival
        self._kick()
        return True

    def screen(self, ann: Announcement) -> Ingested | None:
        """Why ``ann`` would go no further (not mine, address refused), or None; nothing
        is queued (the HTTPS endpoint answers with this before it offers)."""
        return screen(self._registrar(), ann, self._policy())

    @property
    def queued(self) -> int:
        """Announcements, goodbyes and notes received and not stored yet."""
        return len(self._queue)

    def verify_again(self) -> None:
        """Announcements whose token was unknown: take them in again now."""
        known = self._recon.index.tokens
        for node_id, arrival in list(self._unverified.items()):
            signature = arrival.ann.signature
            if signature is not None and signature.token_id in known:
                del self._unverified[node_id]
                self.offer(
                    arrival.ann,
                    source=arrival.source,
                    instance=arrival.instance,
                    lease=arrival.lease,
                )

    def _authenticate(self, ann: Announcement) -> tuple[str, str | None]:
        """How ``ann`` is signed, checked now against the tokens this registrar knows."""
        claim = ann.signature
        if claim is None:
            return "", None
        token = self._recon.index.token(claim.token_id)
        if token is None:
            return f"unverified: token {claim.token_id} is not known here", claim.token_id
        why = verify(claim, token.key, now=self._clock.time(), window=self._ctl.signature_window)
        return (f"bad: {why}" if why else "signed"), claim.token_id

    def _untrusted_newcomer(self, me: Registrar, ann: Announcement, auth: str) -> bool:
        """An unknown node that could only wait for an approval."""
        index = self._recon.index
        if auth == "signed" or ann.node_id in index:
            return False
        return me.policy(ann.role) != "open" and index.window(ann.role, me.now) is None

    def _approval_queue_full(self) -> bool:
        index = self._recon.index
        # Newcomers not stored or decided yet count too: a burst arrives faster.
        waiting = index.count(NodeState.PENDING) + index.count(NodeState.SEEN)
        return waiting + len(self._newcomers) >= self._ctl.max_pending

    def _note(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: dict[str, Any],
        *,
        force: bool = False,
    ) -> None:
        if self._arrivals >= QUEUE_MAX and not force:
            self._drop("the intake queue is full")
            return
        self._queue[("note", next(self._notes))] = Note(
            node_id=node_id, kind=kind, message=message, data=data
        )
        self._arrivals += 1
        self._kick()

    def _drop(self, why: str) -> None:
        self._dropped[why] = self._dropped.get(why, 0) + 1
        now = self._clock.time()
        if now - self._drop_reported < DROP_REPORT_INTERVAL:
            return
        self._drop_reported = now
        dropped, self._dropped = self._dropped, {}
        parts = "; ".join(
            f"{n} because {reason} ({_ADVICE.get(reason, '')})"
            for reason, n in sorted(dropped.items())
        )
        message = (
            f"announcements dropped, not stored: {parts}; nodes announce again until "
            "they are registered"
        )
        log.warning("%s", message)
        kind = "pending-full" if any("max_pending" in r for r in dropped) else "intake-full"
        self._note(None, kind, message, {"dropped": dropped}, force=True)

    def _kick(self) -> None:
        self._idle.clear()
        self._ready.set()

    # -- the worker ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Commit what is queued, a batch at a time, until cancelled."""
        delay = RETRY_INITIAL
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                keys = list(itertools.islice(self._queue, BATCH_MAX))
                items = [self._queue.pop(k) for k in keys]
                self._arrivals -= sum(not isinstance(i, Departure) for i in items)
                try:
                    results = await self._store.ingest_many(items)
                except AutoregError as exc:
                    log.warning(
                        "could not store %d announcement(s): %s; trying again in %.1fs",
                        len(items),
                        exc,
                        delay,
                    )
                    self._put_back(keys, items)
                    await asyncio.sleep(delay)
                    delay = min(RETRY_MAX, delay * 2)
                    continue
                delay = RETRY_INITIAL
                self.committed += len(items)
                for item, result in zip(items, results, strict=True):
                    self._stored(item, result)
            self._idle.set()

    def _put_back(
        self, keys: list[tuple[Any, ...]], items: list[Arrival | Departure | Note]
    ) -> None:
        """A batch the store refused: queued again, unless newer news of its instance came."""
        for key, item in zip(keys, items, strict=True):
            if key not in self._queue:
                self._queue[key] = item
                self._arrivals += not isinstance(item, Departure)

    def _stored(
        self, item: Arrival | Departure | Note, result: Absorbed | NodeRecord | None
    ) -> None:
        if isinstance(item, Arrival):
            self._newcomers.discard(item.ann.node_id)
            self._incoming.discard(item.ann.node_id)
        if isinstance(result, Absorbed):
            self._recon.apply(result.record)
        elif isinstance(result, NodeRecord):
            self._recon.apply(result)  # a goodbye made it absent

    async def idle(self) -> None:
        """Until everything queued is stored (tests, an orderly stop)."""
        await self._idle.wait()


def _printable_txt(properties: Any) -> dict[str, str | None]:
    def show(raw: bytes | None) -> str | None:
        return None if raw is None else raw[:80].decode("utf-8", "backslashreplace")

    return {show(k) or "": show(v) for k, v in list(properties.items())[:20]}
