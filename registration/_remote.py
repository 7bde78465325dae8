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
from .controller._reach import AccessFiles, Reach
from .controller._ssh import load_private_key
from .state import NodeRecord, NodeState, Store

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


def select_nodes(
    store: Store, *, role: str | None, cluster: str | None, refs: Sequence[str] = ()
) -> list[NodeRecord]:
    """Registered nodes, by reference or by role/cluster filters."""
    if refs:
        return [store.find(ref) for ref in refs]
    return [
        n
        for n in store.nodes()
        if n.state is NodeState.REGISTERED
        and (role is None or n.role == role)
        and (cluster is None or n.cluster == cluster)
    ]


def prepare_access(
    config: Config, store: Store, rec: NodeRecord, key: paramiko.PKey | None = None
) -> AccessFiles:
    """Choose and verify the node's path now; write its ssh_config; record the path."""
    key = key or load_private_key(config.controller_key)
    tunnel = store.tunnel(rec.node_id)
    reach = Reach(config)
    session = reach.connect(rec, key, tunnel.ports if tunnel else ())
    try:
        files = reach.write_access_files(rec, session)
        path = session.via.describe()
    finally:
        session.close()
    if path != rec.path:
        store.update(
            rec.node_id,
            {"path": path},
            kind="path",
            message=f"{rec.role} {rec.display_name} ({rec.node_id}): reached via {path}"
            + (f" (was {rec.path})" if rec.path else ""),
        )
    return files


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
    store: Store,
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
    key = load_private_key(config.controller_key)  # once, not once per node
    slots = asyncio.Semaphore(max(1, parallel))

    async def one(rec: NodeRecord) -> ExecResult:
        async with slots:
            started = time.monotonic()
            try:
                files = await threads.run(prepare_access, config, store, rec, key)
            except SSHError as exc:
                return ExecResult(
                    rec.node_id,
                    rec.display_name,
                    rec.path or "-",
                    None,
                    time.monotonic() - started,
                    error=str(exc),
                )
            fresh = await threads.run(store.get, rec.node_id)
            path = (fresh.path if fresh else None) or "-"
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
        return list(await asyncio.gather(*(one(n) for n in nodes)))
    finally:
        threads.shutdown()


async def _pump(
    stream: asyncio.StreamReader, name: str, which: str, emit: Callable[[str, str, str], None]
) -> None:
    while line := await stream.readline():
        emit(name, which, line.decode("utf-8", "replace").rstrip("\n"))
