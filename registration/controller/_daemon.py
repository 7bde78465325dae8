"""The registration daemon: browse → decide → verify → hook → record.

Every input (an announcement, a goodbye, a finished registration, a retry
timer, a lockdown switch flipped by the CLI, this registrar's own
registration) marks the daemon *dirty*; one reconcile pass then re-decides
every unsettled node against the current state.  Because decisions are taken
from state, not from the order of events, a node that must wait ("SC waits for
its CC") is registered as soon as its requirement is met, and no event can be
missed.  Everything runs on one event loop; sqlite and SSH run in bounded
thread pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Final

import paramiko

from .._config import Config
from .._exceptions import AnnouncementError, AutoregError, ConfigError
from .._files import write_atomic
from .._threads import ThreadLimiter
from .._version import __version__
from ..node import NodeIdentity, self_registration_state
from ..protocol import (
    CONTROLLER_SERVICE_TYPE,
    NODE_SERVICE_TYPE,
    Announcement,
    RegistrarAnnouncement,
    RegistrarState,
    decode_node,
    encode_registrar,
)
from ..state import GLOBAL_SCOPE, NodeRecord, NodeState, Store
from ..transport import Publication, ResolvedService, Transport, create_transport
from ._registration import Registration
from ._rules import Registrar, decide, owns
from ._ssh import load_private_key

__all__ = ["Daemon"]

log = logging.getLogger(__name__)

#: Seconds between checks for changes other processes committed to the state
#: store (lockdown switches, manual registrations, retries, forgets).
STORE_POLL_INTERVAL: Final = 0.25
#: Seconds before a registered node that still announces ``ready`` gets its
#: receipt again (it may have missed it, or been reinstalled with the same key).
RECEIPT_RESEND_INTERVAL: Final = 30.0
_UNSETTLED: Final = frozenset(
    {
        NodeState.SEEN,
        NodeState.WAITING,
        NodeState.LOCKED,
        NodeState.REFUSED,
        NodeState.UNREACHABLE,
        NodeState.FAILED,
    }
)


class Daemon:
    """One registrar: ``autoreg daemon``."""

    def __init__(self, config: Config, *, transport: Transport | None = None) -> None:
        if not config.controller.role:
            raise ConfigError(
                "this host registers nothing: set [controller] role "
                f"(one of {', '.join(config.profile.registrar_roles())})"
            )
        self.config = config
        self.role: str = config.controller.role
        self.cluster = config.controller.cluster or config.node.cluster
        self._transport = transport
        self._db = ThreadLimiter("autoreg-db", 1)
        self._io = ThreadLimiter("autoreg-ssh", config.controller.max_parallel)
        self._slots = asyncio.Semaphore(config.controller.max_parallel)
        self._store: Store | None = None
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[Any]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._names: dict[str, str] = {}
        self._receipt_sent: dict[str, float] = {}
        self._self_registered = True
        self._publication: Publication | None = None
        self._registrar_state = ""
        self._lockdown: Mapping[str, bool] = {}
        self._key: paramiko.PKey | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._registration: Registration | None = None
        self.identity: NodeIdentity | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` is called (or the task is cancelled)."""
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.close()

    def stop(self) -> None:
        self._stopping.set()

    async def start(self) -> None:
        self._store = await self._db.run(Store, self.config.db_path)
        store = self._store
        self._registration = Registration(
            self.config, store, self._db, self._io, self._private_key, self._record
        )
        await self._db.run(store.mark_all_absent)
        await self._recover()
        self._self_registered = await self._check_self_registered()
        self.identity = NodeIdentity.from_config(self.config, need_host_key=False)
        if self._transport is None:
            # `auto` asks D-Bus whether avahi-daemon answers: blocking, so in a thread.
            self._transport = await asyncio.to_thread(create_transport, self.config)
        await self._transport.async_start()
        await self._transport.async_browse(NODE_SERVICE_TYPE, self)
        await self._db.run(
            store.add_event,
            None,
            "daemon",
            f"registrar {self.role}"
            + (f" of cluster {self.cluster}" if self.cluster else "")
            + f" started (autoreg {__version__}, pid {os.getpid()}, "
            f"transport {self._transport.name})"
            + (
                ""
                if self._self_registered
                else f"; standby until this {self.role} is registered itself"
            ),
        )
        log.info("registrar %s started; browsing %s", self.role, NODE_SERVICE_TYPE)
        self._tasks = [
            asyncio.ensure_future(self._reconcile_loop()),
            asyncio.ensure_future(self._watch_store()),
        ]
        self._tasks.append(asyncio.ensure_future(self._watch_self()))
        self._lockdown = await self._db.run(store.lockdown)
        await self._announce_self()
        self._write_status()
        self._dirty.set()

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        tasks = [*self._tasks, *self._in_flight.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._transport is not None:
            if self._publication is not None:
                await self._publication.async_withdraw()
            await self._transport.async_close()
        if self._registration is not None:
            self._registration.close()
        if self._store is not None:
            await self._db.run(self._store.add_event, None, "daemon", "registrar stopped")
            await self._db.run(self._store.close)
        with contextlib.suppress(OSError):
            (self.config.state_dir / "daemon.json").unlink()
        self._io.shutdown()
        self._db.shutdown()

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("daemon not started")
        return self._store

    def _private_key(self) -> paramiko.PKey:
        if self._key is None:
            self._key = load_private_key(self.config.controller_key)
        return self._key

    # -- inputs (BrowseListener) ------------------------------------------------

    def service_resolved(self, service: ResolvedService) -> None:
        self._spawn(self._on_service(service))

    def service_removed(self, name: str) -> None:
        node_id = self._names.pop(name, None)
        if node_id is not None:
            self._spawn(self._on_gone(node_id, name))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an input handler in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_service(self, service: ResolvedService) -> None:
        try:
            ann = decode_node(service.properties, service.port)
        except AnnouncementError as exc:
            log.warning("rejected announcement %s: %s", service.name, exc)
            await self._db.run(
                self.store.add_event,
                None,
                "rejected-announcement",
                f"rejected announcement {service.name}: {exc}",
                {
                    "name": service.name,
                    "reason": exc.reason,
                    "field": exc.field,
                    "txt": _printable_txt(service.properties),
                },
            )
            return
        self._names[service.name] = ann.node_id
        await self.observe(ann, source="mdns")

    async def observe(self, ann: Announcement, *, source: str) -> None:
        """Take in one announcement (from browsing, or a manual registration)."""
        not_mine = owns(self._registrar(), ann.role, ann.cluster)
        if not_mine:
            log.debug("ignoring %s %s: %s", ann.role, ann.node_id, not_mine)
            return
        rec = await self._db.run(self.store.get, ann.node_id)
        now = time.time()
        if rec is None:
            rec = NodeRecord.new(ann, source=source, reason="announced", now=now)
            where = f" of cluster {ann.cluster}" if ann.cluster else ""
            await self._db.run(
                self.store.save,
                rec,
                kind="announced",
                message=f"{_label(rec)}{where} announced at {ann.ip}:{ann.port} "
                f"({ann.fingerprint})",
                data={"announcement": dataclasses.asdict(ann)},
            )
        else:
            await self._update(rec, ann, now)
        self._dirty.set()

    async def _update(self, rec: NodeRecord, ann: Announcement, now: float) -> None:
        identity_changed = (rec.fingerprint, rec.role, rec.cluster, rec.key_type) != (
            ann.fingerprint,
            ann.role,
            ann.cluster,
            ann.key_type,
        )
        moved = (rec.ip, rec.port, rec.name) != (ann.ip, ann.port, ann.name)
        settled = rec.state in (NodeState.REGISTERED, NodeState.REGISTERING, NodeState.INTERRUPTED)
        if settled and identity_changed:
            await self._db.run(
                self.store.add_event,
                rec.node_id,
                "conflict",
                f"{rec.node_id} is {rec.state.value} with {rec.role}/{rec.cluster} "
                f"{rec.fingerprint} but now announces {ann.role}/{ann.cluster} "
                f"{ann.fingerprint}: ignored; `autoreg forget {rec.node_id}` to register it anew",
                {"announcement": dataclasses.asdict(ann)},
            )
            await self._db.run(self.store.update, rec.node_id, {"present": True, "last_seen": now})
            return
        # Only the announcement's own columns: a registration in flight owns the rest.
        changes: dict[str, Any] = {
            "ip": ann.ip,
            "port": ann.port,
            "name": ann.name,
            "announced_state": ann.state,
            "present": True,
            "last_seen": now,
        }
        if not settled:
            changes.update(
                fingerprint=ann.fingerprint,
                role=ann.role,
                cluster=ann.cluster,
                key_type=ann.key_type,
            )
            # A node that comes back (rebooted) gets another chance at failed or
            # unreachable; a rejected one only when what it announces changed.
            retry = rec.state in (NodeState.FAILED, NodeState.UNREACHABLE) and not rec.present
            if retry or (
                rec.state in (NodeState.FAILED, NodeState.UNREACHABLE, NodeState.REJECTED)
                and (identity_changed or moved)
            ):
                changes.update(
                    state=NodeState.SEEN,
                    attempts=0,
                    next_attempt=None,
                    updated=now,
                    reason="announced again with new data; re-evaluating",
                )
        kind = message = None
        if moved or identity_changed or not rec.present or "state" in changes:
            kind = "announced"
            message = f"{_label(rec)} re-announced at {ann.ip}:{ann.port} (state {ann.state})"
        await self._db.run(self.store.update, rec.node_id, changes, kind=kind, message=message)

    async def _on_gone(self, node_id: str, name: str) -> None:
        rec = await self._db.run(self.store.get, node_id)
        if rec is None or not rec.present:
            return
        await self._db.run(
            self.store.update,
            node_id,
            {"present": False},
            kind="withdrawn",
            message=f"{_label(rec)} withdrew its announcement (goodbye)",
        )
        self._dirty.set()

    # -- the decision loop -------------------------------------------------------

    def _registrar(self) -> Registrar:
        return Registrar(self.role, self.cluster, self.config.profile, self._self_registered)

    async def _reconcile_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                await self._reconcile()
            except Exception:  # the daemon keeps serving whatever one pass hits
                log.exception("reconcile pass failed; will retry on the next change")
                await asyncio.sleep(STORE_POLL_INTERVAL)
                self._dirty.set()

    async def _reconcile(self) -> None:
        me = self._registrar()
        now = time.time()
        for rec in await self._db.run(self.store.nodes):
            if rec.node_id in self._in_flight:
                continue
            if rec.state is NodeState.REGISTERED:
                self._maybe_resend_receipt(rec, now)
                continue
            if rec.state not in _UNSETTLED or (not rec.present and rec.source != "manual"):
                continue
            if rec.state in (NodeState.FAILED, NodeState.UNREACHABLE):
                if rec.next_attempt is None:
                    continue  # gave up: waits for new data or `autoreg retry`
                if rec.next_attempt > now:
                    self._arm_timer(rec.node_id, rec.next_attempt - now)
                    continue
            decision = await self._db.run(decide, rec, me, self.store)
            state = {
                "ignore": rec.state,
                "reject": NodeState.REJECTED,
                "lock": NodeState.LOCKED,
                "wait": NodeState.WAITING,
                "refuse": NodeState.REFUSED,
                "register": NodeState.REGISTERING,
            }[decision.action]
            if decision.action == "ignore":
                continue
            if decision.action == "register":
                self._start(
                    await self._record(
                        rec,
                        NodeState.REGISTERING,
                        "verifying over SSH",
                        kind="registering",
                        hook_pid=None,
                    )
                )
            elif (state, decision.reason) != (rec.state, rec.reason):
                await self._record(rec, state, decision.reason, kind=state.value)
        await self._update_announcement()

    def _start(self, rec: NodeRecord) -> None:
        async def job() -> None:
            assert self._registration is not None
            try:
                async with self._slots:
                    done = await self._registration.register(rec)
                if done.state is NodeState.REGISTERED:
                    # The receipt just went out; give the node time to re-announce.
                    self._receipt_sent[rec.node_id] = time.time()
            except Exception as exc:
                log.exception("registration of %s crashed", rec.node_id)
                await self._record(
                    rec,
                    NodeState.FAILED,
                    f"internal error: {exc!r}",
                    kind="error",
                    next_attempt=None,
                    hook_pid=None,
                )
            finally:
                self._in_flight.pop(rec.node_id, None)
                self._dirty.set()

        self._in_flight[rec.node_id] = asyncio.ensure_future(job())

    def _maybe_resend_receipt(self, rec: NodeRecord, now: float) -> None:
        if not rec.present or rec.source != "mdns" or rec.announced_state != "ready":
            return
        if now - self._receipt_sent.get(rec.node_id, 0.0) < RECEIPT_RESEND_INTERVAL:
            self._arm_timer(rec.node_id, RECEIPT_RESEND_INTERVAL)
            return
        self._receipt_sent[rec.node_id] = now

        async def job() -> None:
            assert self._registration is not None
            try:
                error = await self._registration.redeliver_receipt(rec)
                log.info(
                    "%s: registered but announces ready: receipt %s",
                    rec.node_id,
                    f"not delivered ({error})" if error else "delivered again",
                )
            finally:
                self._in_flight.pop(rec.node_id, None)

        self._in_flight[rec.node_id] = asyncio.ensure_future(job())

    def _arm_timer(self, node_id: str, delay: float) -> None:
        old = self._timers.pop(node_id, None)
        if old is not None:
            old.cancel()
        self._timers[node_id] = asyncio.get_running_loop().call_later(
            max(0.0, delay), self._dirty.set
        )

    async def _record(
        self,
        rec: NodeRecord,
        state: NodeState,
        reason: str,
        *,
        kind: str,
        data: dict[str, Any] | None = None,
        **changes: Any,
    ) -> NodeRecord:
        """Move ``rec`` to ``state`` (only the decision columns), log it, return it fresh."""
        message = f"{_label(rec)}: {state.value}: {reason}"
        level = (
            logging.WARNING
            if state in (NodeState.REJECTED, NodeState.FAILED, NodeState.UNREACHABLE)
            else logging.INFO
        )
        log.log(level, "%s", message)
        fields = {"state": state, "reason": reason, "updated": time.time(), **changes}
        fresh = await self._db.run(
            self.store.update, rec.node_id, fields, kind=kind, message=message, data=data
        )
        return fresh if fresh is not None else dataclasses.replace(rec, **fields)

    # -- recovery, self-registration, change watching ----------------------------------

    async def _recover(self) -> None:
        """Nodes left ``registering`` by a daemon that died: never half-registered silently."""
        for rec in await self._db.run(self.store.nodes):
            if rec.state is not NodeState.REGISTERING:
                continue
            if rec.hook_pid is None:
                await self._record(
                    rec,
                    NodeState.SEEN,
                    "the daemon restarted before the hook ran; starting over",
                    kind="recovered",
                )
            elif self.config.controller.resume_interrupted:
                await self._record(
                    rec,
                    NodeState.SEEN,
                    "the daemon stopped while the hook ran; resuming (resume_interrupted = yes)",
                    kind="interrupted",
                    resumed=True,
                    hook_pid=None,
                )
            else:
                pid = f" (pid {rec.hook_pid})" if rec.hook_pid else ""
                await self._record(
                    rec,
                    NodeState.INTERRUPTED,
                    f"the daemon stopped while the hook{pid} was running, so it may or may not "
                    f"have registered the node; check it, then `autoreg retry {rec.node_id}` "
                    f"(re-runs the hook with AUTOREG_RESUMED=1) or `autoreg forget "
                    f"{rec.node_id}`",
                    kind="interrupted",
                    hook_pid=None,
                )

    async def _check_self_registered(self) -> bool:
        if not Registrar(self.role, self.cluster, self.config.profile).needs_self_registration:
            return True
        return await self._db.run(self_registration_state, self.config.node) is not None

    async def _watch_self(self) -> None:
        """This registrar's own standing, and its announcement (repaired if lost)."""
        while True:
            await asyncio.sleep(self.config.node.poll_interval)
            if self._publication is not None:
                try:
                    await self._publication.async_maintain()
                except AutoregError as exc:
                    log.warning("cannot repair the registrar announcement: %s", exc)
            now_registered = await self._check_self_registered()
            if now_registered != self._self_registered:
                self._self_registered = now_registered
                word = "is now registered" if now_registered else "is no longer registered"
                await self._db.run(self.store.add_event, None, "self", f"this {self.role} {word}")
                self._write_status()
                self._dirty.set()

    async def _watch_store(self) -> None:
        version = await self._db.run(self.store.data_version)
        while True:
            await asyncio.sleep(STORE_POLL_INTERVAL)
            current = await self._db.run(self.store.data_version)
            if current != version:
                version = current
                self._dirty.set()

    async def _announce_self(self) -> None:
        if (
            not self.config.controller.announce_self
            or self.identity is None
            or self._transport is None
        ):
            return
        state = self._current_registrar_state()
        ann = RegistrarAnnouncement(
            node_id=self.identity.node_id,
            role=self.role,
            ip=self.identity.address,
            port=self.identity.ssh_port,
            state=state,
            cluster=self.cluster,
            name=self.identity.name,
        )
        if self._publication is None:
            self._publication = Publication(
                self._transport,
                CONTROLLER_SERVICE_TYPE,
                role=self.role,
                node_id=ann.node_id,
                probe=self.config.node.probe,
            )
        await self._publication.async_set(ip=ann.ip, port=ann.port, txt=encode_registrar(ann))
        self._registrar_state = state

    def _current_registrar_state(self) -> RegistrarState:
        if not self._self_registered:
            return "standby"
        return "locked" if self._locked_all else "active"

    @property
    def _locked_all(self) -> bool:
        return self._lockdown.get(GLOBAL_SCOPE, False) or all(
            self._lockdown.get(r, False) for r in self.config.profile.roles_registered_by(self.role)
        )

    async def _update_announcement(self) -> None:
        self._lockdown = await self._db.run(self.store.lockdown)
        if (
            self._publication is not None
            and self._current_registrar_state() != self._registrar_state
        ):
            await self._announce_self()
            self._write_status()

    def _write_status(self) -> None:
        status = {
            "pid": os.getpid(),
            "version": __version__,
            "role": self.role,
            "cluster": self.cluster,
            "host": socket.gethostname(),
            "transport": self._transport.name if self._transport else None,
            "interfaces": list(self.config.interfaces),
            "self_registered": self._self_registered,
            "registrar_state": self._registrar_state or self._current_registrar_state(),
            "updated": time.time(),
        }
        write_atomic(
            self.config.state_dir / "daemon.json",
            json.dumps(status, indent=2) + "\n",
            mode=0o644,
            durable=False,
        )


def _label(rec: NodeRecord) -> str:
    """How events name a node: role, name and id."""
    return f"{rec.role} {rec.display_name} ({rec.node_id})"


def _printable_txt(properties: Mapping[bytes, bytes | None]) -> dict[str, str | None]:
    def show(raw: bytes | None) -> str | None:
        return None if raw is None else raw[:80].decode("utf-8", "backslashreplace")

    return {show(k) or "": show(v) for k, v in list(properties.items())[:20]}
