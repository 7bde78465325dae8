"""The decision: what a registrar does with one node, given everything it knows.

Pure logic over a read-only view of the state, so every rule (ownership,
lockdown, self-registration, uniqueness, ordering) is testable without a
network.  The daemon calls :func:`decide` for every unsettled node whenever
anything changes, which is what makes ordering independent of the order in
which announcements arrive.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Protocol

from .._profile import Profile
from ..state import NodeRecord

__all__ = ["Decision", "Registrar", "StateView", "decide", "owns"]

Action = Literal["ignore", "reject", "lock", "wait", "refuse", "register"]


class StateView(Protocol):
    def count_holding(
        self, role: str, cluster: str | None, *, exclude: str
    ) -> list[NodeRecord]: ...

    def registered(self, role: str, cluster: str | None) -> list[NodeRecord]: ...

    def is_locked(self, role: str) -> bool: ...


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
    action: Action
    reason: str


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
        return Decision("ignore", not_mine)
    spec = me.profile.role(node.role)
    assert spec is not None  # owns() checked it
    if spec.has_cluster and not node.cluster:
        return Decision("reject", f"role {node.role} belongs to a cluster but announced none")
    if view.is_locked(node.role):
        return Decision("lock", f"lockdown is on for {node.role} registration")
    if me.needs_self_registration and not me.self_registered:
        where = f" {me.cluster}" if me.cluster else ""
        return Decision("wait", f"waiting for this {me.role}{where} to be registered itself")
    if spec.unique != "none":
        scope = node.cluster if spec.unique == "cluster" else None
        holders = view.count_holding(node.role, scope, exclude=node.node_id)
        if holders:
            other = holders[0]
            where = f" for cluster {scope}" if scope else ""
            return Decision(
                "refuse",
                f"a {node.role}{where} is already {other.state.value}: "
                f"{other.display_name} ({other.node_id}, {other.ip}); "
                f"`autoreg forget {other.node_id}` to replace it",
            )
    for required in spec.requires:
        req_spec = me.profile.role(required)
        cluster = (
            node.cluster
            if req_spec is not None and req_spec.has_cluster and spec.has_cluster
            else None
        )
        if not view.registered(required, cluster):
            where = f" of cluster {cluster}" if cluster else ""
            return Decision("wait", f"waiting for {required}{where} to be registered")
    return Decision("register", "all requirements met")
