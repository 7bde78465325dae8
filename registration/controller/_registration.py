"""One registration: verify over SSH, run the hook, leave the receipt.

The decision to register was already taken and committed (state
``registering``, with this registrar's claim); this module carries it out.
Every outcome is one compare-and-set state change through the daemon's
``change`` callback: from ``registering``, on the same row, under the same
claim.  When the node changed meanwhile (the admin forgot it while its hook
ran) the change is refused, nothing is re-created, and an event says what
became of the hook's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import paramiko

from .._clock import Clock
from .._config import Config, ControllerConfig
from .._exceptions import FingerprintMismatch, HookError, NodeUnreachable, SSHError
from .._threads import ThreadLimiter
from ..state import Change, NodeRecord, NodeState, StateStore
from ._dial import Dialed, dial
from ._hooks import EXIT_DECLINED, HookResult, find_hook, run_hook
from ._reach import AccessFiles, Reach, short_error
from ._ssh import DIRECT, VerifiedSession, open_verified

__all__ = ["ChangeFn", "Registration", "Registrations", "receipt_path_for", "retry_change"]

#: Jitter applied to retry delays (±fraction), so retries of many nodes spread out.
RETRY_JITTER: Final = 0.1

#: Applies one state change (compare-and-set); None when the node changed meanwhile.
ChangeFn = Callable[[NodeRecord, Change], Awaitable[NodeRecord | None]]


class Registrations(Protocol):
    """What the daemon needs from whoever carries out registrations (a seam for tests).

    ``dial`` comes first, for every piece of work (``_pool``); what it found is
    handed to the work itself (a connected socket, or why the direct path failed).
    """

    async def dial(self, rec: NodeRecord, *, address: tuple[str, int] | None = None) -> Dialed:
        """Does ``rec`` (or ``address``: where it says it moved) answer a TCP connect?"""
        ...

    async def register(
        self, rec: NodeRecord, dialed: Dialed | None = None
    ) -> NodeRecord | None: ...

    async def redeliver_receipt(
        self, rec: NodeRecord, dialed: Dialed | None = None
    ) -> str | None: ...

    async def verify_move(self, rec: NodeRecord, dialed: Dialed | None = None) -> bool | None:
        """Does the address ``rec`` moved to present its registered key?  None: no answer."""
        ...

    def interrupt(self) -> None: ...

    def close(self) -> None: ...


def retry_change(
    ctl: ControllerConfig,
    rec: NodeRecord,
    *,
    expect: NodeState,
    to: NodeState,
    error: str,
    attempt: int,
    kind: str,
    now: float,
    owner: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> Change:
    """Attempt ``attempt`` failed: ``to`` (unreachable, failed) with the next try due
    after an exponential, jittered backoff, or given up after ``max_attempts``."""
    if attempt >= ctl.max_attempts:
        reason = (
            f"gave up after {attempt} attempts: {error}; `autoreg retry {rec.node_id}` to try again"
        )
        next_attempt = None
    else:
        delay = min(ctl.retry_max, ctl.retry_initial * 2 ** (attempt - 1))
        delay *= 1 + random.uniform(-RETRY_JITTER, RETRY_JITTER)  # noqa: S311 - not crypto
        reason = f"attempt {attempt}/{ctl.max_attempts} failed: {error}; retrying in {delay:.0f}s"
        next_attempt = now + delay
    return Change(
        expect=expect,
        to=to,
        reason=reason,
        kind=kind,
        generation=rec.generation,
        owner=owner,
        fields={"attempts": attempt, "next_attempt": next_attempt},
        data=data or {},
    )


def receipt_path_for(config: Config, rec: NodeRecord) -> str:
    """Where the receipt goes on the node (``{id}``, ``{role}``, ``{cluster}`` expanded)."""
    return config.controller.node_receipt_path.format(
        id=rec.node_id, role=rec.role, cluster=rec.cluster or ""
    )


class Registration:
    """Carries out registrations for one daemon (SSH in ``io``, state through ``change``)."""

    def __init__(
        self,
        config: Config,
        store: StateStore,
        io: ThreadLimiter,
        key: Callable[[], paramiko.PKey],
        change: ChangeFn,
        *,
        owner: str,
        clock: Clock,
    ) -> None:
        self._config = config
        self._store = store
        self._io = io
        self._key = key
        self._change = change
        self._owner = owner
        self._clock = clock
        self._stopping = asyncio.Event()
        self._mux: Path | None = None

    def _mux_dir(self) -> Path:
        # Short and private: Unix socket paths are limited to 108 bytes.
        if self._mux is None:
            self._mux = Path(tempfile.mkdtemp(prefix="autoreg-mux-"))
        return self._mux

    def interrupt(self) -> None:
        """The daemon is stopping: terminate running hooks (they are recorded interrupted)."""
        self._stopping.set()

    def close(self) -> None:
        """Remove the connection-sharing directory (masters exit by themselves)."""
        if self._mux is not None:
            shutil.rmtree(self._mux, ignore_errors=True)
            self._mux = None

    def _step(
        self,
        rec: NodeRecord,
        to: NodeState,
        reason: str,
        kind: str,
        *,
        data: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> Awaitable[NodeRecord | None]:
        """One state change of ``rec`` from ``registering``, under this registrar's claim."""
        return self._change(
            rec,
            Change(
                expect=NodeState.REGISTERING,
                to=to,
                reason=reason,
                kind=kind,
                generation=rec.generation,
                owner=self._owner,
                fields=fields,
                data=data or {},
            ),
        )

    async def dial(self, rec: NodeRecord, *, address: tuple[str, int] | None = None) -> Dialed:
        """TCP to the node's direct address when that is the path tried first."""
        timeout = self._config.controller.connect_timeout
        others = False
        if address is None:
            tunnel = await self._store.tunnel(rec.node_id)
            paths = self._reach().candidates(rec, tunnel.ports if tunnel is not None else ())
            if paths[0] is not DIRECT:
                return Dialed()  # a tunnel or proxy comes first: the SSH step connects
            address, others = (rec.ip, rec.port), len(paths) > 1
        try:
            sock = await dial(*address, timeout=timeout)
        except NodeUnreachable as exc:
            return Dialed(error=f"direct: {short_error(exc)}", reachable=others, address=address)
        return Dialed(sock=sock, address=address)

    async def register(self, rec: NodeRecord, dialed: Dialed | None = None) -> NodeRecord | None:
        """Register ``rec`` (committed as ``registering``); the final record, None if lost."""
        attempt = rec.attempts + 1
        try:
            session = await self._connect(rec, authenticate=False, dialed=dialed)
        except FingerprintMismatch as exc:
            if exc.announced == rec.fingerprint:
                what = f"host key {exc.actual} does not match the announced {exc.announced}"
            else:  # a hop on the way (the cluster's proxy) is not the host pinned for it
                what = (
                    f"the proxy {exc.host}:{exc.port} presented host key {exc.actual}, "
                    f"not its pinned proxy_fingerprint {exc.announced}"
                )
            return await self._step(
                rec,
                NodeState.REJECTED,
                f"{what}: possible spoofing; not registered",
                "spoofing",
                data={"announced": exc.announced, "actual": exc.actual, "host": exc.host},
                attempts=attempt,
                next_attempt=None,
            )
        except SSHError as exc:
            return await self._retry(rec, NodeState.UNREACHABLE, str(exc), attempt, kind="ssh")
        # The host key is verified: the hook may start.  Logging in with the controller
        # key (needed for the receipt) runs meanwhile, so it adds no latency.
        auth = asyncio.ensure_future(self._authenticate(session))
        try:
            return await self._register_verified(rec, session, auth, attempt)
        finally:
            if not auth.done():
                auth.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await auth
            session.close()

    async def _register_verified(
        self,
        rec: NodeRecord,
        session: VerifiedSession,
        auth: asyncio.Future[SSHError | None],
        attempt: int,
    ) -> NodeRecord | None:
        ctl = self._config.controller
        files = await self._io.run(self._reach().write_access_files, rec, session)
        try:
            hook = find_hook(ctl.hooks_dir, rec.role)
        except HookError as exc:
            return await self._retry(rec, NodeState.FAILED, str(exc), attempt, kind="hook")
        result: HookResult | None = None
        if hook is None:
            auth_error = await auth
            if auth_error is not None:  # nothing ran yet: retry as unreachable
                return await self._retry(
                    rec, NodeState.UNREACHABLE, str(auth_error), attempt, kind="ssh"
                )
        else:
            # Committed before the spawn: a daemon that dies from here on leaves the
            # node "interrupted", never silently half-registered.
            started = await self._step(
                rec,
                NodeState.REGISTERING,
                f"running hook {hook}",
                "hook-start",
                hook_started=True,
                attempts=attempt,
            )
            if started is None:
                return None  # forgotten (or taken over) before the hook ran: nothing ran
            rec = started
            try:
                result = await run_hook(
                    hook,
                    self._hook_env(rec, session, files, attempt),
                    timeout=ctl.hook_timeout,
                    interrupt=self._stopping,
                )
            except HookError as exc:  # it could not even be started
                return await self._retry(rec, NodeState.FAILED, str(exc), attempt, kind="hook")
            if not result.ok:
                return await self._hook_failed(rec, result, attempt)
            auth_error = await auth
        if not await self._still_mine(rec, result):
            return None
        receipt_error = str(auth_error) if auth_error else await self._deliver_receipt(rec, session)
        reason = (
            "hook succeeded" if result else f"no hook {ctl.hooks_dir / rec.role}: nothing to run"
        )
        if receipt_error:
            reason += f"; receipt not delivered yet ({receipt_error})"
        return await self._step(
            rec,
            NodeState.REGISTERED,
            reason,
            "registered",
            data=_hook_data(result) if result else {"hook": None},
            attempts=attempt,
            registered_at=self._clock.time(),
            next_attempt=None,
            resumed=False,
            path=session.via.describe(),
        )

    async def _still_mine(self, rec: NodeRecord, result: HookResult | None) -> bool:
        """Before the receipt: is the row still the one we registered (not forgotten)?"""
        current = await self._store.get(rec.node_id)
        if current is not None and current.generation == rec.generation:
            return True
        what = f"its hook {result.command} succeeded" if result else "it was verified"
        await self._store.add_event(
            rec.node_id,
            "outcome-dropped",
            f"{rec.label}: {what}, but the node was forgotten meanwhile: no receipt, "
            "nothing recorded; it is decided anew if it announces again",
            _hook_data(result) if result else {},
        )
        return False

    async def _authenticate(self, session: VerifiedSession) -> SSHError | None:
        try:
            key = await self._io.run(self._key)
            await self._io.run(session.authenticate, key)
        except SSHError as exc:
            return exc
        return None

    async def redeliver_receipt(self, rec: NodeRecord, dialed: Dialed | None = None) -> str | None:
        """Leave the receipt again on a registered node that still announces ``ready``."""
        try:
            session = await self._connect(rec, dialed=dialed)
        except SSHError as exc:
            return str(exc)
        try:
            return await self._deliver_receipt(rec, session)
        finally:
            session.close()

    async def verify_move(self, rec: NodeRecord, dialed: Dialed | None = None) -> bool | None:
        """Does the address a registered node moved to present its registered key?"""
        moved = rec.moved
        assert moved is not None
        ip, port, _ = moved
        target = dataclasses.replace(self._reach().target(rec), host=ip, port=port)
        sock = dialed.take() if dialed is not None else None
        try:
            session = await self._io.run(open_verified, target, None, sock=sock)
        except FingerprintMismatch:
            return False
        except SSHError:
            return None
        session.close()
        return True

    # -- steps -------------------------------------------------------------------

    async def _connect(
        self, rec: NodeRecord, *, authenticate: bool = True, dialed: Dialed | None = None
    ) -> VerifiedSession:
        """A verified session over the first path that works (see ``_reach``); ``dialed``
        brings the direct path's socket, or why it did not answer."""
        key = await self._io.run(self._key)
        tunnel = await self._store.tunnel(rec.node_id)
        ports = tunnel.ports if tunnel is not None else ()
        sock = dialed.take() if dialed is not None else None
        direct_error = dialed.error if dialed is not None else None
        return await self._io.run(
            self._reach().connect,
            rec,
            key,
            ports,
            authenticate=authenticate,
            sock=sock,
            direct_error=direct_error,
        )

    def _reach(self) -> Reach:
        return Reach(self._config, mux_dir=self._mux_dir())

    async def _deliver_receipt(self, rec: NodeRecord, session: VerifiedSession) -> str | None:
        receipt = {
            "v": 1,
            "node_id": rec.node_id,
            "role": rec.role,
            "cluster": rec.cluster,
            "fingerprint": rec.fingerprint,
            "registrar_role": self._config.controller.role,
            "registrar_cluster": self._registrar_cluster,
            "registrar_host": socket.gethostname(),
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock.time())),
        }
        data = (json.dumps(receipt, indent=2) + "\n").encode()
        path = receipt_path_for(self._config, rec)
        try:
            if not session.alive():
                session = await self._connect(rec)
            holder = _receipt_holder(await self._io.run(session.read_file, path))
            if holder not in (None, rec.node_id):
                # One host key is one node: never overwrite another node's receipt.
                message = (
                    f"receipt not delivered: this host already holds the receipt of node "
                    f"{holder} at {path}; not overwritten (one host key is one node)"
                )
                await self._store.add_event(rec.node_id, "receipt", message, {"path": path})
                return message.removeprefix("receipt not delivered: ")
            await self._io.run(session.write_file, path, data, mode=0o644)
        except SSHError as exc:
            await self._store.add_event(
                rec.node_id, "receipt", f"receipt not delivered: {exc}", {"path": path}
            )
            return str(exc)
        await self._store.add_event(
            rec.node_id, "receipt", f"receipt left on the node at {path}", {"path": path}
        )
        return None

    async def _hook_failed(
        self, rec: NodeRecord, result: HookResult, attempt: int
    ) -> NodeRecord | None:
        data = _hook_data(result)
        if result.interrupted or self._stopping.is_set():
            return await self._step(
                rec,
                NodeState.INTERRUPTED,
                f"the daemon was stopped while the hook {result.command} (pid {result.pid}) "
                f"ran ({result.status}), so it may or may not have registered the node; "
                f"check it, then `autoreg retry {rec.node_id}` (re-runs the hook with "
                f"AUTOREG_RESUMED=1) or `autoreg forget {rec.node_id}`",
                "interrupted",
                data=data,
                next_attempt=None,
            )
        if result.returncode == EXIT_DECLINED:
            return await self._step(
                rec,
                NodeState.REJECTED,
                f"hook declined the node (exit {EXIT_DECLINED})",
                "hook-declined",
                data=data,
                attempts=attempt,
                next_attempt=None,
            )
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        detail = str(result.to_error()) + (f": {last[0][:200]}" if last[0] else "")
        return await self._retry(
            rec, NodeState.FAILED, detail, attempt, kind="hook-failed", data=data
        )

    async def _retry(
        self,
        rec: NodeRecord,
        state: NodeState,
        error: str,
        attempt: int,
        *,
        kind: str,
        data: dict[str, Any] | None = None,
    ) -> NodeRecord | None:
        return await self._change(
            rec,
            retry_change(
                self._config.controller,
                rec,
                expect=NodeState.REGISTERING,
                to=state,
                error=error,
                attempt=attempt,
                kind=kind,
                now=self._clock.time(),
                owner=self._owner,
                data=data,
            ),
        )

    @property
    def _registrar_cluster(self) -> str | None:
        return self._config.controller.cluster or self._config.node.cluster

    def _hook_env(
        self, rec: NodeRecord, session: VerifiedSession, files: AccessFiles, attempt: int
    ) -> dict[str, str]:
        ctl = self._config.controller
        receipt = receipt_path_for(self._config, rec)
        return {
            **self._reach().path_env(rec, session, files),
            "AUTOREG_HOOK_VERSION": "1",
            "AUTOREG_ROLE": rec.role,
            "AUTOREG_CLUSTER": rec.cluster or "",
            "AUTOREG_NODE_ID": rec.node_id,
            "AUTOREG_NAME": rec.display_name,
            "AUTOREG_IP": rec.ip,
            "AUTOREG_PORT": str(rec.port),
            "AUTOREG_FINGERPRINT": rec.fingerprint,
            "AUTOREG_KEY_TYPE": rec.key_type,
            "AUTOREG_REGISTRAR_ROLE": ctl.role or "",
            "AUTOREG_REGISTRAR_CLUSTER": self._registrar_cluster or "",
            "AUTOREG_STATE_DIR": str(self._config.state_dir),
            "AUTOREG_CREDENTIALS_DIR": str(ctl.credentials_dir),
            "AUTOREG_NODE_DIR": os.path.dirname(receipt),
            "AUTOREG_ATTEMPT": str(attempt),
            "AUTOREG_RESUMED": "1" if rec.resumed else "0",
        }


def _receipt_holder(existing: bytes | None) -> str | None:
    """Whose receipt a node already holds (None: none, or not one autoreg wrote)."""
    if existing is None:
        return None
    try:
        holder = json.loads(existing).get("node_id")
    except (ValueError, AttributeError):
        return None
    return holder if isinstance(holder, str) else None


def _hook_data(result: HookResult) -> dict[str, Any]:
    return {
        "hook": result.command,
        "command": shlex.quote(result.command),
        "exit": result.returncode,
        "status": result.status,
        "pid": result.pid,
        "timed_out": result.timed_out,
        "interrupted": result.interrupted,
        "duration": round(result.duration, 3),
        "stdout": result.stdout,
        "stderr": result.stderr,
        "stdout_lines": result.stdout_lines,
        "stderr_lines": result.stderr_lines,
    }
