"""The state store contract, continued: batches, a bounded event log, the feed's filter.

Run against every backend (the ``store``/``backend`` fixtures of ``conftest.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from registration._exceptions import AlreadyRunning
from registration.state import (
    Absorbed,
    Arrival,
    Change,
    Departure,
    IllegalTransition,
    LostRace,
    NodeRecord,
    NodeState,
    Note,
    Source,
    StateStore,
)
from support.records import OWNER, ann, put
from support.stores import Backend

S = NodeState


# -- batches ----------


async def test_ingest_many_is_the_single_forms_in_order(store: StateStore) -> None:
    await put(store, "node0003")  # present from instance nc-node0003
    results = await store.ingest_many(
        [
            Arrival(ann=ann("node0001"), source=Source.MDNS, instance="a1", observer="o"),
            Arrival(ann=ann("node0002"), source=Source.MDNS, instance="a2", observer="o"),
            Note(node_id=None, kind="rejected-announcement", message="bad one", data={"x": 1}),
            Arrival(
                ann=ann("node0001", name="renamed"),
                source=Source.MDNS,
                instance="a1",
                observer="o",
            ),
            Departure(source=Source.MDNS, instance="a2", observer="o"),
            Departure(source=Source.MDNS, instance="nc-node0003"),
            Departure(source=Source.MDNS, instance="never-seen", observer="o"),
        ]
    )
    assert [type(r).__name__ for r in results] == [
        "Absorbed", "Absorbed", "NoneType", "Absorbed", "NodeRecord", "NodeRecord", "NoneType",
    ]  # fmt: skip
    assert isinstance(results[3], Absorbed) and results[3].record.name == "renamed"
    one, two, three = [await store.get(n) for n in ("node0001", "node0002", "node0003")]
    assert one is not None and two is not None and three is not None
    assert one.present and one.name == "renamed"
    assert not two.present and not three.present
    events = (await store.events())[-6:]
    assert [(e.node_id, e.kind) for e in events] == [
        ("node0001", "announced"), ("node0002", "announced"), (None, "rejected-announcement"),
        ("node0001", "announced"), ("node0002", "withdrawn"), ("node0003", "withdrawn"),
    ]  # fmt: skip
    assert "re-announced" in events[3].message


async def test_change_many_drops_only_the_changes_that_lost(store: StateStore) -> None:
    a = await put(store, "node0001")
    b = await put(store, "node0002", S.WAITING)
    c = await put(store, "node0003")
    results = await store.change_many(
        [
            ("node0001", Change(expect=S.SEEN, to=S.QUEUED, reason="r", kind="queued",
                                generation=a.generation)),
            ("node0002", Change(expect=S.SEEN, to=S.QUEUED, reason="r", kind="queued")),  # stale
            ("node0003", Change(expect=S.SEEN, to=S.LOCKED, reason="r", kind="locked",
                                generation=c.generation)),
        ]
    )  # fmt: skip
    assert isinstance(results[0], NodeRecord) and results[0].state is S.QUEUED
    assert isinstance(results[1], LostRace)
    assert isinstance(results[2], NodeRecord) and results[2].state is S.LOCKED
    assert await store.get("node0002") == b
    events = [(e.node_id, e.kind) for e in (await store.events())[-2:]]
    assert events == [("node0001", "queued"), ("node0003", "locked")]


async def test_an_illegal_change_in_a_batch_writes_nothing(store: StateStore) -> None:
    a = await put(store, "node0001")
    before = len(await store.events())
    with pytest.raises(IllegalTransition):
        await store.change_many(
            [
                ("node0001", Change(expect=S.SEEN, to=S.QUEUED, reason="r", kind="queued")),
                ("node0001", Change(expect=S.QUEUED, to=S.REGISTERED, reason="r", kind="k",
                                    owner=OWNER)),
            ]
        )  # fmt: skip
    assert await store.get("node0001") == a
    assert len(await store.events()) == before


async def test_a_slot_is_taken_from_queued_only(store: StateStore) -> None:
    seen = await put(store, "node0001")
    with pytest.raises(IllegalTransition):
        await store.change(
            "node0001",
            Change(expect=S.SEEN, to=S.REGISTERING, reason="r", kind="k", owner=OWNER,
                   generation=seen.generation),
        )  # fmt: skip
    queued = await put(store, "node0002", S.QUEUED)
    taken = await store.change(
        "node0002",
        Change(expect=S.QUEUED, to=S.REGISTERING, reason="r", kind="k", owner=OWNER,
               generation=queued.generation),
    )  # fmt: skip
    assert (taken.state, taken.claim_owner) == (S.REGISTERING, OWNER)


# -- a bounded event log ----------


async def test_the_same_event_again_is_one_entry_that_counts(store: StateStore) -> None:
    for _ in range(3):
        await store.add_event("node0001", "receipt", "receipt not delivered: timed out")
    await store.add_event("node0002", "receipt", "receipt not delivered: timed out")
    await store.add_event("node0001", "receipt", "receipt not delivered: timed out")
    events = [e for e in await store.events() if e.kind == "receipt"]
    assert [(e.node_id, e.repeats) for e in events] == [("node0002", 1), ("node0001", 4)]
    last = events[-1]
    assert last.first_ts is not None and last.first_ts <= last.ts
    # something else in between ends the run
    await store.add_event("node0001", "receipt", "receipt left on the node at /x")
    await store.add_event("node0001", "receipt", "receipt not delivered: timed out")
    assert [e.repeats for e in await store.last_events(2, node_id="node0001")] == [1, 1]


async def test_prune_keeps_the_newest_and_the_young(store: StateStore) -> None:
    for i in range(30):
        await store.add_event(None, "test", f"event {i}")
    pruned = await store.prune_events(keep=10)
    assert pruned >= 20
    left = [e.message for e in await store.events() if e.kind == "test"]
    assert left == [f"event {i}" for i in range(20, 30)]
    assert await store.prune_events(keep=10) == 0
    await asyncio.sleep(0.05)
    await store.add_event(None, "test", "young")
    assert await store.prune_events(keep=1000, max_age=0.04) >= 10
    assert [e.message for e in await store.events()] == ["young"]


async def test_the_feed_leaves_out_one_writers_events(store: StateStore, backend: Backend) -> None:
    after = max((e.seq for e in await store.last_events(1)), default=0)
    other = await backend.open(origin="cli:other:1")
    try:
        await store.add_event(None, "test", "mine")
        await other.add_event(None, "test", "theirs")
        feed = store.watch(after=after, origin_not=store.origin)
        batch = await asyncio.wait_for(anext(feed), 10)
        assert [e.message for e in batch] == ["theirs"]
        await feed.aclose()  # type: ignore[attr-defined]
        assert [e.message for e in await store.events(after=after, origin_not=other.origin)] == [
            "mine"
        ]
    finally:
        await other.close()


# -- registrars: what each backend allows ----------


async def test_registrars_one_per_sqlite_store_many_per_etcd_store(
    store: StateStore, backend: Backend, tmp_path: Path
) -> None:
    first = await backend.open(origin="clc:a:1", lock_dir=tmp_path / "a")
    second = await backend.open(origin="clc:b:1", lock_dir=tmp_path / "b")
    try:
        await first.lock_registrar("clc:a:1")
        standing = await first.keep_registrar("clc:a:1")
        if not backend.shared:  # sqlite: one daemon per store, nothing expires
            assert not store.shared
            with pytest.raises(AlreadyRunning, match="one daemon per state directory"):
                await second.lock_registrar("clc:b:1")
            assert (standing.lease, standing.valid_until) == (None, None)
            assert [r["owner"] for r in await store.registrars()] == ["clc:a:1"]
        else:  # etcd: every registrar has a lease of its own (one per state directory)
            assert store.shared
            await second.lock_registrar("clc:b:1")
            assert standing.lease is not None and standing.ttl
            owners = sorted(r["owner"] for r in await store.registrars())
            assert owners == ["clc:a:1", "clc:b:1"]
    finally:
        await first.close()
        await second.close()
    assert (await store.info())["backend"] == backend.name
