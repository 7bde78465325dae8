"""A real etcd cluster (Debian's ``/usr/bin/etcd``, v3.4) on a :mod:`netlab` network.

:class:`EtcdCluster` puts one member per lab host (``etcd0``, ``etcd1``, … at
``198.18.<index>.<n>``), bootstraps them statically (``--initial-cluster``) with their
data directories below the hosts' workdirs, and runs **TLS everywhere**: a throwaway CA
(made with ``openssl`` for this cluster alone), one server certificate per member with
its address as SAN (used for the client port, the peer port and the member's own
gRPC-gateway), client certificates required on both ports (``--client-cert-auth``,
``--peer-client-cert-auth``) and one client certificate, :attr:`EtcdCluster.client_tls`,
for the tests' clients.  Members listen on their lab address only: nothing runs in the
root namespace and no traffic leaves the lab.

Faults: :meth:`EtcdMember.kill` (SIGKILL), :meth:`~EtcdMember.stop` (SIGTERM, graceful),
:meth:`~EtcdMember.restart` (same data dir: the member rejoins), :meth:`~EtcdMember.cut` /
:meth:`~EtcdMember.heal` (every packet on the member's ``eth0`` dropped, both ways, via
``Host.unplug``).  :meth:`EtcdCluster.add_client` adds a plain host from which tests run
``etcdctl`` (:meth:`~EtcdCluster.etcdctl`) or Python clients (:meth:`~EtcdCluster.python`).

Timing: members run with ``--heartbeat-interval 50`` / ``--election-timeout 500`` (ms;
etcd's defaults are 100/1000), so a crashed leader is replaced in about half a second.
Safe here because etcd's tuning rules (heartbeat about the round trip between members,
election timeout at least ten heartbeats) hold with a wide margin: the members share one
veth bridge, with round trips far below a millisecond.  Shorter timeouts only ever cost
availability, never safety (Raft's guarantees do not depend on timing): a member starved of
CPU for half a second (2 cores shared with other tests) may call an election a default
cluster would not, and requests in flight then fail ("leader changed", "request timed
out") and are retried.  Quorum loss surfaces after etcd's request timeout,
5 s + 2 x election timeout = 6 s (7 s with the defaults).

Everything the cluster starts is a ``Proc`` of its lab: ``Lab.close`` kills whatever
:meth:`EtcdCluster.close` could not.  Requires root (``netlab.LabUnavailable``) and the
``etcd-server``, ``etcd-client`` and ``openssl`` packages (:class:`EtcdUnavailable`).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from .netlab import Host, Lab, LabError, Proc

__all__ = [
    "CLIENT_PORT",
    "ETCD",
    "ETCDCTL",
    "PEER_PORT",
    "CertAuthority",
    "EtcdCluster",
    "EtcdMember",
    "EtcdUnavailable",
    "TLSFiles",
    "client_env",
]

ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
OPENSSL = "openssl"
CLIENT_PORT = 2379
PEER_PORT = 2380
#: Milliseconds (see the module docstring for why shorter than etcd's 100/1000 is safe).
HEARTBEAT_MS = 50
ELECTION_MS = 500
#: Seconds between health probes while waiting.
_POLL = 0.2
_CERT_DAYS = 2

#: Proxy variables blanked for members and clients: Go (etcd's peer transport, etcdctl's
#: gRPC dialer) and requests both honour them, and lab traffic must never go to a proxy.
_NO_PROXY_ENV = {
    "http_proxy": "",
    "https_proxy": "",
    "all_proxy": "",
    "HTTP_PROXY": "",
    "HTTPS_PROXY": "",
    "ALL_PROXY": "",
    "no_proxy": "*",
    "NO_PROXY": "*",
}


class EtcdUnavailable(LabError):
    """etcd, etcdctl or openssl is not installed (``sh tools/bootstrap.sh``)."""


class TLSFiles(NamedTuple):
    """PEM files of one TLS identity: the CA to trust, a certificate and its key."""

    ca: Path
    cert: Path
    key: Path


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process talking to the cluster: no proxy, plus ``extra``."""
    env = dict(_NO_PROXY_ENV)
    if extra:
        env.update(extra)
    return env


def _openssl(*args: str, timeout: float = 30) -> None:
    try:
        subprocess.run(
            [OPENSSL, *args], capture_output=True, check=True, timeout=timeout, text=True
        )
    except subprocess.CalledProcessError as e:
        raise LabError(f"openssl {' '.join(args[:2])} failed: {e.stderr.strip()}") from e


class CertAuthority:
    """A throwaway CA (EC P-256, valid two days) in ``directory``; issues leaf certificates."""

    def __init__(self, directory: Path, *, name: str = "etcdlab test CA") -> None:
        if shutil.which(OPENSSL) is None:
            raise EtcdUnavailable("openssl is not installed (Debian package openssl)")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self.cert = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
            "-days", str(_CERT_DAYS), "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def issue(self, name: str, *, ips: Sequence[str] = (), dns: Sequence[str] = ()) -> TLSFiles:
        """A key and certificate ``CN=name`` with SANs ``ips``/``dns``, for server and client.

        Both extended key usages on every certificate: etcd members present theirs as
        servers and as clients (to peers, and the grpc-gateway to its own gRPC server).
        """
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.directory / f"{name}.ext"
        sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth,clientAuth",
        ]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", "0x" + secrets.token_hex(16), "-days", str(_CERT_DAYS),
            "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        csr.unlink()
        key.chmod(0o600)
        return TLSFiles(self.cert, cert, key)


class EtcdMember:
    """One etcd member: a lab host, its data directory, its TLS identity, its process."""

    def __init__(self, cluster: EtcdCluster, index: int, host: Host, tls: TLSFiles) -> None:
        self.cluster = cluster
        self.index = index
        self.host = host
        self.name = host.name
        self.ip = host.ip
        self.tls = tls
        self.data_dir = host.workdir / "data"
        self.client_url = f"https://{self.ip}:{CLIENT_PORT}"
        self.peer_url = f"https://{self.ip}:{PEER_PORT}"
        self.proc: Proc | None = None
        #: Every process this member ran, oldest first (the last one is :attr:`proc`).
        self.history: list[Proc] = []

    def __repr__(self) -> str:
        state = "running" if self.running else "down"
        cut = " cut" if self.is_cut else ""
        return f"<EtcdMember {self.name} {self.client_url} {state}{cut}>"

    @property
    def endpoint(self) -> str:
        return self.client_url

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.alive()

    @property
    def is_cut(self) -> bool:
        return self.host._unplugged

    def argv(self) -> list[str]:
        c = self.cluster
        return [
            ETCD,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={c.initial_cluster}",
            "--initial-cluster-state=new",  # ignored once the data dir holds a WAL
            f"--initial-cluster-token={c.token}",
            f"--cert-file={self.tls.cert}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
            f"--peer-cert-file={self.tls.cert}",
            f"--peer-key-file={self.tls.key}",
            f"--peer-trusted-ca-file={self.tls.ca}",
            "--peer-client-cert-auth",
            f"--heartbeat-interval={c.heartbeat_ms}",
            f"--election-timeout={c.election_ms}",
            "--logger=zap",
            "--log-outputs=stderr",
            *c.extra_args,
        ]

    def start(self, *, timeout: float = 15) -> Proc:
        """Start the member's etcd; return once it listens for peers (not yet serving).

        Serving clients needs a quorum (a member publishes itself through Raft first):
        use :meth:`EtcdCluster.wait_healthy` for that.
        """
        if self.running:
            raise LabError(f"{self!r} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        proc = self.host.spawn(self.argv(), env=client_env(), log_name="etcd")
        self.proc = proc
        self.history.append(proc)
        try:
            # Logged once both listeners are bound (a bad flag or a busy port exits first).
            proc.wait_for_log(r'"msg":"starting an etcd server"', timeout)
        except AssertionError:
            proc.kill()
            raise
        return proc

    def kill(self) -> None:
        """SIGKILL: a crash or a power cut (the WAL keeps what was fsynced)."""
        if self.proc is not None:
            self.proc.kill()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM and wait (a leader hands leadership over first); SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        return self.proc.terminate(timeout)

    def restart(self, *, timeout: float = 15) -> Proc:
        """Stop the member if it runs, start it again on the same data directory."""
        if self.running:
            self.stop()
        return self.start(timeout=timeout)

    def cut(self) -> None:
        """Isolate the member: every packet in and out of its ``eth0`` is dropped."""
        self.host.unplug()

    def heal(self) -> None:
        """Undo :meth:`cut`."""
        self.host.plug()

    def log_text(self) -> str:
        """Output of every run of this member, oldest first."""
        return "".join(p.log_text() for p in self.history)

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class EtcdCluster:
    """``members`` etcd members on ``lab``, one host each, TLS everywhere.

    Use as a context manager (starts, waits until healthy, closes) or call
    :meth:`start` and :meth:`close`.  ``extra_args`` are appended to every member's
    command line (e.g. ``["--auto-compaction-mode=revision", "--auto-compaction-retention=100"]``).
    """

    def __init__(
        self,
        lab: Lab,
        members: int = 3,
        *,
        name_prefix: str = "etcd",
        heartbeat_ms: int = HEARTBEAT_MS,
        election_ms: int = ELECTION_MS,
        extra_args: Sequence[str] = (),
        keep_data: bool = False,
    ) -> None:
        if not 1 <= members <= 9:
            raise ValueError(f"members must be 1..9, got {members}")
        for tool in (ETCD, ETCDCTL):
            if not Path(tool).is_file():
                raise EtcdUnavailable(
                    f"{tool} is missing (Debian packages etcd-server, etcd-client)"
                )
        self.lab = lab
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = list(extra_args)
        self.keep_data = keep_data
        self.token = f"{lab.tag}-{name_prefix}"
        self.ca = CertAuthority(lab.workdir / f"{name_prefix}-pki")
        hosts = [lab.add_host(f"{name_prefix}{i}") for i in range(members)]
        self.members = [
            EtcdMember(self, i, h, self.ca.issue(h.name, ips=[h.ip, "127.0.0.1"], dns=[h.name]))
            for i, h in enumerate(hosts)
        ]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        #: The client identity for tests (``ca``, ``cert``, ``key``).
        self.client_tls = self.ca.issue(f"{name_prefix}-client")
        self.clients: list[Host] = []
        self._probe: Host | None = None
        self._prefix = name_prefix
        self._closed = False

    def __repr__(self) -> str:
        return f"<EtcdCluster {self.token} {self.members!r}>"

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        try:
            self.start()
        except BaseException:
            self._close_quietly()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_quietly()

    def _close_quietly(self) -> None:
        try:  # never mask the test's own failure with a cleanup error
            self.close()
        except Exception as cleanup_error:  # pragma: no cover - best effort
            warnings.warn(f"etcdlab cleanup failed: {cleanup_error}", stacklevel=3)

    def start(self, *, timeout: float = 30) -> None:
        """Start every member (all at once: a static bootstrap needs a quorum up) and wait
        until all are healthy."""
        for m in self.members:
            m.start()
        self.wait_healthy(timeout)

    def close(self) -> None:
        """Kill every member (SIGKILL: the data is thrown away, and a graceful stop of a
        whole cluster waits for leadership transfers that cannot happen) and remove their
        data directories.  Idempotent.  Logs and certificates stay in the lab workdir;
        the namespaces go with the lab.
        """
        if self._closed:
            return
        self._closed = True
        procs = [p for m in self.members for p in m.history]
        for p in procs:
            p.kill()
        if not self.keep_data:
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
        if left := [p for p in procs if p.alive()]:
            raise LabError(f"etcd members still running after close: {left!r}")

    # -- accessors -----------------------------------------------------------------

    def member(self, i: int) -> EtcdMember:
        return self.members[i]

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, ``https://198.18.x.y:2379``."""
        return [m.client_url for m in self.members]

    def client_kwargs(self, i: int = 0) -> dict[str, Any]:
        """Keyword arguments of ``etcd3gw.Etcd3Client`` for member ``i`` (string paths)."""
        m = self.members[i]
        return {
            "host": m.ip,
            "port": CLIENT_PORT,
            "protocol": "https",
            "ca_cert": str(self.client_tls.ca),
            "cert_cert": str(self.client_tls.cert),
            "cert_key": str(self.client_tls.key),
            "api_path": "/v3/",
        }

    def add_client(self, name: str = "client") -> Host:
        """A plain host on the lab, to run clients of the cluster from."""
        host = self.lab.add_host(name)
        self.clients.append(host)
        return host

    def _probe_host(self) -> Host:
        if self._probe is None:
            self._probe = self.lab.add_host(f"{self._prefix}-probe")
        return self._probe

    # -- clients -------------------------------------------------------------------

    def etcdctl(
        self,
        *args: str,
        host: Host | None = None,
        endpoints: Sequence[str] | None = None,
        timeout: float = 15,
        check: bool = True,
        command_timeout: float = 5,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``etcdctl ARGS`` (v3 API, client certificate) inside ``host``'s namespace.

        ``host`` defaults to a probe host of the cluster; ``endpoints`` to all members.
        """
        tls = self.client_tls
        argv = [
            ETCDCTL,
            f"--endpoints={','.join(endpoints or self.endpoints)}",
            f"--cacert={tls.ca}",
            f"--cert={tls.cert}",
            f"--key={tls.key}",
            "--dial-timeout=2s",
            f"--command-timeout={command_timeout:g}s",
            *args,
        ]
        runner = host or self._probe_host()
        return runner.run(argv, timeout=timeout, check=check, env=client_env({"ETCDCTL_API": "3"}))

    def python(
        self,
        host: Host,
        code: str,
        *args: str,
        python: str | None = None,
        timeout: float = 30,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``python -c CODE ARGS`` in ``host``'s namespace (default: this interpreter,
        so the suite's virtualenv and its ``etcd3gw``); ``/usr/bin/python3`` gets Debian's."""
        argv = [python or sys.executable, "-c", code, *args]
        return host.run(argv, timeout=timeout, check=check, env=client_env(env))

    # -- health --------------------------------------------------------------------

    def health(
        self, members: Sequence[EtcdMember] | None = None, *, host: Host | None = None
    ) -> dict[str, dict[str, Any]]:
        """``etcdctl endpoint health`` of ``members`` (default all): endpoint -> its report.

        Each report has ``health`` (bool), ``took`` and, when unhealthy, ``error``.  A member
        is healthy when it answers a linearizable read, i.e. it is part of a quorum.
        """
        chosen = list(self.members if members is None else members)
        endpoints = [m.client_url for m in chosen]
        try:
            res = self.etcdctl(
                "endpoint", "health", "-w", "json",
                host=host, endpoints=endpoints, timeout=10, check=False, command_timeout=2,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {e: {"health": False, "error": "etcdctl timed out"} for e in endpoints}
        reports: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(ValueError):
            for item in json.loads(res.stdout.decode() or "[]"):
                reports[item.get("endpoint", "?")] = item
        for e in endpoints:
            reports.setdefault(e, {"health": False, "error": res.stderr.decode().strip()})
        return reports

    def wait_healthy(
        self,
        timeout: float = 30,
        members: Sequence[EtcdMember] | None = None,
        *,
        host: Host | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Poll :meth:`health` until every member in ``members`` (default: all) is healthy.

        Fails with an AssertionError naming the unhealthy endpoints and their log tails
        after ``timeout`` seconds.
        """
        chosen = list(self.members if members is None else members)
        deadline = time.monotonic() + timeout
        while True:
            reports = self.health(chosen, host=host)
            sick = [m for m in chosen if not reports[m.client_url].get("health")]
            if not sick:
                return reports
            if time.monotonic() >= deadline:
                break
            time.sleep(_POLL)
        details = "\n".join(
            f"{m.name} ({'running' if m.running else 'down'}):"
            f" {reports[m.client_url].get('error')}\n  log tail:\n{m.log_tail(10)}"
            for m in sick
        )
        raise AssertionError(f"etcd not healthy after {timeout:g}s:\n{details}")

    def status(self, *, host: Host | None = None) -> list[dict[str, Any]]:
        """``etcdctl endpoint status`` of the members that answer (leader, raft term, db size)."""
        res = self.etcdctl("endpoint", "status", "-w", "json", host=host, check=False)
        try:
            return list(json.loads(res.stdout.decode() or "[]"))
        except ValueError:
            return []

    def leader(self, *, host: Host | None = None) -> EtcdMember | None:
        """The member the answering members agree is the leader (None if none answers)."""
        for item in self.status(host=host):
            st = item.get("Status", {})
            if st.get("leader") and st.get("leader") == st.get("header", {}).get("member_id"):
                return next((m for m in self.members if m.client_url == item["Endpoint"]), None)
        return None

    def put(self, key: str, value: str, *, host: Host | None = None) -> None:
        """``etcdctl put`` (raises CommandError with etcd's message on failure)."""
        self.etcdctl("put", key, value, host=host)

    def get(self, key: str, *, host: Host | None = None) -> str | None:
        res = self.etcdctl("get", "--print-value-only", key, host=host)
        out = res.stdout.decode()
        return out[:-1] if out.endswith("\n") else (out or None)
