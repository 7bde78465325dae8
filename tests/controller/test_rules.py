"""The registration decision (registration/controller/_rules.py), over the daemon's index.

decide() is pure logic over the StateView protocol; the view here is the real one
the daemon uses (``NodeIndex``), whose answers tests/controller/test_index.py
checks against the store's own uniqueness check.  Each rule is checked on its
own, then the precedence between rules (ignore > reject > lock >
self-registration > uniqueness > requirements).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import pytest

from registration._profile import Profile, load_profile
from registration.controller import Decision, NodeIndex, Registrar, decide, owns
from registration.state import NodeRecord, NodeState
from support.records import fp_for

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
EUCA = load_profile("eucalyptus")


def node(
    node_id: str,
    role: str,
    cluster: str | None = None,
    state: NodeState = NodeState.SEEN,
    name: str | None = None,
) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        role=role,
        cluster=cluster,
        name=name,
        ip="198.18.0.9",
        port=22,
        fingerprint=fp_for(node_id),
        state=state,
    )


def view(*nodes: NodeRecord, locked: Iterable[str] = (), profile: Profile = EUCA) -> NodeIndex:
    """The daemon's own index (the real StateView), holding ``nodes``."""
    index = NodeIndex(profile)
    index.replace_all(nodes)
    index.set_lockdown(dict.fromkeys(locked, True))
    return index


CLC = Registrar(role="clc", cluster=None, profile=EUCA)
CC_FOO = Registrar(role="cc", cluster="foo", profile=EUCA)


# -- owns / ignore ----------


@pytest.mark.parametrize(
    ("me", "role", "cluster"),
    [
        (CLC, "walrus", None),
        (CLC, "cc", "foo"),
        (CLC, "sc", "bar"),
        (CC_FOO, "nc", "foo"),
        (CC_FOO, "nc", None),  # no cluster: owned, then rejected by decide()
    ],
)
def test_owns(me: Registrar, role: str, cluster: str | None) -> None:
    assert owns(me, role, cluster) is None


@pytest.mark.parametrize(
    ("me", "role", "cluster", "why"),
    [
        (CLC, "nc", "foo", "nc is registered by cc, not by clc"),
        (CLC, "clc", None, "clc is registered by nobody, not by clc"),
        (CC_FOO, "cc", "foo", "cc is registered by clc, not by cc"),
        (CC_FOO, "nc", "bar", "cluster bar is not this cc's (foo)"),
        (CLC, "web", None, "role 'web' is not in profile 'eucalyptus'"),
    ],
)
def test_not_owned(me: Registrar, role: str, cluster: str | None, why: str) -> None:
    assert owns(me, role, cluster) == why
    decision = decide(node("n0000001", role, cluster), me, view())
    assert decision == Decision(None, why)


def test_ignore_comes_before_everything() -> None:
    locked_view = view(locked=["*"])
    assert decide(node("n0000001", "nc", "bar"), CC_FOO, locked_view).state is None


# -- reject ----------


def test_cluster_role_without_cluster_is_rejected() -> None:
    decision = decide(node("n0000001", "cc", None), CLC, view())
    assert decision.state is NodeState.REJECTED
    assert "belongs to a cluster but announced none" in decision.reason


def test_reject_comes_before_lock() -> None:
    decision = decide(node("n0000001", "sc", None), CLC, view(locked=["*"]))
    assert decision.state is NodeState.REJECTED


# -- lock ----------


@pytest.mark.parametrize("scope", ["*", "walrus"])
def test_lock(scope: str) -> None:
    decision = decide(node("n0000001", "walrus"), CLC, view(locked=[scope]))
    assert decision == Decision(NodeState.LOCKED, "lockdown is on for walrus registration")


def test_lock_of_another_role_does_not_apply() -> None:
    decision = decide(node("n0000001", "walrus"), CLC, view(locked=["cc"]))
    assert decision.state is NodeState.QUEUED


# -- self-registration ----------


def test_cc_waits_until_it_is_registered_itself() -> None:
    me = Registrar(role="cc", cluster="foo", profile=EUCA, self_registered=False)
    assert me.needs_self_registration
    decision = decide(node("n0000001", "nc", "foo"), me, view())
    assert decision == Decision(
        NodeState.WAITING, "waiting for this cc foo to be registered itself"
    )


def test_clc_needs_no_self_registration() -> None:
    me = Registrar(role="clc", cluster=None, profile=EUCA, self_registered=False)
    assert not me.needs_self_registration
    assert decide(node("n0000001", "walrus"), me, view()).state is NodeState.QUEUED


def test_lock_comes_before_self_registration() -> None:
    me = Registrar(role="cc", cluster="foo", profile=EUCA, self_registered=False)
    assert decide(node("n0000001", "nc", "foo"), me, view(locked=["nc"])).state is NodeState.LOCKED


# -- uniqueness ----------


@pytest.mark.parametrize("holder_state", [NodeState.REGISTERED, NodeState.REGISTERING])
def test_unique_cloud_refuses_a_second_walrus(holder_state: NodeState) -> None:
    holder = node("w0000001", "walrus", state=holder_state, name="walrus1")
    decision = decide(node("w0000002", "walrus"), CLC, view(holder))
    assert decision.state is NodeState.REFUSED
    assert f"a walrus is already {holder_state.value}: walrus1 (w0000001" in decision.reason
    assert "autoreg forget w0000001" in decision.reason


@pytest.mark.parametrize(
    "other_state", [NodeState.SEEN, NodeState.FAILED, NodeState.REFUSED, NodeState.REJECTED]
)
def test_nodes_not_holding_a_slot_do_not_count(other_state: NodeState) -> None:
    other = node("w0000001", "walrus", state=other_state)
    assert decide(node("w0000002", "walrus"), CLC, view(other)).state is NodeState.QUEUED


def test_a_registered_node_does_not_block_itself() -> None:
    me_node = node("w0000001", "walrus", state=NodeState.REGISTERING)
    assert decide(me_node, CLC, view(me_node)).state is NodeState.QUEUED


def test_unique_cluster_refuses_a_second_cc_in_the_same_cluster() -> None:
    holder = node("c0000001", "cc", "foo", NodeState.REGISTERED)
    decision = decide(node("c0000002", "cc", "foo"), CLC, view(holder))
    assert decision.state is NodeState.REFUSED
    assert "a cc for cluster foo is already registered" in decision.reason


def test_a_cc_in_another_cluster_does_not_count() -> None:
    holder = node("c0000001", "cc", "bar", NodeState.REGISTERED)
    assert decide(node("c0000002", "cc", "foo"), CLC, view(holder)).state is NodeState.QUEUED


def test_unique_none_allows_many_ncs() -> None:
    others = [node(f"n000000{i}", "nc", "foo", NodeState.REGISTERED) for i in range(3)]
    assert decide(node("n0000009", "nc", "foo"), CC_FOO, view(*others)).state is NodeState.QUEUED


def test_lock_comes_before_refuse() -> None:
    holder = node("w0000001", "walrus", state=NodeState.REGISTERED)
    decision = decide(node("w0000002", "walrus"), CLC, view(holder, locked=["walrus"]))
    assert decision.state is NodeState.LOCKED


# -- requirements ----------


def test_sc_waits_for_the_cc_of_its_cluster() -> None:
    decision = decide(node("s0000001", "sc", "foo"), CLC, view())
    assert decision == Decision(NodeState.WAITING, "waiting for cc of cluster foo to be registered")


@pytest.mark.parametrize(
    "cc",
    [
        node("c0000001", "cc", "bar", NodeState.REGISTERED),  # another cluster
        node("c0000001", "cc", "foo", NodeState.REGISTERING),  # not registered yet
        node("c0000001", "cc", "foo", NodeState.FAILED),
    ],
)
def test_sc_requirement_not_satisfied(cc: NodeRecord) -> None:
    assert decide(node("s0000001", "sc", "foo"), CLC, view(cc)).state is NodeState.WAITING


def test_sc_registered_once_its_cc_is() -> None:
    cc = node("c0000001", "cc", "foo", NodeState.REGISTERED)
    assert decide(node("s0000001", "sc", "foo"), CLC, view(cc)) == Decision(
        NodeState.QUEUED, "all requirements met: waits for an SSH slot", ("sc", "foo"), grant="open"
    )


def test_refuse_comes_before_wait_for_requirement() -> None:
    other_sc = node("s0000001", "sc", "foo", NodeState.REGISTERED)
    decision = decide(node("s0000002", "sc", "foo"), CLC, view(other_sc))  # no cc at all
    assert decision.state is NodeState.REFUSED


def test_requirement_without_cluster_is_cloud_wide() -> None:
    profile = load_profile(
        "eucalyptus", {"role:osg": {"registered_by": "clc", "requires": "walrus, cc"}}
    )
    me = Registrar(role="clc", cluster=None, profile=profile)
    walrus = node("w0000001", "walrus", state=NodeState.REGISTERED)
    cc = node("c0000001", "cc", "anywhere", NodeState.REGISTERED)
    osg = node("o0000001", "osg")
    assert decide(osg, me, view(walrus, profile=profile)) == Decision(
        NodeState.WAITING, "waiting for cc to be registered"
    )
    assert decide(osg, me, view(cc, profile=profile)).reason == (
        "waiting for walrus to be registered"
    )
    assert decide(osg, me, view(walrus, cc, profile=profile)).state is NodeState.QUEUED


# -- the whole decision table for a CLC ----------


def test_plain_registrations() -> None:
    assert decide(node("w0000001", "walrus"), CLC, view()).state is NodeState.QUEUED
    assert decide(node("c0000001", "cc", "foo"), CLC, view()).state is NodeState.QUEUED
    assert decide(node("n0000001", "nc", "foo"), CC_FOO, view()).state is NodeState.QUEUED


def test_custom_profile_registrar_with_cluster_owns_cluster_less_roles() -> None:
    profile: Profile = load_profile(
        "eucalyptus", {"role:agent": {"registered_by": "cc", "cluster": "no"}}
    )
    me = Registrar(role="cc", cluster="foo", profile=profile)
    assert owns(me, "agent", None) is None
    assert decide(node("a0000001", "agent"), me, view(profile=profile)).state is (NodeState.QUEUED)


# -- one host key is one node ----------


@pytest.mark.parametrize("holder_state", [NodeState.REGISTERED, NodeState.REGISTERING,
                                          NodeState.INTERRUPTED])  # fmt: skip
def test_a_key_held_by_another_node_is_refused_naming_the_holder(holder_state: NodeState) -> None:
    holder = dataclasses.replace(node("c0000001", "cc", "foo", holder_state, name="cc1"))
    relabelled = dataclasses.replace(node("w0000009", "walrus"), fingerprint=holder.fingerprint)
    decision = decide(relabelled, CLC, view(holder))
    assert decision.state is NodeState.REFUSED
    assert "belongs to cc cc1 (c0000001)" in decision.reason
    assert "one host key is one node" in decision.reason


def test_the_first_present_announcer_of_a_key_holds_it() -> None:
    first = dataclasses.replace(node("w0000001", "walrus"), first_seen=1.0)
    second = dataclasses.replace(node("w0000002", "walrus"), fingerprint=first.fingerprint,
                                 first_seen=2.0)  # fmt: skip
    index = view(first, second)
    assert decide(second, CLC, index).state is NodeState.REFUSED
    assert decide(first, CLC, index).state is NodeState.QUEUED
    gone = dataclasses.replace(first, present=False)
    assert decide(second, CLC, view(gone, second)).state is NodeState.QUEUED


def test_the_key_rule_comes_before_lockdown() -> None:
    holder = node("c0000001", "cc", "foo", NodeState.REGISTERED)
    relabelled = dataclasses.replace(node("w0000009", "walrus"), fingerprint=holder.fingerprint)
    assert decide(relabelled, CLC, view(holder, locked=["*"])).state is NodeState.REFUSED


def test_a_rejected_node_does_not_hold_the_key_it_claimed() -> None:
    spoof = dataclasses.replace(node("w0000001", "walrus", state=NodeState.REJECTED),
                                first_seen=1.0)  # fmt: skip
    other = dataclasses.replace(node("c0000001", "cc", "foo"), fingerprint=spoof.fingerprint,
                                first_seen=2.0)  # fmt: skip
    assert decide(other, CLC, view(spoof, other)).state is NodeState.QUEUED
