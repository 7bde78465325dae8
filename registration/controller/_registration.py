"""One registration: verify over SSH, run the hook, leave the receipt.

The decision to register was already taken and committed (state
``registering``); this module carries it out and reports the outcome through
the daemon's ``record`` callback, which writes state and event atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final, Protocol

import paramiko

from .._config import Config
from .._exceptions import FingerprintMismatch, HookError, SSHError
from .._threads import ThreadLimiter
from ..state import NodeRecord, NodeState, Store
from ._hooks import EXIT_DECLINED, HookResult, find_hook, run_hook
from ._reach import AccessFiles, Reach
from ._ssh import VerifiedSession

__all__ = ["Recorder", "Registration", "receipt_path_for"]

#: Jitter applied to retry delays (±fraction), so retries of many nodes spread out.
RETRY_JITTER: Final = 0.1


class Recorder(Protocol):
    def __call__(
        self,
        rec: NodeRecord,
        state: NodeState,
        reason: str,
        *,
        kind: str,
        data: dict[str, Any] | None = None,
        **changes: Any,
    ) -> Awaitable[NodeRecord]: ...


def receipt_path_for(config: Config, rec: NodeRecord) -> str:
    """Where the receipt goes on the node (``{id}``, ``{role}``, ``{cluster}`` expanded)."""
    return config.controller.node_receipt_path.format(
        id=rec.node_id, role=rec.role, cluster=rec.cluster or ""
    )


class Registration:
    """Carries out registrations for one daemon."""

    def __init__(
        self,
        config: Config,
        store: Store,
        db: ThreadLimiter,
        io: ThreadLimiter,
        key: Callable[[], paramiko.PKey],
        record: Recorder,
    ) -> None:
        self._config = config
        self._store = store
        self._db = db
        self._io = io
        self._key = key
        self._record = record
        self._pending: set[asyncio.Future[None]] = set()
        self._mux: Path | None = None

    def _mux_dir(self) -> Path:
        # Short and private: Unix socket paths are limited to 108 bytes.
        if self._mux is None:
            self._mux = Path(tempfile.mkdtemp(prefix="autoreg-mux-"))
        return self._mux

    def close(self) -> None:
        """Remove the connection-sharing directory (masters exit by themselves)."""
        if self._mux is not None:
            shutil.rmtree(self._mux, ignore_errors=True)
            self._mux = None

    async def register(self, rec: NodeRecord) -> NodeRecord:
        """Register ``rec`` (already committed as ``registering``); returns the final record."""
        attempt = rec.attempts + 1
        try:
            session = await self._connect(rec, authenticate=False)
        except FingerprintMismatch as exc:
            if exc.announced == rec.fingerprint:
                what = f"host key {exc.actual} does not match the announced {exc.announced}"
            else:  # a hop on the way (the cluster's proxy) is not the host pinned for it
                what = (
                    f"the proxy {exc.host}:{exc.port} presented host key {exc.actual}, "
                    f"not its pinned proxy_fingerprint {exc.announced}"
                )
            return await self._record(
                rec,
                NodeState.REJECTED,
                f"{what}: possible spoofing; not registered",
                kind="spoofing",
                data={"announced": exc.announced, "actual": exc.actual, "host": exc.host},
                attempts=attempt,
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
    ) -> NodeRecord:
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
            await self._record(
                rec,
                NodeState.REGISTERING,
                f"running hook {hook}",
                kind="hook-start",
                hook_pid=0,
                attempts=attempt,
            )
            result = await run_hook(
                hook,
                self._hook_env(rec, session, files, attempt),
                timeout=ctl.hook_timeout,
                on_start=lambda pid: self._note_pid(rec, pid),
            )
            if not result.ok:
                return await self._hook_failed(rec, result, attempt)
            auth_error = await auth
        receipt_error = str(auth_error) if auth_error else await self._deliver_receipt(rec, session)
        reason = (
            "hook succeeded" if result else f"no hook {ctl.hooks_dir / rec.role}: nothing to run"
        )
        if receipt_error:
            reason += f"; receipt not delivered yet ({receipt_error})"
        data = _hook_data(result) if result else {"hook": None}
        return await self._record(
            rec,
            NodeState.REGISTERED,
            reason,
            kind="registered",
            data=data,
            attempts=attempt,
            registered_at=time.time(),
            next_attempt=None,
            hook_pid=None,
            resumed=False,
            path=session.via.describe(),
        )

    async def _authenticate(self, session: VerifiedSession) -> SSHError | None:
        try:
            key = await self._io.run(self._key)
            await self._io.run(session.authenticate, key)
        except SSHError as exc:
            return exc
        return None

    async def redeliver_receipt(self, rec: NodeRecord) -> str | None:
        """Leave the receipt again on a registered node that still announces ``ready``."""
        try:
            session = await self._connect(rec)
        except SSHError as exc:
            return str(exc)
        try:
            return await self._deliver_receipt(rec, session)
        finally:
            session.close()

    # -- steps -------------------------------------------------------------------

    async def _connect(self, rec: NodeRecord, *, authenticate: bool = True) -> VerifiedSession:
        """A verified session over the first path that works (see ``_reach``)."""
        key = await self._io.run(self._key)
        tunnel = await self._db.run(self._store.tunnel, rec.node_id)
        ports = tunnel.ports if tunnel is not None else ()
        return await self._io.run(self._reach().connect, rec, key, ports, authenticate=authenticate)

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
            "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        data = (json.dumps(receipt, indent=2) + "\n").encode()
        path = receipt_path_for(self._config, rec)
        try:
            if not session.alive():
                session = await self._connect(rec)
            await self._io.run(session.write_file, path, data, mode=0o644)
        except SSHError as exc:
            await self._db.run(
                self._store.add_event,
                rec.node_id,
                "receipt",
                f"receipt not delivered: {exc}",
                {"path": path},
            )
            return str(exc)
        await self._db.run(
            self._store.add_event,
            rec.node_id,
            "receipt",
            f"receipt left on the node at {path}",
            {"path": path},
        )
        return None

    async def _hook_failed(self, rec: NodeRecord, result: HookResult, attempt: int) -> NodeRecord:
        data = _hook_data(result)
        if result.returncode == EXIT_DECLINED:
            return await self._record(
                rec,
                NodeState.REJECTED,
                f"hook declined the node (exit {EXIT_DECLINED})",
                kind="hook-declined",
                data=data,
                attempts=attempt,
                hook_pid=None,
                next_attempt=None,
            )
        err = result.to_error()
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        detail = f"{err}" + (f": {last[0][:200]}" if last[0] else "")
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
    ) -> NodeRecord:
        ctl = self._config.controller
        if attempt >= ctl.max_attempts:
            return await self._record(
                rec,
                state,
                f"gave up after {attempt} attempts: {error}; "
                f"`autoreg retry {rec.node_id}` to try again",
                kind=kind,
                data=data,
                attempts=attempt,
                next_attempt=None,
                hook_pid=None,
            )
        delay = min(ctl.retry_max, ctl.retry_initial * 2 ** (attempt - 1))
        delay *= 1 + random.uniform(-RETRY_JITTER, RETRY_JITTER)  # noqa: S311 - not crypto
        return await self._record(
            rec,
            state,
            f"attempt {attempt}/{ctl.max_attempts} failed: {error}; retrying in {delay:.0f}s",
            kind=kind,
            data=data,
            attempts=attempt,
            next_attempt=time.time() + delay,
            hook_pid=None,
        )

    def _note_pid(self, rec: NodeRecord, pid: int) -> None:
        # The marker hook_pid=0 was committed before the spawn; the real pid is
        # informational, so it is written in the background (reference kept).
        task = asyncio.ensure_future(self._db.run(self._store.set_hook_pid, rec.node_id, pid))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

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


def _hook_data(result: HookResult) -> dict[str, Any]:
    return {
        "hook": result.command,
        "command": shlex.quote(result.command),
        "exit": result.returncode,
        "timed_out": result.timed_out,
        "duration": round(result.duration, 3),
        "stdout": result.stdout,
        "stderr": result.stderr,
    }
