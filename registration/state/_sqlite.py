"""The embedded state store: sqlite (WAL), behind the async :class:`StateStore` contract.

Every write is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a node's state
change and the event that explains it land together or not at all, and a
compare-and-set reads and writes the row inside the same transaction.  The
database runs in WAL mode so the CLI can read while the daemon writes.

:class:`SqliteStore` owns a one-thread executor; the blocking work is in
:class:`_Database`, made of the table modules (``_sqlite_base``, ``_sqlite_nodes``,
``_sqlite_trust``, ``_sqlite_tunnels``).  One daemon per store:
:meth:`SqliteStore.lock_registrar` takes an exclusive ``flock`` on ``daemon.lock``
beside the database, which the kernel releases when the holder dies, so a second
daemon is refused while the first runs, and a restarted daemon knows every claim it
finds is a dead one's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from .._threads import ThreadLimiter
from ._facade import ExecutorStore
from ._lockfile import lock_holder
from ._records import (
    Event,
    Standing,
)
from ._sqlite_nodes import CLAIM_LEASE, NodeTables
from ._sqlite_trust import TrustTables
from ._sqlite_tunnels import TunnelTables

__all__ = ["CLAIM_LEASE", "WATCH_INTERVAL", "SqliteStore"]

#: Seconds between checks for events committed by other processes (lockdown switches,
#: manual registrations, retries, forgets): the one polling interval of this backend.
WATCH_INTERVAL: Final = 0.25

P = ParamSpec("P")
T = TypeVar("T")


class _Database(NodeTables, TrustTables, TunnelTables):
    """One sqlite connection with every table; blocking.  Only :class:`SqliteStore` calls it."""


class SqliteStore(ExecutorStore):
    """The :class:`~registration.state.StateStore` contract on sqlite."""

    _db: _Database

    backend: Final = "sqlite"
    #: One daemon per store (``lock_registrar``): claims are never shared.
    shared: Final = False

    def __init__(self, db: _Database, executor: ThreadLimiter) -> None:
        self._db = db
        self._executor = executor

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False, origin: str = "") -> SqliteStore:
        executor = ThreadLimiter("autoreg-db", 1)
        try:
            db = await executor.run(_Database, path, readonly=readonly, origin=origin)
        except BaseException:
            await executor.aclose()
            raise
        return cls(db, executor)

    @property
    def location(self) -> str:
        return str(self._db.path)

    @property
    def path(self) -> Path:
        return self._db.path

    async def close(self) -> None:
        try:
            await self._run(self._db.close)
        finally:
            await self._executor.aclose()

    async def __aenter__(self) -> SqliteStore:
        return self

    async def schema_version(self) -> int:
        return await self._run(self._db.schema_version)

    async def info(self) -> dict[str, Any]:
        path = self._db.path
        size = sum(
            p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        return {"backend": "sqlite", "path": str(path), "bytes": size}

    async def presence(self) -> list[tuple[str, str, str, str, float | None]]:
        """Every presence row (``store migrate`` copies them): not part of the contract."""
        return await self._run(self._db.presence)

    async def settings(self) -> dict[str, str]:
        return await self._run(self._db.settings)

    async def lock_registrar(self, owner: str) -> None:
        await self._run(self._db.lock_registrar, owner)

    async def keep_registrar(self, owner: str) -> Standing:
        """Nothing to renew: the daemon lock lasts as long as the process."""
        return Standing(owner)

    async def registrars(self) -> list[dict[str, Any]]:
        """The daemon holding this store's lock, if one does."""
        holder = lock_holder(self._db.path.parent)
        return [] if holder is None else [{"owner": holder[1], "pid": holder[0]}]

    async def watch_claims(self) -> AsyncIterator[None]:
        """Never: one daemon per store, so claims of a dead one are recovered at start."""
        await asyncio.Event().wait()
        yield None

    async def renew_claims(self, owner: str, lease: float) -> int:
        return await self._run(self._db.renew_claims, owner, lease)

    async def watch(
        self, *, after: int, origin_not: str | None = None
    ) -> AsyncIterator[list[Event]]:
        """Poll for new events every :data:`WATCH_INTERVAL` (sqlite has no push)."""
        last = after
        while True:
            newest = await self._run(self._db.last_seq)
            if newest > last:
                batch = await self._run(self._db.events, last, None, 10_000, origin_not)
                if batch:
                    last = batch[-1].seq
                    yield batch
                    continue
                last = newest  # all of them were this writer's own
            await asyncio.sleep(WATCH_INTERVAL)
