"""Real autoreg processes on a :mod:`netlab` network: registrars and nodes.

Every host gets one configuration file (``[autoreg]``, ``[node]``,
``[controller]``), its own state directory and, as a node, a real OpenSSH
sshd with its own host key.  Daemons and announcers run as real processes
inside the host's namespace; the CLI and state reads run outside (they touch
only files).  Timing constants are shortened through configuration, not slept.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from registration.state import Event, NodeRecord, NodeState

from .netlab import Host, Lab, Proc, Sshd
from .sync_store import SyncStore

__all__ = ["AutoregLab", "Station", "wait_until"]

#: The controller's callback sshd port (CALLBACK_PORT) and the unprivileged account
#: the callbacks log in as (the package creates a dedicated one; tests use nobody).
CALLBACK_PORT = 2222
CALLBACK_USER = "nobody"
#: Seconds between state-store reads while waiting for a node's state.
POLL = 0.05
DEFAULT_TIMEOUT = 30.0
#: CLI commands that open network connections (never from the root namespace).
_DIALS_OUT = frozenset({"exec", "ssh", "discover", "bootstrap"})


def autoreg_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "registration", *args]


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str | Callable[[], str]
) -> None:
    """Poll ``predicate`` until true; on timeout fail with ``what`` (a text or a callable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(POLL)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what() if callable(what) else what}"
    )


@dataclasses.dataclass
class Station:
    """One host running autoreg: a node, a registrar, or both (a CC)."""

    lab: AutoregLab
    host: Host
    node_id: str
    role: str | None
    cluster: str | None
    registrar_role: str | None = None
    sshd: Sshd | None = None
    announcer: Proc | None = None
    daemon: Proc | None = None
    extra: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    callback: Proc | None = None
    callback_sshd: Sshd | None = None
    #: Extra environment for this station's processes (e.g. a private system bus).
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.host.workdir / "autoreg.conf"

    @property
    def state_dir(self) -> Path:
        return self.host.workdir / "state"

    @property
    def keys_dir(self) -> Path:
        return self.host.workdir / "keys"

    @property
    def hooks_dir(self) -> Path:
        return self.host.workdir / "hooks.d"

    @property
    def receipt(self) -> Path:
        return self.lab.node_dir(self.node_id) / "receipt.json"

    def write_config(self) -> None:
        sections: dict[str, dict[str, str]] = {
            "autoreg": {
                "state_dir": str(self.state_dir),
                "keys_dir": str(self.keys_dir),
                "interfaces": self.host.ifname,
                "log_level": "info",
                # never "auto" here: the machine's own avahi-daemon must not be used
                "transport": "zeroconf",
            },
            "node": {
                "id": self.node_id,
                "name": self.host.name,
                "interface": self.host.ifname,
                "receipt_path": str(self.receipt),
                "poll_interval": "0.2",
            },
            "controller": {
                "hooks_dir": str(self.hooks_dir),
                "connect_timeout": "3",
                "retry_initial": "0.5",
                "retry_max": "2",
                "max_attempts": "3",
                "hook_timeout": "20",
                "node_receipt_path": str(self.lab.node_dir("{id}") / "receipt.json"),
                "credentials_dir": str(self.host.workdir / "credentials"),
                # Most scenarios are about something else than trust: they register
                # every node, as a version without trust did.  Trust tests set it.
                "trust": "open",
            },
        }
        if self.role:
            sections["node"]["role"] = self.role
        if self.cluster:
            sections["node"]["cluster"] = self.cluster
        if self.sshd is not None:
            sections["node"]["ssh_port"] = str(self.sshd.port)
            sections["node"]["host_key"] = str(self.sshd.host_key_path) + ".pub"
        if self.registrar_role:
            sections["controller"]["role"] = self.registrar_role
        for section, values in self.extra.items():
            sections.setdefault(section, {}).update(values)
        text = "".join(
            f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n"
            for name, values in sections.items()
        )
        self.conf.write_text(text)

    # -- processes -------------------------------------------------------------------

    def _service(self, command: str, ready: str | None) -> Proc:
        """Run ``autoreg COMMAND`` in this host's namespace; wait for ``ready`` in its log."""
        self.write_config()
        proc = self.host.spawn(
            autoreg_argv("-c", str(self.conf), command), log_name=command, env=self.env or None
        )
        if ready is not None:
            proc.wait_for_log(ready, DEFAULT_TIMEOUT)
        return proc

    def start_announcer(self, *, wait: bool = True) -> Proc:
        self.announcer = self._service("announce", r"announced " if wait else None)
        return self.announcer

    def start_daemon(self) -> Proc:
        self.daemon = self._service("daemon", r"registrar \S+ started")
        return self.daemon

    def cli(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """The autoreg CLI outside the namespaces, for commands that touch only files.

        Commands that dial out must run inside the host's namespace (:meth:`cli_in_ns`):
        here their traffic would leave the lab.
        """
        if args and args[0] in _DIALS_OUT:
            raise AssertionError(f"`autoreg {args[0]}` dials out: use cli_in_ns()")
        self.write_config()
        result = subprocess.run(
            autoreg_argv("-c", str(self.conf), *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"autoreg {' '.join(args)} exited {result.returncode}: {result.stderr}"
            )
        return result

    def cli_in_ns(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The autoreg CLI inside this station's namespace (for commands that dial out)."""
        self.write_config()
        r = self.host.run(autoreg_argv("-c", str(self.conf), *args), check=False, timeout=timeout)
        result = subprocess.CompletedProcess(
            r.args,
            r.returncode,
            r.stdout.decode(errors="replace"),
            r.stderr.decode(errors="replace"),
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"autoreg {' '.join(args)} exited {r.returncode}:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def start_callback(self, *, wait: bool = True) -> Proc:
        """The node's callback service (`autoreg callback`), after :meth:`AutoregLab.tunnel`."""
        self.callback = self._service("callback", r"tunnel up" if wait else None)
        return self.callback

    def start_callback_sshd(
        self, *, port: int = CALLBACK_PORT, reuse_key: bool = False, log_level: str = "VERBOSE"
    ) -> Sshd:
        """This registrar's sshd for callbacks: OpenSSH, with autoreg's Match block."""
        controller = self.extra.setdefault("controller", {})
        if "callback_authorized_keys" not in controller:
            # sshd reads this file as the callback user, who must be able to get to it:
            # not below the workdir (pytest's tmp_path is inside a 0700 directory).
            directory = self.host.lab.public_dir / self.host.name
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
            controller.update(
                {
                    "callback_user": CALLBACK_USER,
                    "callback_authorized_keys": str(directory / "callback_authorized_keys"),
                }
            )
        keys = Path(controller["callback_authorized_keys"])
        self.write_config()
        if not keys.exists():
            self.cli("tunnel", "list", "--no-probe", check=False)  # creates the store
            keys.write_text("")
            keys.chmod(0o644)
        match = self.cli("tunnel", "sshd-config").stdout
        self.callback_sshd = self.host.start_sshd(
            port=port, extra_config=match, reuse_key=reuse_key, log_level=log_level
        )
        self.extra["controller"]["sshd_host_key"] = f"{self.callback_sshd.host_key_path}.pub"
        self.write_config()
        return self.callback_sshd

    def hook(self, role: str, script: str) -> Path:
        self.hooks_dir.mkdir(parents=True, exist_ok=True)
        path = self.hooks_dir / role
        path.write_text(script)
        path.chmod(0o755)
        return path

    # -- state -----------------------------------------------------------------------------

    def node(self, node_id: str) -> NodeRecord | None:
        db = self.state_dir / "autoreg.db"
        if not db.exists():
            return None
        with SyncStore(db, readonly=True) as store:
            rec: NodeRecord | None = store.get(node_id)
            return rec

    def events(self, node_id: str | None = None) -> list[Event]:
        with SyncStore(self.state_dir / "autoreg.db", readonly=True) as store:
            events: list[Event] = store.events(node_id=node_id, limit=100000)
            return events

    def wait_state(
        self, node_id: str, *states: NodeState, timeout: float = DEFAULT_TIMEOUT
    ) -> NodeRecord:
        deadline = time.monotonic() + timeout
        rec = None
        while time.monotonic() < deadline:
            rec = self.node(node_id)
            if rec is not None and rec.state in states:
                return rec
            time.sleep(POLL)
        log = self.daemon.log_text()[-3000:] if self.daemon else ""
        raise AssertionError(
            f"{node_id} not in {[s.value for s in states]} after {timeout}s: "
            f"{rec}\n--- daemon log ---\n{log}"
        )


class AutoregLab:
    """A :class:`Lab` plus the autoreg stations on it."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.stations: dict[str, Station] = {}
        self._authorized: list[str] = []

    def node_dir(self, node_id: str) -> Path:
        return self.lab.workdir / "nodes" / node_id

    def registrar(
        self,
        name: str,
        role: str,
        *,
        cluster: str | None = None,
        node_role: str | None = None,
        node_id: str | None = None,
        lab: Lab | None = None,
    ) -> Station:
        """A registrar host; with ``node_role`` it is a node too (e.g. a CC); ``lab`` puts
        it on another network."""
        station = self._station(
            name, node_role, cluster, with_sshd=node_role is not None, node_id=node_id, lab=lab
        )
        station.registrar_role = role
        station.write_config()
        result = station.cli("keys", "init")
        self._authorized.append(result.stdout.strip())
        return station

    def node(
        self,
        name: str,
        role: str,
        *,
        cluster: str | None = None,
        node_id: str | None = None,
        lab: Lab | None = None,
    ) -> Station:
        """A node with its sshd; ``lab`` puts its host on another network (e.g. an inner
        one only a proxy reaches), still managed and authorised by this AutoregLab."""
        return self._station(name, role, cluster, with_sshd=True, node_id=node_id, lab=lab)

    def _station(
        self,
        name: str,
        role: str | None,
        cluster: str | None,
        *,
        with_sshd: bool,
        node_id: str | None = None,
        lab: Lab | None = None,
    ) -> Station:
        host = (lab or self.lab).add_host(name)
        node_id = node_id or f"{name}-{host.ip.split('.')[-1]}x"
        station = Station(self, host, node_id=node_id, role=role, cluster=cluster)
        if with_sshd:
            station.sshd = host.start_sshd(authorized_keys=list(self._authorized))
            self.node_dir(station.node_id).mkdir(parents=True, exist_ok=True)
        self.stations[name] = station
        return station

    def tunnel(self, node: Station, controller: Station) -> list[int]:
        """Allocate ``node``'s tunnel on ``controller`` and configure its callback."""
        keydir = node.host.workdir / "callback-keys"
        keydir.mkdir(exist_ok=True)
        out = controller.cli(
            "tunnel",
            "add",
            node.node_id,
            "--generate",
            str(keydir),
            "--controller",
            controller.host.ip,
        ).stdout
        known = node.host.workdir / "controller_known_hosts"
        known.write_text(controller.cli("tunnel", "known-hosts").stdout)
        ports = [int(p) for p in out.split("listen_ports =")[1].splitlines()[0].split(",")]
        node.extra["callback"] = {
            "controller": controller.host.ip,
            "port": str(CALLBACK_PORT),
            "user": CALLBACK_USER,
            "key": str(keydir / f"{node.node_id}_callback_ed25519"),
            "known_hosts": str(known),
            "listen_ports": ", ".join(map(str, ports)),
            "forward": f"{node.host.ip}:{node.sshd.port if node.sshd else 22}",
            "keepalive_interval": "1",
            "keepalive_count": "3",
            "retry_initial": "0.2",
            "retry_max": "2",
        }
        node.write_config()
        return ports

    def tunnels(self, nodes: list[Station], controller: Station) -> dict[str, list[int]]:
        """:meth:`tunnel` for many nodes at once, in-process (no CLI run per node).

        Does what `autoreg tunnel add --generate` does, through the same library call,
        then writes each node's ``[callback]`` section.  Touches files only.
        """
        from registration._config import load_config
        from registration._keyfiles import controller_known_hosts_text
        from registration.controller import add_tunnel

        controller.write_config()
        config = load_config(controller.conf)
        pin = controller_known_hosts_text(config)
        allocated: dict[str, list[int]] = {}
        with SyncStore(config.db_path) as sync:
            for node in nodes:
                keydir = node.host.workdir / "callback-keys"
                keydir.mkdir(exist_ok=True)
                tunnel, _ = asyncio.run(
                    add_tunnel(
                        config, sync.store, node.node_id, public_key=None, generate_into=keydir
                    )
                )
                known = node.host.workdir / "controller_known_hosts"
                known.write_text(pin)
                allocated[node.node_id] = list(tunnel.ports)
                node.extra["callback"] = self._callback_section(
                    node, controller, keydir, known, list(tunnel.ports)
                )
                node.write_config()
        return allocated

    @staticmethod
    def _callback_section(
        node: Station, controller: Station, keydir: Path, known: Path, ports: list[int]
    ) -> dict[str, str]:
        return {
            "controller": controller.host.ip,
            "port": str(CALLBACK_PORT),
            "user": CALLBACK_USER,
            "key": str(keydir / f"{node.node_id}_callback_ed25519"),
            "known_hosts": str(known),
            "listen_ports": ", ".join(map(str, ports)),
            "forward": f"{node.host.ip}:{node.sshd.port if node.sshd else 22}",
            "keepalive_interval": "1",
            "keepalive_count": "3",
            "retry_initial": "0.2",
            "retry_max": "2",
        }

    def authorize_all(self) -> None:
        """Put every registrar's key into every node's authorized_keys."""
        for station in self.stations.values():
            if station.sshd is not None:
                station.sshd.authorized_keys_path.write_text(
                    "".join(f"{k}\n" for k in self._authorized)
                )
