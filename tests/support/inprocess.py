"""Seams for building the daemon in-process: a fake clock, an in-memory transport,
scripted registrations.  Only where no real part fits (the integration tests run
the real daemon, on a real network, against real sshd); see tests/controller/test_daemon.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from registration.controller._dial import Dialed
from registration.protocol import Announcement, encode_node, instance_name
from registration.state import Change, NodeRecord, NodeState
from registration.transport import BrowseListener, Published, ResolvedService

__all__ = ["FakeClock", "MemoryNetwork", "MemoryTransport", "ScriptedRegistrations"]


class _Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Wall time that moves only when told; timers fire as it passes them."""

    def __init__(self, start: float | None = None) -> None:
        # Near the real time: tokens and windows made by the admin's commands carry it.
        self.now = float(int(time.time())) if start is None else start
        self._heap: list[tuple[float, int, _Timer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer()
        heapq.heappush(self._heap, (self.now + max(0.0, delay), next(self._seq), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while self._heap and self._heap[0][0] <= self.now:
            _, _, timer, callback = heapq.heappop(self._heap)
            if not timer.cancelled:
                callback()

    @property
    def pending(self) -> list[float]:
        return sorted(when for when, _, timer, _ in self._heap if not timer.cancelled)


@dataclasses.dataclass(slots=True)
class _MemoryPublished(Published):
    service_type: str = ""
    port: int = 0
    txt: dict[str, str] = dataclasses.field(default_factory=dict)


class MemoryNetwork:
    """One broadcast domain: what is published reaches every browser of its type."""

    def __init__(self) -> None:
        self.browsers: list[tuple[str, BrowseListener]] = []
        self.published: dict[str, _MemoryPublished] = {}

    def deliver(self, published: _MemoryPublished) -> None:
        service = ResolvedService(
            name=published.name,
            port=published.port,
            properties={k.encode(): v.encode() for k, v in published.txt.items()},
        )
        for service_type, listener in self.browsers:
            if service_type == published.service_type:
                listener.service_resolved(service)

    def goodbye(self, name: str, service_type: str) -> None:
        for browsed, listener in self.browsers:
            if browsed == service_type:
                listener.service_removed(name)

    def announce(self, ann: Announcement, service_type: str = "_autoreg._tcp.local.") -> str:
        """A node's announcement, as `autoreg announce` would publish it."""
        published = _MemoryPublished(
            name=f"{instance_name(ann.role, ann.node_id)}.{service_type}",
            service_type=service_type,
            port=ann.port,
            txt=encode_node(ann),
        )
        self.published[published.name] = published
        self.deliver(published)
        return published.name

    def raw(self, name: str, port: int, txt: Mapping[bytes, bytes | None]) -> None:
        """Anything at all, as a hostile publisher could send it."""
        for service_type, listener in self.browsers:
            if name.endswith(service_type):
                listener.service_resolved(ResolvedService(name=name, port=port, properties=txt))


class MemoryTransport:
    """The Transport protocol over a :class:`MemoryNetwork` (no sockets)."""

    name = "memory"

    def __init__(self, network: MemoryNetwork, *, fail_start: Exception | None = None) -> None:
        self.network = network
        self.fail_start = fail_start
        self.started = False
        self.closed = False
        self.reannounced = 0

    async def start(self) -> None:
        if self.fail_start is not None:
            raise self.fail_start
        self.started = True

    async def close(self) -> None:
        self.closed = True
        self.network.browsers = [(t, b) for t, b in self.network.browsers if b is not self]

    async def publish(
        self,
        service_type: str,
        instance: str,
        *,
        host: str,
        ip: str,
        port: int,
        txt: Mapping[str, str],
        probe: bool,
    ) -> Published:
        published = _MemoryPublished(
            name=f"{instance}.{service_type}", service_type=service_type, port=port, txt=dict(txt)
        )
        self.network.published[published.name] = published
        self.network.deliver(published)
        return published

    async def update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None:
        assert isinstance(published, _MemoryPublished)
        published.port, published.txt = port, dict(txt)
        self.network.deliver(published)

    async def withdraw(self, published: Published) -> None:
        assert isinstance(published, _MemoryPublished)
        self.network.published.pop(published.name, None)
        self.network.goodbye(published.name, published.service_type)

    async def reannounce(self, published: Published) -> bool:
        assert isinstance(published, _MemoryPublished)
        self.reannounced += 1
        self.network.deliver(published)
        return True

    async def maintain(self, published: Published) -> bool:
        return False

    async def browse(self, service_type: str, listener: BrowseListener) -> None:
        self.network.browsers.append((service_type, listener))
        for published in list(self.network.published.values()):
            if published.service_type == service_type:
                self.network.deliver(published)


Outcome = str  # "registered", "unreachable", "failed", "rejected", or "block"


class ScriptedRegistrations:
    """Registrations whose outcome a test decides, recorded exactly as the real ones are
    (one compare-and-set change from ``registering`` under the daemon's claim)."""

    def __init__(self, script: Mapping[str, list[Outcome]] | None = None) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.calls: list[str] = []
        self.receipts: list[str] = []
        self.results: list[NodeRecord | None] = []
        self.release = asyncio.Event()  # "block" waits for it
        self.blocked = asyncio.Event()
        self.interrupted = False
        self.closed = False
        self.change: Callable[[NodeRecord, Change], Any] | None = None
        self.owner = ""
        self.clock: Any = None
        self.retry_delay = 5.0
        self.move_verdicts: list[bool | None] = []  # verify_move answers, in order
        self.moves_checked: list[tuple[str, tuple[str, int, str | None] | None]] = []
        self.dials: list[str] = []
        self.silent_delay = 0.0  # seconds a silent node's dial takes (the clock's)

    def bind(self, change: Callable[[NodeRecord, Change], Any], owner: str, clock: Any) -> None:
        self.change, self.owner, self.clock = change, owner, clock

    def _step(self, rec: NodeRecord, to: NodeState, reason: str, **fields: Any) -> Any:
        assert self.change is not None
        return self.change(
            rec,
            Change(
                expect=NodeState.REGISTERING,
                to=to,
                reason=reason,
                kind=to.value,
                generation=rec.generation,
                owner=self.owner,
                fields=fields,
            ),
        )

    async def dial(self, rec: NodeRecord, *, address: tuple[str, int] | None = None) -> Dialed:
        """Outcome ``silent``: the node's address does not answer (after ``silent_delay``
        seconds of the clock); anything else answers at once."""
        outcomes = self.script.get(rec.node_id) or []
        if outcomes and outcomes[0] == "silent":
            if len(outcomes) > 1:
                outcomes.pop(0)
            self.dials.append(rec.node_id)
            if self.silent_delay:
                done = asyncio.get_running_loop().create_future()
                self.clock.call_later(
                    self.silent_delay, lambda: done.done() or done.set_result(None)
                )
                await done
            return Dialed(error="direct: no answer (scripted)", reachable=False)
        self.dials.append(rec.node_id)
        return Dialed()

    async def register(self, rec: NodeRecord, dialed: Dialed | None = None) -> NodeRecord | None:
        self.calls.append(rec.node_id)
        outcomes = self.script.get(rec.node_id) or ["registered"]
        outcome = outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]
        attempt = rec.attempts + 1
        if outcome == "block":
            started = await self._step(
                rec, NodeState.REGISTERING, "running hook (scripted)", hook_started=True
            )
            if started is None:
                return None
            rec = started
            self.blocked.set()
            await self.release.wait()
            if self.interrupted:
                result = await self._step(rec, NodeState.INTERRUPTED, "interrupted (scripted)")
                self.results.append(result)
                return result  # type: ignore[no-any-return]
            outcome = "registered"
        if outcome == "registered":
            result = await self._step(
                rec,
                NodeState.REGISTERED,
                "hook succeeded (scripted)",
                attempts=attempt,
                registered_at=self.clock.time(),
                next_attempt=None,
            )
        elif outcome in ("unreachable", "failed"):
            result = await self._step(
                rec,
                NodeState(outcome),
                f"attempt {attempt} failed (scripted)",
                attempts=attempt,
                next_attempt=self.clock.time() + self.retry_delay,
            )
        else:
            result = await self._step(rec, NodeState.REJECTED, "rejected (scripted)")
        self.results.append(result)
        return result  # type: ignore[no-any-return]

    async def redeliver_receipt(self, rec: NodeRecord, dialed: Dialed | None = None) -> str | None:
        self.receipts.append(rec.node_id)
        return None

    async def verify_move(self, rec: NodeRecord, dialed: Dialed | None = None) -> bool | None:
        self.moves_checked.append((rec.node_id, rec.moved))
        return self.move_verdicts.pop(0) if self.move_verdicts else True

    def interrupt(self) -> None:
        self.interrupted = True
        self.release.set()

    def close(self) -> None:
        self.closed = True
