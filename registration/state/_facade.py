"""What every store backend does alike: hand each call to its blocking layer, on its executor.

A backend (:class:`~registration.state.SqliteStore`, :class:`~registration.state.EtcdStore`)
is two halves: a blocking ``_Database`` that does the work, and an async facade that
owns a bounded executor (``ThreadLimiter``) and runs each call there, so the event
loop never blocks.  Most of the contract is that hand-off and nothing else; it is
written once, here.  A backend overrides what it does differently (opening, closing,
claims on leases, watches) and adds what only it has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from .._threads import ThreadLimiter
from ._ingest import Absorbed
from ._machine import Change, LostRace, NodeState
from ._records import (
    Arrival,
    Departure,
    Event,
    NodeRecord,
    Note,
    Source,
    Token,
    Tunnel,
    Window,
)

__all__ = ["ExecutorStore"]

P = ParamSpec("P")
T = TypeVar("T")


class ExecutorStore:
    """The contract's calls that each backend's blocking layer answers by the same name."""

    #: The backend's blocking layer: its ``_Database`` (methods named as the contract's).
    _db: Any
    _executor: ThreadLimiter

    async def close(self) -> None:
        raise NotImplementedError

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._executor.run(fn, *args, **kwargs)

    @property
    def origin(self) -> str:
        origin: str = self._db.origin
        return origin

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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

    async def set_setting(self, key: str, value: str) -> None:
        await self._run(self._db.set_setting, key, value)

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
