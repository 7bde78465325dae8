"""The SSH pool: dial before a slot, priority order, bounded sockets, a clean drain."""

from __future__ import annotations

import asyncio
import socket

from registration.controller._dial import Dialed
from registration.controller._pool import HELD_SOCKETS_PER_SLOT, Job, SSHPool, Tier
from support.harness import until


class Script:
    """Dials and work whose timing the test controls."""

    def __init__(self) -> None:
        self.answer: dict[str, asyncio.Event] = {}  # set: the dial returns
        self.silent: set[str] = set()  # these never answer
        self.worked: list[str] = []
        self.working = asyncio.Event()
        self.release = asyncio.Event()
        self.block = False
        self.unreachable: list[tuple[str, str]] = []
        self.sockets: list[socket.socket] = []

    async def dial(self, job: Job) -> Dialed:
        if job.node_id in self.silent:
            await asyncio.Event().wait()  # a black hole: only cancellation ends it
        event = self.answer.get(job.node_id)
        if event is not None:
            await event.wait()
        if job.node_id.startswith("gone"):
            return Dialed(error="direct: no route to host", reachable=False)
        ours, theirs = socket.socketpair()
        self.sockets += [ours, theirs]
        return Dialed(sock=ours)

    async def work(self, job: Job) -> None:
        self.worked.append(job.node_id)
        self.working.set()
        if self.block:
            await self.release.wait()

    async def silent_fn(self, job: Job, error: str) -> None:
        self.unreachable.append((job.node_id, error))


def pool_for(script: Script, *, slots: int = 1, probes: int = 100) -> SSHPool:
    return SSHPool(
        slots=slots, probes=probes, dial=script.dial, work=script.work, silent=script.silent_fn
    )


async def run(pool: SSHPool) -> asyncio.Task[None]:
    return asyncio.ensure_future(pool.run())


async def test_a_node_that_answers_is_not_held_back_by_silent_ones() -> None:
    script = Script()
    pool = pool_for(script, slots=2)
    task = await run(pool)
    try:
        for i in range(200):
            script.silent.add(f"silent{i:03d}")
            pool.submit(f"silent{i:03d}", "register", Tier.FRESH)
        pool.submit("genuine", "register", Tier.FRESH)
        await until(lambda: script.worked == ["genuine"], "the genuine node's work")
        # the rest wait for a dial, not for a slot: the newest went before the flood
        assert pool.stats()["dialing"] == 100
    finally:
        await pool.drain(1.0)
        task.cancel()


async def test_fresh_work_goes_first_and_never_answered_retries_last() -> None:
    script = Script()
    script.block = True
    pool = pool_for(script, slots=1)
    task = await run(pool)
    try:
        pool.submit("first", "register", Tier.FRESH)
        await until(lambda: script.worked == ["first"], "the first job to hold the slot")
        pool.answered.add("answered")  # it answered in an earlier attempt
        pool.submit("silent-retry-5", "register", Tier.RETRY, attempts=5)
        pool.submit("silent-retry-1", "register", Tier.RETRY, attempts=1)
        pool.submit("receipt", "receipt", Tier.UPKEEP)
        pool.submit("answered", "register", Tier.RETRY, attempts=3)
        pool.submit("fresh", "register", Tier.FRESH)
        await until(lambda: pool.stats()["queued"] == 5, "five jobs dialled and waiting")
        script.block = False
        script.release.set()
        await until(lambda: len(script.worked) == 6, "all the work")
        assert script.worked == [
            "first", "fresh", "answered", "receipt", "silent-retry-1", "silent-retry-5",
        ]  # fmt: skip
    finally:
        await pool.drain(1.0)
        task.cancel()


async def test_no_path_is_reported_without_a_slot_and_submitting_twice_queues_once() -> None:
    script = Script()
    pool = pool_for(script)
    task = await run(pool)
    try:
        assert pool.submit("gone1", "register", Tier.FRESH)
        assert not pool.submit("gone1", "register", Tier.FRESH)
        await until(lambda: script.unreachable, "the unreachable report")
        assert script.unreachable == [("gone1", "direct: no route to host")]
        assert script.worked == [] and not pool.busy("gone1")
    finally:
        await pool.drain(1.0)
        task.cancel()


async def test_held_sockets_are_bounded_and_closed_on_cancel_and_drain() -> None:
    script = Script()
    script.block = True
    pool = pool_for(script, slots=1)
    task = await run(pool)
    try:
        pool.submit("busy", "register", Tier.FRESH)
        await until(lambda: script.worked == ["busy"], "the slot taken")
        for i in range(3 * HELD_SOCKETS_PER_SLOT):
            pool.submit(f"wait{i:02d}", "register", Tier.FRESH)
        await until(lambda: len(script.sockets) == 2 * (1 + 3 * HELD_SOCKETS_PER_SLOT),
                    "every dial done")  # fmt: skip
        assert pool.stats()["held_sockets"] == HELD_SOCKETS_PER_SLOT  # the rest: closed
        pool.cancel("wait00")
        assert pool.stats()["held_sockets"] == HELD_SOCKETS_PER_SLOT - 1
    finally:
        await pool.drain(0.05)  # the blocked job is cancelled after the grace
        task.cancel()
    assert pool.stats()["held_sockets"] == 0
    ours = script.sockets[::2]
    assert all(s.fileno() == -1 for s in ours), "a dialled socket was left open"


async def test_drain_cancels_dials_and_work_and_retrieves_every_outcome() -> None:
    script = Script()
    script.block = True
    script.silent.add("silent")
    pool = pool_for(script)
    task = await run(pool)
    loop = asyncio.get_running_loop()
    unretrieved: list[object] = []
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        pool.submit("silent", "register", Tier.FRESH)
        pool.submit("busy", "register", Tier.FRESH)
        await until(lambda: script.worked == ["busy"], "the work to start")
        await asyncio.wait_for(pool.drain(0.05), 5)
        assert pool.stats() | {"slots": 0, "probes": 0} == {
            "queued": 0, "dialing": 0, "working": 0, "slots": 0, "probes": 0, "held_sockets": 0,
        }  # fmt: skip
        assert not pool.submit("late", "register", Tier.FRESH)
    finally:
        task.cancel()
        loop.set_exception_handler(None)
    assert unretrieved == []
