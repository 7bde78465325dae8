"""The daemon's in-memory index of the store: what ``decide()`` reads, and who a change
affects.

The store is the authority; the index is rebuilt from it at start and updated from
every record the daemon writes or the store's change feed reports. It answers the
rules' questions (``StateView``) without a store round trip, and
:meth:`NodeIndex.put` says which nodes a change can affect, so a reconcile pass
re-decides those and no others: the node itself; the nodes of its role when a
registration slot was taken or freed and the role is unique (in its cluster, or
everywhere); the nodes of the roles that require its role (in its cluster, where
both have one) when its registration came or went; the nodes that share its host key when its hold
on the key changed; every node of a role whose lockdown switch flipped. ``decide()``
is a pure function of this state, so deciding only the affected nodes ends in the
same states as deciding all of them (``tests/controller/test_index.py`` checks that
on random event sequences).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .._profile import Profile
from ..state import GLOBAL_SCOPE, PINNED, NodeRecord, NodeState, Token, Window

__all__ = ["NodeIndex"]


class NodeIndex:
    """Every node this registrar knows, by id and by role, plus the lockdown switches."""

    def __init__(self, profile: Profile) -> None:
        self._profile = profile
        self._nodes: dict[str, NodeRecord] = {}
        self._by_role: dict[str, set[str]] = defaultdict(set)
        self._by_scope: dict[tuple[str, str | None], set[str]] = defaultdict(set)
        self._by_key: dict[str, set[str]] = defaultdict(set)
        # per role: the nodes that hold a slot, and those registered (few per role for
        # the unique roles the rules ask about)
        self._holders: dict[str, set[str]] = defaultdict(set)
        self._registered: dict[str, set[str]] = defaultdict(set)
        # the same per (role, cluster): what a cluster-wide question reads
        self._scope_holders: dict[tuple[str, str | None], set[str]] = defaultdict(set)
        self._scope_registered: dict[tuple[str, str | None], set[str]] = defaultdict(set)
        self._counts: Counter[NodeState] = Counter()
        self._lockdown: dict[str, bool] = {}
        self._tokens: dict[str, Token] = {}
        self._windows: list[Window] = []
        self._denied: dict[str, str] = {}
        # role -> the roles whose nodes wait for it ("sc requires cc": cc -> {sc})
        self._dependents: dict[str, set[str]] = defaultdict(set)
        for spec in profile.roles.values():
            for required in spec.requires:
                self._dependents[required].add(spec.name)

    # -- contents -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[NodeRecord]:
        return iter(list(self._nodes.values()))

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def ids(self) -> set[str]:
        return set(self._nodes)

    def put(self, rec: NodeRecord) -> set[str]:
        """Add or replace ``rec``; the ids of the nodes the change may affect."""
        old = self._nodes.get(rec.node_id)
        if old is not None:
            self._unlink(old)
        self._nodes[rec.node_id] = rec
        self._link(rec)
        return self._affected(old, rec)

    def _link(self, rec: NodeRecord) -> None:
        self._by_role[rec.role].add(rec.node_id)
        self._by_scope[(rec.role, rec.cluster)].add(rec.node_id)
        self._by_key[rec.fingerprint].add(rec.node_id)
        scope = (rec.role, rec.cluster)
        if rec.state.holds_slot:
            self._holders[rec.role].add(rec.node_id)
            self._scope_holders[scope].add(rec.node_id)
        if rec.state is NodeState.REGISTERED:
            self._registered[rec.role].add(rec.node_id)
            self._scope_registered[scope].add(rec.node_id)
        self._counts[rec.state] += 1

    def _unlink(self, rec: NodeRecord) -> None:
        self._by_role[rec.role].discard(rec.node_id)
        self._by_scope[(rec.role, rec.cluster)].discard(rec.node_id)
        self._by_key[rec.fingerprint].discard(rec.node_id)
        self._holders[rec.role].discard(rec.node_id)
        self._registered[rec.role].discard(rec.node_id)
        self._scope_holders[(rec.role, rec.cluster)].discard(rec.node_id)
        self._scope_registered[(rec.role, rec.cluster)].discard(rec.node_id)
        self._counts[rec.state] -= 1

    def remove(self, node_id: str) -> set[str]:
        old = self._nodes.pop(node_id, None)
        if old is None:
            return set()
        self._unlink(old)
        return self._affected(old, None) - {node_id}

    def replace_all(self, records: Iterable[NodeRecord]) -> set[str]:
        self._nodes.clear()
        self._by_role.clear()
        self._by_scope.clear()
        self._by_key.clear()
        self._holders.clear()
        self._registered.clear()
        self._scope_holders.clear()
        self._scope_registered.clear()
        self._counts.clear()
        for rec in records:
            self._nodes[rec.node_id] = rec
            self._link(rec)
        return set(self._nodes)

    def _affected(self, old: NodeRecord | None, new: NodeRecord | None) -> set[str]:
        out = {new.node_id} if new is not None else set()
        both = [r for r in (old, new) if r is not None]
        if _slot(old) != _slot(new):  # a slot was taken or freed: uniqueness may flip
            for rec in both:
                out |= self._unique_scope(rec)
        if _registered(old) != _registered(new):  # requirements may be met, or not any more
            for rec in both:
                out |= self._waiting_for(rec)
        if _key_claim(old) != _key_claim(new):  # who holds a host key may change
            for rec in both:
                out |= self._by_key.get(rec.fingerprint, set())
        return out

    def _unique_scope(self, rec: NodeRecord) -> set[str]:
        """The nodes whose uniqueness check counts ``rec``'s slot (none: not unique)."""
        spec = self._profile.role(rec.role)
        if spec is None or spec.unique == "none":
            return set()
        if spec.unique == "cluster":
            return self._by_scope.get((rec.role, rec.cluster), set())
        return self._by_role.get(rec.role, set())

    def _waiting_for(self, rec: NodeRecord) -> set[str]:
        """The nodes whose requirements ``rec``'s registration may meet (as ``decide``
        asks: the same cluster when both roles have clusters, else any)."""
        spec = self._profile.role(rec.role)
        out: set[str] = set()
        for dependent in self._dependents.get(rec.role, ()):
            dep = self._profile.role(dependent)
            if spec is not None and spec.has_cluster and dep is not None and dep.has_cluster:
                out |= self._by_scope.get((dependent, rec.cluster), set())
            else:
                out |= self._by_role.get(dependent, set())
        return out

    # -- lockdown --------------------------------------------------------------------------

    def set_lockdown(self, switches: Mapping[str, bool]) -> set[str]:
        """Replace the switches; the nodes of every role whose switch changed."""
        old, self._lockdown = self._lockdown, dict(switches)
        changed = {
            scope
            for scope in set(old) | set(switches)
            if old.get(scope, False) != switches.get(scope, False)
        }
        if GLOBAL_SCOPE in changed:
            return set(self._nodes)
        out: set[str] = set()
        for role in changed:
            out |= self._by_role.get(role, set())
        return out

    @property
    def lockdown(self) -> Mapping[str, bool]:
        return self._lockdown

    # -- trust -----------------------------------------------------------------------------

    def set_tokens(self, tokens: Iterable[Token]) -> set[str]:
        """Replace the tokens; the nodes that announce one whose standing changed."""
        old, self._tokens = self._tokens, {t.token_id: t for t in tokens}
        changed = {i for i in set(old) | set(self._tokens) if old.get(i) != self._tokens.get(i)}
        return {r.node_id for r in self._nodes.values() if r.token_id in changed}

    def set_windows(self, windows: Iterable[Window]) -> set[str]:
        """Replace the install windows; the nodes of every role a changed one covers."""
        old, self._windows = self._windows, list(windows)
        changed = set(old) ^ set(self._windows)
        if any(w.scope == GLOBAL_SCOPE for w in changed):
            return set(self._nodes)
        out: set[str] = set()
        for window in changed:
            out |= self._by_role.get(window.scope, set())
        return out

    def set_denied(self, denied: Mapping[str, str]) -> set[str]:
        """Replace the denied host keys; the nodes announcing a key whose standing changed."""
        old, self._denied = self._denied, dict(denied)
        out: set[str] = set()
        for fingerprint in set(old) ^ set(self._denied):
            out |= self._by_key.get(fingerprint, set())
        return out

    def token(self, token_id: str) -> Token | None:
        return self._tokens.get(token_id)

    def window(self, role: str, now: float) -> Window | None:
        for window in self._windows:
            if window.covers(role) and window.is_open(now):
                return window
        return None

    @property
    def windows(self) -> list[Window]:
        return list(self._windows)

    @property
    def tokens(self) -> Mapping[str, Token]:
        return self._tokens

    def denied(self, fingerprint: str) -> str | None:
        return self._denied.get(fingerprint)

    def count(self, state: NodeState) -> int:
        return self._counts[state]

    # -- StateView ----------------------------------------------------------------------

    def slot_holder(self, role: str, cluster: str | None, *, exclude: str) -> NodeRecord | None:
        holders = (
            self._holders.get(role, ())
            if cluster is None
            else self._scope_holders.get((role, cluster), ())
        )
        for node_id in holders:
            if node_id != exclude:
                return self._nodes[node_id]
        return None

    def key_holder(self, node: NodeRecord) -> NodeRecord | None:
        """Another node id that holds ``node``'s host key (one host key is one node).

        A node holds its key while it is pinned (registering, registered,
        interrupted), or while it is present and announced the key first; never
        when it was rejected (its claim to the key was refuted, or denied).
        """
        mine = (node.first_seen, node.node_id)
        for node_id in self._by_key.get(node.fingerprint, ()):
            other = self._nodes[node_id]
            if node_id == node.node_id or other.state is NodeState.REJECTED:
                continue
            if other.state in PINNED:
                return other
            if other.present and (other.first_seen, other.node_id) < mine:
                return other
        return None

    def has_registered(self, role: str, cluster: str | None) -> bool:
        if cluster is None:
            return bool(self._registered.get(role))
        return bool(self._scope_registered.get((role, cluster)))

    def is_locked(self, role: str) -> bool:
        return self._lockdown.get(GLOBAL_SCOPE, False) or self._lockdown.get(role, False)


def _slot(rec: NodeRecord | None) -> tuple[str, str | None] | None:
    return (rec.role, rec.cluster) if rec is not None and rec.state.holds_slot else None


def _key_claim(rec: NodeRecord | None) -> tuple[Any, ...] | None:
    if rec is None:
        return None
    return (
        rec.fingerprint,
        rec.state in PINNED,
        rec.state is NodeState.REJECTED,
        rec.present,
        rec.first_seen,
    )


def _registered(rec: NodeRecord | None) -> tuple[str, str | None] | None:
    if rec is not None and rec.state is NodeState.REGISTERED:
        return (rec.role, rec.cluster)
    return None
