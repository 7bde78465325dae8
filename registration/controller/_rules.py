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
from ..state import NodeRecord, NodeState, Token, Window

__all__ = ["Decision", "Registrar", "StateView", "decide", "owns", "trusted"]


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

    def token(self, token_id: str) -> Token | None: ...

    def window(self, role: str, now: float) -> Window | None:
        """An install window open for ``role`` at ``now``."""
        ...

    def denied(self, fingerprint: str) -> str | None:
        """Why the admin denied this host key, or None."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class Registrar:
    """Who is deciding: this host's registrar role and its own standing."""

    role: str
    cluster: str | None
    profile: Profile
    self_registered: bool = True
    #: token | approve | open: [controller] trust, else the store's default.
    trust: str = "open"
    now: float = 0.0

    @property
    def needs_self_registration(self) -> bool:
        spec = self.profile.role(self.role)
        return spec is not None and spec.registered_by is not None

    def policy(self, role: str) -> str:
        """How nodes of ``role`` must be trusted: its ``[role:NAME] trust``, else ours."""
        spec = self.profile.role(role)
        return (spec.trust if spec is not None else None) or self.trust


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """The target state (None: leave the node alone) and why.

    ``queued`` means "register it": the node waits for an SSH slot, and is decided
    again when it gets one.  ``exclusive`` is the uniqueness scope (role, cluster or
    None) the store must check again in the transaction that then moves the node to
    ``registering``; ``grant`` is what that transaction spends.
    """

    state: NodeState | None
    reason: str
    exclusive: tuple[str, str | None] | None = None
    grant: str | None = None  # what admits the registration (token:ID, window:ID, …)


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
    trust = trusted(node, me, view)
    if isinstance(trust, Decision):
        return trust
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
    return Decision(
        NodeState.QUEUED, "all requirements met: waits for an SSH slot", exclusive, trust
    )


def trusted(node: NodeRecord, me: Registrar, view: StateView) -> str | Decision:
    """What admits ``node`` (``token:ID``, ``window:ID``, ``approval``, ``open``,
    ``admin``), or the decision that holds it back (docs/security.md)."""
    denied = view.denied(node.fingerprint)
    if denied is not None:
        return Decision(
            NodeState.REJECTED,
            f"its host key {node.fingerprint} was denied by the admin"
            + (f" ({denied})" if denied else "")
            + f"; `autoreg approve {node.node_id}` to allow it after all",
        )
    if node.auth == "admin":
        return "admin"
    if node.auth.startswith("bad:"):
        return Decision(NodeState.REJECTED, f"bad signature: {node.auth[4:].strip()}")
    if node.approved_fp is not None and node.approved_fp == node.fingerprint:
        return "approval"
    policy = me.policy(node.role)
    problem = ""
    if node.auth == "signed" and node.token_id is not None and policy != "approve":
        token = view.token(node.token_id)
        problem = (
            f"token {node.token_id} is not known here"
            if token is None
            else token.refusal(node.node_id, node.fingerprint, node.role, node.cluster, me.now)
        ) or ""
        if not problem:
            return f"token:{node.token_id}"
    elif node.auth.startswith("unverified:"):
        problem = node.auth.partition(":")[2].strip()
    if policy == "open":
        return "open"
    window = view.window(node.role, me.now)
    if window is not None:
        return f"window:{window.window_id}"
    if policy == "approve":
        why = "trust = approve: every node waits for an approval"
    elif problem:
        why = f"{problem}, and unsigned announcements wait for an approval"
    else:
        why = "unsigned announcement"
    return Decision(
        NodeState.PENDING,
        f"{why}: `autoreg approve {node.node_id}`, or give the node a token",
    )
