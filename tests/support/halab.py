"""Several registrars on one etcd cluster, and many nodes, on the namespace lab.

:class:`HALab` builds on one :class:`netlab.Lab` (its own bridge, nothing in the root
namespace): a three-member TLS etcd cluster (:mod:`etcdlab`), a ``client`` host the
tests read the store from (:class:`RemoteStore`: a thread of this process inside that
namespace), a ``farm`` host holding the nodes (``198.19.64.0/18``, routed through the
farm's address from every registrar; one real sshd per node bound to its own address,
each with its own host key; one process announcing all of them through unchanged
``Announcer`` objects, :mod:`ha_nodes`) and any number of registrars
(:class:`autoreg_lab.Station`, real ``autoreg daemon`` processes, ``store = etcd``).

A :class:`Scenario` is one test's: an etcd prefix of its own (a fresh store on the
shared cluster), its registrars, its nodes (ids of its own; farm slots are reused) and
one hook for role ``ha`` that appends ``start``/``end``/``term`` lines to one log all
registrars share, so runs are counted from the hook's own log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from registration.state import EtcdStore, Event, NodeRecord

from .autoreg_lab import AutoregLab, Station
from .etcdlab import EtcdCluster
from .netlab import Host, Lab, Proc
from .netns import inside
from .stores import etcd_settings
from .sync_store import SyncStore

__all__ = ["HALab", "HookRun", "RemoteStore", "Scenario", "node_address"]

T = TypeVar("T")
NODE_NET = "198.19.64.0/18"
ROLE = "ha"
REGISTRAR_ROLE = "clc"
SUPPORT = Path(__file__).resolve().parent
ETCD_ARGS = ("--experimental-watch-progress-notify-interval=1s",)
#: The registrars' lease: short, so that takeovers happen within a test's patience.
LEASE_TTL = 10
SSHD_CONFIG = """\
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile none
Subsystem sftp internal-sftp
LogLevel ERROR
AuthorizedKeysFile {authorized}
"""
HOOK = """#!/bin/sh
# Counts its own runs: one line when it starts, one when it ends, one when terminated.
log={log}
who=$(basename "$(dirname "$AUTOREG_STATE_DIR")")
trap 'echo "term $AUTOREG_NODE_ID $who $AUTOREG_RESUMED $(date +%s.%N)" >> "$log"; exit 143' TERM
echo "start $AUTOREG_NODE_ID $who $AUTOREG_RESUMED $(date +%s.%N)" >> "$log"
pause=$(cat {pause} 2>/dev/null || echo 0)
if [ "$pause" != 0 ]; then sleep "$pause" & wait $!; fi
echo "end $AUTOREG_NODE_ID $who $AUTOREG_RESUMED $(date +%s.%N)" >> "$log"
"""


def node_address(index: int) -> str:
    net = ipaddress.ip_network(NODE_NET)
    third, fourth = divmod(index, 250)
    return str(net.network_address + third * 256 + fourth + 1)


class RemoteStore:
    """An etcd store handle whose sockets live in a lab host: a thread of its own (moved
    into that namespace) runs an event loop; calls from the test are handed to it."""

    def __init__(self, host: Host, open_store: Callable[[], Coroutine[Any, Any, EtcdStore]]):
        self._loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()

        def serve() -> None:
            with inside(host):
                asyncio.set_event_loop(self._loop)
                ready.set_result(None)
                self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="remote-store")
        self._thread.start()
        ready.result(10)
        self.store: EtcdStore = self.run(open_store())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def nodes(self) -> dict[str, NodeRecord]:
        return {r.node_id: r for r in self.run(self.store.nodes())}

    def events(self, node_id: str | None = None) -> list[Event]:
        return self.run(self.store.events(node_id=node_id, limit=100_000))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(self.store.close(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class SqliteView:
    """The same reads as :class:`RemoteStore`, on a registrar's sqlite file."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def nodes(self) -> dict[str, NodeRecord]:
        if not self.db.exists():
            return {}
        with SyncStore(self.db, readonly=True) as store:
            return {r.node_id: r for r in store.nodes()}

    def events(self, node_id: str | None = None) -> list[Event]:
        with SyncStore(self.db, readonly=True) as store:
            found: list[Event] = store.events(node_id=node_id, limit=100_000)
            return found

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class HookRun:
    what: str  # start | end | term
    node_id: str
    registrar: str
    resumed: bool
    at: float


class Scenario:
    """One test's store (a prefix), registrars and nodes, on the shared :class:`HALab`."""

    def __init__(
        self,
        ha: HALab,
        name: str,
        *,
        resume: bool = False,
        lease_ttl: float = LEASE_TTL,
        etcd_timeout: float = 1.0,
        controller: dict[str, str] | None = None,
    ) -> None:
        self.ha = ha
        self.name = name
        self.prefix = f"/{name}-{secrets.token_hex(3)}/"
        self.lease_ttl, self.etcd_timeout = lease_ttl, etcd_timeout
        self.settings = etcd_settings(ha.cluster, self.prefix, timeout=etcd_timeout,
                                      lease_ttl=lease_ttl)  # fmt: skip
        self.resume = resume
        self.controller = controller or {}
        self.dir = ha.lab.workdir / "scenarios" / f"{name}-{secrets.token_hex(2)}"
        self.dir.mkdir(parents=True)
        self.hook_log = self.dir / "hook.log"
        self.pause_file = self.dir / "hook-pause"
        self.registrars: dict[str, Station] = {}
        self.node_ids: list[str] = []
        self.publishers: list[Proc] = []
        self.announced_at: list[float] = []  # when each publisher's announcers started
        self._store: RemoteStore | SqliteView | None = None

    # -- registrars ------------------------------------------------------------------

    def config_sections(self) -> dict[str, dict[str, str]]:
        tls = self.ha.cluster.client_tls
        return {
            "autoreg": {
                "store": "etcd",
                "etcd_endpoints": ", ".join(self.ha.cluster.endpoints),
                "etcd_ca": str(tls.ca),
                "etcd_cert": str(tls.cert),
                "etcd_key": str(tls.key),
                "etcd_prefix": self.prefix,
                "etcd_timeout": f"{self.etcd_timeout:g}",
                "etcd_lease_ttl": f"{self.lease_ttl:g}",
            },
            f"role:{ROLE}": {"registered_by": REGISTRAR_ROLE, "unique": "none"},
            "controller": {
                "resume_interrupted": "yes" if self.resume else "no",
                "hook_timeout": "60",
                "max_attempts": "5",
                **self.controller,
            },
        }

    def registrar(self, name: str, *, start: bool = True) -> Station:
        station = self.ha.registrar(f"{self.name[:12]}-{name}")
        for section, values in self.config_sections().items():
            station.extra.setdefault(section, {}).update(values)
        station.hook(ROLE, HOOK.format(log=self.hook_log, pause=self.pause_file))
        self.registrars[name] = station
        if start:
            station.start_daemon()
        return station

    def pause_hooks(self, seconds: float) -> None:
        self.pause_file.write_text(f"{seconds:g}\n")

    # -- nodes -------------------------------------------------------------------------

    def announce(self, count: int, *, tag: str = "n") -> list[str]:
        """``count`` more nodes of this scenario announce (one publisher for them)."""
        first = len(self.node_ids)
        ids = [f"{self.name[:10]}-{tag}{first + i:03d}" for i in range(count)]
        slots = self.ha.slots(first + count)[first:]
        for node_id in ids:
            self.ha.alab.node_dir(node_id).mkdir(parents=True, exist_ok=True)
        conf = self.dir / "node.conf"
        conf.write_text(
            "[autoreg]\n"
            f"state_dir = {self.dir / 'node-state'}\nkeys_dir = {self.dir / 'node-keys'}\n"
            f"interfaces = {self.ha.farm.ip}\nlog_level = info\ntransport = zeroconf\n\n"
            f"[node]\nrole = {ROLE}\npoll_interval = 0.3\n\n"
            f"[role:{ROLE}]\nregistered_by = {REGISTRAR_ROLE}\nunique = none\n"
        )
        nodes = [
            {"id": node_id, "address": address, "host_key": f"{key}.pub",
             "receipt": str(self.ha.alab.node_dir(node_id) / "receipt.json")}
            for node_id, (address, key) in zip(ids, slots, strict=True)
        ]  # fmt: skip
        spec = self.dir / f"announce-{first}.json"
        spec.write_text(json.dumps({"config": str(conf), "nodes": nodes}))
        proc = self.ha.farm.spawn(
            [sys.executable, str(SUPPORT / "ha_nodes.py"), str(spec)],
            log_name=f"announce-{self.name}-{first}",
        )
        line = proc.wait_for_log(r'^\{"started": \d+, "at": [0-9.]+\}$', 60 + 0.05 * count)
        self.announced_at.append(json.loads(line.group(0))["at"])
        self.publishers.append(proc)
        self.node_ids += ids
        return ids

    # -- what happened -------------------------------------------------------------------

    def use_sqlite(self, station: Station) -> None:
        """Read ``station``'s sqlite store instead (a registrar with ``store = sqlite``)."""
        self._store = SqliteView(station.state_dir / "autoreg.db")

    @property
    def store(self) -> RemoteStore | SqliteView:
        if self._store is None:
            self._store = RemoteStore(
                self.ha.client, lambda: EtcdStore.open(self.settings, origin="test", readonly=True)
            )
        return self._store

    def hook_runs(self) -> list[HookRun]:
        if not self.hook_log.exists():
            return []
        runs = []
        for line in self.hook_log.read_text().splitlines():
            what, node_id, who, resumed, at = line.split()
            runs.append(HookRun(what, node_id, who, resumed == "1", float(at)))
        return runs

    def completed(self) -> dict[str, list[HookRun]]:
        """Every node's hook runs that ran to their end."""
        out: dict[str, list[HookRun]] = {n: [] for n in self.node_ids}
        for run in self.hook_runs():
            if run.what == "end":
                out.setdefault(run.node_id, []).append(run)
        return out

    def wait_nodes(
        self,
        predicate: Callable[[dict[str, NodeRecord]], bool],
        what: str,
        timeout: float = 60,
        poll: float = 0.3,
    ) -> dict[str, NodeRecord]:
        deadline = time.monotonic() + timeout
        nodes: dict[str, NodeRecord] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # a read during a fault: try again
                nodes = self.store.nodes()
                if predicate(nodes):
                    return nodes
            time.sleep(poll)
        states = {n: r.state.value for n, r in nodes.items()}
        logs = "\n".join(
            f"--- {name} ---\n{s.daemon.log_text()[-2500:]}"
            for name, s in self.registrars.items() if s.daemon is not None
        )  # fmt: skip
        raise AssertionError(f"timed out after {timeout}s waiting for {what}: {states}\n{logs}")

    def registered(self, ids: Iterable[str] | None = None, timeout: float = 60) -> None:
        wanted = list(self.node_ids if ids is None else ids)
        self.wait_nodes(
            lambda nodes: all(i in nodes and nodes[i].state.value == "registered" for i in wanted),
            f"{len(wanted)} nodes registered",
            timeout,
        )

    def close(self) -> None:
        for proc in self.publishers:
            proc.terminate(3)  # goodbyes do not matter here
        for station in self.registrars.values():
            if station.daemon is not None:
                station.daemon.terminate(30)
        if self._store is not None:
            self._store.close()


class HALab:
    """The shared lab: etcd, a client host, the node farm; registrars per scenario."""

    def __init__(self, workdir: Path, *, index: int) -> None:
        self.lab = Lab(workdir / "lab", index=index)
        try:
            self.cluster = EtcdCluster(self.lab, extra_args=ETCD_ARGS)
            self.cluster.start()
            self.alab = AutoregLab(self.lab)
            self.client = self.cluster.add_client("client")
            self.farm = self.lab.add_host("farm")
            self._slots: list[tuple[str, Path]] = []
            self._sshd: list[Proc] = []
        except BaseException:
            self.lab.close()
            raise

    def registrar(self, name: str) -> Station:
        station = self.alab.registrar(name, REGISTRAR_ROLE)
        station.host.run(["ip", "route", "add", NODE_NET, "via", self.farm.ip])
        self._write_authorized()  # every node trusts every registrar (sshd reads it anew)
        return station

    def _write_authorized(self) -> None:
        (self.farm.workdir / "authorized_keys").write_text(
            "".join(f"{k}\n" for k in self.alab._authorized)
        )

    def slots(self, count: int) -> list[tuple[str, Path]]:
        """Node machines (address, host key path) on the farm: ``count`` at least."""
        new = range(len(self._slots), count)
        if not new:
            return self._slots[:count]
        self.farm.run(["ip", "-batch", "-"], timeout=120, input="".join(
            f"address add {node_address(i)}/32 dev eth0\n" for i in new).encode())  # fmt: skip
        keys = self.farm.workdir / "keys"
        keys.mkdir(exist_ok=True)
        config = self.farm.workdir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(authorized=self.farm.workdir / "authorized_keys"))
        self._write_authorized()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        for i in new:
            key = keys / f"node{i}"
            _host_key(key)
            self._sshd.append(self.farm.spawn(
                ["/usr/sbin/sshd", "-D", "-e", "-f", str(config),
                 "-o", f"ListenAddress={node_address(i)}:22", "-o", f"HostKey={key}"],
                log_name=f"sshd-{i}"))  # fmt: skip
            self._slots.append((node_address(i), key))
        _wait_listening(self.farm, [a for a, _ in self._slots], self._sshd)
        return self._slots[:count]

    def close(self) -> None:
        try:
            self.cluster.close()
        finally:
            self.lab.close()

    def __enter__(self) -> HALab:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()


def _host_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()))  # fmt: skip
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)  # fmt: skip
    path.with_name(path.name + ".pub").write_text(f"{public.decode()} {path.name}\n")


def _wait_listening(host: Host, addresses: list[str], procs: list[Proc]) -> None:
    deadline = time.monotonic() + 60
    want = {f"{a}:22" for a in addresses}
    while True:
        out = host.run(["ss", "-Hltn"]).stdout.decode().split()
        if want <= set(out):
            return
        dead = [p for p in procs if not p.alive()]
        if dead or time.monotonic() > deadline:
            raise AssertionError(f"sshd not listening ({dead[:1]}): {sorted(want - set(out))[:5]}")
        time.sleep(0.1)
