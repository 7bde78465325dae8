"""The registration daemon: browse → ingest → decide → verify → hook → record.

The daemon wires the parts together and owns their lifecycle: the state store
(one daemon per state directory: it takes the store's registrar lock first; a
shared store, etcd, takes any number, each kept alive by ``_lease.LeaseKeeper``),
crash recovery, the transport and its browser, the reconcile loop
(``_reconciler.Reconciler``), the store's change feed, this registrar's own
standing and announcement, and an orderly stop that records every hook it had
to interrupt.  Everything runs on one event loop; SSH runs in a bounded thread
pool, the store on its own executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import paramiko

from .._clock import Clock, SystemClock, TimerHandle
from .._config import Config
from .._exceptions import AutoregError, ConfigError
from .._files import write_atomic
from .._netif import local_addresses
from .._sshkeys import read_public_key
from .._threads import ThreadLimiter
from .._version import __version__
from ..node import NodeIdentity, self_registration_state
from ..protocol import (
    CONTROLLER_SERVICE_TYPE,
    NODE_SERVICE_TYPE,
    RegistrarAnnouncement,
    RegistrarState,
    encode_registrar,
)
from ..state import (
    CLAIM_LEASE,
    GLOBAL_SCOPE,
    Event,
    NodeState,
    Source,
    StateStore,
    open_store,
)
from ..transport import Publication, Transport, create_transport
from ._api import ApiServer, start_api
from ._dial import probe_capacity
from ._hooks import KILL_GRACE
from ._ingest import AddressPolicy
from ._intake import Intake
from ._lease import LeaseKeeper, recovery_change
from ._reconciler import Reconciler
from ._registration import ChangeFn, Registration, Registrations
from ._rules import Registrar
from ._ssh import load_private_key

__all__ = ["EXIT_INTERRUPTED", "Daemon", "RegistrationsFactory"]

log = logging.getLogger(__name__)

#: Builds what carries out registrations, given how to record a state change, the
#: registrar's owner id (its claims) and the clock.
RegistrationsFactory = Callable[[ChangeFn, str, Clock], Registrations]

#: Exit status of a daemon whose stop interrupted a running hook (documented: 130).
EXIT_INTERRUPTED: Final = 130
#: Seconds a stopping daemon gives running registrations to record their outcome.
STOP_GRACE: Final = 2 * KILL_GRACE + 2.0
#: Seconds between prunings of the event log ([controller] events_keep/events_max_age).
PRUNE_INTERVAL: Final = 600.0
#: Backoff after the store's change feed failed: first, cap.
WATCH_RETRY_INITIAL: Final = 0.5
WATCH_RETRY_MAX: Final = 30.0


class Daemon:
    """One registrar: ``autoreg daemon``.

    ``transport``, ``store``, ``clock`` and ``registrations`` are seams for tests (an
    in-memory transport, a fake clock, scripted registrations); by default the
    configured transport and store, the system clock and real SSH registrations.
    The daemon closes only what it opened itself.
    """

    def __init__(
        self,
        config: Config,
        *,
        transport: Transport | None = None,
        store: StateStore | None = None,
        clock: Clock | None = None,
        registrations: RegistrationsFactory | None = None,
    ) -> None:
        if not config.controller.role:
            raise ConfigError(
                "this host registers nothing: set [controller] role "
                f"(one of {', '.join(config.profile.registrar_roles())})"
            )
        self.config = config
        self.role: str = config.controller.role
        self.cluster = config.controller.cluster or config.node.cluster
        self._transport = transport
        self._store = store
        self._own_store = store is None
        self._clock: Clock = clock or SystemClock()
        self._make_registrations = registrations
        self._registrations: Registrations | None = None
        self._io = ThreadLimiter("autoreg-ssh", config.controller.max_parallel)
        self._stopping = asyncio.Event()
        #: Set once start() has finished: browsing, deciding, announced, status written.
        self.started = asyncio.Event()
        self._locked = False  # we hold the store's registrar lock
        self._interrupted: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._recon: Reconciler | None = None
        self._recon_task: asyncio.Task[None] | None = None
        self._keeper: LeaseKeeper | None = None  # a shared store's lease (etcd)
        self._self_registered = True
        self._publication: Publication | None = None
        self._registrar_state = ""
        self._announced_window: str | None = None
        self._key: paramiko.PKey | None = None
        self._last_seq = 0
        self._policy = AddressPolicy(allow=config.controller.allow_addresses)
        self.trust = config.controller.trust or "token"
        self.trust_source = "configuration" if config.controller.trust else "default"
        self._intake: Intake | None = None
        self._api: ApiServer | None = None  # the HTTPS endpoint ([controller] listen)
        self._window_timers: dict[str, TimerHandle] = {}
        self.identity: NodeIdentity | None = None
        self.owner = ""
        self.observer = ""

    # -- lifecycle ---------------------------------------------------------------

    async def run(self) -> int:
        """Run until :meth:`stop`; the exit status (0, or 130 when a hook was interrupted)."""
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await self.close()
        return EXIT_INTERRUPTED if self._interrupted else 0

    def stop(self) -> None:
        self._stopping.set()
        if self._registrations is not None:
            self._registrations.interrupt()  # before any hook's own exit is processed

    async def start(self) -> None:
        self.identity = NodeIdentity.from_config(self.config, need_host_key=False)
        self._refresh_own_addresses()
        self.observer = f"{self.role}:{self.identity.node_id}"
        self.owner = f"{self.observer}:{os.getpid()}:{int(self._clock.time())}"
        if self._store is None:
            self._store = await open_store(self.config, origin=self.owner)
        store = self._store
        await store.lock_registrar(self.owner)  # AlreadyRunning: nothing else is touched
        self._locked = True
        self._last_seq = max((e.seq for e in await store.last_events(1)), default=0)
        await store.clear_presence(source=Source.MDNS, observer=self.observer)
        probes = probe_capacity(self.config.controller.max_probes)
        if probes < self.config.controller.max_probes:
            log.warning(
                "[controller] max_probes = %d, but the file descriptor limit allows %d "
                "(raise LimitNOFILE)",
                self.config.controller.max_probes,
                probes,
            )
        recon = self._recon = Reconciler(
            store,
            registrar=self._registrar,
            owner=self.owner,
            clock=self._clock,
            controller=self.config.controller,
            probes=probes,
            after_pass=self._update_announcement,
        )
        intake = self._intake = Intake(
            store,
            recon,
            registrar=self._registrar,
            policy=lambda: self._policy,
            observer=self.observer,
            controller=self.config.controller,
            clock=self._clock,
        )
        recon.registrations = self._registrations = self._new_registrations()
        await self._recover()
        self._self_registered = await self._check_self_registered()
        await self._load_trust_default()
        await recon.load()
        self._arm_windows()
        if self._transport is None:
            # `auto` asks D-Bus whether avahi-daemon answers: blocking, so in a thread.
            self._transport = await asyncio.to_thread(create_transport, self.config)
        await self._transport.start()
        await self._transport.browse(NODE_SERVICE_TYPE, self._intake)
        await store.add_event(
            None,
            "daemon",
            f"registrar {self.role}"
            + (f" of cluster {self.cluster}" if self.cluster else "")
            + f" started (autoreg {__version__}, pid {os.getpid()}, "
            f"transport {self._transport.name}, store {store.backend} {store.location}, "
            f"trust {self.trust} from {self.trust_source})"
            + (
                ""
                if self._self_registered
                else f"; standby until this {self.role} is registered itself"
            ),
        )
        log.info("registrar %s started; browsing %s", self.role, NODE_SERVICE_TYPE)
        if self.trust == "open":
            log.warning("trust = open (%s): %s", self.trust_source, _OPEN_WARNING)
        self._recon_task = asyncio.ensure_future(recon.run())
        if store.shared:
            self._keeper = LeaseKeeper(
                store,
                self.owner,
                ttl=self.config.etcd.lease_ttl,
                fence=self._fence,
                restore=self._restore,
                take_over=self._take_over,
            )
        self._tasks = [
            asyncio.ensure_future(self._intake.run()),
            self._recon_task,
            *([asyncio.ensure_future(self._keeper.run())] if self._keeper else []),
            asyncio.ensure_future(self._prune_events()),
            asyncio.ensure_future(self._watch_store()),
            asyncio.ensure_future(self._watch_self()),
            asyncio.ensure_future(self._renew_claims()),
        ]
        await self._announce_self()
        self._api = await start_api(self.config, store, intake, recon, self._clock, self._status)
        self._write_status()
        self.started.set()

    async def close(self) -> None:
        """Stop everything that started (also after a failed start), in order."""
        self._stopping.set()
        if self._api is not None:
            await self._api.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for handle in self._window_timers.values():
            handle.cancel()
        self._window_timers.clear()
        if self._recon is not None:
            interrupted = await self._recon.drain(STOP_GRACE)
            self._interrupted = [r.node_id for r in interrupted]
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._transport is not None:
            with contextlib.suppress(AutoregError):
                if self._publication is not None:
                    await self._publication.withdraw()
                await self._transport.close()
        if self._registrations is not None:
            self._registrations.close()
        if self._store is not None:
            if self._locked:
                with contextlib.suppress(AutoregError):
                    await self._store.add_event(
                        None,
                        "daemon",
                        "registrar stopped"
                        + (
                            f"; interrupted the hook of {', '.join(self._interrupted)}"
                            if self._interrupted
                            else ""
                        ),
                    )
            if self._own_store:
                await self._store.close()
        if self._locked:
            with contextlib.suppress(OSError):
                (self.config.state_dir / "daemon.json").unlink()
        await self._io.aclose()

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise RuntimeError("daemon not started")
        return self._store

    @property
    def reconciler(self) -> Reconciler:
        if self._recon is None:
            raise RuntimeError("daemon not started")
        return self._recon

    def _new_registrations(self) -> Registrations:
        recon = self.reconciler
        if self._make_registrations is not None:
            return self._make_registrations(recon.change, self.owner, self._clock)
        return Registration(
            self.config,
            self.store,
            self._io,
            self._private_key,
            recon.change,
            owner=self.owner,
            clock=self._clock,
        )

    def _private_key(self) -> paramiko.PKey:
        if self._key is None:
            self._key = load_private_key(self.config.controller_key)
        return self._key

    def _registrar(self) -> Registrar:
        return Registrar(
            self.role,
            self.cluster,
            self.config.profile,
            self._self_registered,
            trust=self.trust,
            now=self._clock.time(),
        )

    async def _load_trust_default(self) -> None:
        """[controller] trust, else the store's default (``open`` for a store made by a
        version without trust: an upgrade keeps registering as before)."""
        if self.config.controller.trust:
            return
        default = await self.store.setting("trust_default")
        self.trust = default or "token"
        self.trust_source = (
            "the store's default, kept from a version without trust (set [controller] trust)"
            if default == "open"
            else "the default"
        )

    # -- recovery, self-registration, change watching ----------------------------------

    async def _recover(self) -> None:
        """Claims left by a daemon that died: never half-registered silently."""
        for rec in await self.store.reclaimable(self.owner):
            if rec.state is not NodeState.REGISTERING:
                continue
            await self.store.change(
                rec.node_id,
                recovery_change(
                    rec,
                    owner=self.owner,
                    resume=self.config.controller.resume_interrupted,
                    why="the daemon stopped" if rec.hook_started else "the daemon restarted",
                ),
            )

    # -- a shared store: fenced, restored, taking over (``_lease``) ---------------------

    async def _fence(self, reason: str) -> None:
        """This registrar's lease may run out: stop deciding, terminate running hooks."""
        if self._recon_task is not None:
            self._recon_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._recon_task
        if self._registrations is not None:
            self._registrations.interrupt()
        self._write_status()
        # in the background: etcd may not take it for a while (it is why we are fenced)
        self._spawn(self._log_event(f"registrar fenced: {reason}; not acting until etcd answers"))

    async def _restore(self) -> None:
        """Etcd answers again: recover what this registrar left behind, reload, go on."""
        recon = self.reconciler
        deadline = time.monotonic() + STOP_GRACE
        while recon.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # the interrupted registrations record their outcome
        await self._take_over(own=True)
        recon.registrations = self._registrations = self._new_registrations()
        await recon.load()
        self._recon_task = asyncio.ensure_future(recon.run())
        self._tasks.append(self._recon_task)
        self._write_status()
        self._spawn(self._log_event("registrar acts again: etcd answers, its lease holds"))

    async def _take_over(self, *, own: bool = False) -> None:
        """Nodes left registering by a registrar whose lease ended (``own``: this one's
        too, once nothing of it runs any more): the crash-recovery policy."""
        for rec in await self.store.reclaimable(self.owner):
            mine = rec.claim_owner == self.owner
            if rec.state is not NodeState.REGISTERING or (mine and not own):
                continue
            if mine and self.reconciler.pool.working(rec.node_id):
                continue
            who = "this registrar" if mine else f"registrar {rec.claim_owner}"
            await self.reconciler.change(
                rec,
                recovery_change(
                    rec,
                    owner=self.owner,
                    resume=self.config.controller.resume_interrupted,
                    why=f"{who} lost its etcd lease",
                ),
            )

    async def _log_event(self, message: str) -> None:
        with contextlib.suppress(AutoregError):
            await self.store.add_event(None, "daemon", message)

    async def _check_self_registered(self) -> bool:
        if not Registrar(self.role, self.cluster, self.config.profile).needs_self_registration:
            return True
        return await asyncio.to_thread(self_registration_state, self.config.node) is not None

    def _refresh_own_addresses(self) -> None:
        """Nodes may not announce this registrar's own addresses (they change with DHCP)."""
        self._policy = AddressPolicy(
            allow=self.config.controller.allow_addresses, own=local_addresses()
        )

    async def _watch_self(self) -> None:
        """This registrar's own standing, and its announcement (repaired if lost)."""
        while True:
            await asyncio.sleep(self.config.node.poll_interval)
            self._refresh_own_addresses()
            if self._publication is not None:
                try:
                    await self._publication.maintain()
                except AutoregError as exc:
                    log.warning("cannot repair the registrar announcement: %s", exc)
            now_registered = await self._check_self_registered()
            if now_registered != self._self_registered:
                self._self_registered = now_registered
                word = "is now registered" if now_registered else "is no longer registered"
                await self.store.add_event(None, "self", f"this {self.role} {word}")
                self._write_status()
                self.reconciler.mark_all()

    async def _watch_store(self) -> None:
        """Changes other processes commit (lockdown, retry, forget, manual registrations)."""
        failures = 0
        while True:
            try:
                # Our own changes are in the index already (uses of tokens and windows
                # our registrations spent too: the reconciler reloads trust after them).
                async for batch in self.store.watch(after=self._last_seq, origin_not=self.owner):
                    for event in batch:
                        self._last_seq = event.seq
                        await self._external(event)
                    failures = 0
            except AutoregError as exc:
                failures += 1
                delay = min(WATCH_RETRY_MAX, WATCH_RETRY_INITIAL * 2 ** (failures - 1))
                log.warning("the store's change feed failed: %s; again in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _external(self, event: Event) -> None:
        if event.kind == "lockdown":
            self.reconciler.set_lockdown(await self.store.lockdown())
            await self._update_announcement()  # "locked" even when no node is affected
            return
        if event.kind in ("token", "window", "deny"):
            await self.reconciler.load_trust()
            self._arm_windows()
            await self._update_announcement()
            if event.kind == "token" and self._intake is not None:
                self._intake.verify_again()
        elif event.kind == "setting":
            await self._load_trust_default()
            self.reconciler.mark_all()
            self._write_status()
        if event.node_id is not None:
            await self.reconciler.reload(event.node_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a handler in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _arm_windows(self) -> None:
        """Close each open install window when its time runs out (with an event)."""
        for window in self.reconciler.index.windows:
            if window.closed is not None or window.window_id in self._window_timers:
                continue

            def expire(scope: str = window.scope, ident: str = window.window_id) -> None:
                self._window_timers.pop(ident, None)
                self._spawn(self._expire_window(scope))

            delay = window.expires - self._clock.time()
            self._window_timers[window.window_id] = self._clock.call_later(delay, expire)

    async def _expire_window(self, scope: str) -> None:
        closed = await self.store.close_windows(scope, reason="its time ran out")
        if closed:
            await self.reconciler.load_trust()
            await self._update_announcement()

    async def _prune_events(self) -> None:
        """Keep the event log within [controller] events_keep and events_max_age."""
        ctl = self.config.controller
        while True:
            try:
                pruned = await self.store.prune_events(
                    keep=ctl.events_keep, max_age=ctl.events_max_age
                )
            except AutoregError as exc:
                log.warning("cannot prune the event log: %s", exc)
            else:
                if pruned:
                    log.info(
                        "pruned %d old event(s) (events_keep %d, events_max_age %ds)",
                        pruned,
                        ctl.events_keep,
                        ctl.events_max_age,
                    )
            await asyncio.sleep(PRUNE_INTERVAL)

    async def _renew_claims(self) -> None:
        """Keep this registrar's claims alive while it works on them (a shared store's
        claims hang on the registrar's lease: the lease keeper renews that)."""
        while True:
            await asyncio.sleep(CLAIM_LEASE / 3)
            if self.reconciler.in_flight and self._keeper is None:
                try:
                    await self.store.renew_claims(self.owner, CLAIM_LEASE)
                except AutoregError as exc:
                    log.warning("cannot renew claims: %s", exc)

    # -- this registrar's own announcement ------------------------------------------

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
            fingerprint=self._sshd_fingerprint(),
            window=self._window_open(),
        )
        if self._publication is None:
            self._publication = Publication(
                self._transport,
                CONTROLLER_SERVICE_TYPE,
                role=self.role,
                node_id=ann.node_id,
                probe=self.config.node.probe,
            )
        await self._publication.set(ip=ann.ip, port=ann.port, txt=encode_registrar(ann))
        self._registrar_state = state
        self._announced_window = ann.window

    def _sshd_fingerprint(self) -> str | None:
        """The key callback nodes pin for this registrar's sshd, when it can be read."""
        try:
            return read_public_key(self.config.controller.sshd_host_key).fingerprint
        except AutoregError:
            return None

    def _window_open(self) -> str | None:
        """The scope of an install window open now (``*`` or a role), for the announcement."""
        if self._recon is None:
            return None
        now = self._clock.time()
        scopes = sorted(w.scope for w in self._recon.index.windows if w.is_open(now))
        return scopes[0] if scopes else None

    def _current_registrar_state(self) -> RegistrarState:
        if not self._self_registered:
            return "standby"
        return "locked" if self._locked_all else "active"

    @property
    def _locked_all(self) -> bool:
        switches = self._recon.index.lockdown if self._recon is not None else {}
        return switches.get(GLOBAL_SCOPE, False) or all(
            switches.get(r, False) for r in self.config.profile.roles_registered_by(self.role)
        )

    async def _update_announcement(self) -> None:
        if self._publication is not None and (
            self._current_registrar_state() != self._registrar_state
            or self._window_open() != self._announced_window
        ):
            await self._announce_self()
            self._write_status()

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "role": self.role,
            "cluster": self.cluster,
            "host": socket.gethostname(),
            "owner": self.owner,
            "transport": self._transport.name if self._transport else None,
            "store": self.store.backend,
            "store_location": self.store.location,
            "lease": self._keeper.status() if self._keeper is not None else None,
            "interfaces": list(self.config.interfaces),
            "self_registered": self._self_registered,
            "registrar_state": self._registrar_state or self._current_registrar_state(),
            "trust": self.trust,
            "trust_source": self.trust_source,
            "window": self._window_open(),
            "api": self._api.url if self._api is not None else None,
            "updated": self._clock.time(),
        }

    def _write_status(self) -> None:
        write_atomic(
            self.config.state_dir / "daemon.json",
            json.dumps(self._status(), indent=2) + "\n",
            mode=0o644,
            durable=False,
        )


_OPEN_WARNING: Final = (
    "every well-formed announcement of a free role is registered, signed or not; "
    "set [controller] trust = token (signed announcements, `autoreg token create`) "
    "or approve (every node waits for `autoreg approve`)"
)
