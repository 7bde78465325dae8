"""Isolated test networks built from Linux network namespaces.

A :class:`Lab` owns one "switch" namespace holding a bridge (``br0``, multicast
snooping off so mDNS floods) and one namespace per :class:`Host`.  Each host gets
``eth0`` (one end of a veth pair) with ``198.18.<index>.<n>/24`` and a multicast
route; the peer end lives in the switch namespace, enslaved to the bridge.
``Lab.attach(host)`` plugs a host of another lab in too (a multi-homed proxy or
gateway between two networks).  Faults are made inside the host's namespace:
``drop_inbound_tcp`` (a port), ``drop_inbound_from`` (one peer's connection),
``unplug``/``plug`` (every packet on eth0, both ways).
Nothing is ever added to the root namespace.  ``Lab.close()`` (also run by the
context manager and an ``atexit`` hook) kills everything the lab started and
deletes its namespaces.  Requires root; otherwise :class:`LabUnavailable`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "CommandError",
    "FirewallUnavailable",
    "Host",
    "Lab",
    "LabError",
    "LabUnavailable",
    "Proc",
    "Sshd",
    "leaked_namespaces",
    "leaked_processes",
    "mountpoints",
    "open_labs",
]

SUBNET_PREFIX = "198.18"
IFNAME = "eth0"
BRIDGE = "br0"
SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
NETNS_DIR = Path("/run/netns")
_IP_TIMEOUT = 15.0
_POLL = 0.05
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_NFT_SET = ("inet", "netlab", "blocked_tcp")
_NFT_TABLE = b"""table inet netlab {
  set blocked_tcp { type inet_service; }
  chain input {
    type filter hook input priority 0; policy accept;
    iifname "eth0" tcp dport @blocked_tcp drop;
  }
}
"""
_NFT_FROM_SET = ("inet", "netlab_from", "blocked_from")
_NFT_FROM = b"""table inet netlab_from {
  set blocked_from { type ipv4_addr . inet_service; }
  chain input {
    type filter hook input priority -5; policy accept;
    iifname "eth0" ip saddr . tcp sport @blocked_from drop;
  }
}
"""
_NFT_CUT_TABLE = ("inet", "netlab_cut")
_NFT_CUT = b"""table inet netlab_cut {
  chain input {
    type filter hook input priority -10; policy accept;
    iifname "eth0" drop;
  }
  chain output {
    type filter hook output priority -10; policy accept;
    oifname "eth0" drop;
  }
}
"""

_lock = threading.RLock()
_namespaces: set[str] = set()  # created by us and not (yet) deleted
_procs: dict[int, Proc] = {}  # spawned by us and not (yet) reaped
_labs: list[Lab] = []  # open labs


class LabError(RuntimeError):
    """Something in the lab went wrong."""


class LabUnavailable(LabError):
    """The lab cannot run here (not root, no ``ip``, no netns/bridge/veth support)."""


class FirewallUnavailable(LabError):
    """Neither ``nft`` nor ``iptables`` is installed, so ports cannot be blocked."""


class CommandError(subprocess.CalledProcessError, LabError):
    """A command exited non-zero; ``str()`` includes its stderr."""

    def __str__(self) -> str:
        err = self.stderr.decode(errors="replace").strip() if isinstance(self.stderr, bytes) else ""
        return f"command {self.cmd!r} exited {self.returncode}: {err or '(no stderr)'}"


def _tag_prefix() -> str:
    # Namespace names start with "ar<pid hex>x": leaks of this process can be found on disk
    # even if this module got imported twice under two names (separate registries).
    return f"ar{os.getpid():x}x"


def leaked_namespaces() -> list[str]:
    """Namespaces this process created that still exist (empty once every Lab is closed)."""
    try:
        on_disk = {n for n in os.listdir(NETNS_DIR) if n.startswith(_tag_prefix())}
    except FileNotFoundError:
        on_disk = set()
    with _lock:
        return sorted(on_disk | {n for n in _namespaces if (NETNS_DIR / n).exists()})


def leaked_processes() -> list[int]:
    """Spawned PIDs still alive, plus any process living in one of our namespaces.

    Empty once every Lab is closed.
    """
    with _lock:
        procs = list(_procs.values())
    found = {p.pid for p in procs if p.alive()}
    for netns in leaked_namespaces():
        found.update(_namespace_members(netns))
    return sorted(found)


def open_labs() -> list[Lab]:
    """Labs that have been created and not closed yet."""
    with _lock:
        return list(_labs)


def _ip_binary() -> str:
    candidates = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
    found = shutil.which("ip") or next((p for p in candidates if os.access(p, os.X_OK)), None)
    if found is None:
        raise LabUnavailable("iproute2 'ip' binary not found")
    return found


def _merged_env(env: dict[str, str] | None) -> dict[str, str]:
    merged = dict(os.environ)
    merged.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        merged.update(env)
    return merged


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv in its own session with captured output; kill the whole group on timeout."""
    argv = list(argv)
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    ) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate(timeout=5)
            raise subprocess.TimeoutExpired(argv, timeout, out, err) from None
    if check and p.returncode != 0:
        raise CommandError(p.returncode, argv, out, err)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _ns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _namespace_members(netns: str) -> list[int]:
    target = _ns_id(str(NETNS_DIR / netns))
    if target is None:
        return []
    return [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and int(e) != os.getpid() and _ns_id(f"/proc/{e}/ns/net") == target
    ]


def _kill_namespace_members(netns: str) -> list[int]:
    """SIGKILL every process whose network namespace is ``netns`` (ours by construction).

    Uses pidfds and re-checks membership after opening one, so a recycled PID is never hit.
    """
    target = _ns_id(str(NETNS_DIR / netns))
    killed: list[int] = []
    for pid in _namespace_members(netns):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _ns_id(f"/proc/{pid}/ns/net") == target:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


def _parents() -> dict[int, int]:
    """pid -> ppid for every process visible now."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: fields follow the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        with contextlib.suppress(IndexError, ValueError):
            out[int(entry)] = int(fields[1])
    return out


def _descendants(pid: int) -> list[int]:
    parents = _parents()
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        children = [c for c, pp in parents.items() if pp == parent and c not in found]
        found.extend(children)
        frontier.extend(children)
    return found


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _kill_pids(pids: Sequence[tuple[int, str | None]], sig: int = signal.SIGKILL) -> list[int]:
    """Signal each (pid, start time) via a pidfd, unless the PID now names another process."""
    hit: list[int] = []
    for pid, started in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if started is not None and _start_time(pid) == started:
                signal.pidfd_send_signal(fd, sig)
                hit.append(pid)
        except OSError:
            pass
        finally:
            os.close(fd)
    return hit


class Proc:
    """A background process inside a host namespace (leader of its own session).

    The leader is only reaped by :meth:`terminate`/:meth:`kill` (and ``Lab.close``), after its
    process group has been SIGKILLed; until then its PID (= PGID) cannot be recycled, so
    group signals never hit a stranger.  :meth:`wait` observes the exit without reaping.
    """

    def __init__(
        self, popen: subprocess.Popen[bytes], log_path: Path, log_offset: int, argv: list[str]
    ) -> None:
        self._popen = popen
        self.pid: int = popen.pid
        self.log_path = log_path
        self.argv = argv
        self._log_offset = log_offset

    def __repr__(self) -> str:
        return f"<Proc pid={self.pid} argv={self.argv!r} log={self.log_path}>"

    @property
    def returncode(self) -> int | None:
        """Exit code (negative signal number if killed), or None while running."""
        if self._popen.returncode is not None:
            return self._popen.returncode
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back
            return self._popen.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def alive(self) -> bool:
        return self.returncode is None

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the process (or, with ``group=True``, its whole process group)."""
        if self._popen.returncode is not None:
            return  # reaped: the PID may belong to someone else now
        if group:
            _killpg(self.pid, sig)
        else:
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        """Wait for exit without reaping; ``subprocess.TimeoutExpired`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout)
            time.sleep(_POLL)
        return code

    def _reap(self) -> int | None:
        self.signal(signal.SIGKILL, group=True)  # leftovers of the group; PGID still reserved
        try:
            self.wait(5)
            code: int | None = self._popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None
        with _lock:
            _procs.pop(self.pid, None)
        return code

    def terminate(self, timeout: float = 10) -> int | None:
        """SIGTERM the group, wait up to ``timeout``, SIGKILL; exit code (None: unreapable)."""
        if self.alive():
            self.signal(signal.SIGTERM, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.wait(timeout)
        return self._reap()

    def kill(self) -> None:
        """SIGKILL the whole process group and reap the leader."""
        self._reap()

    def descendants(self) -> list[int]:
        """PIDs of the process's children, grandchildren, … alive now (any session)."""
        return _descendants(self.pid) if self.alive() else []

    def kill_tree(self) -> list[int]:
        """SIGKILL the process, its group and every descendant (even in its own session).

        Like pulling the plug on a service: a child that made itself a session leader
        (``ssh`` under ``autoreg callback``, a per-connection sshd) dies too, without any
        chance to close cleanly.  Returns the descendants' PIDs.  Reaps the leader.
        """
        tree = [(pid, _start_time(pid)) for pid in self.descendants()]
        self.signal(signal.SIGKILL, group=True)
        _kill_pids(tree)
        self._reap()
        return [pid for pid, _ in tree]

    def log_text(self) -> str:
        """This process's output so far (the part of the log written since it was spawned)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        """Poll the log until ``pattern`` (regex, MULTILINE) matches.

        Raises AssertionError with the log tail on timeout or if the process exits first.
        """
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.alive()
            m = rx.search(self.log_text())
            if m is not None:
                return m
            if exited:
                reason = f"process exited with code {self.returncode} before logging"
                break
            if time.monotonic() >= deadline:
                reason = f"timed out after {timeout:g}s waiting"
                break
            time.sleep(_POLL)
        raise AssertionError(
            f"{reason} for /{pattern}/ in {self.log_path} (pid {self.pid}, argv {self.argv!r});"
            f" log tail:\n{self._tail()}"
        )


class Sshd:
    """A real OpenSSH server listening on exactly ``address:port`` inside a host namespace."""

    def __init__(
        self,
        proc: Proc,
        *,
        host_key_path: Path,
        fingerprint: str,
        port: int,
        address: str,
        config_path: Path,
        authorized_keys_path: Path,
        host: Host | None = None,
    ) -> None:
        self.proc = proc
        self.host = host
        self.host_key_path = host_key_path
        self.fingerprint = fingerprint
        self.port = port
        self.address = address
        self.config_path = config_path
        self.authorized_keys_path = authorized_keys_path

    def __repr__(self) -> str:
        return f"<Sshd {self.address}:{self.port} {self.fingerprint} pid={self.proc.pid}>"

    @property
    def host_public_key(self) -> str:
        """The ``<type> <base64>`` part of the host public key."""
        return " ".join(self.host_key_path.with_suffix(".pub").read_text().split()[:2])

    def known_hosts_line(self) -> str:
        target = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{target} {self.host_public_key}"

    def stop(self, timeout: float = 10, *, sessions: bool = False) -> int | None:
        """Stop the listener.  Sessions (per-connection sshd processes, each a session
        leader of its own) outlive it, as with ``systemctl restart ssh``; with
        ``sessions=True`` they are SIGKILLed too (a crash or a reboot of the server)."""
        tree = [(pid, _start_time(pid)) for pid in self.proc.descendants()]
        code = self.proc.terminate(timeout)
        # Sessions left behind by an earlier sshd on this port (stopped without them)
        # are this server's too: a restarted sshd's crash takes them down as well.
        left = self.host._sshd_sessions.setdefault(self.port, []) if self.host else []
        if sessions:
            _kill_pids([*tree, *left])
            left.clear()
        else:
            left.extend(tree)
        return code

    def session_pids(self) -> list[int]:
        """PIDs of the per-connection processes alive now (also an earlier sshd's)."""
        left = self.host._sshd_sessions.get(self.port, []) if self.host else []
        return [*self.proc.descendants(), *(p for p, t in left if _start_time(p) == t)]


class Host:
    """One network namespace on the lab's bridge."""

    def __init__(self, lab: Lab, name: str, netns: str, ip: str, workdir: Path) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.ip = ip
        self.ifname = IFNAME
        self.workdir = workdir
        self.procs: list[Proc] = []
        #: Interfaces added by :meth:`Lab.attach` (name -> address), besides ``eth0``.
        self.extra_interfaces: dict[str, str] = {}
        self._blocked: set[int] = set()
        self._fw_ready = False
        self._unplugged = False
        self._from_ready = False
        self._blocked_from: set[tuple[str, int]] = set()
        # Per port: sessions of sshds stopped without them ((pid, start time) pairs).
        self._sshd_sessions: dict[int, list[tuple[int, str | None]]] = {}

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} netns={self.netns}>"

    def _exec_argv(self, argv: Sequence[str]) -> list[str]:
        self.lab._check_open()
        if not argv:
            raise ValueError("empty argv")
        return [self.lab.ip_bin, "netns", "exec", self.netns, *argv]

    def run(
        self,
        argv: list[str],
        *,
        timeout: float = 30,
        check: bool = True,
        env: dict[str, str] | None = None,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the namespace, output captured, killed after ``timeout``.

        ``env`` is laid over the current environment.  Non-zero exit with ``check`` raises
        :class:`CommandError` (its message includes stderr); timeout raises ``TimeoutExpired``.
        """
        full = self._exec_argv(argv)
        return _run(full, timeout=timeout, check=check, env=_merged_env(env), input=input)

    def spawn(self, argv: list[str], *, env: dict[str, str] | None = None, log_name: str) -> Proc:
        """Start ``argv`` in the background inside the namespace, in its own session.

        stdout+stderr are appended to ``workdir/<log_name>.log``; ``env`` is laid over the
        current environment (with ``PYTHONUNBUFFERED=1`` by default so logs appear promptly).
        """
        full = self._exec_argv(argv)  # `ip netns exec` execs argv, so the PID is argv's own
        log_path = self.workdir / f"{log_name}.log"
        with log_path.open("ab") as log:
            offset = log.tell()
            popen = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_merged_env(env),
                start_new_session=True,
            )
        proc = Proc(popen, log_path, offset, list(argv))
        with _lock:
            _procs[proc.pid] = proc
        self.procs.append(proc)
        return proc

    def start_sshd(
        self,
        *,
        port: int = 22,
        authorized_keys: Sequence[str] = (),
        key_type: str = "ed25519",
        ready_timeout: float = 15,
        extra_config: str = "",
        reuse_key: bool = False,
        log_level: str = "VERBOSE",
        mounts: Mapping[str, Path] | None = None,
        hostname: str | None = None,
    ) -> Sshd:
        """Start ``sshd -D -e`` bound to ``<ip>:<port>`` only, with a freshly generated host key.

        ``extra_config`` is appended (``Match`` blocks go last); ``reuse_key`` keeps the
        host key of an earlier sshd on this port (a restart rather than a new machine);
        ``log_level`` is sshd's ``LogLevel`` (``DEBUG1`` shows refusals that VERBOSE hides).
        ``mounts`` (path on the machine -> a directory of this host) gives sshd, and so
        every session and what it starts, a private mount namespace where each path is
        that directory: a machine with a file system of its own there (the path must
        exist; see :func:`mountpoints`).  ``hostname``: a private UTS namespace of that
        name (what ``uname -n`` says in its sessions).
        """
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        key = self.workdir / f"sshd{port}_host_{key_type}_key"
        if not (reuse_key and key.exists()):
            for stale in (key, key.with_suffix(".pub")):
                stale.unlink(missing_ok=True)
            keygen = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", f"netlab-{self.name}"]
            _run([*keygen, "-f", str(key)], timeout=30)
        fields = _run(["ssh-keygen", "-lf", f"{key}.pub"], timeout=10).stdout.decode().split()
        if len(fields) < 2:
            raise LabError(f"cannot parse ssh-keygen -lf output for {key}.pub: {fields!r}")
        auth = self.workdir / "authorized_keys"
        auth.write_text("".join(line.rstrip("\n") + "\n" for line in authorized_keys))
        auth.chmod(0o600)
        config = self.workdir / f"sshd{port}_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.ip}:{port}",
                    f"HostKey {key}",
                    f"PidFile {self.workdir / f'sshd{port}.pid'}",
                    f"AuthorizedKeysFile {auth}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "StrictModes no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    f"LogLevel {log_level}",
                    extra_config,
                    "",
                ]
            )
        )
        argv = [SSHD, "-D", "-e", "-f", str(config)]
        if mounts or hostname:
            steps = [
                f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
                for dst, src in (mounts or {}).items()
            ]
            if hostname:
                steps.append(f"hostname {shlex.quote(hostname)}")
            argv = ["unshare", "--mount", "--uts", "--propagation", "private",
                    "sh", "-c", f'{" && ".join(steps)} && exec "$@"', "sh", *argv]  # fmt: skip
        proc = self.spawn(argv, log_name=f"sshd{port}")
        try:
            proc.wait_for_log(r"Server listening on", ready_timeout)
        except AssertionError:
            proc.terminate(5)
            raise
        return Sshd(
            proc,
            host_key_path=key,
            fingerprint=fields[1],
            port=port,
            address=self.ip,
            config_path=config,
            authorized_keys_path=auth,
            host=self,
        )

    def _firewall(self, port: int, block: bool) -> None:
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port}")
        if block == (port in self._blocked):
            return
        if shutil.which("nft"):
            if not self._fw_ready:
                self.run(["nft", "-f", "-"], timeout=15, input=_NFT_TABLE)
                self._fw_ready = True
            verb = "add" if block else "delete"
            self.run(["nft", verb, "element", *_NFT_SET, "{", str(port), "}"], timeout=15)
        elif shutil.which("iptables"):
            flag = "-I" if block else "-D"
            rule = ["INPUT", "-i", IFNAME, "-p", "tcp", "--dport", str(port), "-j", "DROP"]
            self.run(["iptables", "-w", "5", flag, *rule], timeout=15)
        else:
            raise FirewallUnavailable(
                f"cannot filter tcp/{port} in {self.netns}: neither nft nor iptables is installed"
            )
        (self._blocked.add if block else self._blocked.discard)(port)

    def drop_inbound_tcp(self, port: int) -> None:
        """Silently drop TCP to ``port`` arriving from the network (eth0).

        The host's own traffic (over ``lo``) passes.  Needs nft or iptables, else
        FirewallUnavailable.
        """
        self._firewall(port, True)

    def allow_inbound_tcp(self, port: int) -> None:
        """Undo :meth:`drop_inbound_tcp`."""
        self._firewall(port, False)

    def drop_inbound_from(self, ip: str, port: int) -> None:
        """Silently drop TCP arriving on eth0 from ``ip``:``port`` (one peer's connection).

        E.g. a peer's old connection whose FIN/RST must never arrive, while its new
        connections (other source ports) pass.  Needs nft, else FirewallUnavailable.
        """
        if not shutil.which("nft"):
            raise FirewallUnavailable(f"cannot filter {ip}:{port} in {self.netns}: no nft")
        if (ip, port) in self._blocked_from:
            return
        if not self._from_ready:
            self.run(["nft", "-f", "-"], timeout=15, input=_NFT_FROM)
            self._from_ready = True
        element = ["{", f"{ip} . {port}", "}"]
        self.run(["nft", "add", "element", *_NFT_FROM_SET, *element], timeout=15)
        self._blocked_from.add((ip, port))

    def allow_inbound_from(self, ip: str, port: int) -> None:
        """Undo :meth:`drop_inbound_from`."""
        if (ip, port) not in self._blocked_from:
            return
        element = ["{", f"{ip} . {port}", "}"]
        self.run(["nft", "delete", "element", *_NFT_FROM_SET, *element], timeout=15)
        self._blocked_from.discard((ip, port))

    def unplug(self) -> None:
        """Silently drop every packet in and out of ``eth0``: the cable is pulled.

        Nothing is told to anyone: no RST, no FIN reaches the peers (this host's own
        FIN/RST are dropped too), so they only notice by timing out.  :meth:`plug` undoes it.
        """
        if self._unplugged:
            return
        if shutil.which("nft"):
            self.run(["nft", "-f", "-"], timeout=15, input=_NFT_CUT)
        elif shutil.which("iptables"):
            self.run(["iptables", "-w", "5", "-I", "INPUT", "-i", IFNAME, "-j", "DROP"])
            self.run(["iptables", "-w", "5", "-I", "OUTPUT", "-o", IFNAME, "-j", "DROP"])
        else:
            raise FirewallUnavailable(f"cannot unplug {self.netns}: no nft or iptables")
        self._unplugged = True

    def plug(self) -> None:
        """Undo :meth:`unplug`."""
        if not self._unplugged:
            return
        if shutil.which("nft"):
            self.run(["nft", "delete", "table", *_NFT_CUT_TABLE], timeout=15)
        else:
            self.run(["iptables", "-w", "5", "-D", "INPUT", "-i", IFNAME, "-j", "DROP"])
            self.run(["iptables", "-w", "5", "-D", "OUTPUT", "-o", IFNAME, "-j", "DROP"])
        self._unplugged = False


class Lab:
    """An isolated L2 network: a bridge in a private switch namespace plus host namespaces."""

    def __init__(self, workdir: Path, *, index: int = 0) -> None:
        if not 0 <= index <= 255:
            raise ValueError(f"lab index must be 0..255, got {index}")
        if os.geteuid() != 0:
            raise LabUnavailable(f"network namespaces need root (euid is {os.geteuid()})")
        self.ip_bin = _ip_binary()
        self.workdir = Path(workdir)
        self.index = index
        self.subnet = f"{SUBNET_PREFIX}.{index}.0/24"
        self.tag = _tag_prefix() + secrets.token_hex(2)
        self.switch_netns = f"{self.tag}.switch"
        self.hosts: dict[str, Host] = {}
        #: Hosts of other labs plugged into this one by :meth:`attach` (name -> address).
        self.attached: dict[str, str] = {}
        self._namespaces: list[str] = []
        self._attach_slots: list[str] = []
        self._public: Path | None = None
        self._closed = False
        self.workdir.mkdir(parents=True, exist_ok=True)
        with _lock:
            _labs.append(self)
        try:
            self._add_netns(self.switch_netns)
            sw = self.switch_netns
            self._ip("-n", sw, "link", "set", "lo", "up")
            self._ip("-n", sw, "link", "add", BRIDGE, "type", "bridge")
            self._ip("-n", sw, "link", "set", BRIDGE, "type", "bridge", "mcast_snooping", "0")
            self._ip("-n", sw, "link", "set", BRIDGE, "up")
        except CommandError as e:
            self.close()
            raise LabUnavailable(f"cannot build the lab switch: {e}") from e
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"<Lab {self.tag} {self.subnet} hosts={list(self.hosts)} closed={self._closed}>"

    def __enter__(self) -> Lab:
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
        try:  # never mask the test's own failure with a cleanup error
            self.close()
        except Exception as cleanup_error:  # pragma: no cover - best effort
            warnings.warn(f"netlab cleanup failed: {cleanup_error}", stacklevel=2)

    def _check_open(self) -> None:
        if self._closed:
            raise LabError(f"lab {self.tag} is closed")

    def _ip(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return _run([self.ip_bin, *args], timeout=_IP_TIMEOUT)

    def _add_netns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self._namespaces.append(name)
        with _lock:
            _namespaces.add(name)

    def add_host(self, name: str) -> Host:
        """Create namespace ``<tag>-<name>`` with ``eth0`` = 198.18.<index>.<n>/24 on the bridge."""
        self._check_open()
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad host name {name!r} (letters, digits, '-', '_'; max 40)")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists in {self!r}")
        n = self._next_slot()
        if n > 254:
            raise LabError("a lab holds at most 254 hosts")
        netns, ip = f"{self.tag}-{name}", f"{SUBNET_PREFIX}.{self.index}.{n}"
        peer = f"p{n}-{name}"[:15]
        self._add_netns(netns)
        sw = self.switch_netns
        veth = ["type", "veth", "peer", "name", peer, "netns", sw]
        self._ip("-n", netns, "link", "add", IFNAME, *veth)
        self._ip("-n", sw, "link", "set", peer, "master", BRIDGE)
        self._ip("-n", sw, "link", "set", peer, "up")
        self._ip("-n", netns, "link", "set", "lo", "up")
        self._ip("-n", netns, "addr", "add", f"{ip}/24", "dev", IFNAME)
        self._ip("-n", netns, "link", "set", IFNAME, "up")
        self._ip("-n", netns, "route", "add", "224.0.0.0/4", "dev", IFNAME)
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        host = Host(self, name, netns, ip, workdir)
        self.hosts[name] = host
        return host

    @property
    def public_dir(self) -> Path:
        """A directory every user may traverse and read (0755), removed by :meth:`close`.

        For files a service reads as an unprivileged user (sshd reads authorized keys as
        the user logging in, e.g. ``nobody``): the lab's workdir usually sits below a
        private directory (pytest's ``tmp_path`` is under a 0700 one).
        """
        self._check_open()
        if self._public is None:
            path = Path(tempfile.mkdtemp(prefix=f"netlab-{self.tag}-"))
            path.chmod(0o755)
            self._public = path
        return self._public

    def _next_slot(self) -> int:
        # The switch is [0]; never reused, even after a failed add or attach.
        return len(self._namespaces) + len(self._attach_slots)

    def attach(self, host: Host) -> str:
        """Plug ``host`` (a host of another lab) into this lab too; its address here.

        The host gets one more interface (``eth1``, ``eth2``, …) on this lab's bridge with
        ``198.18.<index>.<n>/24``: a multi-homed host, e.g. a gateway or proxy between an
        outer and an inner network.  No multicast route is added (mDNS stays on ``eth0``).
        The interface disappears with either lab.
        """
        self._check_open()
        if host.lab is self:
            raise ValueError(f"{host!r} is already on this lab")
        host.lab._check_open()
        if host.name in self.attached:
            raise ValueError(f"{host.name!r} is already attached to {self!r}")
        n = self._next_slot()
        if n > 254:
            raise LabError("a lab holds at most 254 hosts")
        self._attach_slots.append(host.netns)
        ifname = f"eth{len(host.extra_interfaces) + 1}"
        ip = f"{SUBNET_PREFIX}.{self.index}.{n}"
        peer = f"a{n}-{host.name}"[:15]
        sw = self.switch_netns
        veth = ["type", "veth", "peer", "name", peer, "netns", sw]
        self._ip("-n", host.netns, "link", "add", ifname, *veth)
        self._ip("-n", sw, "link", "set", peer, "master", BRIDGE)
        self._ip("-n", sw, "link", "set", peer, "up")
        self._ip("-n", host.netns, "addr", "add", f"{ip}/24", "dev", ifname)
        self._ip("-n", host.netns, "link", "set", ifname, "up")
        host.extra_interfaces[ifname] = ip
        self.attached[host.name] = ip
        return ip

    def close(self) -> None:
        """Kill every process the lab started, delete its namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        procs = [p for host in self.hosts.values() for p in host.procs]
        for proc in procs:  # SIGTERM everything first, then one shared grace period
            proc.signal(signal.SIGTERM, group=True)
        deadline = time.monotonic() + 5
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc._reap() is None:
                errors.append(f"could not reap {proc!r}")
        for netns in reversed(self._namespaces):  # hosts first, the switch last
            _kill_namespace_members(netns)
            try:
                self._ip("netns", "del", netns)
            except (CommandError, subprocess.TimeoutExpired) as e:
                if (NETNS_DIR / netns).exists():
                    errors.append(str(e))
                    continue
            with _lock:
                _namespaces.discard(netns)
        if self._public is not None:
            shutil.rmtree(self._public, ignore_errors=True)
        with _lock:
            if self in _labs:
                _labs.remove(self)
        if errors:
            raise LabError(f"lab {self.tag} cleanup incomplete: " + "; ".join(errors))


@contextlib.contextmanager
def mountpoints(paths: Sequence[str]) -> Iterator[None]:
    """Make sure each path exists as a directory (a mount point for ``start_sshd(mounts=)``);
    the ones created here are removed again after, if still empty."""
    made = []
    for path in paths:
        missing = [p for p in [Path(path), *Path(path).parents] if not p.exists()]
        Path(path).mkdir(parents=True, exist_ok=True)
        made += missing
    try:
        yield
    finally:
        for path in made:  # deepest first: they were listed child before parent
            with contextlib.suppress(OSError):
                path.rmdir()


@atexit.register
def _close_open_labs() -> None:
    for lab in open_labs():
        try:
            lab.close()
        except Exception as e:  # pragma: no cover - interpreter shutdown
            warnings.warn(f"netlab atexit cleanup failed: {e}", stacklevel=1)
