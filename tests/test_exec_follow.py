"""``autoreg exec --follow``'s loop (registration/_follow.follow), in virtual time.

Nodes turn up in a fake store at given times and each command takes a given
time; the clock jumps straight to the next thing due (the next poll, a command
ending, the end of the quiet period), so each test runs in no time and always
the same way.  What is checked: nodes registered later are run too, each node
once; it returns only once nothing runs and nothing changed for the quiet
period; --parallel holds; Ctrl-C cancels what runs.  The same loop over fake
SSH servers: tests/test_remote_exec.py; on real sshd: tests/integration/test_exec_fanout.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import Awaitable, Callable

import pytest

from registration._follow import FollowResult, follow
from registration._remote import ExecProgress, ExecResult, matches
from registration.state import NodeRecord, NodeState, Source
from support.records import ann

pytestmark = pytest.mark.timeout(30)

#: Where the virtual clock starts (any value: only differences count).
T0 = 1000.0


class VirtualTime:
    """A clock that jumps to the next thing due instead of waiting for it."""

    def __init__(self) -> None:
        self.t = T0
        self._due: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def after(self, seconds: float) -> asyncio.Future[None]:
        """A future that is resolved once the clock reaches now + ``seconds``."""
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._due, (self.t + seconds, next(self._seq), future))
        return future

    async def wait(self, wake: asyncio.Event, timeout: float) -> None:
        assert self.t < T0 + 10_000, "the loop never converged"
        if wake.is_set():
            return
        deadline = self.t + timeout
        if self._due and self._due[0][0] <= deadline:
            self.t = self._due[0][0]
            while self._due and self._due[0][0] <= self.t:
                heapq.heappop(self._due)[2].set_result(None)
            await wake.wait()  # the command due now ends, and says so
        else:
            self.t = deadline
            await asyncio.sleep(0)  # a turn for the rest (a test that cancels)


def node(name: str, state: NodeState = NodeState.REGISTERED, role: str = "nc") -> NodeRecord:
    """Node ``node-NAME`` named NAME (the tests speak of names)."""
    announced = ann(f"node-{name}", role=role, name=name)
    rec = NodeRecord.new(announced, source=Source.MANUAL, reason="", now=0.0)
    return dataclasses.replace(rec, state=state)


class Store:
    """What the store lists at each moment: (from when, record), the latest first wins."""

    def __init__(self, clock: VirtualTime, timeline: list[tuple[float, NodeRecord]]) -> None:
        self._clock = clock
        self._timeline = timeline
        self.reads: list[float] = []

    async def nodes(self) -> list[NodeRecord]:
        now = self._clock.now() - T0
        self.reads.append(now)
        current: dict[str, NodeRecord] = {}
        for at, rec in sorted(self._timeline, key=lambda item: item[0]):
            if at <= now:
                current[rec.node_id] = rec
        return list(current.values())


class Commands:
    """Each node's command: how long it takes and its exit status."""

    def __init__(
        self, clock: VirtualTime, took: dict[str, float], status: dict[str, int] | None = None
    ) -> None:
        self._clock = clock
        self._took = took
        self._status = status or {}
        self.started: list[tuple[str, float]] = []
        self.cancelled: list[str] = []

    def __call__(self, rec: NodeRecord) -> Awaitable[ExecResult]:
        name = rec.display_name
        took = self._took[name]
        self.started.append((name, self._clock.now() - T0))
        # due from now on (not from when the task first runs): the timing is exact
        due = self._clock.after(took) if took >= 0 else asyncio.get_running_loop().create_future()
        code = self._status.get(name, 0)

        async def command() -> ExecResult:
            try:
                await due
            except asyncio.CancelledError:
                self.cancelled.append(name)
                raise
            return ExecResult(rec.node_id, name, "direct", code, took)

        return command()


def registered_nc(rec: NodeRecord) -> bool:
    return matches(rec, role="nc", cluster=None)


async def run_follow(
    clock: VirtualTime,
    store: Store,
    commands: Callable[[NodeRecord], Awaitable[ExecResult]],
    *,
    quiet: float = 3.0,
    parallel: int = 8,
    progress: Callable[[ExecProgress], None] | None = None,
) -> FollowResult:
    return await follow(
        store, registered_nc, commands, parallel=parallel, quiet=quiet,
        progress=progress, clock=clock, poll=0.5,
    )  # fmt: skip


async def test_nodes_that_register_meanwhile_run_too_and_it_ends_after_the_quiet_period() -> None:
    clock = VirtualTime()
    store = Store(
        clock,
        [
            (0, node("a")),
            (0, node("b")),
            (0, node("other", role="walrus")),  # another role: never
            (0, node("c", NodeState.QUEUED)),  # not registered yet ...
            (2.5, node("c")),  # ... now it is (b still runs)
            (4, node("d")),  # a, b, c ended 1 s ago: within the quiet period
            (20, node("late")),  # long after it converged
        ],
    )
    commands = Commands(clock, {"a": 1, "b": 3, "c": 1, "d": 2}, status={"c": 5})
    followed = await run_follow(clock, store, commands)
    assert commands.started == [("a", 0), ("b", 0), ("c", 2.5), ("d", 4)]  # each once
    assert [(r.name, r.ok) for r in followed.results] == [
        ("a", True), ("b", True), ("c", False), ("d", True),
    ]  # fmt: skip
    # d ended at 6; nothing changed for 3 s after that
    assert followed.converged_after == 9
    assert followed.quiet == 3
    assert max(store.reads) <= 9  # and the store was read meanwhile, every 0.5 s
    assert store.reads[:4] == [0, 0.5, 1, 1.5]


async def test_it_never_returns_while_a_command_still_runs() -> None:
    clock = VirtualTime()
    store = Store(clock, [(0, node("slow")), (0, node("quick"))])
    commands = Commands(clock, {"slow": 20, "quick": 0.5})
    followed = await run_follow(clock, store, commands, quiet=3)
    # quiet from 0.5 on, but slow runs until 20: then 3 more seconds
    assert followed.converged_after == 23
    assert [r.name for r in followed.results] == ["slow", "quick"]


async def test_it_reads_the_store_once_more_before_it_returns() -> None:
    clock = VirtualTime()
    store = Store(clock, [(0, node("a")), (1.1, node("b"))])
    commands = Commands(clock, {"a": 1, "b": 1})
    # quiet from 1 to 1.2, shorter than the 0.5 s between two readings: read again at 1.2
    followed = await run_follow(clock, store, commands, quiet=0.2)
    assert commands.started == [("a", 0), ("b", pytest.approx(1.2))]
    assert followed.converged_after == pytest.approx(2.4)


async def test_with_no_node_it_waits_the_quiet_period_for_one() -> None:
    clock = VirtualTime()
    store = Store(clock, [(2, node("a"))])
    commands = Commands(clock, {"a": 1})
    followed = await run_follow(clock, store, commands, quiet=5)
    assert commands.started == [("a", 2)]
    assert followed.converged_after == 8

    clock = VirtualTime()
    followed = await run_follow(clock, Store(clock, []), commands, quiet=5)
    assert followed.results == [] and followed.converged_after == 5


async def test_parallel_holds_and_the_progress_counts_nodes_as_they_come() -> None:
    clock = VirtualTime()
    store = Store(clock, [(0, node("a")), (0, node("b")), (1.5, node("c"))])
    commands = Commands(clock, {"a": 1, "b": 1, "c": 1}, status={"b": 1})
    progress: list[ExecProgress] = []
    followed = await run_follow(
        clock, store, commands, parallel=1, quiet=2, progress=progress.append
    )
    assert commands.started == [("a", 0), ("b", 1), ("c", 2)]  # one at a time
    assert followed.converged_after == 5
    assert progress[0] == ExecProgress(total=0)
    assert ExecProgress(total=2, running=1) in progress
    assert ExecProgress(total=3, done=1, failed=0, running=1) in progress  # c found, b runs
    assert progress[-1] == ExecProgress(total=3, done=2, failed=1, running=0)
    assert max(p.running for p in progress) == 1


async def test_cancelled_it_cancels_the_commands_running() -> None:
    clock = VirtualTime()
    store = Store(clock, [(0, node("a")), (1, node("b"))])
    commands = Commands(clock, {"a": -1, "b": -1})  # never end by themselves
    task = asyncio.ensure_future(run_follow(clock, store, commands))
    while len(commands.started) < 2:  # b turns up after a second of virtual time
        await asyncio.sleep(0)
    task.cancel()  # what Ctrl-C does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(commands.cancelled) == ["a", "b"]
