"""The node state machine (registration/state/_machine.py): the table, its predicates,
the one writer, and the diagram in docs/architecture.md generated from it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from registration._profile import load_profile
from registration.controller import Registrar, decide
from registration.controller._index import NodeIndex
from registration.state import (
    TRAITS,
    TRANSITIONS,
    Change,
    IllegalTransition,
    LostRace,
    NodeRecord,
    NodeState,
    apply_change,
    is_settled,
    mermaid_diagram,
)

S = NodeState
DOCS = Path(__file__).parents[2] / "docs" / "architecture.md"
FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


def rec(state: NodeState = S.SEEN, **fields: object) -> NodeRecord:
    base = NodeRecord(
        node_id="node0001",
        role="walrus",
        ip="198.18.0.9",
        port=22,
        fingerprint=FP,
        state=state,
        generation="g1",
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_every_state_has_traits_and_a_row() -> None:
    assert set(TRAITS) == set(NodeState)
    assert set(TRANSITIONS) == {None, *NodeState}
    for targets in TRANSITIONS.values():
        assert targets <= set(NodeState)


def test_predicates_are_consistent() -> None:
    for state in NodeState:
        if state.final:
            assert not state.decidable and not state.retryable
        if state.retryable:
            assert state.decidable
        if state.claimed:
            assert state.holds_slot and not state.decidable
    assert {s for s in NodeState if s.holds_slot} == {S.REGISTERING, S.REGISTERED}
    assert TRANSITIONS[S.REGISTERED] == frozenset()  # for good: only forget undoes it


@pytest.mark.parametrize("state", [s for s in NodeState if s.decidable])
def test_every_decision_is_an_allowed_transition_from_every_decidable_state(
    state: NodeState,
) -> None:
    """decide() may move any decidable node to any target it returns."""
    profile = load_profile("eucalyptus")
    index = NodeIndex(profile)
    me = Registrar("clc", None, profile)
    targets = set()
    for role, cluster in (("walrus", None), ("cc", "foo"), ("sc", "foo"), ("cc", None)):
        for locked in ({}, {"*": True}):
            index.set_lockdown(locked)
            decision = decide(rec(state, role=role, cluster=cluster), me, index)
            if decision.state is not None:
                targets.add(decision.state)
    assert targets <= TRANSITIONS[state]


def test_every_state_is_reachable_from_a_new_node() -> None:
    reached, todo = set(), [None]
    while todo:
        for target in TRANSITIONS[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert reached == set(NodeState)


def test_apply_change_is_compare_and_set() -> None:
    start = rec(S.WAITING)
    change = Change(expect=S.WAITING, to=S.LOCKED, reason="locked", kind="locked", generation="g1")
    after = apply_change(start, change, now=5.0, lease=30)
    assert (after.state, after.reason, after.updated) == (S.LOCKED, "locked", 5.0)
    with pytest.raises(LostRace, match="not waiting any more"):
        apply_change(after, change, now=6.0, lease=30)
    with pytest.raises(LostRace, match="forgotten and announced anew"):
        apply_change(rec(S.WAITING, generation="g2"), change, now=6.0, lease=30)
    with pytest.raises(LostRace, match="no such node"):
        apply_change(None, change, now=6.0, lease=30)


def test_apply_change_refuses_what_the_table_does_not_allow() -> None:
    for source, targets in TRANSITIONS.items():
        if source is None:
            continue
        for target in set(NodeState) - targets:
            with pytest.raises(IllegalTransition):
                apply_change(
                    rec(source, claim_owner="me", claim_expires=100.0),
                    Change(expect=source, to=target, reason="r", kind="k", owner="me"),
                    now=1.0,
                    lease=30,
                )


def test_claims_follow_the_state() -> None:
    taken = apply_change(
        rec(S.QUEUED),
        Change(expect=S.QUEUED, to=S.REGISTERING, reason="r", kind="k", owner="a"),
        now=10.0,
        lease=30,
    )
    assert (taken.claim_owner, taken.claim_expires) == ("a", 40.0)
    with pytest.raises(LostRace, match="claimed by a"):
        apply_change(
            taken,
            Change(expect=S.REGISTERING, to=S.REGISTERED, reason="r", kind="k", owner="b"),
            now=11.0,
            lease=30,
        )
    # an expired claim, or one whose owner is known to be gone, may be taken over
    for now, alive in ((41.0, True), (11.0, False)):
        over = apply_change(
            taken,
            Change(expect=S.REGISTERING, to=S.INTERRUPTED, reason="r", kind="k", owner="b"),
            now=now,
            lease=30,
            owner_alive=alive,
        )
        assert (over.state, over.claim_owner) == (S.INTERRUPTED, None)


def test_only_decision_fields_may_change_with_the_state() -> None:
    with pytest.raises(IllegalTransition, match="fingerprint"):
        apply_change(
            rec(S.SEEN),
            Change(expect=S.SEEN, to=S.WAITING, reason="r", kind="k", fields={"fingerprint": "x"}),
            now=1.0,
            lease=30,
        )


@pytest.mark.parametrize(
    ("record", "settled"),
    [
        (rec(S.REGISTERED), True),
        (rec(S.REJECTED), True),
        (rec(S.INTERRUPTED), True),
        (rec(S.FAILED, next_attempt=None), True),  # gave up
        (rec(S.FAILED, next_attempt=5.0), False),
        (rec(S.UNREACHABLE, next_attempt=None), True),
        (rec(S.WAITING), False),
        (rec(S.REGISTERING), False),
    ],
)
def test_is_settled(record: NodeRecord, settled: bool) -> None:
    assert is_settled(record) is settled


def test_the_documented_diagram_is_the_table() -> None:
    text = DOCS.read_text()
    match = re.search(r"```mermaid\n(stateDiagram-v2\n.*?)```", text, re.S)
    assert match, "docs/architecture.md has no state diagram"
    assert match.group(1) == mermaid_diagram(), (
        "docs/architecture.md's state diagram is out of date; paste:\n" + mermaid_diagram()
    )
    for state in NodeState:  # and the table of meanings lists every state
        assert f"| `{state.value}` |" in text
