"""Running commands on registered nodes over each node's own path (``ssh``, ``exec``).

For every node the path is (re)chosen and verified exactly as for a
registration (direct, tunnel, proxy; the host key must match), its ssh_config
is refreshed, and then the real OpenSSH client runs the command.  ``exec``
fans out over many nodes with at most ``parallel`` connections at a time,
streaming every output line prefixed with the node's name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Final

import paramiko

from ._config import Config
from ._exceptions import AutoregError, SSHError
from ._threads import ThreadLimiter
from .controller import AccessFiles, Reach, load_private_key
from .state import NodeRecord, NodeState, StateStore

__all__ = ["ExecResult", "prepare_access", "run_on_nodes", "select_nodes", "ssh_argv"]

#: Seconds a remote command may run in ``autoreg exec`` unless told otherwise.
DEFAULT_EXEC_TIMEOUT: Final = 600.0


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


async def select_nodes(
    store: StateStore, *, role: str | None, cluster: str | None, refs: Sequence[str] = ()
) -> list[NodeRecord]:
    """Registered nodes, by reference or by role/cluster filters."""
    if refs:
        return [await store.find(ref) for ref in refs]
    return [
        n
        for n in await store.nodes()
        if n.state is NodeState.REGISTERED
        and (role is None or n.role == role)
        and (cluster is None or n.cluster == cluster)
    ]


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
) -> list[ExecResult]:
    """Run ``command`` on every node, at most ``parallel`` at once; ``emit(name, stream, line)``."""
    if not command:
        raise AutoregError("no command given (autoreg exec … -- COMMAND)")
    threads = ThreadLimiter("autoreg-exec", max(1, parallel))
    slots = asyncio.Semaphore(max(1, parallel))

    async def one(rec: NodeRecord, key: paramiko.PKey) -> ExecResult:
        async with slots:
            started = time.monotonic()
            try:
                files, path = await prepare_access(config, store, rec, key=key, io=threads)
            except SSHError as exc:
                return ExecResult(
                    rec.node_id,
                    rec.display_name,
                    rec.path or "-",
                    None,
                    time.monotonic() - started,
                    error=str(exc),
                )
            proc = await asyncio.create_subprocess_exec(
                *ssh_argv(files, command),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
            assert proc.stdout is not None and proc.stderr is not None
            pumps = [
                asyncio.ensure_future(_pump(proc.stdout, rec.display_name, "out", emit)),
                asyncio.ensure_future(_pump(proc.stderr, rec.display_name, "err", emit)),
            ]
            try:
                code: int | None = await asyncio.wait_for(proc.wait(), timeout)
                error = ""
            except TimeoutError:
                proc.kill()
                code, error = await proc.wait(), f"timed out after {timeout:g}s"
            await asyncio.gather(*pumps)
            return ExecResult(
                rec.node_id, rec.display_name, path, code, time.monotonic() - started, error=error
            )

    try:
        key = await threads.run(load_private_key, config.controller_key)  # once, not per node
        return list(await asyncio.gather(*(one(n, key) for n in nodes)))
    finally:
        await threads.aclose()


async def _pump(
    stream: asyncio.StreamReader, name: str, which: str, emit: Callable[[str, str, str], None]
) -> None:
    while line := await stream.readline():
        emit(name, which, line.decode("utf-8", "replace").rstrip("\n"))
