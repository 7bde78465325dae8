"""What the etcd backend adds to the contract: racing writers, uncertain writes, etcd's
limits, leases and fencing, the claim watch, a compacted feed, layouts, migration.

On the session's three-member TLS cluster (``conftest.etcd_lab``), each test on a
prefix of its own, its thread inside the cluster's client host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registration._exceptions import AlreadyRunning, StateError
from registration.state import (
    FENCE_MARGIN,
    Arrival,
    Change,
    EtcdStore,
    EtcdUnavailable,
    LostRace,
    NodeState,
    Source,
    SqliteStore,
    Window,
    migrate_to_etcd,
)
from registration.state._etcd_io import WatchLost, b64
from registration.state._etcd_keys import dump
from support.netns import inside
from support.records import ann, put
from support.stores import EtcdBackend, EtcdLab

pytestmark = pytest.mark.netns

S = NodeState


@pytest.fixture
def eb(etcd_lab: EtcdLab, tmp_path: Path) -> Iterator[EtcdBackend]:
    with inside(etcd_lab.client):
        yield EtcdBackend(etcd_lab, tmp_path)


def claim(rec: Any, owner: str) -> Change:
    return Change(expect=S.QUEUED, to=S.REGISTERING, reason="r", kind="registering",
                  owner=owner, generation=rec.generation)  # fmt: skip


async def test_two_registrars_racing_for_the_same_nodes_get_each_once(eb: EtcdBackend) -> None:
    one, two = await eb.open(origin="clc:a:1"), await eb.open(origin="clc:b:1")
    try:
        queued = [await put(one, f"node{i:04d}", S.QUEUED) for i in range(12)]

        async def take(store: Any, owner: str) -> list[Any]:
            return await store.change_many([(r.node_id, claim(r, owner)) for r in queued])

        first, second = await asyncio.gather(take(one, "clc:a:1"), take(two, "clc:b:1"))
        for rec, a, b in zip(queued, first, second, strict=True):
            won = [x for x in (a, b) if not isinstance(x, LostRace)]
            assert len(won) == 1, (rec.node_id, a, b)
            stored = await one.get(rec.node_id)
            assert stored is not None and stored.claim_owner == won[0].claim_owner
        events = [e for e in await one.events(limit=10_000) if e.kind == "registering"]
        assert sorted(e.node_id or "" for e in events) == [r.node_id for r in queued]
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("applied", [True, False])
async def test_a_write_whose_answer_was_lost_happens_once(
    eb: EtcdBackend, monkeypatch: pytest.MonkeyPatch, applied: bool
) -> None:
    store = await eb.open()
    try:
        rec = await put(store, "node0001")
        io = store.database.io  # type: ignore[attr-defined]
        real = io.call
        failed: list[str] = []

        def lossy(path: str, body: Any, *, what: str, write: bool) -> Any:
            if path == "/kv/txn" and write and body["success"] and not failed:
                failed.append(what)
                if applied:
                    real(path, body, what=what, write=write)  # sent and applied: answer lost
                raise EtcdUnavailable("etcd: no member answered (test)", ambiguous=True)
            return real(path, body, what=what, write=write)

        monkeypatch.setattr(io, "call", lossy)
        count = len(await store.events(limit=10_000))
        fresh = await store.change(
            "node0001",
            Change(expect=S.SEEN, to=S.WAITING, reason="w", kind="waiting",
                   generation=rec.generation),
        )  # fmt: skip
        assert failed and fresh.state is S.WAITING
        assert await store.get("node0001") == fresh
        new = (await store.events(limit=10_000))[count:]
        assert [e.kind for e in new] == ["waiting"]  # once, whether or not it got through
    finally:
        await store.close()


async def test_a_burst_larger_than_one_transaction_is_stored_whole(eb: EtcdBackend) -> None:
    store = await eb.open()
    try:
        io = store.database.io  # type: ignore[attr-defined]
        commits: list[int] = []
        real = io.call

        def counting(path: str, body: Any, *, what: str, write: bool) -> Any:
            if path == "/kv/txn" and write:
                commits.append(len(body["success"]))
            return real(path, body, what=what, write=write)

        io.call = counting
        items = [Arrival(ann=ann(f"node{i:04d}", ip=f"198.18.{i // 250}.{i % 250 + 1}"),
                         source=Source.MDNS, instance=f"nc-{i}", observer="o")
                 for i in range(300)]  # fmt: skip
        results = await store.ingest_many(items)
        assert len(results) == 300 and len(await store.nodes()) == 300
        assert len(commits) > 1 and max(commits) <= 120, commits
        assert [e.node_id for e in await store.events(limit=1000) if e.kind == "announced"] == [
            f"node{i:04d}" for i in range(300)
        ]
    finally:
        await store.close()


async def test_registrars_have_a_lease_each_and_claims_end_with_it(
    eb: EtcdBackend, tmp_path: Path
) -> None:
    a = await eb.open(origin="clc:a:1", lock_dir=tmp_path / "a")
    b = await eb.open(origin="clc:b:1", lock_dir=tmp_path / "b")
    again = await eb.open(origin="clc:a:2", lock_dir=tmp_path / "a")
    try:
        await a.lock_registrar("clc:a:1")
        await b.lock_registrar("clc:b:1")
        with pytest.raises(AlreadyRunning, match="one daemon per state directory"):
            await again.lock_registrar("clc:a:2")
        seen = await b.registrars()
        assert sorted(r["owner"] for r in seen) == ["clc:a:1", "clc:b:1"]
        assert len({r["lease"] for r in seen}) == 2
        standing = await a.keep_registrar("clc:a:1")
        assert standing.valid_until is not None and standing.valid_until > time.monotonic() + 5
        rec = await put(a, "node0001", S.QUEUED)
        taken = await a.change("node0001", claim(rec, "clc:a:1"))
        assert taken.claim_owner == "clc:a:1"
        assert await b.reclaimable("clc:b:1") == []  # a's lease holds
        feed = b.watch_claims()
        waiting = asyncio.ensure_future(anext(feed))
        await asyncio.sleep(0.3)  # the watch is set up (it would see the deletion anyway)
        await a.renew_claims("clc:a:1", -1)  # a dies: its lease ends, etcd drops its claims
        await asyncio.wait_for(waiting, 10)
        await feed.aclose()  # type: ignore[attr-defined]
        left = await b.reclaimable("clc:b:1")
        assert [r.node_id for r in left] == ["node0001"] and left[0].claim_expires is None
        assert [r["owner"] for r in await b.registrars()] == ["clc:b:1"]
    finally:
        for store in (a, b, again):
            await store.close()


async def test_no_claim_is_taken_or_continued_under_a_lease_that_may_run_out(
    eb: EtcdBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await eb.open(origin="clc:a:1")
    try:
        db = store.database  # type: ignore[attr-defined]
        one = await put(store, "node0001", S.QUEUED)
        two = await put(store, "node0002", S.QUEUED)
        held = await store.change("node0001", claim(one, "clc:a:1"))
        lease = db.leases["clc:a:1"]

        def unreachable(lease_id: int) -> int:
            raise EtcdUnavailable("etcd: no member answered (test)")

        monkeypatch.setattr(db.io, "keepalive", unreachable)
        lease.valid_until = time.monotonic() + FENCE_MARGIN - 1  # no keep-alive got through
        with pytest.raises(LostRace, match="not claimed"):
            await store.change("node0002", claim(two, "clc:a:1"))
        with pytest.raises(LostRace, match="may run out"):  # a hook would start: refused
            await store.change(
                "node0001",
                Change(expect=S.REGISTERING, to=S.REGISTERING, reason="hook", kind="hook-start",
                       owner="clc:a:1", generation=held.generation,
                       fields={"hook_started": True}),
            )  # fmt: skip
        monkeypatch.undo()
        # etcd's own fence: the lease is gone although this process thinks it holds
        db.io.revoke(lease.lease_id)
        lease.valid_until = time.monotonic() + 60
        with pytest.raises(LostRace):
            await store.change("node0002", claim(two, "clc:a:1"))
        assert (await store.get("node0002")).state is S.QUEUED  # type: ignore[union-attr]
        # leaving the claimed state needs no lease: the outcome is recorded
        done = await store.change(
            "node0001",
            Change(expect=S.REGISTERING, to=S.FAILED, reason="f", kind="k", owner="clc:a:1",
                   fields={"next_attempt": None}),
        )  # fmt: skip
        assert done.state is S.FAILED
    finally:
        await store.close()


async def test_the_feed_reads_again_when_its_revision_was_compacted(
    eb: EtcdBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await eb.open()
    try:
        db = store.database  # type: ignore[attr-defined]
        real = db.io.watch
        lost: list[int] = []
        loop = asyncio.get_running_loop()
        opened = asyncio.Event()

        def compacting(prefix: bytes, start: int, stop: Any) -> Any:
            if not lost:  # the first stream: its start revision "was compacted"
                lost.append(start)
                loop.call_soon_threadsafe(opened.set)
                raise WatchLost("compacted at revision 9", start + 1, compacted=True)
            return real(prefix, start, stop)

        monkeypatch.setattr(db.io, "watch", compacting)
        after = (await store.last_events(1))[0].seq
        feed = store.watch(after=after)
        got: list[str] = []

        async def collect() -> None:
            async for batch in feed:
                got.extend(e.message for e in batch)
                if len(got) >= 3:
                    return

        async with asyncio.timeout(10):
            collector = asyncio.create_task(collect())
            # The events come after the feed's first stream was opened and lost, so it
            # is the reading again that must find them (not a first read that would
            # find them anyway).
            await opened.wait()
            for i in range(3):
                await store.add_event(None, "test", f"e{i}")
            await collector
        await feed.aclose()  # type: ignore[attr-defined]
        assert lost and got[:3] == ["e0", "e1", "e2"] and len(got) == len(set(got))
    finally:
        await store.close()


async def test_layouts_and_read_only_opens(eb: EtcdBackend) -> None:
    with pytest.raises(StateError, match="no autoreg store here yet"):
        await eb.open(readonly=True)
    store = await eb.open()
    try:
        assert await store.schema_version() == 1
        assert await store.setting("trust_default") == "token"
        db = store.database  # type: ignore[attr-defined]
        db.io.call("/kv/put", {"key": b64(db.keys.schema), "value": b64(dump(2))},
                   what="test", write=True)  # fmt: skip
    finally:
        await store.close()
    with pytest.raises(StateError, match="layout 2 is newer"):
        await eb.open()


async def test_migrate_copies_a_populated_sqlite_store_as_it_is(
    eb: EtcdBackend, tmp_path: Path
) -> None:
    sqlite = await SqliteStore.open(tmp_path / "old" / "autoreg.db", origin="clc:old:1")
    try:
        for state in (S.REGISTERED, S.FAILED, S.PENDING, S.WAITING, S.INTERRUPTED):
            await put(sqlite, f"n-{state.value}", state)
        await put(sqlite, "n-manual", S.REGISTERED, source=Source.MANUAL)
        busy = await put(sqlite, "n-busy", S.REGISTERING, fields={"hook_started": True})
        assert busy.hook_started
        for _ in range(3):
            await sqlite.add_event("n-failed", "receipt", "receipt not delivered: timed out")
        await sqlite.set_lockdown("walrus", True, reason="maintenance")
        await sqlite.set_setting("trust_default", "open")
        await sqlite.deny("n-pending", "SHA256:" + "D" * 43, reason="stolen")
        await sqlite.open_window(Window("w1", "nc", time.time(), time.time() + 600, 5))
        await sqlite.allocate_tunnel("n-registered", "ssh-ed25519 AAAA", count=2,
                                     port_range=(20000, 20009))  # fmt: skip
        nodes, events = await sqlite.nodes(), await sqlite.events(limit=10**6)
        tunnels, windows = await sqlite.tunnels(), await sqlite.windows()
        copied = await migrate_to_etcd(sqlite, eb.settings, origin="cli:test:1")
    finally:
        await sqlite.close()
    assert (copied.nodes, copied.events, copied.tunnels) == (len(nodes), len(events), 1)
    etcd = await eb.open(origin="clc:new:1")
    try:

        def comparable(rec: Any) -> Any:
            return rec.to_json() | {"claim_expires": None, "claim_owner": None}

        moved = {r.node_id: comparable(r) for r in await etcd.nodes()}
        assert moved == {r.node_id: comparable(r) for r in nodes}
        after = await etcd.events(limit=10**6)
        assert [(e.seq, e.kind, e.message, e.repeats, e.origin) for e in after[:-1]] == [
            (e.seq, e.kind, e.message, e.repeats, e.origin) for e in events
        ]
        assert after[-1].kind == "schema" and after[-1].seq == events[-1].seq + 1
        assert await etcd.lockdown() == {"walrus": True}
        assert await etcd.setting("trust_default") == "open"
        assert list(await etcd.denied()) == ["SHA256:" + "D" * 43]
        assert await etcd.tunnels() == tunnels and await etcd.windows() == windows
        assert await etcd.count(S.REGISTERED) == 2
        # the node the stopped daemon left registering: recovered by the first registrar
        assert [r.node_id for r in await etcd.reclaimable("clc:new:1")] == ["n-busy"]
        with pytest.raises(StateError, match="already holds an autoreg store"):
            again = await SqliteStore.open(tmp_path / "old" / "autoreg.db", origin="x")
            try:
                await migrate_to_etcd(again, eb.settings, origin="cli:test:2")
            finally:
                await again.close()
    finally:
        await etcd.close()


async def test_the_store_refuses_to_migrate_while_its_daemon_runs(
    eb: EtcdBackend, tmp_path: Path
) -> None:
    running = await SqliteStore.open(tmp_path / "autoreg.db", origin="clc:x:1")
    other = await SqliteStore.open(tmp_path / "autoreg.db", origin="cli:y:1")
    try:
        await running.lock_registrar("clc:x:1")
        with pytest.raises(AlreadyRunning):
            await migrate_to_etcd(other, eb.settings, origin="cli:y:1")
        with pytest.raises(StateError, match="no autoreg store here yet"):
            await EtcdStore.open(eb.settings, readonly=True)
    finally:
        await running.close()
        await other.close()
