"""Machines with nothing of autoreg installed, for ``autoreg bootstrap`` (tests, bench).

Each is a namespace host whose sshd runs in a private mount namespace where
``/etc/autoreg``, ``/var/lib/autoreg`` and ``/var/cache/autoreg`` are its own
directories, so what bootstrap copies, writes and starts there is that
machine's alone.  The CC registrar that bootstraps them is itself registered by
a CLC (an NC waits for its CC otherwise), takes NCs by join token only, and has
its receipt delivered to the default path on the machine, over SSH.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from registration.state import NodeState

from . import netlab
from .autoreg_lab import AutoregLab, Station

__all__ = ["API_PORT", "MOUNTS", "Machine", "bootstrap_cli", "cc_registrar", "make_machine"]

MOUNTS: Final = ("/etc/autoreg", "/var/lib/autoreg", "/var/cache/autoreg")
API_PORT: Final = 8443
#: The machines' Python: no site-packages, so only the bundle can supply libraries.
PYTHON: Final = "python3 -S"


@dataclass
class Machine:
    host: netlab.Host
    sshd: netlab.Sshd
    root: dict[str, Path]

    @property
    def ip(self) -> str:
        return self.host.ip

    def cached(self) -> list[Path]:
        return sorted(self.root["/var/cache/autoreg"].glob("*.pyz"))

    @property
    def agent_log(self) -> Path:
        return self.root["/var/lib/autoreg"] / "bootstrap" / "agent.log"

    def accepted_from(self) -> set[str]:
        """Addresses whose SSH logins this machine's sshd accepted."""
        lines = self.sshd.proc.log_text().splitlines()
        return {
            line.split(" from ")[1].split()[0] for line in lines if "Accepted publickey" in line
        }

    def stop_agent(self) -> None:
        """End the agent bootstrap started (by its pid file, if it is one) and wait."""
        pidfile = self.root["/var/lib/autoreg"] / "bootstrap" / "agent.pid"
        if not pidfile.exists():
            return
        pid = int(pidfile.read_text().strip() or 0)
        with contextlib.suppress(OSError):
            if b"autoreg-" in Path(f"/proc/{pid}/cmdline").read_bytes():
                fd = os.pidfd_open(pid)
                try:
                    signal.pidfd_send_signal(fd, signal.SIGTERM)
                    select.select([fd], [], [], 15)  # a pidfd is readable once it exited
                finally:
                    os.close(fd)

    def wipe(self, *, cache: bool) -> None:
        """As freshly installed: its configuration and state gone (and its cache)."""
        for mount, directory in self.root.items():
            if mount != "/var/cache/autoreg" or cache:
                for entry in directory.iterdir():
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()


def make_machine(
    alab: AutoregLab,
    name: str,
    registrar: Station,
    *,
    extra: Mapping[str, Mapping[str, str | None]] | None = None,
) -> Machine:
    """A host with sshd (authorising ``registrar``'s key) and python3, nothing else.

    ``extra``: more paths of its own, each with content (name -> an executable's text,
    or None for a directory), e.g. a ``/run`` where systemd seems to run.
    """
    host = alab.lab.add_host(name)
    paths = [*MOUNTS, *(extra or {})]
    root = {m: host.workdir / "root" / m.strip("/").replace("/", "-") for m in paths}
    for directory in root.values():
        directory.mkdir(parents=True)
    for mount, content in (extra or {}).items():
        for entry, text in content.items():
            path = root[mount] / entry
            if text is None:
                path.mkdir(parents=True)
            else:
                path.write_text(text)
                path.chmod(0o755)
    pub = (registrar.keys_dir / "controller_ed25519.pub").read_text()
    sshd = host.start_sshd(authorized_keys=[pub], mounts=root, hostname=name)
    return Machine(host, sshd, root)


def cc_registrar(alab: AutoregLab, *, hook: str = "", listen: bool = True) -> Station:
    """A CC, itself registered by a CLC, that registers the NCs of cluster c1 by token only."""
    clc = alab.registrar("clc", "clc")
    cc = alab.registrar("cc", "cc", cluster="c1", node_role="cc")
    cc.extra.setdefault("controller", {}).update(
        trust="token", node_receipt_path="/var/lib/autoreg/node/receipt.json"
    )
    if listen:
        cc.extra["controller"]["listen"] = f"{cc.host.ip}:{API_PORT}"
    log = cc.host.workdir / "hook.log"
    cc.hook("nc", f'#!/bin/sh\n{hook}echo "$AUTOREG_NODE_ID" >> {log}\n')
    clc.hook("cc", "#!/bin/sh\nexit 0\n")
    clc.start_daemon()
    cc.start_daemon()
    cc.start_announcer()
    clc.wait_state(cc.node_id, NodeState.REGISTERED)
    return cc


def bootstrap_cli(
    station: Station, *args: str, env: dict[str, str] | None = None, timeout: float = 200
) -> tuple[int, dict[str, object], str]:
    """``autoreg bootstrap --json …`` in the station's namespace: (exit, summary, stderr)."""
    station.write_config()
    argv = [sys.executable, "-P", "-m", "registration", "-c", str(station.conf), "bootstrap",
            "--remote-python", PYTHON, "--json", *args]  # fmt: skip
    r = station.host.run(argv, check=False, timeout=timeout, env=env)
    stderr = r.stderr.decode(errors="replace")
    try:
        summary = json.loads(r.stdout)
    except ValueError as exc:
        raise AssertionError(
            f"no JSON summary (exit {r.returncode}):\n{r.stdout!r}\n{stderr}"
        ) from exc
    return r.returncode, summary, stderr
