"""Installing a node from its medium and booting it, without touching the machine.

Two steps, each in namespaces of its own:

1. **Install** (:func:`run_after_install`): the AFTER_INSTALL script runs in a
   *fresh root*, an empty directory with Debian's merged-/usr links and the
   machine's ``/usr`` bind-mounted read-only for the shell and coreutils, entered
   with ``chroot`` inside a private mount namespace.  Whatever the script leaves
   is in that directory; it cannot write anywhere else.  Both ways installers
   run it are covered: inside the new system (``sh after-install.sh``, like
   ``in-target``) and from the installer with the new system at ``/target``
   (``TARGET=/target``).

2. **First boot** (:class:`FirstBoot`): the installed files reference absolute
   paths (``/etc/autoreg/…``, ``/root/.ssh/authorized_keys``,
   ``/var/lib/autoreg/node/``).  A *boot holder* process runs in the test host's
   network namespace and in private mount and UTS namespaces where read-only
   overlays lay the installed ``/etc`` and ``/root`` over the real ones
   (``lowerdir=<first-boot layer>:<root>/etc:/etc``), ``/var/lib`` is a writable
   overlay whose upper layer is in the test's directory, ``/run/dbus`` is an empty
   tmpfs (no system bus, so ``transport = auto`` finds no avahi-daemon) and the
   host name comes from the installed ``/etc/hostname``.  The node's sshd and the
   units the script enabled (their ``ExecStart``, from the repository's
   ``systemd/`` files) are started inside those namespaces with ``nsenter``:
   they read the real paths and see the installed files.  The first-boot layer
   holds what the OS itself makes at first boot: the sshd host keys.

Nothing is mounted in the machine's own mount namespace and nothing under its
``/etc``, ``/root`` or ``/var/lib`` changes; every process is a :class:`netlab.Proc`
of the host, so ``Lab.close()`` ends them, and their namespaces with them.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import shlex
import stat
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .netlab import SSHD, Host, LabError, Proc

__all__ = [
    "REPO_UNITS",
    "Entry",
    "FirstBoot",
    "make_fresh_root",
    "run_after_install",
    "tree",
]

REPO_UNITS = Path(__file__).resolve().parents[2] / "systemd"
AUTOREG_BIN = "/usr/bin/autoreg"
#: Debian 12's merged /usr: the only things in a fresh root before the script runs.
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
SKELETON = {*MERGED_USR, "usr", "dev", "dev/null"}
UNIT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BOOT_TIMEOUT = 20.0

# Runs in a private mount namespace: $1 the fresh root, $2 the root to chroot into
# (the same, or an "installer" root whose /target is the fresh root), then the
# environment for the script.  The script itself comes on stdin.
_INSTALL = r"""
set -eu
root=$1 top=$2
shift 2
mount --bind /usr "$top/usr"
mount -o remount,bind,ro "$top/usr"
mount --bind /dev/null "$top/dev/null"
if [ "$top" != "$root" ]; then
    mount --bind "$root" "$top/target"
fi
exec chroot "$top" /usr/bin/env -i "$@" /bin/sh -s
"""

# The boot holder: $1 the installed root, $2 the first-boot layer, $3 this boot's workdir.
_HOLDER = r"""
set -eu
root=$1 layer=$2 work=$3
mount -t overlay overlay -o "lowerdir=$layer/etc:$root/etc:/etc" /etc
mount -t overlay overlay -o "lowerdir=$root/root:/root" /root
var="lowerdir=/var/lib,upperdir=$work/var.up,workdir=$work/var.work"
mount -t overlay overlay -o "$var" /var/lib
if [ -d /run/dbus ]; then
    mount -t tmpfs -o mode=0755,size=64k autoreg-firstboot /run/dbus
fi
cat /etc/hostname > /proc/sys/kernel/hostname
echo "booted $(cat /proc/sys/kernel/hostname)"
exec sleep infinity
"""


def make_fresh_root(path: Path) -> Path:
    """An empty root: merged-/usr links, an empty /usr mount point, /dev/null's place."""
    path.mkdir(parents=True)
    for name, target in MERGED_USR.items():
        (path / name).symlink_to(target)
    (path / "usr").mkdir()
    (path / "dev").mkdir()
    (path / "dev/null").touch()
    return path


def run_after_install(
    script: Path,
    root: Path,
    *,
    target: bool = False,
    env: Sequence[str] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` against the fresh ``root``: inside it, or with ``TARGET=/target``.

    ``env`` adds ``NAME=value`` words to the script's (otherwise clean) environment.
    """
    env = [UNIT_PATH, "LANG=C.UTF-8", *env]
    top = root
    if target:
        top = make_fresh_root(root.with_name(root.name + ".installer"))
        (top / "target").mkdir()
        env.append("TARGET=/target")
    argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _INSTALL]
    with script.open("rb") as stdin:
        result = subprocess.run(
            [*argv, "sh", str(root), str(top), *env],
            stdin=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "d", "f" or "l"
    mode: int
    uid: int
    target: str | None = None  # a link's target
    data: bytes | None = None  # a file's content


def tree(root: Path) -> dict[str, Entry]:
    """Everything under ``root`` but the fresh root's skeleton, by path relative to it."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel in SKELETON:
                continue
            st = path.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry("l", mode, st.st_uid, target=os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = Entry("d", mode, st.st_uid)
            else:
                out[rel] = Entry("f", mode, st.st_uid, data=path.read_bytes())
    return out


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return parser


def exec_start(unit: configparser.ConfigParser) -> list[str]:
    """The unit's ExecStart, with the packaged /usr/bin/autoreg mapped to this checkout."""
    argv = shlex.split(unit.get("Service", "ExecStart"))
    if argv[0] == AUTOREG_BIN:
        return [sys.executable, "-m", "registration", *argv[1:]]
    return argv


class FirstBoot:
    """The installed ``root`` booted as ``host`` (see the module docstring)."""

    def __init__(self, host: Host, root: Path, *, units_dir: Path = REPO_UNITS) -> None:
        for path in (root, host.workdir):
            if any(c in str(path) for c in ",:\\ "):
                raise LabError(f"{path}: overlay options cannot name this path")
        self.host = host
        self.root = root
        self.units_dir = units_dir
        self.work = host.workdir / "firstboot"
        self.layer = self.work / "layer"
        self.holder: Proc | None = None
        self.sshd: Proc | None = None
        self.units: dict[str, Proc] = {}
        self.host_key_fingerprint = ""

    # -- the OS's part of the first boot --------------------------------------------------

    def _first_boot_layer(self) -> None:
        """What the OS makes at first boot: sshd host keys (openssh-server does it)."""
        ssh = self.layer / "etc/ssh"
        ssh.mkdir(parents=True)
        key = ssh / "ssh_host_ed25519_key"
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.host.name}"]
        subprocess.run(
            [*keygen, "-f", str(key)],
            check=True,
            timeout=30,
            capture_output=True,
        )
        out = subprocess.run(
            ["ssh-keygen", "-lf", f"{key}.pub"], check=True, timeout=10, capture_output=True
        )
        self.host_key_fingerprint = out.stdout.decode().split()[1]
        (self.work / "var.up").mkdir(parents=True)
        (self.work / "var.work").mkdir()
        # A fresh node has only what its install left: should the machine itself have
        # /var/lib/autoreg, /etc/autoreg or ~root/.ssh, mark the node's opaque over them.
        node_var = self.work / "var.up/autoreg"
        for node_dir, machine_dir in (
            (node_var, Path("/var/lib/autoreg")),
            (self.root / "etc/autoreg", Path("/etc/autoreg")),
            (self.root / "root/.ssh", Path("/root/.ssh")),
        ):
            if machine_dir.exists():
                node_dir.mkdir(parents=True, exist_ok=True)
                os.setxattr(node_dir, "trusted.overlay.opaque", b"y")

    def _sshd_config(self) -> Path:
        config = self.work / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host.ip}:22",
                    "ListenAddress 127.0.0.1:22",
                    "HostKey /etc/ssh/ssh_host_ed25519_key",
                    f"PidFile {self.work / 'sshd.pid'}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    "StrictModes yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return config

    # -- booting -------------------------------------------------------------------------

    def inside(self, argv: list[str]) -> list[str]:
        """``argv`` entered into the booted node's mount and UTS namespaces."""
        if self.holder is None or not self.holder.alive():
            raise LabError("the node is not booted")
        ns = f"/proc/{self.holder.pid}/ns"
        return ["nsenter", f"--mount={ns}/mnt", f"--uts={ns}/uts", "--", *argv]

    def run(self, argv: list[str], *, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
        """Run a command on the booted node (its namespaces), output captured."""
        return self.host.run(self.inside(argv), timeout=timeout, check=False)

    def spawn(self, argv: list[str], *, log_name: str) -> Proc:
        clean = ["env", "-i", UNIT_PATH, "LANG=C.UTF-8", "HOME=/root", "PYTHONUNBUFFERED=1"]
        return self.host.spawn(self.inside([*clean, *argv]), log_name=log_name)

    def boot(self) -> None:
        """Mount the installed system over the real paths, start sshd and the enabled units."""
        self._first_boot_layer()
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        self.holder = self.host.spawn(
            [
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                _HOLDER,
                "sh",
                str(self.root),
                str(self.layer),
                str(self.work),
            ],
            log_name="firstboot",
        )
        self.holder.wait_for_log(r"^booted ", BOOT_TIMEOUT)
        self.sshd = self.spawn([SSHD, "-D", "-e", "-f", str(self._sshd_config())], log_name="sshd")
        self.sshd.wait_for_log(r"Server listening on", BOOT_TIMEOUT)
        for name in self.enabled_units():
            self.start_unit(name)

    def enabled_units(self) -> list[str]:
        """The autoreg units the install enabled (multi-user.target.wants), in name order."""
        wants = self.root / "etc/systemd/system/multi-user.target.wants"
        return sorted(p.name for p in wants.iterdir() if p.name.startswith("autoreg-"))

    def start_unit(self, name: str) -> Proc | None:
        """Start a unit as systemd would: its conditions, state directory, ExecStart."""
        unit = _unit(self.units_dir / name)
        condition = unit.get("Unit", "ConditionPathExists", fallback=None)
        if condition and self.run(["test", "-e", condition]).returncode != 0:
            return None
        state = unit.get("Service", "StateDirectory", fallback=None)
        if state:
            self.run(["mkdir", "-p", "-m", "0755", f"/var/lib/{state}"])
        proc = self.spawn(exec_start(unit), log_name=name.removesuffix(".service"))
        self.units[name] = proc
        return proc

    def var_lib(self, relative: str) -> Path:
        """A file the booted node wrote under /var/lib (the overlay's upper layer)."""
        return self.work / "var.up" / relative
