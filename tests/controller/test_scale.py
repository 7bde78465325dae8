"""Bursts and floods through the whole daemon, in process (the netns swarm tests and
bench/swarm.py do the same on real sockets, sshd and python-zeroconf)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from registration.protocol import Announcement
from registration.state import NodeRecord
from registration.state import NodeState as S
from support.harness import Harness, announcement, until


async def test_a_node_that_answers_is_registered_during_a_flood_of_silent_ones(
    tmp_path: Path,
) -> None:
    async with Harness(tmp_path, extra="max_parallel = 2\nmax_probes = 64\n") as h:
        h.script.silent_delay = 10.0  # connect_timeout, on the fake clock: never passes here
        for i in range(300):
            node_id = f"bogus{i:04d}"
            h.script.script[node_id] = ["silent"]
            ip = f"198.18.{i // 200 + 1}.{i % 200 + 2}"
            h.network.announce(announcement(node_id, "cc", f"c{i:04d}", ip=ip))
        # announced last, behind the whole flood
        h.network.announce(announcement("walrus01", "walrus", ip="198.18.9.9"))
        rec = await h.state("walrus01", S.REGISTERED)
        assert rec.attempts == 1
        assert h.script.calls == ["walrus01"]  # not one SSH slot went to a silent node
        queued = [r for r in h.daemon.reconciler.index if r.state is S.QUEUED]
        assert len(queued) == 300  # visibly waiting, none "registering"

        # their dials time out, 64 at a time (max_probes): unreachable, with backoff
        def bogus() -> list[NodeRecord]:
            return [r for r in h.daemon.reconciler.index if r.node_id.startswith("bogus")]

        for _ in range(30):  # rounds of connect_timeout, until each was tried once
            if all(r.attempts >= 1 for r in bogus()):
                break
            h.clock.advance(10)
            await until(lambda: h.daemon.reconciler.pool.stats()["dialing"] > 0
                        or all(r.attempts >= 1 for r in bogus()), "the next round")  # fmt: skip
            await h.settle()
        tried = bogus()
        assert all(r.attempts >= 1 for r in tried), [r for r in tried if not r.attempts][:3]
        assert h.script.calls == ["walrus01"]  # and still, not one took an SSH slot


async def test_a_node_waiting_for_a_slot_is_queued_not_registering(tmp_path: Path) -> None:
    async with Harness(tmp_path, extra="max_parallel = 1\n") as h:
        h.script.script["walrus01"] = ["block"]
        h.network.announce(announcement("walrus01", "walrus"))
        await until(h.script.blocked.is_set, "the first registration to hold the slot")
        h.network.announce(announcement("cc000001", "cc", "foo", ip="198.18.0.10"))
        rec = await h.state("cc000001", S.QUEUED)
        assert rec.claim_owner is None and "waits for an SSH slot" in rec.reason
        h.script.release.set()
        await h.state("walrus01", S.REGISTERED)
        await h.state("cc000001", S.REGISTERED)


async def test_a_burst_is_stored_in_few_transactions(tmp_path: Path) -> None:
    async with Harness(tmp_path) as h:
        store = h.daemon.store
        batches: list[int] = []
        real = store.ingest_many

        async def counting(items: Any) -> Any:
            batches.append(len(items))
            return await real(items)

        store.ingest_many = counting  # type: ignore[method-assign]
        for i in range(600):
            ip = f"198.18.{i // 200 + 1}.{i % 200 + 2}"
            h.network.announce(announcement(f"cc{i:06d}", "cc", f"c{i:04d}", ip=ip))
        await until(lambda: len(h.daemon.reconciler.index) == 600, "600 nodes stored")
        assert sum(batches) == 600
        assert len(batches) <= 3  # BATCH_MAX = 500: two, or three when a batch was small


async def test_stopping_mid_burst_leaves_no_task_behind(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    unretrieved: list[object] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        h = Harness(tmp_path, extra="max_parallel = 2\n")
        async with h:
            h.script.silent_delay = 30.0
            for i in range(200):
                node_id = f"cc{i:06d}"
                if i % 2:
                    h.script.script[node_id] = ["silent"]
                ip = f"198.18.{i // 200 + 1}.{i % 200 + 2}"
                h.network.announce(announcement(node_id, "cc", f"c{i:04d}", ip=ip))
            await until(lambda: h.daemon.reconciler.pool.stats()["dialing"] > 0, "dials under way")
        assert h.task is not None and h.task.result() == 0
        before = set(asyncio.all_tasks())
        await asyncio.sleep(0.05)
        left = [t for t in asyncio.all_tasks() - before if not t.done()]
        assert left == []
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


def cc(i: int, **kw: Any) -> Announcement:
    return announcement(f"cc{i:06d}", "cc", f"c{i:04d}", ip=f"198.18.{i // 200 + 1}.{i % 200 + 2}",
                        **kw)  # fmt: skip


async def test_the_node_table_is_bounded(tmp_path: Path) -> None:
    async with Harness(tmp_path, extra="max_nodes = 5\n") as h:
        for i in range(12):
            h.network.announce(cc(i))
        await until(lambda: len(h.daemon.reconciler.index) == 5, "five nodes")
        await h.settle()
        assert sorted(r.node_id for r in h.daemon.reconciler.index) == [
            f"cc{i:06d}" for i in range(5)
        ]
        events = [e for e in await h.daemon.store.events() if e.kind == "intake-full"]
        assert events and "because the node table is full" in events[0].message
        assert "raise max_nodes" in events[0].message
