"""A daemon built in-process for tests: real store, in-memory transport, fake clock,
scripted registrations (see :mod:`support.inprocess`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registration import load_config
from registration._config import Config
from registration.controller import Daemon
from registration.protocol import Announcement
from registration.state import NodeRecord, NodeState

from .inprocess import FakeClock, MemoryNetwork, MemoryTransport, ScriptedRegistrations
from .records import fp_for

__all__ = ["Harness", "announcement", "make_config", "until"]


def make_config(
    tmp_path: Path, role: str = "clc", cluster: str | None = None, *, trust: str = "open",
    extra: str = "",
) -> Config:  # fmt: skip
    conf = tmp_path / "autoreg.conf"
    lines = [
        "[autoreg]",
        f"state_dir = {tmp_path / 'state'}",
        f"keys_dir = {tmp_path / 'keys'}",
        "[node]",
        f"id = {role}-registrar",
        "address = 198.18.0.1",
        "name = registrar",
        f"receipt_path = {tmp_path / 'receipt.json'}",
        "poll_interval = 0.05",
        "[controller]",
        f"role = {role}",
        "max_attempts = 3",
        # most tests are about the core loop: tests/controller/test_trust.py sets this
        f"trust = {trust}",
    ]
    if cluster:
        lines.insert(lines.index("[controller]"), f"role = {role}\ncluster = {cluster}")
    conf.write_text("\n".join(lines) + "\n" + extra)
    return load_config(conf, env={})


def announcement(node_id: str, role: str, cluster: str | None = None, **kw: Any) -> Announcement:
    return Announcement(
        node_id=node_id,
        role=role,
        cluster=cluster,
        ip=kw.pop("ip", "198.18.0.9"),
        port=22,
        fingerprint=kw.pop("fingerprint", fp_for(node_id)),
        **kw,
    )


class Harness:
    def __init__(
        self, tmp_path: Path, role: str = "clc", cluster: str | None = None, **config: Any
    ) -> None:
        self.config = make_config(tmp_path, role, cluster, **config)
        self.network = MemoryNetwork()
        self.clock = FakeClock()
        self.script = ScriptedRegistrations()
        self.transport = MemoryTransport(self.network)
        self.daemon = Daemon(
            self.config,
            transport=self.transport,
            clock=self.clock,
            registrations=self._bind,
        )
        self.task: asyncio.Task[int] | None = None

    def _bind(self, change: Any, owner: str, clock: Any) -> ScriptedRegistrations:
        self.script.bind(change, owner, clock)
        return self.script

    async def __aenter__(self) -> Harness:
        self.task = asyncio.ensure_future(self.daemon.run())
        started = asyncio.ensure_future(self.daemon.started.wait())
        done, _ = await asyncio.wait({started, self.task}, timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if self.task in done:
            self.task.result()  # a failed start: raise what it raised
        assert started in done, "the daemon did not start within 10 s"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> int:
        assert self.task is not None
        self.daemon.stop()
        return await asyncio.wait_for(self.task, 20)

    def node(self, node_id: str) -> NodeRecord | None:
        return self.daemon.reconciler.index.get(node_id)

    async def state(self, node_id: str, *states: NodeState, timeout: float = 5) -> NodeRecord:
        await until(
            lambda: (rec := self.node(node_id)) is not None and rec.state in states,
            lambda: f"{node_id} in {[s.value for s in states]}: {self.node(node_id)}",
            timeout,
        )
        rec = self.node(node_id)
        assert rec is not None
        return rec

    async def settle(self) -> None:
        """Let every task that can run, run (the loop goes idle)."""
        for _ in range(50):
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        for _ in range(50):
            await asyncio.sleep(0)


async def until(
    predicate: Callable[[], object], what: str | Callable[[], str], timeout: float = 5
) -> None:
    """Wait (bounded) for a condition the daemon's own tasks bring about."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.01)
