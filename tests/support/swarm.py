"""A swarm on the namespace lab: one registrar, N real sshd, one publisher for them all.

:class:`SwarmLab` builds, on a :class:`netlab.Lab` (its own bridge, nothing in the
root namespace):

- ``ctl``: the registrar namespace, running the real ``python -m registration
  daemon`` (role ``clc``) with the shipped ``[controller]`` timings and
  ``[role:bench] registered_by = clc, unique = none``; no hook is installed for
  ``bench``, so a verified node is registered and gets its receipt over SFTP
  ("no hook …: nothing to run").  ``trust`` is ``open`` unless a caller asks for
  ``token`` (join tokens, install windows).
- ``swarm``: one namespace holding the nodes.  Node *i* is the address
  ``198.19.<1 + i // 250>.<1 + i % 250>`` (inside ``NODE_NET``) on its ``eth0``
  and a real OpenSSH ``sshd`` bound to that address only, with its own ed25519
  host key and the registrar's key authorised.  The registrar reaches
  ``NODE_NET`` through a route via the swarm namespace's own address, so the
  kernel's neighbour table (one table for the whole machine, ``gc_thresh3`` 1024)
  holds one entry for the swarm, not one per node.
- ``void`` (only with ``bogus > 0``): ``BOGUS_NET`` is routed to it and dropped
  there by nft before routing: a TCP connect to a bogus address is never
  answered and times out, as a black-holed host on a real LAN does.

Nodes announce through :mod:`swarm_publisher`: one process, one shared
transport, one unchanged ``registration.node.Announcer`` per node.  Bogus
announcements come from :mod:`swarm_bogus`.  :meth:`SwarmLab.snapshot` reads
the daemon's store directly (one ``SELECT``; the store's own API decodes every
row and would load the machine it measures).  ``close()`` (also the context
manager, ``atexit`` and SIGTERM) kills every process the lab started and deletes
its namespaces.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from registration._config import ControllerConfig
from registration._sshkeys import parse_public_key
from registration.state import NodeState

from .autoreg_lab import AutoregLab, Station
from .netlab import Host, Lab, LabError, Proc

__all__ = [
    "BOGUS_NET",
    "NODE_NET",
    "Batch",
    "NodeRow",
    "Publisher",
    "SwarmLab",
    "Wait",
    "node_address",
]

NODE_NET = "198.19.0.0/17"
BOGUS_NET = "198.19.128.0/17"
ROLE = "bench"
REGISTRAR_ROLE = "clc"
SUPPORT = Path(__file__).resolve().parent
#: The [controller] timings autoreg_lab shortens for its tests: here, back to the shipped ones.
SHIPPED_TIMINGS = ("connect_timeout", "retry_initial", "retry_max", "max_attempts", "hook_timeout")
POLL = 0.5
SSHD_CONFIG = """\
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile none
Subsystem sftp internal-sftp
LogLevel VERBOSE
AuthorizedKeysFile {authorized}
"""
_VOID_NFT = """table ip swarm_void {{
  chain prerouting {{
    type filter hook prerouting priority -300; policy accept;
    ip daddr {net} drop
  }}
}}
"""


def node_address(index: int, net: str = NODE_NET) -> str:
    """Node ``index``'s address: 250 per /24, never .0 or .255."""
    base = ipaddress.ip_network(net).network_address
    third, fourth = divmod(index, 250)
    if third > 126:
        raise ValueError(f"index {index} does not fit in {net}")
    return str(base + (third + 1) * 256 + fourth + 1)


@dataclasses.dataclass(frozen=True)
class Slot:
    """One node's machine: its address and sshd (reused by every batch that takes it)."""

    index: int
    address: str
    fingerprint: str
    host_key: Path  # the private key; ``.pub`` beside it
    sshd: Proc


@dataclasses.dataclass(frozen=True)
class Batch:
    """Node ids announced together, each on its own slot."""

    ids: tuple[str, ...]
    slots: tuple[Slot, ...]


@dataclasses.dataclass(frozen=True)
class Publisher:
    """A running swarm publisher: ``started`` is ``time.time()`` right before its
    announcers started."""

    proc: Proc
    started: float
    batch: Batch


@dataclasses.dataclass(frozen=True)
class NodeRow:
    state: str
    announced_state: str  # what the node last said: ready | registered
    first_seen: float
    registered_at: float | None
    next_attempt: float | None

    @property
    def settled(self) -> bool:
        """As ``registration.state.is_settled``: final, or retryable and given up."""
        try:
            state = NodeState(self.state)
        except ValueError:
            return False
        return state.final or (state.retryable and self.next_attempt is None)


@dataclasses.dataclass
class Wait:
    """How a bounded wait on a batch ended."""

    ended: str  # settled | stalled | timeout | daemon exited
    elapsed: float
    rows: dict[str, NodeRow]
    peak_threads: int = 0

    def seen(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i in self.rows]

    def lost(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i not in self.rows]

    def registered(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i in self.rows and self.rows[i].state == "registered"]

    def stuck(self, ids: Iterable[str]) -> list[str]:
        return [i for i in ids if i in self.rows and not self.rows[i].settled]


class SwarmLab:
    def __init__(
        self,
        workdir: Path,
        *,
        index: int,
        nodes: int,
        bogus: int = 0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.log = log or (lambda message: None)
        self.slots: list[Slot] = []
        self.daemon_label: str | None = None
        self._sigterm = _SigtermGuard()
        self.lab = Lab(self.workdir / "lab", index=index)
        try:
            self.alab = AutoregLab(self.lab)
            self.ctl = self._registrar()
            self.swarm = self.lab.add_host("swarm")
            self.void: Host | None = self.lab.add_host("void") if bogus else None
            self._routes()
            self.add_slots(nodes)
        except BaseException:
            self.close()
            raise

    # -- building ----------------------------------------------------------------------

    def _registrar(self) -> Station:
        ctl = self.alab.registrar("ctl", REGISTRAR_ROLE)
        shipped = ControllerConfig()
        ctl.extra = {
            f"role:{ROLE}": {"registered_by": REGISTRAR_ROLE, "unique": "none"},
            "controller": {key: str(getattr(shipped, key)) for key in SHIPPED_TIMINGS},
        }
        ctl.extra["controller"]["trust"] = "open"
        ctl.write_config()
        return ctl

    def _routes(self) -> None:
        self.ctl.host.run(["ip", "route", "add", NODE_NET, "via", self.swarm.ip])
        if self.void is not None:
            self.ctl.host.run(["ip", "route", "add", BOGUS_NET, "via", self.void.ip])
            if shutil.which("nft") is None:
                raise LabError("the flood needs nft to black-hole its addresses")
            self.void.run(["nft", "-f", "-"], input=_VOID_NFT.format(net=BOGUS_NET).encode())

    def add_slots(self, count: int) -> None:
        """Bring the swarm to ``count`` nodes: addresses, host keys, sshds (all at once)."""
        new = range(len(self.slots), count)
        if not new:
            return
        started = time.monotonic()
        batch = "".join(f"address add {node_address(i)}/32 dev eth0\n" for i in new)
        self.swarm.run(["ip", "-batch", "-"], input=batch.encode(), timeout=300)
        keys = self.swarm.workdir / "keys"
        keys.mkdir(exist_ok=True)
        authorized = self.swarm.workdir / "authorized_keys"
        authorized.write_text("".join(f"{k}\n" for k in self.alab._authorized))
        config = self.swarm.workdir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(authorized=authorized))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        fingerprints = {i: _new_host_key(keys / f"node{i}") for i in new}

        def spawn(i: int) -> Slot:
            argv = ["/usr/sbin/sshd", "-D", "-e", "-f", str(config),
                    "-o", f"ListenAddress={node_address(i)}:22",
                    "-o", f"HostKey={keys / f'node{i}'}"]  # fmt: skip
            proc = self.swarm.spawn(argv, log_name=f"sshd-{i}")
            return Slot(i, node_address(i), fingerprints[i], keys / f"node{i}", proc)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            self.slots.extend(pool.map(spawn, new))
        self._wait_listening(timeout=60 + 0.05 * len(new))
        self.log(f"{count} sshd listening ({len(new)} new in {time.monotonic() - started:.1f} s)")

    def _wait_listening(self, timeout: float) -> None:
        want = {_tcp_hex(s.address, 22) for s in self.slots}
        deadline = time.monotonic() + timeout
        while True:
            listening = _listening(self.slots[0].sshd.pid)
            if want <= listening:
                return
            dead = [s for s in self.slots if not s.sshd.alive()]
            if dead or time.monotonic() > deadline:
                why = f"sshd {dead[0].address} exited" if dead else f"timed out after {timeout}s"
                log = dead[0].sshd.log_text()[-1500:] if dead else ""
                raise LabError(f"{len(want - listening)} sshd not listening: {why}\n{log}")
            time.sleep(0.1)

    # -- the registrar -------------------------------------------------------------------

    def start_daemon(self, label: str, *, trust: str = "open", uptime: float = 0.0) -> Proc:
        """A fresh daemon on a fresh store (the previous one's moved to ``state-<label>``).

        ``uptime``: return only once it has been running that long (and fail if it
        exits meanwhile): a registrar that has been up for a while, its browser past
        its start-up queries, rather than one started just before the nodes.
        """
        self.stop_daemon()
        if self.ctl.state_dir.exists():
            self.ctl.state_dir.rename(self.ctl.host.workdir / f"state-{self.daemon_label}")
        self.ctl.extra["controller"]["trust"] = trust
        self.daemon_label = label
        daemon = self.ctl.start_daemon()
        if uptime > 0:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = daemon.wait(uptime)
                raise LabError(
                    f"the daemon exited ({code}) during its uptime:\n{daemon.log_text()}"
                )
        return daemon

    def stop_daemon(self, timeout: float = 30) -> int | None:
        daemon, self.ctl.daemon = self.ctl.daemon, None
        return daemon.terminate(timeout) if daemon is not None else None

    @property
    def daemon(self) -> Proc:
        if self.ctl.daemon is None:
            raise LabError("no daemon running")
        return self.ctl.daemon

    def cli(self, *args: str) -> str:
        """``autoreg ARGS`` on the registrar's files (token, window, …): its stdout."""
        return self.ctl.cli(*args).stdout

    def daemon_cpu(self) -> float:
        """The daemon's CPU seconds so far, all threads (utime + stime)."""
        fields = _stat_fields(self.daemon.pid)
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def daemon_status(self) -> dict[str, int]:
        """VmHWM (peak RSS), VmRSS in kB and the thread count, from /proc/PID/status."""
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.daemon.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "Threads"):
                    out[key] = int(value.split()[0])
        return out

    def udp_counters(self) -> dict[str, int]:
        """The registrar namespace's Udp counters (``/proc/PID/net/snmp`` of its daemon)."""
        lines = [
            line.split()
            for line in Path(f"/proc/{self.daemon.pid}/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")
        ]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))

    def store_bytes(self) -> int:
        db = self.ctl.state_dir / "autoreg.db"
        paths = [db, db.with_name("autoreg.db-wal"), db.with_name("autoreg.db-shm")]
        return sum(p.stat().st_size for p in paths if p.exists())

    def snapshot(self) -> dict[str, NodeRow]:
        """Every node in the running daemon's store: state and the times that matter."""
        db = self.ctl.state_dir / "autoreg.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
            rows = c.execute(
                "SELECT node_id, state, announced_state, first_seen, registered_at, next_attempt"
                " FROM nodes"
            ).fetchall()
        return {r[0]: NodeRow(*r[1:]) for r in rows}

    def event_count(self) -> int:
        db = self.ctl.state_dir / "autoreg.db"
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as c:
            return int(c.execute("SELECT count(*) FROM events").fetchone()[0])

    def wait(
        self,
        ids: Iterable[str],
        *,
        timeout: float,
        stall: float,
        until: Callable[[dict[str, NodeRow]], bool] | None = None,
    ) -> Wait:
        """Poll the store until every id is seen and settled (or ``until``), the counts
        stop moving for ``stall`` seconds, ``timeout`` passes, or the daemon exits."""
        wanted = list(ids)
        started = time.monotonic()
        progress: tuple[int, int, int] | None = None
        moved = started
        peak_threads = 0
        while True:
            rows = self.snapshot()
            now = time.monotonic()
            peak_threads = max(peak_threads, self.daemon_status().get("Threads", 0))
            present = [rows[i] for i in wanted if i in rows]
            counts = (
                len(present),
                sum(r.settled for r in present),
                sum(r.state == "registered" for r in present),
            )
            if counts != progress:
                progress, moved = counts, now
            ended = None
            if until(rows) if until else counts[0] == counts[1] == len(wanted):
                ended = "settled"
            elif not self.daemon.alive():
                ended = "daemon exited"
            elif now - moved >= stall:
                ended = "stalled"
            elif now - started >= timeout:
                ended = "timeout"
            if ended:
                return Wait(ended, now - started, rows, peak_threads)
            time.sleep(POLL)

    # -- nodes -----------------------------------------------------------------------------

    def batch(self, prefix: str, count: int, *, first: int = 0) -> Batch:
        """``count`` node ids (``<prefix>NNNNN``) on slots ``first``…, receipt dirs made."""
        if first + count > len(self.slots):
            raise ValueError(f"{first + count} nodes needed, the swarm has {len(self.slots)}")
        ids = tuple(f"{prefix}{n:05d}" for n in range(count))
        for node_id in ids:
            self.alab.node_dir(node_id).mkdir(parents=True, exist_ok=True)
        return Batch(ids, tuple(self.slots[first : first + count]))

    def receipts(self, batch: Batch) -> int:
        return sum((self.alab.node_dir(i) / "receipt.json").exists() for i in batch.ids)

    def announce(
        self, batch: Batch, *, token: str | None = None, name: str = "announce"
    ) -> Publisher:
        """Start one publisher for the whole batch; returns once its announcers started."""
        conf = self.swarm.workdir / "node.conf"
        conf.write_text(
            "[autoreg]\n"
            f"state_dir = {self.swarm.workdir / 'node-state'}\n"
            f"keys_dir = {self.swarm.workdir / 'node-keys'}\n"
            f"interfaces = {self.swarm.ip}\n"
            "log_level = info\n"
            "transport = zeroconf\n\n"
            f"[node]\nrole = {ROLE}\n\n"
            f"[role:{ROLE}]\nregistered_by = {REGISTRAR_ROLE}\nunique = none\n"
        )
        nodes = [
            {
                "id": node_id,
                "name": node_id,
                "address": slot.address,
                "port": 22,
                "host_key": f"{slot.host_key}.pub",
                "receipt": str(self.alab.node_dir(node_id) / "receipt.json"),
            }
            for node_id, slot in zip(batch.ids, batch.slots, strict=True)
        ]
        spec = self.swarm.workdir / f"{name}.json"
        spec.write_text(json.dumps({"config": str(conf), "lifetime": 3600, "nodes": nodes}))
        proc = self.swarm.spawn(
            [sys.executable, str(SUPPORT / "swarm_publisher.py"), str(spec)],
            env={"AUTOREG_TOKEN": token} if token else None,
            log_name=name,
        )
        line = proc.wait_for_log(r'^\{"started": .*\}$', 60 + 0.02 * len(nodes)).group(0)
        return Publisher(proc, json.loads(line)["started"], batch)

    def flood(
        self, prefix: str, count: int, *, rate: float = 1000.0, rounds: int = 2
    ) -> tuple[list[str], Proc]:
        """Announce ``count`` bogus nodes (black-holed addresses, unsigned) from ``void``."""
        if self.void is None:
            raise LabError("this SwarmLab was built without bogus capacity")
        ids = [f"{prefix}{n:05d}" for n in range(count)]
        spec = self.void.workdir / f"{prefix}flood.json"
        nodes = [[node_id, node_address(n, BOGUS_NET)] for n, node_id in enumerate(ids)]
        spec.write_text(
            json.dumps(
                {
                    "source": self.void.ip,
                    "role": ROLE,
                    "nodes": nodes,
                    "rate": rate,
                    "rounds": rounds,
                    "per_packet": 3,
                }
            )
        )
        proc = self.void.spawn(
            [sys.executable, str(SUPPORT / "swarm_bogus.py"), str(spec)],
            log_name=f"{prefix}flood",
        )
        return ids, proc

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        try:
            self.lab.close()
        finally:
            self._sigterm.release()

    def __enter__(self) -> SwarmLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # never mask the caller's own failure
            self.close()


class _SigtermGuard:
    """While a SwarmLab is open, SIGTERM unwinds (SystemExit 143) so that it is cleaned up.

    Only when SIGTERM had its default action and this is the main thread; a second
    SIGTERM during the unwinding is ignored; the previous handler comes back on close.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self._fired = False
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        ):
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self._fired:
            self._fired = True
            raise SystemExit(128 + signum)

    def release(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def _new_host_key(path: Path) -> str:
    """An ed25519 host key in OpenSSH format (``path``, ``path.pub``); its fingerprint."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )  # fmt: skip
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    line = f"{public.decode()} swarm-{path.name}"
    path.with_name(path.name + ".pub").write_text(line + "\n")
    return parse_public_key(line, source=str(path)).fingerprint


def _tcp_hex(address: str, port: int) -> str:
    """``/proc/net/tcp``'s spelling of an IPv4 local address (little-endian hex)."""
    packed = ipaddress.IPv4Address(address).packed
    return f"{int.from_bytes(packed, 'little'):08X}:{port:04X}"


def _listening(pid: int) -> set[str]:
    """Local addresses of the listening TCP sockets in ``pid``'s network namespace."""
    try:
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {f[1] for f in (line.split() for line in lines) if len(f) > 3 and f[3] == "0A"}


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: fields[0] is the state (field 3)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rfind(")") + 2 :].split()
