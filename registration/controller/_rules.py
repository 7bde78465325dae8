"""The decision: which state a node should be in, given everything the registrar knows.

Pure logic over a read-only view of the state (the daemon's in-memory index,
``_index.NodeIndex``), so every rule (ownership, one host key per node, lockdown,
self-registration, uniqueness, ordering) is testable without a network.  :func:`decide` returns the
target state and the reason; the state machine (``state._machine``) says whether
the move is allowed, and the store applies it by compare-and-set.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from .._profile import Profile
from ..state import NodeRecord, NodeState

__all__ = ["Decision", "Registrar", "StateView", "decide", "owns"]


class StateView(Protocol):
    def slot_holder(self, role: str, cluster: str | None, *, exclude: str) -> NodeRecord | None:
        """A node of ``role`` (in ``cluster`` if given) that holds a registration slot."""
        ...

    def has_registered(self, role: str, cluster: str | None) -> bool:
        """Whether a node of ``role`` (in ``cluster`` if given) is registered."""
        ...

    def is_locked(self, role: str) -> bool: ...

    def key_holder(self, node: NodeRecord) -> NodeRecord | None:
        """Another node id that holds ``node``'s host key (pinned, or announced it first)."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Registrar:
    """Who is deciding: this host's registrar role and its own standing."""

    role: str
    cluster: str | None
    profile: Profile
    self_registered: bool = True

    @property
    def needs_self_registration(self) -> bool:
        spec = self.profile.role(self.role)
        return spec is not None and spec.registered_by is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The target state (None: leave the node alone) and why.

    ``exclusive`` is the uniqueness scope (role, cluster or None) the store must
    check again in the transaction that moves the node to ``registering``.
    """

    state: NodeState | None
    reason: str
    exclusive: tuple[str, str | None] | None = None


def owns(me: Registrar, role: str, cluster: str | None) -> str | None:
    """None when nodes of ``role``/``cluster`` are this registrar's business, else why not."""
    spec = me.profile.role(role)
    if spec is None:
        return f"role {role!r} is not in profile {me.profile.name!r}"
    if spec.registered_by != me.role:
        return f"{role} is registered by {spec.registered_by or 'nobody'}, not by {me.role}"
    my_spec = me.profile.role(me.role)
    if (
        my_spec is not None
        and my_spec.has_cluster
        and spec.has_cluster
        and cluster
        and cluster != me.cluster
    ):
        return f"cluster {cluster} is not this {me.role}'s ({me.cluster})"
    return None


def decide(node: NodeRecord, me: Registrar, view: StateView) -> Decision:
    """Decide about ``node``; the reason is written for the admin reading `autoreg list`."""
    not_mine = owns(me, node.role, node.cluster)
    if not_mine:
        return Decision(None, not_mine)
    spec = me.profile.role(node.role)
    assert spec is not None  # owns() checked it
    if spec.has_cluster and not node.cluster:
        return Decision(
            NodeState.REJECTED, f"role {node.role} belongs to a cluster but announced none"
        )
    holder = view.key_holder(node)
    if holder is not None:
        return Decision(
            NodeState.REFUSED,
            f"its host key {node.fingerprint} belongs to {holder.label} at "
            f"{holder.ip}:{holder.port}, which is {holder.state.value}: one host key is one "
            f"node (`autoreg forget {holder.node_id}` if that machine now has this id)",
        )
    if view.is_locked(node.role):
        return Decision(NodeState.LOCKED, f"lockdown is on for {node.role} registration")
    if me.needs_self_registration and not me.self_registered:
        where = f" {me.cluster}" if me.cluster else ""
        return Decision(
            NodeState.WAITING, f"waiting for this {me.role}{where} to be registered itself"
        )
    exclusive: tuple[str, str | None] | None = None
    if spec.unique != "none":
        scope = node.cluster if spec.unique == "cluster" else None
        other = view.slot_holder(node.role, scope, exclude=node.node_id)
        if other is not None:
            where = f" for cluster {scope}" if scope else ""
            return Decision(
                NodeState.REFUSED,
                f"a {node.role}{where} is already {other.state.value}: "
                f"{other.display_name} ({other.node_id}, {other.ip}); "
                f"`autoreg forget {other.node_id}` to replace it",
            )
        exclusive = (node.role, scope)
    for required in spec.requires:
        req_spec = me.profile.role(required)
        cluster = (
            node.cluster
            if req_spec is not None and req_spec.has_cluster and spec.has_cluster
            else None
        )
        if not view.has_registered(required, cluster):
            where = f" of cluster {cluster}" if cluster else ""
            return Decision(NodeState.WAITING, f"waiting for {required}{where} to be registered")
    return Decision(NodeState.REGISTERING, "all requirements met", exclusive)
