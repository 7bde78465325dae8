"""The state store contract (registration/state/_contract.py), run against every backend.

Whatever implements ``StateStore`` must pass this file unchanged: ingestion and
presence, compare-and-set state changes and claims, lockdown, events and the
change feed, tunnels.  The ``store`` and ``backend`` fixtures (``conftest.py``)
are parametrised over the backends; ``test_contract_batches.py`` is the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registration._exceptions import NodeNotFound, StateError
from registration.state import (
    GLOBAL_SCOPE,
    Change,
    IllegalTransition,
    LostRace,
    NodeState,
    Source,
    StateStore,
)
from support.records import OWNER, ann, put
from support.stores import Backend

S = NodeState
OTHER_FP = "SHA256:" + "B" * 43


# -- ingestion and presence ----------


async def test_a_new_announcement_is_a_seen_node_with_its_event(store: StateStore) -> None:
    result = await store.ingest(ann("node0001", name="n1"), source=Source.MDNS, instance="nc-a")
    assert result.outcome == "new"
    rec = await store.get("node0001")
    assert rec == result.record
    assert (rec.state, rec.present, rec.source, rec.name) == (S.SEEN, True, Source.MDNS, "n1")
    assert rec.generation
    event = (await store.last_events(1))[0]
    assert (event.node_id, event.kind, event.state) == ("node0001", "announced", "seen")
    assert event.data["announcement"]["ip"] == "198.18.0.5"
    assert event.origin == store.origin


async def test_the_same_announcement_again_changes_nothing_but_last_seen(store: StateStore) -> None:
    first = await store.ingest(ann("node0001"), source=Source.MDNS, instance="nc-a")
    count = len(await store.events())
    again = await store.ingest(ann("node0001"), source=Source.MDNS, instance="nc-a")
    assert again.outcome == "unchanged"
    assert again.record.last_seen >= first.record.last_seen
    assert again.record.generation == first.record.generation
    assert len(await store.events()) == count


async def test_a_moved_node_is_logged_and_updated(store: StateStore) -> None:
    await put(store, "node0001", S.WAITING)
    result = await store.ingest(
        ann("node0001", ip="198.18.0.6"), source=Source.MDNS, instance="nc-node0001"
    )
    assert result.outcome == "updated"
    rec = await store.get("node0001")
    assert rec is not None
    assert (rec.ip, rec.state) == ("198.18.0.6", S.WAITING)
    assert (await store.last_events(1))[0].message.endswith(
        "re-announced at 198.18.0.6:22 (state ready)"
    )


async def test_a_registered_node_keeps_its_identity_and_a_conflict_is_logged(
    store: StateStore,
) -> None:
    before = await put(store, "node0001", S.REGISTERED)
    result = await store.ingest(
        ann("node0001", fingerprint=OTHER_FP), source=Source.MDNS, instance="nc-node0001"
    )
    assert result.outcome == "conflict"
    rec = await store.get("node0001")
    assert rec is not None
    assert (rec.fingerprint, rec.state) == (before.fingerprint, S.REGISTERED)
    event = (await store.last_events(1))[0]
    assert event.kind == "conflict"
    assert OTHER_FP in event.message


async def test_a_failed_node_that_comes_back_starts_over(store: StateStore) -> None:
    await put(store, "node0001", S.FAILED)
    assert await store.withdraw(source=Source.MDNS, instance="nc-node0001") is not None
    result = await store.ingest(ann("node0001"), source=Source.MDNS, instance="nc-node0001")
    assert (result.record.state, result.record.attempts, result.record.present) == (S.SEEN, 0, True)


async def test_presence_is_per_instance(store: StateStore) -> None:
    await store.ingest(ann("node0001"), source=Source.MDNS, instance="nc-a")
    await store.ingest(ann("node0001"), source=Source.MDNS, instance="nc-b")
    assert await store.withdraw(source=Source.MDNS, instance="nc-a") is None  # still announced
    assert (await store.get("node0001")).present  # type: ignore[union-attr]
    gone = await store.withdraw(source=Source.MDNS, instance="nc-b")
    assert gone is not None and gone.present is False
    event = (await store.last_events(1))[0]
    assert (event.kind, event.node_id) == ("withdrawn", "node0001")
    assert await store.withdraw(source=Source.MDNS, instance="nc-unknown") is None


async def test_presence_is_per_observer_and_source(store: StateStore) -> None:
    await store.ingest(ann("node0001"), source=Source.MDNS, instance="i", observer="clc-a")
    await store.ingest(ann("node0002"), source=Source.MANUAL, instance="node0002")
    await store.clear_presence(source=Source.MDNS, observer="clc-b")
    assert (await store.get("node0001")).present  # type: ignore[union-attr]
    await store.clear_presence(source=Source.MDNS, observer="clc-a")
    first, second = await store.get("node0001"), await store.get("node0002")
    assert first is not None and second is not None
    assert (first.present, second.present) == (False, True)


async def test_a_lease_bounds_presence(store: StateStore) -> None:
    await store.ingest(ann("node0001"), source=Source.MANUAL, instance="a", lease=3600)
    await store.ingest(ann("node0002"), source=Source.MANUAL, instance="b", lease=-1)
    first, second = await store.get("node0001"), await store.get("node0002")
    assert first is not None and second is not None
    assert (first.present, second.present) == (True, False)


# -- compare-and-set ----------


async def test_a_change_applies_and_logs_one_event(store: StateStore) -> None:
    rec = await put(store, "node0001")
    count = len(await store.events())
    fresh = await store.change(
        "node0001",
        Change(
            expect=S.SEEN,
            to=S.WAITING,
            reason="waiting for cc",
            kind="waiting",
            generation=rec.generation,
            data={"why": 1},
        ),
    )
    assert (fresh.state, fresh.reason) == (S.WAITING, "waiting for cc")
    assert await store.get("node0001") == fresh
    events = (await store.events())[count:]
    assert [(e.kind, e.state, e.data) for e in events] == [("waiting", "waiting", {"why": 1})]
    assert events[0].message == "nc node0001 (node0001): waiting: waiting for cc"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (Change(expect=S.WAITING, to=S.LOCKED, reason="r", kind="k"), LostRace),
        (Change(expect=S.SEEN, to=S.LOCKED, reason="r", kind="k", generation="other"), LostRace),
        (Change(expect=S.SEEN, to=S.REGISTERED, reason="r", kind="k"), IllegalTransition),
        (Change(expect=S.SEEN, to=S.FAILED, reason="r", kind="k"), IllegalTransition),
        (Change(expect=S.SEEN, to=S.REGISTERING, reason="r", kind="k"), IllegalTransition),
        (
            Change(expect=S.SEEN, to=S.LOCKED, reason="r", kind="k", fields={"ip": "1.2.3.4"}),
            IllegalTransition,
        ),
    ],
)
async def test_a_refused_change_writes_nothing(
    store: StateStore, change: Change, error: type[Exception]
) -> None:
    before = await put(store, "node0001")
    count = len(await store.events())
    with pytest.raises(error):
        await store.change("node0001", change)
    assert await store.get("node0001") == before
    assert len(await store.events()) == count


async def test_a_change_to_a_vanished_node_is_a_lost_race(store: StateStore) -> None:
    rec = await put(store, "node0001")
    await store.forget("node0001", message="gone")
    with pytest.raises(LostRace):
        await store.change(
            "node0001",
            Change(expect=S.SEEN, to=S.LOCKED, reason="r", kind="k", generation=rec.generation),
        )
    assert await store.get("node0001") is None  # never re-created
    # announced anew: another row, so a writer holding the old one still loses
    await put(store, "node0001")
    with pytest.raises(LostRace, match="forgotten and announced anew"):
        await store.change(
            "node0001",
            Change(expect=S.SEEN, to=S.LOCKED, reason="r", kind="k", generation=rec.generation),
        )


# -- claims ----------


async def test_registering_takes_a_claim_and_leaving_releases_it(store: StateStore) -> None:
    rec = await put(store, "node0001", S.REGISTERING)
    assert rec.claim_owner == OWNER
    assert rec.claim_expires is not None
    with pytest.raises(LostRace, match="claimed by"):
        await store.change(
            "node0001",
            Change(expect=S.REGISTERING, to=S.REGISTERED, reason="r", kind="k", owner="thief"),
        )
    done = await store.change(
        "node0001",
        Change(expect=S.REGISTERING, to=S.REGISTERED, reason="r", kind="k", owner=OWNER),
    )
    assert (done.state, done.claim_owner, done.claim_expires) == (S.REGISTERED, None, None)


async def test_claims_are_renewed_and_expired_ones_are_reclaimable(store: StateStore) -> None:
    rec = await put(store, "node0001", S.REGISTERING)
    await put(store, "node0002", S.REGISTERED)
    assert rec.claim_expires is not None
    assert await store.renew_claims(OWNER, 600) == 1
    renewed = await store.get("node0001")
    assert renewed is not None and renewed.claim_expires is not None
    assert renewed.claim_expires > rec.claim_expires
    assert await store.renew_claims("nobody", 600) == 0
    await store.renew_claims(OWNER, -1)  # the owner stopped renewing: its lease ran out
    assert [r.node_id for r in await store.reclaimable("clc:other:2")] == ["node0001"]
    taken = await store.change(
        "node0001",
        Change(expect=S.REGISTERING, to=S.INTERRUPTED, reason="r", kind="k", owner="clc:other:2"),
    )
    assert taken.state is S.INTERRUPTED


async def test_an_exclusive_change_checks_uniqueness_in_the_same_transaction(
    store: StateStore,
) -> None:
    await put(store, "walrus01", S.REGISTERING, role="walrus", cluster=None)
    await put(store, "walrus02", S.QUEUED, role="walrus", cluster=None)
    with pytest.raises(LostRace, match="walrus01"):
        await store.change(
            "walrus02",
            Change(
                expect=S.QUEUED,
                to=S.REGISTERING,
                reason="r",
                kind="k",
                owner=OWNER,
                exclusive=("walrus", None),
            ),
        )
    # another cluster's slot is another slot
    await put(store, "cc-foo-1", S.REGISTERED, role="cc", cluster="foo")
    await put(store, "cc-bar-1", S.QUEUED, role="cc", cluster="bar")
    fresh = await store.change(
        "cc-bar-1",
        Change(
            expect=S.QUEUED,
            to=S.REGISTERING,
            reason="r",
            kind="k",
            owner=OWNER,
            exclusive=("cc", "bar"),
        ),
    )
    assert fresh.state is S.REGISTERING


# -- forget, find, list ----------


async def test_forget(store: StateStore) -> None:
    rec = await put(store, "node0001", S.WAITING)
    gone = await store.forget("node0001", message="bye")
    assert gone is not None and gone.node_id == rec.node_id
    assert await store.get("node0001") is None
    last = (await store.last_events(1))[0]
    assert (last.node_id, last.kind, last.message) == ("node0001", "forgotten", "bye")
    count = len(await store.events())
    assert await store.forget("node0001", message="again") is None
    assert len(await store.events()) == count


@pytest.fixture
def populated(store: StateStore) -> StateStore:
    async def fill() -> None:
        for node_id, name, ip in (
            ("abcd1234", "node1", "10.0.0.1"),
            ("abce5678", "node2", "10.0.0.2"),
            ("ab_x9999", "node3", "10.0.0.3"),
            ("abyx0000", "node4", "10.0.0.4"),
            ("zz-z0000", "node5", "10.0.0.5"),
        ):
            await put(store, node_id, name=name, ip=ip)

    asyncio.run(fill())
    return store


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("abcd1234", "abcd1234"),
        ("abcd", "abcd1234"),
        ("abce", "abce5678"),
        ("node2", "abce5678"),
        ("10.0.0.1", "abcd1234"),
        ("ab_", "ab_x9999"),  # '_' is not a wildcard
    ],
)
async def test_find(populated: StateStore, ref: str, expected: str) -> None:
    assert (await populated.find(ref)).node_id == expected


async def test_find_ambiguous_prefix_lists_ids(populated: StateStore) -> None:
    with pytest.raises(NodeNotFound) as info:
        await populated.find("abc")
    assert "ambiguous" in str(info.value)
    assert "abcd1234" in str(info.value) and "abce5678" in str(info.value)
    assert "ab_x9999" not in str(info.value)


@pytest.mark.parametrize("ref", ["nothere", "%", "_", "10.0.0.9", "bcd"])
async def test_find_unknown(populated: StateStore, ref: str) -> None:
    with pytest.raises(NodeNotFound, match="no node"):
        await populated.find(ref)


async def test_nodes_are_ordered_by_role_cluster_first_seen(store: StateStore) -> None:
    await put(store, "nc-b-late", cluster="b")
    await put(store, "nc-a-late", cluster="a")
    await put(store, "cc-z", role="cc", cluster="z")
    await put(store, "nc-a-later", cluster="a")
    assert [n.node_id for n in await store.nodes()] == [
        "cc-z",
        "nc-a-late",
        "nc-a-later",
        "nc-b-late",
    ]


async def test_note_path_logs_only_a_change(store: StateStore) -> None:
    await put(store, "node0001", S.REGISTERED)
    count = len(await store.events())
    rec = await store.note_path("node0001", "tunnel:20000")
    assert rec is not None and rec.path == "tunnel:20000"
    assert await store.note_path("node0001", "tunnel:20000") is not None
    events = (await store.events())[count:]
    assert [e.kind for e in events] == ["path"]
    assert await store.note_path("ghost001", "direct") is None


# -- lockdown ----------


async def test_lockdown(store: StateStore) -> None:
    assert await store.lockdown() == {}
    await store.set_lockdown("nc", True, reason="maintenance")
    assert await store.lockdown() == {"nc": True}
    event = (await store.last_events(1))[0]
    assert (event.kind, event.node_id, event.data) == (
        "lockdown",
        None,
        {"scope": "nc", "locked": True},
    )
    assert event.message == "lockdown on for registration of role nc: maintenance"
    await store.set_lockdown(GLOBAL_SCOPE, True)
    await store.set_lockdown(GLOBAL_SCOPE, False)
    assert await store.lockdown() == {"nc": True, GLOBAL_SCOPE: False}


# -- events and the change feed ----------


async def test_events_after_limit_and_node_filter(store: StateStore) -> None:
    start = max((e.seq for e in await store.last_events(1)), default=0)
    for i in range(5):
        await store.add_event("node0001" if i % 2 == 0 else "node0002", "note", f"m{i}", {"i": i})
    await store.add_event(None, "global", "g", state="x")
    new = await store.events(after=start)
    assert [e.message for e in new] == ["m0", "m1", "m2", "m3", "m4", "g"]
    assert [e.seq for e in new] == sorted(e.seq for e in new)
    assert (new[-1].state, new[-1].node_id) == ("x", None)
    assert [e.message for e in await store.events(after=start, limit=2)] == ["m0", "m1"]
    assert [e.message for e in await store.events(node_id="node0002")] == ["m1", "m3"]
    assert [e.message for e in await store.last_events(2, node_id="node0001")] == ["m2", "m4"]
    assert await store.last_events(0) == []
    assert await store.events(after=new[-1].seq) == []


async def test_the_change_feed_reports_what_another_handle_commits(
    store: StateStore, backend: Backend
) -> None:
    after = max((e.seq for e in await store.last_events(1)), default=0)
    other = await backend.open(origin="cli:admin:1")
    feed = store.watch(after=after)
    try:
        await other.set_lockdown("nc", True)
        await other.ingest(ann("node0001"), source=Source.MANUAL, instance="node0001")
        seen: list[Any] = []
        async with asyncio.timeout(10):
            async for batch in feed:
                seen += batch
                if len(seen) >= 2:
                    break
        assert [(e.kind, e.origin) for e in seen] == [
            ("lockdown", "cli:admin:1"),
            ("manual", "cli:admin:1"),
        ]
    finally:
        await feed.aclose()  # type: ignore[attr-defined]
        await other.close()


# -- tunnels ----------


async def test_tunnels(store: StateStore) -> None:
    first = await store.allocate_tunnel(
        "node0001", "ssh-ed25519 AAAA", count=2, port_range=(20000, 20003)
    )
    assert first.ports == (20000, 20001)
    again = await store.allocate_tunnel(
        "node0001", "ssh-ed25519 BBBB", count=2, port_range=(20000, 20003)
    )
    assert (again.ports, again.public_key) == ((20000, 20001), "ssh-ed25519 BBBB")
    second = await store.allocate_tunnel("node0002", "k", count=2, port_range=(20000, 20003))
    assert second.ports == (20002, 20003)
    with pytest.raises(StateError, match="no free tunnel ports"):
        await store.allocate_tunnel("node0003", "k", count=1, port_range=(20000, 20003))
    assert [t.node_id for t in await store.tunnels()] == ["node0001", "node0002"]
    assert await store.remove_tunnel("node0001") is True
    assert await store.remove_tunnel("node0001") is False
    assert await store.tunnel("node0001") is None
    third = await store.allocate_tunnel("node0003", "k", count=1, port_range=(20000, 20003))
    assert third.ports == (20000,)


async def test_another_announcer_moving_a_present_node_is_a_conflict(store: StateStore) -> None:
    await put(store, "node0001", S.WAITING)
    result = await store.ingest(ann("node0001", ip="198.18.0.66"), source=Source.MDNS,
                                instance="evil")  # fmt: skip
    assert result.record.state is S.CONFLICT
    # once its own announcer said goodbye, the other one is simply the node now
    await put(store, "node0002", S.WAITING)
    await store.withdraw(source=Source.MDNS, instance="nc-node0002")
    moved = await store.ingest(ann("node0002", ip="198.18.0.67"), source=Source.MDNS,
                               instance="other")  # fmt: skip
    assert (moved.record.state, moved.record.ip) == (S.WAITING, "198.18.0.67")
