"""One bounded pool for all SSH work, fair when the network is flooded.

Every piece of SSH work (a registration, a receipt delivered again, a check of
the address a registered node moved to) is a :class:`Job` with a priority.  It
goes through two stages:

1. **dial**: a TCP connect to the node (``_dial``), many at once (``probes``).
   A node that does not answer within ``connect_timeout`` is reported
   unreachable from here and never takes an SSH slot, so thousands of
   announcements of black-holed addresses cannot hold back one node that
   answers.
2. **work**: one of the ``slots`` SSH slots (``[controller] max_parallel``),
   with the dialled socket.

Order, in both stages (lowest first): fresh registrations; registrations
retried for nodes that answered before; receipts and move checks; retries of
nodes that never answered, the more failed attempts the later.  Slots go first
come first served within a tier.  Dials alternate between the oldest and the
newest job of the tier: the oldest so that every job gets its turn, the newest
so that a node booting during a flood of announcements that never answer is
dialled at once, not after the whole flood timed out.  One job per node at a
time: submitting a node that is already queued or working does nothing.

Cancellation: :meth:`SSHPool.cancel` drops a queued job (its socket is closed);
a job already working runs to its end.  :meth:`SSHPool.drain` stops dialling,
closes every socket held, waits ``grace`` seconds for working jobs and cancels
the rest, retrieving every task's outcome (no "exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from ._dial import Dialed

__all__ = ["HELD_SOCKETS_PER_SLOT", "Job", "SSHPool", "Tier"]

log = logging.getLogger(__name__)

#: Connected sockets kept open, per SSH slot, for jobs waiting for a slot; more
#: answered jobs wait without one (their SSH step connects again).
HELD_SOCKETS_PER_SLOT: Final = 4
#: Seconds a dialled socket may wait for a slot before it is closed (sshd drops
#: connections that do not authenticate within LoginGraceTime, 120 s by default).
HOLD_MAX_AGE: Final = 30.0


class Tier(enum.IntEnum):
    """Who goes first (lowest first)."""

    FRESH = 0  # a registration never attempted
    RETRY = 1  # a registration retried; the node answered before
    UPKEEP = 2  # a receipt delivered again, a move checked
    SILENT = 3  # a retry of a node that has never answered


@dataclasses.dataclass(eq=False, slots=True)
class Job:
    node_id: str
    kind: str  # register | receipt | move
    tier: Tier
    attempts: int = 0
    seq: int = 0
    dialed: Dialed | None = None
    cancelled: bool = False

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.tier, self.attempts if self.tier is Tier.SILENT else 0, self.seq)


DialFn = Callable[[Job], Awaitable[Dialed]]
WorkFn = Callable[[Job], Awaitable[None]]
SilentFn = Callable[[Job, str], Awaitable[None]]


class SSHPool:
    """Jobs in priority order through dialling, then through the SSH slots."""

    def __init__(
        self,
        *,
        slots: int,
        probes: int,
        dial: DialFn,
        work: WorkFn,
        silent: SilentFn,
    ) -> None:
        self.slots = slots
        self.probes = probes
        self._dial_fn = dial
        self._work_fn = work
        self._silent_fn = silent
        self._jobs: dict[str, Job] = {}
        # Waiting to be dialled: per tier, in order of submission (SILENT: by attempts).
        self._to_dial: dict[Tier, collections.deque[Job]] = {
            t: collections.deque() for t in Tier if t is not Tier.SILENT
        }
        self._silent: list[tuple[tuple[int, int, int], Job]] = []
        self._newest_next = False
        self._ready: list[tuple[tuple[int, int, int], Job]] = []
        self._dialing: dict[str, asyncio.Task[None]] = {}
        self._working: dict[str, asyncio.Task[None]] = {}
        self._held = 0
        self._stale = 0  # cancelled jobs still in a heap
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._closed = False
        #: Nodes that answered a dial in this daemon's life (their retries go first).
        self.answered: set[str] = set()

    # -- what the reconciler asks ---------------------------------------------------------

    def submit(self, node_id: str, kind: str, tier: Tier, *, attempts: int = 0) -> bool:
        """Queue a job for ``node_id`` unless it already has one; True when queued."""
        if self._closed or node_id in self._jobs:
            return False
        if tier is Tier.RETRY and node_id not in self.answered:
            tier = Tier.SILENT
        job = Job(node_id, kind, tier, attempts, next(self._seq))
        self._jobs[node_id] = job
        if tier is Tier.SILENT:
            heapq.heappush(self._silent, (job.key, job))
        else:
            self._to_dial[tier].append(job)
        self._wake.set()
        return True

    def cancel(self, node_id: str) -> None:
        """Drop ``node_id``'s queued job (a working one runs to its end)."""
        job = self._jobs.get(node_id)
        if job is None or node_id in self._working:
            return
        job.cancelled = True
        del self._jobs[node_id]
        self._stale += 1
        if self._stale > 64 and self._stale > len(self._jobs):
            for tier, queue in self._to_dial.items():
                self._to_dial[tier] = collections.deque(j for j in queue if not j.cancelled)
            self._silent = [e for e in self._silent if not e[1].cancelled]
            self._ready = [e for e in self._ready if not e[1].cancelled]
            heapq.heapify(self._silent)
            heapq.heapify(self._ready)
            self._stale = 0
        task = self._dialing.pop(node_id, None)
        if task is not None:
            task.cancel()
        self._release(job)
        self.answered.discard(node_id)

    def busy(self, node_id: str) -> bool:
        """Queued, dialling or working."""
        return node_id in self._jobs

    def working(self, node_id: str) -> bool:
        return node_id in self._working

    def working_ids(self) -> set[str]:
        return set(self._working)

    @property
    def in_flight(self) -> int:
        return len(self._working)

    def stats(self) -> dict[str, int]:
        return {
            "queued": len(self._jobs) - len(self._dialing) - len(self._working),
            "dialing": len(self._dialing),
            "working": len(self._working),
            "slots": self.slots,
            "probes": self.probes,
            "held_sockets": self._held,
        }

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()

    def _dispatch(self) -> None:
        while len(self._dialing) < self.probes:
            job = self._next_to_dial()
            if job is None:
                break
            if not job.cancelled:
                self._dialing[job.node_id] = asyncio.ensure_future(self._dial(job))
        while self._ready and len(self._working) < self.slots:
            _, job = heapq.heappop(self._ready)
            if job.cancelled:
                continue
            self._release(job, keep=True)
            self._working[job.node_id] = asyncio.ensure_future(self._work(job))

    def _next_to_dial(self) -> Job | None:
        for queue in self._to_dial.values():  # tiers in order
            if queue:
                self._newest_next = not self._newest_next
                return queue.pop() if self._newest_next else queue.popleft()
        if self._silent:
            return heapq.heappop(self._silent)[1]
        return None

    async def _dial(self, job: Job) -> None:
        try:
            dialed = await self._dial_fn(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in dialling: report it as the node's problem
            log.exception("dialling %s crashed", job.node_id)
            dialed = Dialed(error=f"internal error: {exc!r}", reachable=False)
        finally:
            self._dialing.pop(job.node_id, None)
            self._wake.set()
        if job.cancelled:
            dialed.close()
            return
        if not dialed.reachable:
            del self._jobs[job.node_id]
            try:
                await self._silent_fn(job, dialed.error or "no path answers")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording that %s did not answer crashed", job.node_id)
            return
        if dialed.sock is not None:
            self.answered.add(job.node_id)
            if self._held >= self.slots * HELD_SOCKETS_PER_SLOT:
                dialed.close()  # answered: it connects again when its slot comes
            else:
                self._held += 1
        job.dialed = dialed
        heapq.heappush(self._ready, (job.key, job))

    async def _work(self, job: Job) -> None:
        try:
            if job.dialed is not None and job.dialed.at + HOLD_MAX_AGE < time.monotonic():
                job.dialed.close()  # waited too long: sshd may have dropped it
            await self._work_fn(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SSH work (%s) on %s crashed", job.kind, job.node_id)
        finally:
            if job.dialed is not None:
                job.dialed.close()
            self._working.pop(job.node_id, None)
            if self._jobs.get(job.node_id) is job:
                del self._jobs[job.node_id]
            self._wake.set()

    def _release(self, job: Job, *, keep: bool = False) -> None:
        """The job leaves the waiting room: its socket no longer counts as held."""
        if job.dialed is not None and job.dialed.sock is not None:
            self._held -= 1
            if not keep:
                job.dialed.close()

    # -- stopping -----------------------------------------------------------------------------

    async def drain(self, grace: float, interrupt: Callable[[], Any] | None = None) -> None:
        """Stop taking work, close held sockets, give working jobs ``grace`` seconds."""
        self._closed = True
        for task in self._dialing.values():
            task.cancel()
        await _settle(list(self._dialing.values()))
        for _, job in self._ready:
            job.cancelled = True
            self._release(job)
        self._ready.clear()
        for queue in self._to_dial.values():
            queue.clear()
        self._silent.clear()
        self._jobs = {k: j for k, j in self._jobs.items() if k in self._working}
        working = list(self._working.values())
        if interrupt is not None:
            interrupt()
        if working:
            _, pending = await asyncio.wait(working, timeout=grace)
            for task in pending:
                task.cancel()
            await _settle(list(pending))


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for ``tasks`` and retrieve their outcome, whatever it is."""
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
