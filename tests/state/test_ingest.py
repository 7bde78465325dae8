"""How a record absorbs an announcement (registration/state/_ingest.py): pure rules.

One host key is one node; two keys for one id are a conflict; a pinned node's
identity and address are not taken from whoever announces last.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from registration.state import NodeRecord, NodeState, Source, absorb
from support.records import ann, fp_for

S = NodeState
NOW = 1_800_000_000.0
ATTACKER_FP = "SHA256:" + "E" * 43


def record(state: NodeState, **fields: object) -> NodeRecord:
    base = NodeRecord.new(ann("victim01"), source=Source.MDNS, reason="r", now=NOW - 100)
    return dataclasses.replace(base, state=state, **fields)  # type: ignore[arg-type]


def take(rec: NodeRecord | None, *, was_present: bool = True, instance: str = "nc-victim01",
         **announced: object):  # type: ignore[no-untyped-def]  # fmt: skip
    return absorb(
        rec,
        ann("victim01", **announced),
        source=Source.MDNS,
        instance=instance,
        now=NOW,
        was_present=was_present,
    )


@pytest.mark.parametrize("state", [S.SEEN, S.WAITING, S.LOCKED, S.REFUSED, S.FAILED, S.REJECTED])
def test_a_second_key_for_a_present_node_is_a_conflict(state: NodeState) -> None:
    result = take(record(state), fingerprint=ATTACKER_FP, ip="198.18.0.66", instance="evil")
    assert result.outcome == "conflict"
    rec = result.record
    assert rec.state is S.CONFLICT
    assert rec.fingerprint == fp_for("victim01")  # the victim's key stays recorded
    assert (rec.ip, rec.port) == ("198.18.0.5", 22)
    assert "two host keys announce id victim01" in rec.reason
    contender = json.loads(rec.contender or "{}")
    assert (contender["fingerprint"], contender["ip"], contender["instance"]) == (
        ATTACKER_FP,
        "198.18.0.66",
        "evil",
    )


def test_the_same_instance_announcing_another_key_while_present_is_a_conflict_too() -> None:
    """mDNS does not authenticate instance names: an attacker can use the victim's."""
    result = take(record(S.LOCKED), fingerprint=ATTACKER_FP, instance="nc-victim01")
    assert result.record.state is S.CONFLICT


def test_a_node_that_said_goodbye_may_come_back_with_a_new_key() -> None:
    result = take(record(S.WAITING), was_present=False, fingerprint=ATTACKER_FP)
    assert result.outcome == "updated"
    assert (result.record.state, result.record.fingerprint) == (S.WAITING, ATTACKER_FP)
    assert "with a new host key" in (result.message or "")


def test_a_conflict_stays_a_conflict_until_the_admin_picks() -> None:
    contested = take(record(S.WAITING), fingerprint=ATTACKER_FP).record
    again = take(contested, fingerprint=ATTACKER_FP)
    assert (again.outcome, again.record.state) == ("unchanged", S.CONFLICT)
    third = take(contested, fingerprint="SHA256:" + "F" * 43, instance="third")
    assert third.outcome == "conflict" and third.record.state is S.CONFLICT
    assert "yet another host key" in (third.message or "")
    victim = take(contested)  # the original key re-announcing changes nothing either
    assert victim.record.state is S.CONFLICT


@pytest.mark.parametrize("state", [S.REGISTERING, S.REGISTERED, S.INTERRUPTED])
@pytest.mark.parametrize(
    "change", [{"fingerprint": ATTACKER_FP}, {"role": "cc"}, {"cluster": "bar"}]
)
def test_a_pinned_node_keeps_its_identity(state: NodeState, change: dict[str, object]) -> None:
    before = record(state)
    result = take(before, was_present=False, **change)
    assert result.outcome == "conflict" and result.kind == "conflict"
    after = result.record
    assert (after.state, after.fingerprint, after.role, after.cluster) == (
        before.state,
        before.fingerprint,
        before.role,
        before.cluster,
    )


def test_a_registered_node_that_moves_is_kept_where_it_was_until_verified() -> None:
    before = record(S.REGISTERED, path="direct")
    result = take(before, ip="198.18.0.99", port=2222, name="elsewhere")
    assert result.outcome == "moved"
    after = result.record
    assert (after.ip, after.port, after.name, after.path) == ("198.18.0.5", 22, None, "direct")
    assert after.moved == ("198.18.0.99", 2222, "elsewhere")
    assert "until that address presents its registered key" in (result.message or "")
    # the same move again logs nothing new; moving back clears it
    assert take(after, ip="198.18.0.99", port=2222, name="elsewhere").outcome == "unchanged"
    back = take(after)
    assert back.record.moved is None and back.record.ip == "198.18.0.5"


def test_an_unpinned_node_simply_moves() -> None:
    result = take(record(S.WAITING), ip="198.18.0.99")
    assert (result.record.ip, result.record.moved) == ("198.18.0.99", None)


def test_another_address_from_a_second_announcer_is_a_conflict() -> None:
    """Same key, another address, from another instance while the first still announces."""
    result = absorb(
        record(S.WAITING),
        ann("victim01", ip="198.18.0.66"),
        source=Source.MDNS,
        instance="evil",
        now=NOW,
        was_present=True,
        others_present=True,
    )
    assert result.record.state is S.CONFLICT
    assert result.record.ip == "198.18.0.5"
    # the node's own announcer moving (DHCP) is just a move
    alone = absorb(
        record(S.WAITING),
        ann("victim01", ip="198.18.0.66"),
        source=Source.MDNS,
        instance="nc-victim01",
        now=NOW,
        was_present=True,
        others_present=False,
    )
    assert (alone.record.state, alone.record.ip) == (S.WAITING, "198.18.0.66")
