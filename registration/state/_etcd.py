"""The shared state store: etcd, behind the async :class:`StateStore` contract.

Several registrars share one etcd cluster (``[autoreg] store = etcd``): every write
is an optimistic transaction (``_etcd_txn``: read a snapshot, apply the pure rules,
commit with compares), so a state change is a compare-and-set on the node's
``mod_revision`` with its event in the same transaction, and exactly one of two
registrars that claim a node at once gets it.  Claims hang on the claiming
registrar's etcd lease (``_etcd_nodes``); the daemon keeps the lease alive
(``controller._lease``) and stops acting when it cannot.

Blocking etcd3gw calls run on a bounded executor (``autoreg-etcd``), lease
keep-alives on their own (so a slow write never delays them), watches in a thread
each: :meth:`EtcdStore.watch` follows the event log with a real etcd watch that
resumes from its revision after any failure (and re-reads when that revision was
compacted), so nothing is missed and nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from .._config import EtcdConfig
from .._exceptions import StateError
from .._threads import ThreadLimiter
from ._etcd_io import WatchLost
from ._etcd_keys import dump, load
from ._etcd_trust import EtcdTrust
from ._etcd_txn import Txn
from ._facade import ExecutorStore
from ._lockfile import lock_state_dir
from ._records import (
    Event,
    Standing,
)

__all__ = ["EtcdStore", "etcd_overview"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Threads for store calls (reads run side by side; this process's writes one at a time).
THREADS: Final = 4
#: Seconds between attempts of a watch that failed, first and at most.
WATCH_RETRY: Final = (0.2, 5.0)


class _Database(EtcdTrust):
    """Every key family of the layout; blocking.  Only :class:`EtcdStore` calls it."""

    def follow_events(
        self, after: int, origin_not: str | None, stop: threading.Event,
        feed: Callable[[list[Event]], None],
    ) -> None:  # fmt: skip
        """Feed batches of events after ``after`` until ``stop``: catch up by reading,
        then follow a watch; resume from its revision whatever fails."""
        last, revision, delay = after, 0, WATCH_RETRY[0]
        while not stop.is_set():
            try:
                while not revision:  # catch up: what is in the log now
                    page, read_at = self.events_page(last, 500)
                    if page:
                        last = page[-1].seq
                        self._feed(page, origin_not, feed)
                    if len(page) < 500:
                        revision = read_at + 1
                for next_revision, changes in self.io.watch(self.keys.events, revision, stop):
                    revision = next_revision
                    batch = []
                    for change in changes:
                        kv = change["kv"]
                        if change["type"] == "DELETE" or not kv["key"].startswith(self.keys.events):
                            continue
                        seq, node_id = self.keys.parse_event(kv["key"])
                        if seq > last:
                            batch.append(self._event_of(kv, seq, node_id))
                    if batch:
                        last = batch[-1].seq
                        self._feed(batch, origin_not, feed)
                    delay = WATCH_RETRY[0]
            except WatchLost as lost:
                revision = 0 if lost.compacted else lost.next_revision
                log.info("etcd watch of the event log: %s; resuming", lost)
            except StateError as exc:
                log.warning("etcd watch of the event log: %s; again in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(WATCH_RETRY[1], delay * 2)

    def _event_of(self, kv: dict[str, Any], seq: int, node_id: str | None) -> Event:
        from ._etcd_keys import event_of

        return event_of(kv["value"], seq, node_id, kv["key"])

    @staticmethod
    def _feed(
        events: list[Event], origin_not: str | None, feed: Callable[[list[Event]], None]
    ) -> None:
        batch = [e for e in events if origin_not is None or e.origin != origin_not]
        if batch:
            feed(batch)

    def follow_claims(self, stop: threading.Event, feed: Callable[[None], None]) -> None:
        """Feed None whenever a claim ended without a state change (its lease ran out)."""
        revision, delay = 0, WATCH_RETRY[0]
        while not stop.is_set():
            try:
                if not revision:
                    revision = self._read(lambda tx: (tx.kv(self.keys.schema), tx.revision))[1] + 1
                for next_revision, changes in self.io.watch(self.keys.claims, revision, stop):
                    revision = next_revision
                    gone = [c["kv"] for c in changes if c["type"] == "DELETE"]
                    if any(self._expired(kv) for kv in gone):
                        feed(None)
                    delay = WATCH_RETRY[0]
            except WatchLost as lost:
                if lost.compacted:
                    feed(None)  # what happened meanwhile is unknown: look
                revision = 0 if lost.compacted else lost.next_revision
            except StateError as exc:
                log.warning("etcd watch of claims: %s; again in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(WATCH_RETRY[1], delay * 2)

    def _expired(self, kv: dict[str, Any]) -> bool:
        """A claim deleted in a revision that did not touch its node: its lease ended."""
        node_id = self.keys.last(kv["key"])
        deleted_at = int(kv.get("mod_revision") or 0)

        def read(tx: Txn) -> bool:
            node = tx.kv(self.keys.node(node_id), compare=False)
            return node is not None and node.mod != deleted_at

        try:
            return self._read(read)
        except StateError:
            return True

    def registrars(self) -> list[dict[str, Any]]:
        def read(tx: Txn) -> list[dict[str, Any]]:
            return [dict(load(v, k), key=self.keys.last(k))
                    for k, v in tx.range(self.keys.registrars, compare=False)]  # fmt: skip

        found = self._read(read)
        for entry in found:
            with contextlib.suppress(StateError, ValueError, TypeError):
                answer = self.io.call("/kv/lease/timetolive", {"ID": int(entry["lease"], 16)},
                                      what="a lease", write=False)  # fmt: skip
                entry["ttl_left"] = int(answer.get("TTL", -1))
        return sorted(found, key=lambda e: str(e.get("since")))

    def register(self, owner: str, lease_id: int, ttl: float) -> None:
        def build(tx: Txn) -> None:
            tx.put(self.keys.registrar(owner), dump({
                "owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                "since": time.time(), "lease": f"{lease_id:x}", "ttl": ttl,
            }), lease=lease_id)  # fmt: skip

        self.write(build, what=f"registrar {owner}")


class EtcdStore(ExecutorStore):
    """The :class:`~registration.state.StateStore` contract on an etcd cluster."""

    _db: _Database

    backend: Final = "etcd"
    shared: Final = True

    def __init__(
        self, db: _Database, executor: ThreadLimiter, leases: ThreadLimiter, lock_dir: Path | None
    ) -> None:
        self._db = db
        self._executor = executor
        self._leases = leases
        self._lock_dir = lock_dir
        self._lock_fd: int | None = None

    @classmethod
    async def open(
        cls,
        settings: EtcdConfig,
        *,
        readonly: bool = False,
        origin: str = "",
        lock_dir: Path | None = None,
        create: bool = True,
    ) -> EtcdStore:
        """Connect (and create the store's keys unless ``readonly``); ``lock_dir`` is the
        state directory whose ``daemon.lock`` a registrar takes (one per directory)."""
        executor = ThreadLimiter("autoreg-etcd", THREADS)
        leases = ThreadLimiter("autoreg-etcd-lease", 1)
        try:
            db = await executor.run(
                _Database, settings, readonly=readonly, origin=origin, create=create
            )
        except BaseException:
            await executor.aclose()
            await leases.aclose()
            raise
        return cls(db, executor, leases, lock_dir)

    @property
    def location(self) -> str:
        return self._db.location

    @property
    def database(self) -> _Database:
        """The blocking layer (``store migrate`` writes through it)."""
        return self._db

    async def close(self) -> None:
        try:
            await self._leases.run(self._db.close)
        finally:
            await self._executor.aclose()
            await self._leases.aclose()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    async def __aenter__(self) -> EtcdStore:
        return self

    async def schema_version(self) -> int:
        schema = self._db.keys.schema
        raw = await self._run(self._db._read, lambda tx: tx.get(schema, compare=False))
        return 0 if raw is None else self._db._layout(raw)

    async def info(self) -> dict[str, Any]:
        return await etcd_overview(self._db.settings)

    # -- settings ----------------------------------------------------------------------

    async def settings(self) -> dict[str, str]:
        return await self._run(self._db.settings_all)

    # -- registrars and claims ----------------------------------------------------------

    async def lock_registrar(self, owner: str) -> None:
        """One daemon per state directory (``daemon.lock``), any number per store: each
        registrar gets an etcd lease of its own, and a key attached to it."""
        if self._lock_dir is not None and self._lock_fd is None:
            self._lock_fd = lock_state_dir(self._lock_dir, owner)

        def grant() -> None:
            self._db.revoke(owner)  # an earlier lease of ours, if any: its claims end
            lease = self._db.lease_for(owner)
            assert lease is not None
            self._db.register(owner, lease.lease_id, lease.ttl)

        await self._leases.run(grant)

    async def keep_registrar(self, owner: str) -> Standing:
        """Keep ``owner``'s lease alive; :class:`LeaseLost` when it is gone (its claims
        with it: :meth:`lock_registrar` again for a new one)."""
        lease = await self._leases.run(self._db.keepalive, owner)
        return Standing(owner, f"{lease.lease_id:x}", lease.ttl, lease.valid_until)

    async def registrars(self) -> list[dict[str, Any]]:
        return await self._run(self._db.registrars)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return await self._leases.run(self._db.renew_claims, owner, lease)

    # -- events ---------------------------------------------------------------------------

    async def watch(
        self, *, after: int, origin_not: str | None = None
    ) -> AsyncIterator[list[Event]]:
        """Batches of events after ``after`` from an etcd watch (no polling)."""
        async for batch in _follow(self._db.follow_events, after, origin_not):
            yield batch

    async def watch_claims(self) -> AsyncIterator[None]:
        """Whenever a claim ended without a state change: a registrar's lease ran out."""
        async for _ in _follow(self._db.follow_claims):
            yield None


async def etcd_overview(settings: EtcdConfig) -> dict[str, Any]:
    """The cluster as its members see it (answers without a quorum, unlike the store)."""
    from ._etcd_io import EtcdIO

    io = await asyncio.to_thread(EtcdIO, settings)
    return {
        "backend": "etcd",
        "endpoints": list(settings.endpoints),
        "prefix": settings.prefix,
        "members": await asyncio.to_thread(io.health),
    }


async def _follow(target: Callable[..., None], *args: Any) -> AsyncIterator[Any]:
    """Run ``target(*args, stop, feed)`` in a thread; yield what it feeds, until closed."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()

    def feed(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(queue.put_nowait, item)

    thread = threading.Thread(
        target=target, args=(*args, stop, feed), daemon=True, name="autoreg-etcd-watch"
    )
    thread.start()
    try:
        while True:
            yield await queue.get()
    finally:
        stop.set()
