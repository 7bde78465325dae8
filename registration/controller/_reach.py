"""Reaching a node: direct, back through its callback tunnel, or through a proxy node.

One chain for every user of SSH (registration, receipts, ``autoreg ssh`` and
``exec``): the path that worked last is tried first, then direct, then the
node's tunnel ports, then its cluster's proxy.  A host-key mismatch on any path
ends the chain at once (a tunnel or proxy never weakens the fingerprint
check).  Also renders what lets plain ``ssh``/``scp`` follow the same path:
a ``known_hosts`` holding the verified key and an ``ssh_config`` with
``Host node``.  Blocking: run it in the executor.
"""

from __future__ import annotations

import dataclasses
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import paramiko

from .._config import Config
from .._exceptions import FingerprintMismatch, NodeUnreachable, SSHError
from .._files import write_atomic
from ..state import NodeRecord
from ._proxies import ProxyPool
from ._ssh import DIRECT, SSHTarget, VerifiedSession, Via, ViaProxy, ViaTunnel, open_verified

__all__ = ["TUNNEL_TIMEOUT", "AccessFiles", "Reach", "short_error"]

#: Seconds a tunnel port gets to answer: it is on loopback, so anything slower is a
#: stale forward held by a node's dead session (the controller moves on to the next).
TUNNEL_TIMEOUT: Final = 3.0
#: Seconds an OpenSSH connection shared by a hook's ssh/scp calls outlives the last one.
MUX_PERSIST: Final = 5


@dataclasses.dataclass(frozen=True, slots=True)
class AccessFiles:
    known_hosts: Path
    ssh_config: Path  # kept for admins and `autoreg ssh`: works whether a daemon runs or not
    hook_ssh_config: Path | None = None  # the same plus connection sharing, for one hook run


class Reach:
    """Path choice and access files for one controller configuration."""

    def __init__(self, config: Config, *, mux_dir: Path | None = None) -> None:
        self._config = config
        self._mux_dir = mux_dir

    def target(self, rec: NodeRecord) -> SSHTarget:
        ctl = self._config.controller
        return SSHTarget(
            host=rec.ip,
            port=rec.port,
            fingerprint=rec.fingerprint,
            key_type=rec.key_type,
            user=ctl.ssh_user,
            timeout=ctl.connect_timeout,
        )

    def candidates(self, rec: NodeRecord, tunnel_ports: Sequence[int]) -> list[Via]:
        """Paths to try, the one that worked last first."""
        paths: list[Via] = [DIRECT, *(ViaTunnel(p) for p in tunnel_ports)]
        proxy = self._config.proxy_for(rec.cluster)
        if proxy is not None:
            paths.append(
                ViaProxy(
                    SSHTarget(
                        host=proxy.host,
                        port=proxy.port,
                        fingerprint=proxy.fingerprint,
                        key_type=proxy.key_type,
                        user=proxy.user,
                        timeout=self._config.controller.connect_timeout,
                    )
                )
            )
        # The path that worked last first; a tunnel port that worked last brings the
        # node's other tunnel ports with it (a returning node takes its next port).
        last = rec.path or ""
        paths.sort(
            key=lambda via: (
                via.describe() != last,
                not (last.startswith("tunnel:") and via.name == "tunnel"),
            )
        )
        return paths

    def connect(
        self,
        rec: NodeRecord,
        key: paramiko.PKey,
        tunnel_ports: Sequence[int] = (),
        *,
        authenticate: bool = True,
        sock: socket.socket | None = None,
        direct_error: str | None = None,
        proxies: ProxyPool | None = None,
    ) -> VerifiedSession:
        """The first path that verifies; FingerprintMismatch ends the chain at once.

        ``key`` logs in to a proxy node when the chain gets there, and to the node
        itself unless ``authenticate`` is false (then the caller authenticates later).
        ``sock`` is a connection to the node's direct address already made (the
        daemon dials first); ``direct_error`` says why that address did not answer
        (the direct path is then not tried again).  ``sock`` is always consumed.
        With ``proxies``, a proxy path uses the pool's shared connection to the proxy.
        """
        target = self.target(rec)
        errors: list[str] = []
        try:
            for via in self.candidates(rec, tunnel_ports):
                attempt = target
                if isinstance(via, ViaTunnel):
                    attempt = dataclasses.replace(
                        target, timeout=min(target.timeout, TUNNEL_TIMEOUT)
                    )
                given = None
                if via is DIRECT:
                    if direct_error is not None:
                        errors.append(direct_error)
                        continue
                    given, sock = sock, None
                try:
                    shared = (
                        proxies.session(via.proxy)
                        if isinstance(via, ViaProxy) and proxies is not None
                        else None
                    )
                    return open_verified(
                        attempt,
                        key if authenticate else None,
                        via=via,
                        proxy_key=key,
                        sock=given,
                        proxy_session=shared,
                    )
                except FingerprintMismatch:
                    raise
                except SSHError as exc:
                    errors.append(f"{via.describe()}: {short_error(exc)}")
        finally:
            if sock is not None:
                sock.close()
        raise NodeUnreachable(
            "no path works (" + "; ".join(errors) + ")", host=rec.ip, port=rec.port
        )

    # -- what plain ssh needs ---------------------------------------------------------

    def node_dir(self, rec: NodeRecord) -> Path:
        return self._config.state_dir / "nodes" / rec.node_id

    def write_access_files(self, rec: NodeRecord, session: VerifiedSession) -> AccessFiles:
        """known_hosts and ssh_config that let ``ssh -F FILE node`` follow ``session``'s path."""
        directory = self.node_dir(rec)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        alias = f"autoreg-{rec.node_id}"
        host_entry = rec.ip if rec.port == 22 else f"[{rec.ip}]:{rec.port}"
        lines = [f"{alias} {session.host_key_line}", f"{host_entry} {session.host_key_line}"]
        proxy_alias = None
        if session.proxy is not None:
            proxy_alias = f"autoreg-proxy-{rec.cluster or 'default'}"
            lines.append(f"{proxy_alias} {session.proxy.host_key_line}")
        known_hosts = directory / "known_hosts"
        _write(known_hosts, "\n".join(lines) + "\n")
        ssh_config = directory / "ssh_config"
        _write(
            ssh_config,
            self._ssh_config(rec, session, known_hosts, alias, proxy_alias, ssh_config, mux=False),
        )
        hook_config = None
        if self._mux_dir is not None:
            hook_config = directory / "ssh_config.hook"
            _write(
                hook_config,
                self._ssh_config(
                    rec, session, known_hosts, alias, proxy_alias, hook_config, mux=True
                ),
            )
        return AccessFiles(
            known_hosts=known_hosts, ssh_config=ssh_config, hook_ssh_config=hook_config
        )

    def _ssh_config(
        self,
        rec: NodeRecord,
        session: VerifiedSession,
        known_hosts: Path,
        alias: str,
        proxy_alias: str | None,
        path: Path,
        *,
        mux: bool,
    ) -> str:
        ctl = self._config.controller
        host, port = self.ssh_endpoint(rec, session)
        common = [
            f"    IdentityFile {self._config.controller_key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            f"    ConnectTimeout {max(1, round(ctl.connect_timeout))}",
        ]
        out = [
            f"# Written by autoreg: ssh -F THIS_FILE node  (path {session.via.describe()})",
            "Host node",
            f"    HostName {host}",
            f"    Port {port}",
            f"    User {ctl.ssh_user}",
            f"    HostKeyAlias {alias}",
            *common,
        ]
        if mux and self._mux_dir is not None:
            # One connection for all of a hook's ssh/scp calls (each new SSH handshake
            # costs a few hundred ms); the socket directory is private.
            out += [
                "    ControlMaster auto",
                f"    ControlPath {self._mux_dir}/%C",
                f"    ControlPersist {MUX_PERSIST}",
            ]
        if session.proxy is not None and proxy_alias is not None:
            proxy = session.proxy.target
            out.append(f"    ProxyCommand ssh -F {shlex.quote(str(path))} -W %h:%p {proxy_alias}")
            out += [
                "",
                f"Host {proxy_alias}",
                f"    HostName {proxy.host}",
                f"    Port {proxy.port}",
                f"    User {proxy.user}",
                f"    HostKeyAlias {proxy_alias}",
                *common,
            ]
        return "\n".join(out) + "\n"

    @staticmethod
    def ssh_endpoint(rec: NodeRecord, session: VerifiedSession) -> tuple[str, int]:
        """Where plain ssh connects: loopback for a tunnel, the node itself otherwise."""
        if isinstance(session.via, ViaTunnel):
            return session.via.host, session.via.port
        return rec.ip, rec.port

    def path_env(
        self, rec: NodeRecord, session: VerifiedSession, files: AccessFiles
    ) -> dict[str, str]:
        """The hook variables that describe the path (docs/hooks.md)."""
        host, port = self.ssh_endpoint(rec, session)
        env = {
            "AUTOREG_PATH": session.via.name,
            "AUTOREG_SSH_HOST": host,
            "AUTOREG_SSH_PORT": str(port),
            "AUTOREG_SSH_USER": self._config.controller.ssh_user,
            "AUTOREG_SSH_KEY": str(self._config.controller_key),
            "AUTOREG_KNOWN_HOSTS": str(files.known_hosts),
            "AUTOREG_SSH_CONFIG": str(files.hook_ssh_config or files.ssh_config),
            "AUTOREG_PROXY": "",
        }
        if session.proxy is not None:
            proxy = session.proxy.target
            env["AUTOREG_PROXY"] = f"{proxy.user}@{proxy.host}:{proxy.port}"
        return env


def short_error(exc: SSHError) -> str:
    """An SSH error in one line of at most 160 characters."""
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "…"


def _write(path: Path, text: str) -> None:
    # Regenerated on every attempt: atomic, but no fsync needed.
    write_atomic(path, text, mode=0o600, durable=False)
