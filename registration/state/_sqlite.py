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
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from .._threads import ThreadLimiter
from ._ingest import Absorbed
from ._lockfile import lock_holder
from ._machine import Change, LostRace, NodeState
from ._records import (
    Arrival,
    Departure,
    Event,
    NodeRecord,
    Note,
    Source,
    Standing,
    Token,
    Tunnel,
    Window,
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


class SqliteStore:
    """The :class:`~registration.state.StateStore` contract on sqlite."""

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

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._executor.run(fn, *args, **kwargs)

    @property
    def location(self) -> str:
        return str(self._db.path)

    @property
    def origin(self) -> str:
        return self._db.origin

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

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return await self._run(self._db.schema_version)

    async def info(self) -> dict[str, Any]:
        path = self._db.path
        size = sum(
            p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()
        )
        return {"backend": "sqlite", "path": str(path), "bytes": size}

    async def get(self, node_id: str) -> NodeRecord | None:
        return await self._run(self._db.get, node_id)

    async def find(self, ref: str) -> NodeRecord:
        return await self._run(self._db.find, ref)

    async def nodes(self) -> list[NodeRecord]:
        return await self._run(self._db.nodes)

    async def ingest(
        self,
        ann: Any,
        *,
        source: Source,
        instance: str,
        observer: str = "",
        lease: float | None = None,
        auth: str = "",
        token_id: str | None = None,
    ) -> Absorbed:
        return await self._run(
            self._db.ingest, ann, source, instance, observer, lease, auth, token_id
        )

    async def ingest_many(
        self, items: Sequence[Arrival | Departure | Note]
    ) -> list[Absorbed | NodeRecord | None]:
        return await self._run(self._db.ingest_many, items)

    async def withdraw(
        self, *, source: Source, instance: str, observer: str = ""
    ) -> NodeRecord | None:
        return await self._run(self._db.withdraw, source, instance, observer)

    async def presence(self) -> list[tuple[str, str, str, str, float | None]]:
        """Every presence row (``store migrate`` copies them): not part of the contract."""
        return await self._run(self._db.presence)

    async def clear_presence(self, *, source: Source, observer: str) -> None:
        await self._run(self._db.clear_presence, source, observer)

    async def change(self, node_id: str, change: Change) -> NodeRecord:
        return await self._run(self._db.change, node_id, change)

    async def change_many(
        self, changes: Sequence[tuple[str, Change]]
    ) -> list[NodeRecord | LostRace]:
        return await self._run(self._db.change_many, changes)

    async def note_path(self, node_id: str, path: str) -> NodeRecord | None:
        return await self._run(self._db.note_path, node_id, path)

    async def settle_move(
        self,
        node_id: str,
        *,
        generation: str,
        moved: tuple[str, int, str | None],
        adopt: bool,
        message: str,
    ) -> NodeRecord | None:
        return await self._run(self._db.settle_move, node_id, generation, moved, adopt, message)

    async def forget(self, node_id: str, *, message: str) -> NodeRecord | None:
        return await self._run(self._db.forget, node_id, message)

    async def tokens(self) -> list[Token]:
        return await self._run(self._db.tokens)

    async def create_token(self, token: Token) -> Token:
        return await self._run(self._db.create_token, token)

    async def revoke_token(self, token_id: str) -> Token | None:
        return await self._run(self._db.revoke_token, token_id)

    async def windows(self) -> list[Window]:
        return await self._run(self._db.windows)

    async def open_window(self, window: Window) -> Window:
        return await self._run(self._db.open_window, window)

    async def close_windows(self, scope: str | None, *, reason: str) -> list[Window]:
        return await self._run(self._db.close_windows, scope, reason)

    async def deny(self, node_id: str, fingerprint: str, *, reason: str = "") -> None:
        await self._run(self._db.deny, node_id, fingerprint, reason)

    async def undeny(self, fingerprint: str, *, node_id: str | None = None) -> bool:
        return await self._run(self._db.undeny, fingerprint, node_id)

    async def denied(self) -> dict[str, str]:
        return await self._run(self._db.denied)

    async def approve(self, node_id: str, *, fingerprint: str, generation: str) -> NodeRecord:
        return await self._run(self._db.approve, node_id, fingerprint, generation)

    async def count(self, state: NodeState) -> int:
        return await self._run(self._db.count, state)

    async def setting(self, key: str) -> str | None:
        return await self._run(self._db.setting, key)

    async def settings(self) -> dict[str, str]:
        return await self._run(self._db.settings)

    async def set_setting(self, key: str, value: str) -> None:
        await self._run(self._db.set_setting, key, value)

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

    async def reclaimable(self, owner: str) -> list[NodeRecord]:
        return await self._run(self._db.reclaimable, owner)

    async def lockdown(self) -> dict[str, bool]:
        return await self._run(self._db.lockdown)

    async def set_lockdown(self, scope: str, locked: bool, *, reason: str = "") -> None:
        await self._run(self._db.set_lockdown, scope, locked, reason)

    async def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None = None,
        *,
        state: str | None = None,
    ) -> None:
        await self._run(self._db.add_event, node_id, kind, message, data, state)

    async def events(
        self,
        *,
        after: int = 0,
        node_id: str | None = None,
        limit: int = 1000,
        origin_not: str | None = None,
    ) -> list[Event]:
        return await self._run(self._db.events, after, node_id, limit, origin_not)

    async def prune_events(self, *, keep: int, max_age: float | None = None) -> int:
        return await self._run(self._db.prune_events, keep, max_age)

    async def last_events(self, count: int, *, node_id: str | None = None) -> list[Event]:
        return await self._run(self._db.last_events, count, node_id)

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

    async def allocate_tunnel(
        self, node_id: str, public_key: str, *, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
        return await self._run(self._db.allocate_tunnel, node_id, public_key, count, port_range)

    async def tunnel(self, node_id: str) -> Tunnel | None:
        return await self._run(self._db.tunnel, node_id)

    async def tunnels(self) -> list[Tunnel]:
        return await self._run(self._db.tunnels)

    async def remove_tunnel(self, node_id: str) -> bool:
        return await self._run(self._db.remove_tunnel, node_id)
