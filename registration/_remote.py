"""Running commands on registered nodes over each node's own path (``ssh``, ``exec``).

For every node the path is (re)chosen and verified exactly as for a
registration (direct, tunnel, proxy; the host key must match) and its
ssh_config is refreshed.  ``autoreg ssh`` then hands the terminal to the real
OpenSSH client, which checks the host key against the known_hosts just written.
``exec`` runs the command over the verified connection itself: one SSH handshake
per node, and one per proxy node, shared by every node behind it.  It fans out
over at most ``parallel`` nodes at a time and streams every output line,
prefixed with the node's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shlex
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import paramiko

from ._config import Config
from ._exceptions import AutoregError, CommandTimeout, SSHError
from ._threads import ThreadLimiter
from .controller import AccessFiles, ProxyPool, Reach, load_private_key
from .controller._ssh import VerifiedSession
from .state import NodeRecord, NodeState, StateStore

__all__ = [
    "ExecProgress",
    "ExecResult",
    "NodeRunner",
    "command_runner",
    "matches",
    "prepare_access",
    "run_on_nodes",
    "select_nodes",
    "ssh_argv",
]

#: Runs the command on one node: its result (an unreachable node is a result too).
NodeRunner = Callable[[NodeRecord], Awaitable["ExecResult"]]

#: Seconds a remote command may run in ``autoreg exec`` unless told otherwise.
DEFAULT_EXEC_TIMEOUT: Final = 600.0
#: A line of output longer than this (bytes, no newline yet) is shown in pieces.
LINE_LIMIT: Final = 65536
#: ExecResult.error of a command that ended without an exit status.
NO_EXIT_STATUS: Final = "no exit status: the command was killed by a signal or the connection broke"


@dataclasses.dataclass(frozen=True, slots=True)
class ExecResult:
    node_id: str
    name: str
    path: str
    returncode: int | None
    duration: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.error


@dataclasses.dataclass(frozen=True, slots=True)
class ExecProgress:
    """How far ``exec`` is: nodes done (exit 0), failed, running (connecting or running)."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0

    @property
    def waiting(self) -> int:
        return self.total - self.done - self.failed - self.running


async def select_nodes(
    store: StateStore, *, role: str | None, cluster: str | None, refs: Sequence[str] = ()
) -> list[NodeRecord]:
    """Registered nodes, by reference or by role/cluster filters."""
    if refs:
        return [await store.find(ref) for ref in refs]
    return [n for n in await store.nodes() if matches(n, role=role, cluster=cluster)]


def matches(rec: NodeRecord, *, role: str | None, cluster: str | None) -> bool:
    """A registered node of ``role`` and ``cluster`` (None: any)."""
    return (
        rec.state is NodeState.REGISTERED
        and (role is None or rec.role == role)
        and (cluster is None or rec.cluster == cluster)
    )


async def prepare_access(
    config: Config,
    store: StateStore,
    rec: NodeRecord,
    *,
    key: paramiko.PKey | None = None,
    io: ThreadLimiter | None = None,
) -> tuple[AccessFiles, str]:
    """Choose and verify the node's path now; write its ssh_config; record the path."""
    own = io is None
    io = io or ThreadLimiter("autoreg-ssh", 1)
    try:
        login = key if key is not None else await io.run(load_private_key, config.controller_key)
        tunnel = await store.tunnel(rec.node_id)
        reach = Reach(config)
        session = await io.run(reach.connect, rec, login, tunnel.ports if tunnel else ())
        try:
            files = await io.run(reach.write_access_files, rec, session)
            path = session.via.describe()
        finally:
            session.close()
    finally:
        if own:
            await io.aclose()
    await store.note_path(rec.node_id, path)
    return files, path


def ssh_argv(files: AccessFiles, command: Sequence[str], *, tty: bool = False) -> list[str]:
    argv = ["ssh", "-F", str(files.ssh_config)]
    if tty:
        argv.append("-t")
    argv.append("node")
    if command:
        argv += ["--", shlex.join(command)]
    return argv


async def run_on_nodes(
    config: Config,
    store: StateStore,
    nodes: Sequence[NodeRecord],
    command: Sequence[str],
    *,
    parallel: int,
    timeout: float,
    emit: Callable[[str, str, str], None],
    progress: Callable[[ExecProgress], None] | None = None,
) -> list[ExecResult]:
    """Run ``command`` on every node, at most ``parallel`` at once.

    ``emit(name, stream, line)`` gets each line of output ("out" or "err") and
    ``progress`` the counts whenever a node starts or ends; both are called on
    the event loop.  A node that cannot be reached, or whose host key does not
    match, is an :class:`ExecResult` with its error; nothing is run there.
    """
    width = max(1, parallel)
    slots = asyncio.Semaphore(width)
    state = ExecProgress(total=len(nodes))

    def report(**change: int) -> None:
        nonlocal state
        state = dataclasses.replace(state, **{k: getattr(state, k) + v for k, v in change.items()})
        if progress is not None:
            progress(state)

    async with command_runner(
        config, store, command, parallel=width, timeout=timeout, emit=emit
    ) as run:

        async def one(rec: NodeRecord) -> ExecResult:
            async with slots:
                report(running=1)
                result = await run(rec)
                report(running=-1, **({"done": 1} if result.ok else {"failed": 1}))
                return result

        report()
        return list(await asyncio.gather(*(one(n) for n in nodes)))


@contextlib.asynccontextmanager
async def command_runner(
    config: Config,
    store: StateStore,
    command: Sequence[str],
    *,
    parallel: int,
    timeout: float,
    emit: Callable[[str, str, str], None],
    late_tunnels: bool = False,
) -> AsyncIterator[NodeRunner]:
    """What runs ``command`` on one node at a time, sharing key, tunnels, proxies, threads.

    At most ``parallel`` nodes connect or run at once (the caller starts no more).
    Leaving the block by an exception (cancelled: Ctrl-C) ends every command still
    running at once; leaving it closes the proxy connections.  The tunnels are read
    once at the start; with ``late_tunnels`` (nodes that register later, ``exec
    --follow``) a node without one then is looked up again when its turn comes.
    """
    if not command:
        raise AutoregError("no command given (autoreg exec … -- COMMAND)")
    threads = ThreadLimiter("autoreg-exec", max(1, parallel))
    fan = _FanOut(config, store, shlex.join(command), timeout, threads, emit)
    fan.late_tunnels = late_tunnels
    try:
        await fan.start()
        yield fan.run
    except BaseException:
        fan.sessions.interrupt()  # cancelled: every command still running ends now
        raise
    finally:
        await fan.aclose()


class _FanOut:
    """What every node's run shares: the key, the tunnels, the proxy pool, the threads."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        command: str,
        timeout: float,
        threads: ThreadLimiter,
        emit: Callable[[str, str, str], None],
    ) -> None:
        self._config = config
        self._store = store
        self._command = command
        self._timeout = timeout
        self._threads = threads
        self._emit = emit
        self._reach = Reach(config)
        self._key: paramiko.PKey | None = None
        self._pool: ProxyPool | None = None
        self._tunnels: dict[str, tuple[int, ...]] = {}
        self.late_tunnels = False
        self.sessions = _Sessions()

    async def start(self) -> None:
        self._key = await self._threads.run(load_private_key, self._config.controller_key)
        self._pool = ProxyPool(self._key)
        self._tunnels = {t.node_id: t.ports for t in await self._store.tunnels()}

    async def aclose(self) -> None:
        try:
            if self._pool is not None:
                await self._threads.run(self._pool.close)
        finally:
            await self._threads.aclose()
            self.sessions.close()

    async def run(self, rec: NodeRecord) -> ExecResult:
        started = time.monotonic()

        def result(path: str, code: int | None, error: str = "") -> ExecResult:
            took = time.monotonic() - started
            return ExecResult(rec.node_id, rec.display_name, path, code, took, error=error)

        if self.late_tunnels and rec.node_id not in self._tunnels:
            tunnel = await self._store.tunnel(rec.node_id)
            self._tunnels[rec.node_id] = tunnel.ports if tunnel else ()
        try:
            session = await self._threads.run(self._connect, rec)
        except SSHError as exc:
            return result(rec.path or "-", None, str(exc))
        path = session.via.describe()
        if path != rec.path:
            await self._store.note_path(rec.node_id, path)
        lines = _Lines(rec.display_name, self._emit, asyncio.get_running_loop())
        try:
            code = await self._threads.run(self._execute, session, lines)
        except CommandTimeout:
            return result(path, None, f"timed out after {self._timeout:g}s")
        except SSHError as exc:
            return result(path, None, str(exc))
        return result(path, code, "" if code is not None else NO_EXIT_STATUS)

    def _connect(self, rec: NodeRecord) -> VerifiedSession:
        """Blocking: choose and verify the path, log in, refresh the node's access files."""
        assert self._key is not None
        ports = self._tunnels.get(rec.node_id, ())
        session = self._reach.connect(rec, self._key, ports, proxies=self._pool)
        try:
            self.sessions.add(session)
            self._reach.write_access_files(rec, session)
        except BaseException:
            self.sessions.discard(session)
            raise
        return session

    def _execute(self, session: VerifiedSession, lines: _Lines) -> int | None:
        """Blocking: run the command on the verified connection, then close it."""
        try:
            return session.run_command(self._command, timeout=self._timeout, output=lines.feed)
        finally:
            lines.flush()
            self.sessions.discard(session)


class _Sessions:
    """The node connections open now; closed at once when ``exec`` is interrupted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[VerifiedSession] = set()
        self._interrupted = False

    def add(self, session: VerifiedSession) -> None:
        with self._lock:
            if not self._interrupted:
                self._open.add(session)
                return
        session.close()
        host, port = session.target.host, session.target.port
        raise SSHError("interrupted", host=host, port=port)

    def discard(self, session: VerifiedSession) -> None:
        with self._lock:
            self._open.discard(session)
        session.close()

    def interrupt(self) -> None:
        """Close every open connection: the command on it ends, its thread returns."""
        with self._lock:
            self._interrupted = True
            sessions = list(self._open)
        for session in sessions:
            session.close()

    def close(self) -> None:
        self.interrupt()


class _Lines:
    """A command's output, cut into lines and handed to ``emit`` on the event loop."""

    def __init__(
        self, name: str, emit: Callable[[str, str, str], None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._name = name
        self._emit = emit
        self._loop = loop
        self._pending: dict[str, bytes] = {"out": b"", "err": b""}

    def feed(self, stream: str, data: bytes) -> None:
        """Called from the worker thread with what arrived on ``stream``."""
        buffered = self._pending[stream] + data
        *complete, rest = buffered.split(b"\n")
        for line in complete:
            self._send(stream, line)
        while len(rest) > LINE_LIMIT:
            self._send(stream, rest[:LINE_LIMIT])
            rest = rest[LINE_LIMIT:]
        self._pending[stream] = rest

    def flush(self) -> None:
        """The last line of each stream, when the output did not end with a newline."""
        for stream, rest in self._pending.items():
            if rest:
                self._send(stream, rest)
        self._pending = {"out": b"", "err": b""}

    def _send(self, stream: str, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._loop.call_soon_threadsafe(self._emit, self._name, stream, text)
