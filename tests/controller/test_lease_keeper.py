"""The lease keeper of a registrar on a shared store: fenced before its lease can run out,
restored once keep-alives get through, a new lease when the old one is gone.

A scripted store (real time, a 7 s lease: fenced 1 s after the last keep-alive that
got through); the netns tests run the same against real etcd and real daemons.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from registration.controller._lease import LeaseKeeper, recovery_change
from registration.state import (
    FENCE_MARGIN,
    EtcdUnavailable,
    LeaseLost,
    NodeRecord,
    NodeState,
    Source,
    Standing,
)
from support.records import ann

TTL = FENCE_MARGIN + 1.0


class ScriptedStore:
    def __init__(self) -> None:
        self.answer: str = "ok"  # ok | unavailable | lost
        self.locks = 0
        self.lease = 1

    async def keep_registrar(self, owner: str) -> Standing:
        sent = time.monotonic()
        await asyncio.sleep(0.01)
        if self.answer == "unavailable":
            raise EtcdUnavailable("etcd: no member answered (test)")
        if self.answer == "lost":
            raise LeaseLost(f"etcd lease {self.lease:x} expired")
        return Standing(owner, f"{self.lease:x}", TTL, sent + TTL)

    async def lock_registrar(self, owner: str) -> None:
        self.locks += 1
        self.lease += 1
        self.answer = "ok"

    async def watch_claims(self) -> Any:
        await asyncio.Event().wait()
        yield None


async def until(predicate: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_fenced_before_the_lease_can_run_out_and_restored_after() -> None:
    store = ScriptedStore()
    calls: list[tuple[str, float]] = []

    async def fence(reason: str) -> None:
        calls.append(("fence", time.monotonic()))

    async def restore() -> None:
        calls.append(("restore", time.monotonic()))

    async def take_over() -> None:
        calls.append(("take_over", time.monotonic()))

    keeper = LeaseKeeper(store, "clc:a:1", ttl=TTL, fence=fence, restore=restore,  # type: ignore[arg-type]
                         take_over=take_over)  # fmt: skip
    task = asyncio.ensure_future(keeper.run())
    try:
        await until(lambda: keeper.lease == "1")
        good_until = keeper.valid_until
        store.answer = "unavailable"
        await until(lambda: calls and calls[-1][0] == "fence")
        fenced_at = calls[-1][1]
        assert fenced_at <= good_until - FENCE_MARGIN + 0.2  # before the lease could end
        assert keeper.fenced and "etcd does not answer" in keeper.fenced
        assert keeper.status()["fenced"] == keeper.fenced
        store.answer = "ok"
        await until(lambda: calls[-1][0] == "restore")
        assert keeper.fenced is None
        store.answer = "lost"  # the lease expired meanwhile: a new one
        await until(lambda: store.locks == 1 and calls[-1][0] == "restore")
        assert [c for c, _ in calls] == ["fence", "restore", "fence", "restore"]
        assert keeper.lease == "2"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_recovery_is_the_policy_of_a_restart() -> None:
    rec = NodeRecord.new(ann("node0001"), source=Source.MDNS, reason="r", now=1.0)
    started = rec.__class__(**{**rec.to_json(), "state": NodeState.REGISTERING,
                               "source": Source.MDNS, "hook_started": True})  # fmt: skip
    held = recovery_change(started, owner="clc:b:1", resume=False, why="registrar x lost its lease")
    assert (held.to, held.kind) == (NodeState.INTERRUPTED, "interrupted")
    assert "AUTOREG_RESUMED=1" in held.reason and held.owner == "clc:b:1"
    resumed = recovery_change(started, owner="clc:b:1", resume=True, why="w")
    assert (resumed.to, resumed.fields) == (NodeState.SEEN, {"resumed": True})
    fresh = recovery_change(rec, owner="clc:b:1", resume=True, why="w")
    assert (fresh.to, fresh.kind) == (NodeState.SEEN, "recovered")
