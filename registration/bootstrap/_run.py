"""``autoreg bootstrap``: bring machines that have only sshd and python3 into the cluster.

Per machine, over one SSH connection whose host key was verified first: look at
the machine (one round trip), copy the agent unless its cache has it, write the
node's configuration with a fresh single-use join token, start the agent.  The
node then registers through the normal path: mDNS, or the registrar's HTTPS
endpoint, directly or, when the machine cannot reach it, through this very
connection (``_relay``).  Then wait until the fan-out has converged
(``registration._converge``) and say how each machine ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import paramiko

from .._bundle import Bundle, build_bundle
from .._config import Config
from .._converge import Convergence, Outcome
from .._exceptions import (
    AnnouncementError,
    AutoregError,
    ConfigError,
    FingerprintMismatch,
    SSHError,
)
from .._nodeconf import node_section, render_conf
from .._threads import ThreadLimiter
from .._trust import create_token
from ..controller._ssh import SSHTarget, VerifiedSession, load_private_key, open_verified
from ..protocol import check_name
from ..state import NodeRecord, NodeState, StateStore, is_settled
from ._known_hosts import KnownHosts, fingerprint_of_key
from ._relay import Relay
from ._remote_host import AGENT_HOST_KEY, AGENT_TOKEN, REMOTE_CACHE, Facts, Remote, cache_path
from ._targets import Target

log = logging.getLogger(__name__)

__all__ = ["BootstrapOptions", "BootstrapReport", "TargetResult", "bootstrap"]

#: Seconds between looks at the store while waiting for the nodes to register.
POLL: Final = 0.25
#: Up to this many machines the store is read node by node; beyond, in one listing.
FEW: Final = 32
#: Seconds of quiet after which bootstrap returns with nodes still open (--converged-timeout).
DEFAULT_CONVERGED_TIMEOUT: Final = 60.0
#: A join token made by bootstrap lives this long unless told otherwise (--token-ttl).
DEFAULT_TOKEN_TTL: Final = 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapOptions:
    role: str | None = None
    cluster: str | None = None
    parallel: int = 10
    cache: bool = True
    token_ttl: float = DEFAULT_TOKEN_TTL
    accept_new: bool = False
    known_hosts: Path | None = None
    identity: Path | None = None
    user: str | None = None
    python: tuple[str, ...] = ("python3",)
    remote_cache: str = REMOTE_CACHE
    persist: bool = False
    converged_timeout: float = DEFAULT_CONVERGED_TIMEOUT
    #: The registrar's endpoint as nodes should dial it, and its pin (default: this
    #: registrar's [controller] listen, at the address the SSH connection came from).
    registrar: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TargetResult:
    target: str
    state: str
    ok: bool
    node_id: str | None = None
    name: str | None = None
    fingerprint: str | None = None
    copied: bool = False
    route: str = "-"
    agent: str = ""
    detail: str = ""
    #: Seconds from bootstrap's start until the agent ran, and until the outcome settled.
    started_after: float | None = None
    settled_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class BootstrapReport:
    results: list[TargetResult]
    bundle: str
    elapsed: float
    copied_bytes: int

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bundle": self.bundle,
            "elapsed": round(self.elapsed, 3),
            "copied": sum(r.copied for r in self.results),
            "copied_bytes": self.copied_bytes,
            "targets": [r.to_json() for r in self.results],
        }


@dataclasses.dataclass
class _Machine:
    """One target while it is being bootstrapped."""

    target: Target
    role: str
    cluster: str | None
    result: TargetResult
    session: VerifiedSession | None = None
    token_id: str | None = None
    #: What it is doing now (a failure says in which step).
    step: str = "connecting"


class UnknownHostKey(SSHError):
    """A machine whose host key is not known, without --accept-new: what it showed."""

    def __init__(self, fingerprint: str, known_hosts: Path, *, host: str, port: int) -> None:
        self.fingerprint = fingerprint
        super().__init__(
            f"its host key {fingerprint} is not in {known_hosts}: check it, then add it "
            "there or run again with --accept-new (trust on first use)",
            host=host,
            port=port,
        )


def node_id_of(host_key: paramiko.PKey) -> str:
    """One host key is one node: the id is derived from it (stable across runs)."""
    return hashlib.sha256(host_key.asbytes()).hexdigest()[:16]


async def bootstrap(
    config: Config,
    store: StateStore,
    targets: Sequence[Target],
    options: BootstrapOptions,
    *,
    progress: Callable[[str, TargetResult], None] | None = None,
    bundle: Bundle | None = None,
) -> BootstrapReport:
    """Bootstrap every target, at most ``options.parallel`` at once; say how each ended."""
    if not targets:
        raise ConfigError("no target given (TARGET..., or --hosts FILE)")
    machines = [_machine(config, t, options) for t in targets]
    seen: dict[str, Target] = {}
    for t in targets:
        if t.key in seen:
            raise ConfigError(f"{t} is given twice (also as {seen[t.key]}): once per machine")
        seen[t.key] = t
    started = time.monotonic()
    threads = ThreadLimiter("autoreg-bootstrap", max(1, options.parallel))
    try:
        made = bundle if bundle is not None else await threads.run(build_bundle)
        work = _Work(config, store, options, made, threads, progress)
        await work.prepare()
        await work.run(machines)
    finally:
        for m in machines:
            if m.session is not None:
                m.session.close()
        await threads.aclose()
    return BootstrapReport(
        results=[m.result for m in machines],
        bundle=made.name,
        elapsed=time.monotonic() - started,
        copied_bytes=len(made.data) * sum(1 for m in machines if m.result.copied),
    )


def _machine(config: Config, target: Target, options: BootstrapOptions) -> _Machine:
    role = target.role or options.role
    cluster = target.cluster if target.role else options.cluster
    if role is None:
        raise ConfigError(f"{target}: no role (give --role, or a role in the hosts file)")
    spec = config.profile.role(role)
    if spec is None:
        roles = ", ".join(sorted(config.profile.roles))
        raise ConfigError(f"{target}: unknown role {role!r}; roles: {roles}")
    if spec.has_cluster and not cluster:
        raise ConfigError(f"{target}: role {role} belongs to a cluster: give --cluster")
    if cluster and not spec.has_cluster:
        raise ConfigError(f"{target}: role {role} has no cluster: drop the cluster")
    return _Machine(target, role, cluster, TargetResult(str(target), "waiting", False))


class _Work:
    def __init__(
        self,
        config: Config,
        store: StateStore,
        options: BootstrapOptions,
        bundle: Bundle,
        threads: ThreadLimiter,
        progress: Callable[[str, TargetResult], None] | None,
    ) -> None:
        self.config = config
        self.store = store
        self.options = options
        self.bundle = bundle
        self.threads = threads
        self.progress = progress
        self.known = KnownHosts(options.known_hosts or config.state_dir / "bootstrap_known_hosts")
        self.key: paramiko.PKey | None = None
        self.pin: str | None = None
        self.slots = asyncio.Semaphore(max(1, options.parallel))
        self.path = cache_path(options.remote_cache, bundle.name)

    async def prepare(self) -> None:
        self.key = await self.threads.run(
            load_private_key, self.options.identity or self.config.controller_key
        )
        if self.options.registrar is None and self.config.controller.listen is not None:
            from .._tls import api_identity

            identity = await self.threads.run(api_identity, self.config.keys_dir)
            self.pin = identity.fingerprint

    async def run(self, machines: list[_Machine]) -> None:
        now = self.began = time.monotonic()
        self.converge: Convergence[int] = Convergence(
            self.options.converged_timeout, now, range(len(machines))
        )
        tasks = [asyncio.create_task(self._one(i, m)) for i, m in enumerate(machines)]
        try:
            while True:
                await self._observe(machines)
                if self.converge.finished(time.monotonic()):
                    break
                await asyncio.sleep(POLL)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for i, m in enumerate(machines):
            outcome = self.converge.outcomes[i]
            detail = m.result.detail
            if not outcome.settled:
                quiet = self.options.converged_timeout
                detail = f"{outcome.state}: no change for {quiet:g} s" + (
                    f" ({outcome.detail})" if outcome.detail else ""
                )
            elif outcome.detail:
                detail = outcome.detail
            m.result = dataclasses.replace(
                m.result, state=outcome.state, ok=outcome.ok, detail=detail
            )

    def _set(self, index: int, m: _Machine, outcome: Outcome, **fields: Any) -> None:
        now = time.monotonic()
        if not self.converge.observe(index, outcome, now):
            m.result = dataclasses.replace(m.result, **fields)
            return
        after = round(now - self.began, 3)
        log.debug("%s: %s after %.3f s", m.target, outcome.state, after)
        if outcome.state == "started":
            fields["started_after"] = after
        if outcome.settled and m.result.settled_after is None:
            fields["settled_after"] = after
        m.result = dataclasses.replace(m.result, state=outcome.state, **fields)
        if self.progress:
            self.progress(outcome.state, m.result)

    async def _observe(self, machines: list[_Machine]) -> None:
        """The store's word on every machine whose agent runs (one read for many)."""
        running = [(i, m) for i, m in enumerate(machines) if m.result.node_id and m.result.agent]
        if len(running) > FEW:
            by_id = {rec.node_id: rec for rec in await self.store.nodes()}
        else:
            by_id = {}
            for _, m in running:
                assert m.result.node_id is not None
                found = await self.store.get(m.result.node_id)
                if found is not None:
                    by_id[found.node_id] = found
        for i, m in running:
            rec = by_id.get(m.result.node_id or "")
            if rec is not None:
                self._set(i, m, _outcome(rec))

    async def _one(self, index: int, m: _Machine) -> None:
        try:
            async with self.slots:
                await self._steps(index, m)
        except asyncio.CancelledError:  # the run ended (converged, or Ctrl-C) mid-setup
            if m.token_id is not None and not m.result.agent:
                with contextlib.suppress(AutoregError):  # never handed over: no use left open
                    await asyncio.shield(self.store.revoke_token(m.token_id))
            raise
        except FingerprintMismatch as exc:
            m.result = dataclasses.replace(m.result, fingerprint=exc.actual)
            await self._failed(index, m, "refused", _mismatch(exc, self.known.path))
        except UnknownHostKey as exc:
            m.result = dataclasses.replace(m.result, fingerprint=exc.fingerprint)
            await self._failed(index, m, "failed", f"{m.step}: {exc}")
        except (AutoregError, OSError) as exc:
            await self._failed(index, m, "failed", f"{m.step}: {exc}")

    async def _steps(self, index: int, m: _Machine) -> None:
        """Connect, look, copy; then configure and start unless all is in place already."""
        self._set(index, m, Outcome("connecting"))
        m.session = session = await self.threads.run(self._connect, m)
        fingerprint = fingerprint_of_key(session.host_key)
        node_id = node_id_of(session.host_key)
        m.result = dataclasses.replace(m.result, fingerprint=fingerprint, node_id=node_id)
        m.step = "looking at the machine"
        remote = Remote(session, self.options.python, self.config.controller.connect_timeout * 6)
        endpoint = self._endpoint(session)
        facts = await self.threads.run(remote.facts, self.path, self.bundle.sha256, endpoint)
        rec = await self.store.get(node_id)
        already = (
            rec is not None and rec.state is NodeState.REGISTERED and rec.fingerprint == fingerprint
        )
        copy = not facts.cached or not self.options.cache
        if copy:
            m.step = "copying the agent"
            self._set(index, m, Outcome("copying"))
            await self.threads.run(remote.copy, self.path, self.bundle.data)
        m.result = dataclasses.replace(m.result, copied=copy)
        if already and not copy:
            assert rec is not None
            self._set(index, m, Outcome("registered", settled=True, ok=True),
                      name=rec.name, agent="unchanged",
                      detail="already registered; the agent is current")  # fmt: skip
            return
        await self._start(index, m, remote, facts, endpoint, token=not already)

    async def _start(
        self,
        index: int,
        m: _Machine,
        remote: Remote,
        facts: Facts,
        endpoint: tuple[str, int] | None,
        *,
        token: bool,
    ) -> None:
        """The node's configuration (with a fresh token unless registered), then the agent."""
        assert m.session is not None and m.result.node_id is not None
        node_id = m.result.node_id
        m.step = "choosing the registrar's route"
        route, registrar = await self._route(m, facts, endpoint)
        name = _node_name(facts.hostname, m.role, node_id)
        secret = None
        if token:
            m.step = "making a join token"
            joined, _ = await create_token(
                self.config,
                self.store,
                roles=[m.role],
                cluster=m.cluster,
                uses=1,
                ttl=self.options.token_ttl,
                description=f"autoreg bootstrap of {m.target} ({node_id})",
            )
            m.token_id, secret = joined.token_id, str(joined)
        m.step = "writing the node's configuration"
        conf = self._node_conf(m, node_id, name, registrar, secret is not None)
        key_line = m.session.host_key_line
        await self.threads.run(remote.install, config=conf, token=secret, host_key_line=key_line)
        m.step = "starting the agent"
        agent = await self.threads.run(
            remote.start, self.path, systemd=facts.systemd, persist=self.options.persist
        )
        m.result = dataclasses.replace(m.result, name=name, route=route, agent=agent)
        if route != "ssh-forward":  # only a relay needs the connection any longer
            m.session.close()
            m.session = None
        self._set(index, m, Outcome("started", detail=agent))

    async def _failed(self, index: int, m: _Machine, state: str, detail: str) -> None:
        if m.token_id is not None and not m.result.agent:
            await self.store.revoke_token(m.token_id)  # never handed over: no use left open
        self._set(index, m, Outcome(state, settled=True, detail=detail), detail=detail)

    def _connect(self, m: _Machine) -> VerifiedSession:
        """Blocking: the verified, authenticated connection (or why not)."""
        t = m.target
        known = self.known.lookup(t)
        user = t.user or self.options.user or self.config.controller.ssh_user
        timeout = self.config.controller.connect_timeout
        if known is not None:
            target = SSHTarget(
                t.host, t.port, fingerprint_of_key(known), known.get_name(), user, timeout
            )
            session = open_verified(target, self.key)
            return session
        probe = SSHTarget(t.host, t.port, "", "", user, timeout)
        session = open_verified(probe, None, learn=True)
        shown = fingerprint_of_key(session.host_key)
        if not self.options.accept_new:
            session.close()
            raise UnknownHostKey(shown, self.known.path, host=t.host, port=t.port)
        self.known.record(t, session.host_key)
        try:
            assert self.key is not None
            session.authenticate(self.key)
        except BaseException:
            session.close()
            raise
        return session

    def _endpoint(self, session: VerifiedSession) -> tuple[str, int] | None:
        """Where the machine would dial the registrar (for the reachability probe)."""
        if self.options.registrar is not None:
            return _url_endpoint(self.options.registrar[0])
        listen = self.config.controller.listen
        here = session.local_address
        if listen is None or here is None:
            return None
        return here, listen[1]

    async def _route(
        self, m: _Machine, facts: Facts, endpoint: tuple[str, int] | None
    ) -> tuple[str, tuple[str, str] | None]:
        """How the node reaches the registrar: (route in words, [node] registrar URL and pin)."""
        if self.options.registrar is not None:
            return "https", self.options.registrar
        if endpoint is None or self.pin is None:
            return "mdns", None
        if facts.registrar_reachable:
            return "https", (f"https://{_url_host(endpoint[0])}:{endpoint[1]}", self.pin)
        listen = self.config.controller.listen
        assert listen is not None and m.session is not None
        relay = Relay((_dial_host(listen[0]), listen[1]), str(m.target))
        port = await self.threads.run(m.session.forward_remote, relay)
        return "ssh-forward", (f"https://127.0.0.1:{port}", self.pin)

    def _node_conf(
        self, m: _Machine, node_id: str, name: str, registrar: tuple[str, str] | None, token: bool
    ) -> str:
        more = {"ssh_port": str(m.target.port), "host_key": AGENT_HOST_KEY}
        if m.target.is_address:
            more["address"] = m.target.host
        node = node_section(
            role=m.role,
            cluster=m.cluster,
            node_id=node_id,
            name=name,
            token_file=AGENT_TOKEN if token else None,
            registrar=registrar,
            **more,
        )
        return render_conf(
            {"autoreg": {"transport": "auto"}, "node": node},
            header=(
                f"autoreg node agent, written by autoreg bootstrap (bundle {self.bundle.name}).",
                "A drop-in: it overrides /etc/autoreg/autoreg.conf.",
            ),
        )


def _outcome(rec: NodeRecord) -> Outcome:
    if rec.state is NodeState.REGISTERED:
        return Outcome("registered", settled=True, ok=True)
    return Outcome(rec.state.value, settled=is_settled(rec), detail=rec.reason or "")


def _node_name(hostname: str, role: str, node_id: str) -> str:
    try:
        return check_name(hostname.split(".", maxsplit=1)[0])
    except AnnouncementError:
        return f"{role}-{node_id[:6]}"


def _mismatch(exc: FingerprintMismatch, known_hosts: Path) -> str:
    return (
        f"host key mismatch: {known_hosts} has {exc.announced}, the machine showed {exc.actual}; "
        "nothing was copied or run (if the machine was reinstalled, remove its line there)"
    )


def _url_endpoint(url: str) -> tuple[str, int]:
    rest = url.split("://", 1)[1]
    if rest.startswith("["):
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    return host, int(port.rstrip("/"))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _dial_host(listen_host: str) -> str:
    """The address to relay to: the endpoint's own, or loopback when it listens on all."""
    try:
        if ipaddress.ip_address(listen_host).is_unspecified:
            return "127.0.0.1"
    except ValueError:
        pass
    return listen_host
