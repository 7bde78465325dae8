"""The daemon's in-memory index (registration/controller/_index.py).

Two properties make it safe for ``decide()`` to read the index instead of the store:
its uniqueness answer is the store's own (checked against the real sqlite store's
in-transaction check), and re-deciding only the nodes a change affects ends in
the same states as re-deciding every node (checked on random event sequences).
"""

from __future__ import annotations

import asyncio
import dataclasses
import zlib
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registration._profile import load_profile
from registration.controller import NodeIndex, Registrar, decide
from registration.state import Change, LostRace, NodeRecord, NodeState, SqliteStore
from support.records import OWNER, fp_for, put

S = NodeState
EUCA = load_profile("eucalyptus")
CLC = Registrar("clc", None, EUCA)
ROLES = [("walrus", None), ("cc", "foo"), ("cc", "bar"), ("sc", "foo"), ("sc", "bar")]
HOLDABLE = [S.SEEN, S.WAITING, S.REFUSED, S.FAILED, S.REGISTERING, S.REGISTERED, S.REJECTED]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(ROLES), st.sampled_from(HOLDABLE)), max_size=6))
def test_the_index_and_the_store_agree_on_who_holds_a_slot(
    tmp_path_factory: object, nodes: list[tuple[tuple[str, str | None], NodeState]]
) -> None:
    async def check() -> None:
        db = tmp_path_factory.mktemp("agree") / "autoreg.db"  # type: ignore[attr-defined]
        store = await SqliteStore.open(db, origin="test")
        index = NodeIndex(EUCA)
        try:
            for i, ((role, cluster), state) in enumerate(nodes):
                index.put(await put(store, f"node{i:04d}", state, role=role, cluster=cluster))
            for role, cluster in ROLES:
                scope = None if role == "walrus" else cluster
                probe = await put(store, "probe001", S.QUEUED, role=role, cluster=cluster)
                holder = index.slot_holder(role, scope, exclude="probe001")
                try:
                    await store.change(
                        "probe001",
                        Change(
                            expect=S.QUEUED,
                            to=S.REGISTERING,
                            reason="r",
                            kind="k",
                            owner=OWNER,
                            generation=probe.generation,
                            exclusive=(role, scope),
                        ),
                    )
                    store_holder = False
                except LostRace:
                    store_holder = True
                assert store_holder is (holder is not None), (role, scope, nodes)
                await store.forget("probe001", message="probe done")
        finally:
            await store.close()

    asyncio.run(check())


# -- incremental against full reconcile ----------


def _record(node_id: str, role: str, cluster: str | None) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        role=role,
        cluster=cluster,
        ip="198.18.0.9",
        port=22,
        fingerprint=fp_for(node_id),
    )


def _outcome(node_id: str, attempt: int) -> NodeState:
    """What a registration ends in: deterministic per node and attempt, mostly success."""
    return S.FAILED if zlib.crc32(f"{node_id}:{attempt}".encode()) % 4 == 0 else S.REGISTERED


def _settle(index: NodeIndex, me: Registrar, dirty: set[str], *, full: bool) -> None:
    """Decide until nothing changes; ``full`` re-decides every node each round."""
    rounds = 0
    if full:
        dirty = index.ids()  # whatever happened, everything
    while dirty:
        rounds += 1
        assert rounds < 200, "no fixpoint"
        batch = index.ids() if full else dirty
        dirty = set()
        for node_id in sorted(batch):
            rec = index.get(node_id)
            if rec is None or not rec.state.decidable or rec.next_attempt is not None:
                continue
            decision = decide(rec, me, index)
            if decision.state is None or (decision.state, decision.reason) == (
                rec.state,
                rec.reason,
            ):
                continue
            if decision.state is S.QUEUED:  # a free slot at once: its outcome
                attempt = rec.attempts + 1
                outcome = _outcome(node_id, attempt)
                new = dataclasses.replace(
                    rec,
                    state=outcome,
                    reason=outcome.value,
                    attempts=attempt,
                    next_attempt=None if outcome is S.REGISTERED else 1.0,
                )
            else:
                new = dataclasses.replace(rec, state=decision.state, reason=decision.reason)
            dirty |= index.put(new)
        if full and not dirty:
            break


Event = tuple[str, int, int]  # ("announce", role index, node number) | ("lock", …) | …


_events = st.lists(
    st.one_of(
        st.tuples(st.just("announce"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("lock"), st.integers(0, 4), st.integers(0, 1)),
        st.tuples(st.just("retry"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("forget"), st.integers(0, 4), st.integers(0, 2)),
        st.tuples(st.just("self"), st.integers(0, 1), st.integers(0, 0)),
    ),
    max_size=30,
)


@settings(max_examples=400, deadline=None)
@given(_events)
# a freed slot: the refused one is registered (uniqueness)
@example([("announce", 1, 0), ("announce", 1, 1), ("forget", 1, 0)])
# a requirement met, then lost and met again (ordering)
@example([("announce", 3, 0), ("announce", 1, 0), ("forget", 1, 0), ("announce", 1, 1)])
# a lockdown lifted
@example([("lock", 0, 1), ("announce", 0, 0), ("lock", 0, 0)])
def test_deciding_only_the_affected_nodes_ends_like_deciding_all(events: list[Event]) -> None:
    profile = EUCA
    incremental, full = NodeIndex(profile), NodeIndex(profile)
    cc_registered = True
    for kind, a, b in events:
        role, cluster = ROLES[a]
        node_id = f"{role}-{cluster}-{b}"
        me = Registrar("clc", None, profile, cc_registered)
        for index, is_full in ((incremental, False), (full, True)):
            if kind == "announce" and node_id not in index:
                dirty = index.put(_record(node_id, role, cluster))
            elif kind == "lock":
                switches = dict(index.lockdown)
                switches[role] = bool(b)
                dirty = index.set_lockdown(switches)
            elif kind == "retry" and (rec := index.get(node_id)) is not None:
                if rec.state in (S.FAILED, S.REFUSED):
                    dirty = index.put(
                        dataclasses.replace(rec, state=S.SEEN, reason="retry", next_attempt=None)
                    )
                else:
                    dirty = set()
            elif kind == "forget":
                dirty = index.remove(node_id)
            elif kind == "self":
                dirty = index.ids()  # this registrar's own standing: everything
            else:
                dirty = set()
            _settle(index, me, dirty, full=is_full)
        if kind == "self":
            cc_registered = bool(a)
    assert {r.node_id: (r.state, r.reason) for r in incremental} == {
        r.node_id: (r.state, r.reason) for r in full
    }


def test_a_lockdown_flip_affects_only_its_role() -> None:
    index = NodeIndex(EUCA)
    for node_id, role, cluster in (
        ("w1", "walrus", None),
        ("c1", "cc", "foo"),
        ("s1", "sc", "foo"),
    ):
        index.put(_record(node_id, role, cluster))
    assert index.set_lockdown({"cc": True}) == {"c1"}
    assert index.set_lockdown({"cc": True}) == set()
    assert index.set_lockdown({"cc": True, "*": True}) == {"w1", "c1", "s1"}


def test_a_registration_affects_its_role_and_the_roles_waiting_for_it() -> None:
    index = NodeIndex(EUCA)
    nodes = {
        "c1": ("cc", "foo"),
        "c2": ("cc", "foo"),
        "s1": ("sc", "foo"),
        "n1": ("nc", "foo"),
        "w1": ("walrus", None),
    }
    for node_id, (role, cluster) in nodes.items():
        index.put(_record(node_id, role, cluster))
    c1 = index.get("c1")
    assert c1 is not None
    # waiting → registered: c2 (uniqueness) and s1 (requires cc), not n1 or w1
    assert index.put(dataclasses.replace(c1, state=S.REGISTERED)) == {"c1", "c2", "s1"}
    # a change that moves no slot and no registration affects only the node itself
    w1 = index.get("w1")
    assert w1 is not None
    assert index.put(dataclasses.replace(w1, state=S.WAITING, reason="x")) == {"w1"}


def test_index_size_is_the_node_count(tmp_path: Path) -> None:
    index = NodeIndex(EUCA)
    index.replace_all([_record(f"n{i}", "nc", "foo") for i in range(10)])
    assert len(index) == 10 and "n3" in index and "x" not in index
