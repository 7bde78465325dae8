"""``autoreg exec --follow``: the command on every matching node, those that register later too.

The command starts on the matching nodes registered now (at most ``parallel`` at
a time, as plain ``exec``); meanwhile the store is read again every
:data:`POLL_INTERVAL` seconds and every matching node that has registered since
joins the queue.  Each node runs the command at most once.

When to stop is :class:`~registration._converge.Convergence`'s business, every
node a target: a node whose command waits or runs is open, one whose command
ended (well or badly) is settled.  ``exec --follow`` returns once no command
waits or runs and nothing has changed (no new node, no command ended) for
``quiet`` seconds, never while a command still runs, and only after reading the
store once more then; each command is bounded by ``exec``'s ``--timeout``.  All
settled is not enough by itself: more nodes may still come, which is what the
quiet period waits for.

Time comes from a :class:`FollowClock` (the monotonic clock; a fake one in tests),
and the commands from a :data:`~registration._remote.NodeRunner`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from ._clock import wait_event
from ._config import Config
from ._converge import Convergence, Outcome
from ._remote import ExecProgress, ExecResult, NodeRunner, command_runner, matches
from .state import NodeRecord, StateStore

__all__ = [
    "DEFAULT_CONVERGED_TIMEOUT",
    "POLL_INTERVAL",
    "FollowClock",
    "FollowResult",
    "MonotonicClock",
    "follow",
    "follow_nodes",
]

#: Seconds ``exec --follow`` waits, once nothing runs, for anything to change.
DEFAULT_CONVERGED_TIMEOUT: Final = 30.0
#: Seconds between two readings of the store for newly registered nodes.
POLL_INTERVAL: Final = 0.5


class FollowClock(Protocol):
    def now(self) -> float:
        """Seconds on a clock that never jumps."""
        ...

    async def wait(self, wake: asyncio.Event, timeout: float) -> None:
        """Return once ``wake`` is set or ``timeout`` seconds have passed."""
        ...


class MonotonicClock:
    """The real one: ``time.monotonic()`` and the event loop's timeout."""

    def now(self) -> float:
        return time.monotonic()

    async def wait(self, wake: asyncio.Event, timeout: float) -> None:
        await wait_event(wake, timeout)


class NodeSource(Protocol):
    async def nodes(self) -> list[NodeRecord]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class FollowResult:
    """Each node's result, in the order the nodes were found, and when it was over."""

    results: Sequence[ExecResult]
    converged_after: float
    quiet: float


async def follow_nodes(
    config: Config,
    store: StateStore,
    command: Sequence[str],
    *,
    role: str | None,
    cluster: str | None,
    parallel: int,
    timeout: float,
    quiet: float,
    emit: Callable[[str, str, str], None],
    progress: Callable[[ExecProgress], None] | None = None,
) -> FollowResult:
    """``exec --follow``: ``command`` on every registered node of ``role`` and ``cluster``."""
    async with command_runner(
        config, store, command, parallel=parallel, timeout=timeout, emit=emit, late_tunnels=True
    ) as run:
        return await follow(
            store,
            lambda rec: matches(rec, role=role, cluster=cluster),
            run,
            parallel=parallel,
            quiet=quiet,
            progress=progress,
        )


async def follow(
    source: NodeSource,
    select: Callable[[NodeRecord], bool],
    run: NodeRunner,
    *,
    parallel: int,
    quiet: float,
    progress: Callable[[ExecProgress], None] | None = None,
    clock: FollowClock | None = None,
    poll: float = POLL_INTERVAL,
) -> FollowResult:
    """Run every node ``select`` takes from ``source``, now and later, until converged.

    ``progress`` gets the counts whenever a node is found, starts or ends (the
    total grows as nodes are found).  If cancelled, the commands running are
    cancelled too.
    """
    clock = clock or MonotonicClock()
    fan = _Follow(select, run, max(1, parallel), Convergence(quiet, clock.now()), progress)
    started = next_poll = clock.now()
    try:
        fan.report()
        while True:
            now = clock.now()
            changed = False
            over = not fan.running and fan.tracker.quiet_for(now) >= quiet
            if now >= next_poll or over:  # the last word is a fresh reading of the store
                changed = fan.found(await source.nodes(), now)
                next_poll = now + poll
            changed = fan.harvest(now) or changed
            changed = fan.launch(now) or changed
            if changed:
                fan.report()
            if not fan.running and fan.tracker.quiet_for(now) >= quiet:
                break
            # No await since the harvest: a command that ends from here on sets ``wake``.
            fan.wake.clear()
            delay = next_poll - now
            if not fan.running:
                delay = min(delay, quiet - fan.tracker.quiet_for(now))
            await clock.wait(fan.wake, max(0.0, delay))
    finally:
        await fan.cancel()
    return FollowResult(fan.ended(), clock.now() - started, quiet)


class _Follow:
    """The nodes found so far: waiting for a slot, running, or ended (their result)."""

    def __init__(
        self,
        select: Callable[[NodeRecord], bool],
        run: NodeRunner,
        width: int,
        tracker: Convergence[str],
        progress: Callable[[ExecProgress], None] | None,
    ) -> None:
        self._select = select
        self._run = run
        self._width = width
        self.tracker = tracker
        self._progress = progress
        self._results: dict[str, ExecResult | None] = {}  # every node found, in that order
        self._waiting: collections.deque[NodeRecord] = collections.deque()
        self.running: dict[asyncio.Future[ExecResult], str] = {}
        self.wake = asyncio.Event()  # set whenever a command ends

    def found(self, nodes: Sequence[NodeRecord], now: float) -> bool:
        """Queue the selected nodes not seen before; whether there was any."""
        new = [n for n in nodes if n.node_id not in self._results and self._select(n)]
        for rec in new:
            self._results[rec.node_id] = None
            self._waiting.append(rec)
            self.tracker.add(rec.node_id, now)
        return bool(new)

    def harvest(self, now: float) -> bool:
        """Record the commands that have ended; whether any had."""
        changed = False
        for future in [f for f in self.running if f.done()]:
            node_id = self.running.pop(future)
            result = self._results[node_id] = future.result()
            state = "ok" if result.ok else "failed"
            outcome = Outcome(state, settled=True, ok=result.ok, detail=result.error)
            changed = self.tracker.observe(node_id, outcome, now) or changed
        return changed

    def launch(self, now: float) -> bool:
        """Start waiting nodes while there are free slots; whether any started."""
        changed = False
        while self._waiting and len(self.running) < self._width:
            rec = self._waiting.popleft()
            future = asyncio.ensure_future(self._run(rec))
            future.add_done_callback(lambda _: self.wake.set())
            self.running[future] = rec.node_id
            changed = self.tracker.observe(rec.node_id, Outcome("running"), now) or changed
        return changed

    def report(self) -> None:
        if self._progress is not None:
            ended = [r for r in self._results.values() if r is not None]
            ok = sum(r.ok for r in ended)
            self._progress(ExecProgress(len(self._results), ok, len(ended) - ok, len(self.running)))

    def ended(self) -> list[ExecResult]:
        """Every node's result, in the order the nodes were found (none may still be open)."""
        ended = [r for r in self._results.values() if r is not None]
        assert len(ended) == len(self._results), "a node is still waiting or running"
        return ended

    async def cancel(self) -> None:
        """Cancel the commands still running (only when interrupted) and wait for them."""
        for future in self.running:
            future.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)
