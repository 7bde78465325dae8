"""The state store contract: what the daemon, the CLI and the library need from a store.

Every method is a coroutine; an implementation runs its blocking I/O on its own
bounded executor, so callers simply ``await store.get(node_id)``.  sqlite
(``_sqlite.SqliteStore``) is the embedded default, one daemon per store; etcd
(``_etcd.EtcdStore``) is shared by any number of registrars.
``tests/state/test_contract*.py`` run the same assertions against both.

Registrars
    :meth:`StateStore.lock_registrar` makes a daemon a registrar of the store.
    sqlite: one per store (an exclusive ``flock``; a second one is refused with
    ``AlreadyRunning``, and a restarted one knows every claim it finds is a dead
    daemon's).  etcd (``shared``): any number, one per state directory, each with an
    etcd lease of its own that :meth:`StateStore.keep_registrar` keeps alive and
    whose loss (``LeaseLost``) means the registrar must stop acting;
    :meth:`StateStore.registrars` lists them.

Claims
    A registrar works on a node only while it holds the node's claim: moving a
    node into a claimed state (``registering``) takes the claim for ``owner`` with
    a lease, in the same compare-and-set as the state change (and, with
    ``Change.exclusive``, the uniqueness check); leaving that state releases it.
    A claim whose lease expired, or whose owner the store knows to be gone, may be
    taken over: that is crash recovery (:meth:`StateStore.reclaimable`).  sqlite: a
    lease is a time in the row, extended by :meth:`StateStore.renew_claims`.  etcd:
    the claim is a key attached to the owner's etcd lease: etcd deletes it when the
    lease expires (:meth:`StateStore.watch_claims` says so), every step under the
    claim writes it again with the owner's live lease (etcd refuses a step under a
    lease that is gone: ``LostRace``), ``renew_claims`` renews the lease (its
    duration is the configured TTL; a duration of 0 or less revokes it).

Change notification
    :meth:`StateStore.watch` yields the events committed after a sequence number,
    by whichever process wrote them (each event names its ``origin``).  Every
    change another process makes (lockdown, retry, forget, a manual registration,
    another registrar's result) is such an event.  sqlite polls its table; etcd
    follows a watch that resumes from its revision, so neither misses one.

Batches
    A burst (a rack booting, a flood) is committed in few transactions:
    :meth:`StateStore.ingest_many` takes announcements, goodbyes and notes together,
    :meth:`StateStore.change_many` applies many compare-and-set changes, each on its
    own terms.  Both are equivalent to calling the single forms in order.

Events
    The log is bounded (:meth:`StateStore.prune_events`, by count and age); the same
    event again on a node (same kind, state, message and writer) is kept as one
    entry that counts (``Event.repeats``, ``Event.first_ts``) and moves to the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from ._ingest import Absorbed
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

__all__ = ["GLOBAL_SCOPE", "StateStore"]

#: The lockdown scope that covers every role.
GLOBAL_SCOPE = "*"


class StateStore(Protocol):
    """A registrar's state: nodes and their claims, presence, lockdown, events, tunnels."""

    @property
    def backend(self) -> str:
        """``sqlite`` (or the name of another implementation)."""
        ...

    @property
    def location(self) -> str:
        """Where the state lives (a path, or endpoints), for messages."""
        ...

    @property
    def origin(self) -> str:
        """Who writes through this handle (recorded with every event)."""
        ...

    @property
    def shared(self) -> bool:
        """Several registrars may share this store (etcd); sqlite: one daemon per store."""
        ...

    async def info(self) -> dict[str, Any]:
        """Where and how the state lives (``backend``, and a path or endpoints and members)."""
        ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> StateStore: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def schema_version(self) -> int: ...

    # -- nodes -------------------------------------------------------------------------

    async def get(self, node_id: str) -> NodeRecord | None: ...

    async def find(self, ref: str) -> NodeRecord:
        """A node by id, unique id prefix, name or address; NodeNotFound otherwise."""
        ...

    async def nodes(self) -> list[NodeRecord]: ...

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
        """Take in one announcement (see ``_ingest.absorb``) and mark it present.

        Presence is per (source, instance, observer); ``lease`` seconds (None: until
        withdrawn) bound it for sources that send no goodbye.  ``auth``/``token_id``
        say how the caller authenticated it (``NodeRecord.auth``).
        """
        ...

    async def ingest_many(
        self, items: Sequence[Arrival | Departure | Note]
    ) -> list[Absorbed | NodeRecord | None]:
        """A burst in one transaction, in order: per item, what :meth:`ingest` (an
        :class:`Arrival`) or :meth:`withdraw` (a :class:`Departure`) returns, or None
        (a :class:`Note`, recorded as an event)."""
        ...

    async def withdraw(
        self, *, source: Source, instance: str, observer: str = ""
    ) -> NodeRecord | None:
        """One instance said goodbye; the node's record when that made it absent."""
        ...

    async def clear_presence(self, *, source: Source, observer: str) -> None:
        """Forget what ``observer`` saw from ``source`` (it starts browsing anew)."""
        ...

    async def change(self, node_id: str, change: Change) -> NodeRecord:
        """Compare-and-set one state change (``_machine.apply_change``) with its event.

        Raises ``LostRace`` when the node changed or vanished since it was read, when
        the change takes a slot (``registering``) while another node holds the same
        host key (one host key is one node) or, with ``Change.exclusive``, the role's
        unique slot; ``IllegalTransition`` for a change the state table does not allow.
        """
        ...

    async def change_many(
        self, changes: Sequence[tuple[str, Change]]
    ) -> list[NodeRecord | LostRace]:
        """Many :meth:`change` calls in one commit; each result is the new record or
        the ``LostRace`` that dropped that change alone (``IllegalTransition`` aborts
        the batch: it is a bug in the caller)."""
        ...

    async def settle_move(
        self,
        node_id: str,
        *,
        generation: str,
        moved: tuple[str, int, str | None],
        adopt: bool,
        message: str,
    ) -> NodeRecord | None:
        """Adopt (or drop) a pinned node's announced move once it was checked.

        Only while the node still announces exactly ``moved`` on the same row; None
        otherwise (nothing written).  Adopting clears the recorded SSH path.
        """
        ...

    async def note_path(self, node_id: str, path: str) -> NodeRecord | None:
        """Record the SSH path that reached the node (with an event when it changed)."""
        ...

    async def forget(self, node_id: str, *, message: str) -> NodeRecord | None:
        """Delete a node (and its presence); the record it had, None if there was none."""
        ...

    async def count(self, state: NodeState) -> int:
        """How many nodes are in ``state``."""
        ...

    # -- trust -------------------------------------------------------------------------

    async def tokens(self) -> list[Token]: ...

    async def create_token(self, token: Token) -> Token: ...

    async def revoke_token(self, token_id: str) -> Token | None: ...

    async def windows(self) -> list[Window]: ...

    async def open_window(self, window: Window) -> Window:
        """Open ``window`` (closing an open one of the same scope)."""
        ...

    async def close_windows(self, scope: str | None, *, reason: str) -> list[Window]:
        """Close the open windows of ``scope`` (None: all); the ones closed."""
        ...

    async def deny(self, node_id: str, fingerprint: str, *, reason: str = "") -> None:
        """Refuse ``fingerprint`` whenever it announces, under any id."""
        ...

    async def undeny(self, fingerprint: str, *, node_id: str | None = None) -> bool: ...

    async def denied(self) -> dict[str, str]:
        """Denied host keys and why."""
        ...

    async def approve(self, node_id: str, *, fingerprint: str, generation: str) -> NodeRecord:
        """Pin the admin's choice of key for ``node_id`` and decide it anew (``LostRace``
        when the node changed since the admin looked)."""
        ...

    async def setting(self, key: str) -> str | None: ...

    async def settings(self) -> dict[str, str]:
        """Every setting."""
        ...

    async def set_setting(self, key: str, value: str) -> None: ...

    # -- claims ----------------------------------------------------------------------

    async def lock_registrar(self, owner: str) -> None:
        """Become a registrar of this store, or ``AlreadyRunning`` (sqlite: one daemon per
        store; etcd: one per state directory, any number per store, each with its lease)."""
        ...

    async def keep_registrar(self, owner: str) -> Standing:
        """Keep ``owner``'s standing alive (etcd: a lease keep-alive); ``LeaseLost`` when
        it is gone, and with it every claim of ``owner`` (``lock_registrar`` again)."""
        ...

    async def registrars(self) -> list[dict[str, Any]]:
        """The registrars of this store the store knows to be running (``owner``, …)."""
        ...

    async def renew_claims(self, owner: str, lease: float) -> int:
        """Extend every claim ``owner`` holds to now + ``lease`` (etcd: renew its lease;
        ``lease`` <= 0 ends them at once); how many it holds."""
        ...

    async def reclaimable(self, owner: str) -> list[NodeRecord]:
        """Claimed nodes whose claim ``owner`` may take over: expired, or its owner gone."""
        ...

    # -- lockdown --------------------------------------------------------------------

    async def lockdown(self) -> dict[str, bool]: ...

    async def set_lockdown(self, scope: str, locked: bool, *, reason: str = "") -> None: ...

    # -- events ----------------------------------------------------------------------

    async def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None = None,
        *,
        state: str | None = None,
    ) -> None: ...

    async def events(
        self,
        *,
        after: int = 0,
        node_id: str | None = None,
        limit: int = 1000,
        origin_not: str | None = None,
    ) -> list[Event]:
        """Events after sequence number ``after``, oldest first; ``origin_not`` leaves
        out those that writer wrote."""
        ...

    async def last_events(self, count: int, *, node_id: str | None = None) -> list[Event]: ...

    async def prune_events(self, *, keep: int, max_age: float | None = None) -> int:
        """Delete all but the newest ``keep`` events and those older than ``max_age``
        seconds; how many went."""
        ...

    def watch(self, *, after: int, origin_not: str | None = None) -> AsyncIterator[list[Event]]:
        """Batches of events committed after ``after``, as they come, forever
        (``origin_not``: except that writer's own)."""
        ...

    def watch_claims(self) -> AsyncIterator[None]:
        """Yields whenever claims may have become reclaimable without any event: another
        registrar's lease ran out (etcd).  sqlite never yields (one daemon per store)."""
        ...

    # -- tunnels ---------------------------------------------------------------------

    async def allocate_tunnel(
        self, node_id: str, public_key: str, *, count: int, port_range: tuple[int, int]
    ) -> Tunnel: ...

    async def tunnel(self, node_id: str) -> Tunnel | None: ...

    async def tunnels(self) -> list[Tunnel]: ...

    async def remove_tunnel(self, node_id: str) -> bool: ...
