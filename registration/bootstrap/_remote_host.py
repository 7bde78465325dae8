"""What ``bootstrap`` does on one machine, over one verified SSH connection (blocking).

Everything the machine says back (its facts, command output) is hostile until
checked: sizes are bounded, the facts are parsed as JSON and validated field by
field, and text from it is only ever shown escaped.

Files on the machine (see docs/admin.md, "Machines with nothing installed"):

- the agent, ``/var/cache/autoreg/autoreg-VERSION-HASH.pyz``, copied only when a
  file of that name with that SHA-256 is not there yet;
- its configuration, a drop-in ``/etc/autoreg/autoreg.conf.d/60-bootstrap.conf``;
- the single-use join token, ``/etc/autoreg/keys/join_token`` (mode 600);
- the sshd host key the operator verified, ``/etc/autoreg/keys/bootstrap_host_key.pub``:
  the key the node announces is the key its sshd showed us;
- with no systemd: ``/var/lib/autoreg/bootstrap/agent.{pid,log}``.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
from collections.abc import Sequence
from typing import Any, Final

from .._exceptions import RemoteCommandError, SSHError
from ..controller._ssh import VerifiedSession
from ..media._medium import NODE_JOIN_TOKEN

__all__ = [
    "AGENT_CONFIG",
    "AGENT_UNIT",
    "MIN_PYTHON",
    "REMOTE_CACHE",
    "Facts",
    "Remote",
]

REMOTE_CACHE: Final = "/var/cache/autoreg"
#: The node configuration the agent reads: a drop-in of /etc/autoreg/autoreg.conf.
AGENT_CONFIG: Final = "/etc/autoreg/autoreg.conf.d/60-bootstrap.conf"
AGENT_TOKEN: Final = NODE_JOIN_TOKEN
AGENT_HOST_KEY: Final = "/etc/autoreg/keys/bootstrap_host_key.pub"
AGENT_STATE: Final = "/var/lib/autoreg/bootstrap"
AGENT_UNIT: Final = "autoreg-agent"
PERSISTENT_UNIT_FILE: Final = f"/etc/systemd/system/{AGENT_UNIT}.service"
#: The node side needs asyncio.timeout and enum.StrEnum.
MIN_PYTHON: Final = (3, 11)
#: Bytes of a remote command's output kept (facts are one short JSON line).
OUTPUT_LIMIT: Final = 64 * 1024
#: Seconds the facts script waits for the registrar's endpoint to answer a TCP connect.
PROBE_TIMEOUT: Final = 3.0
#: Seconds after its start at which the agent must still run: a broken configuration or
#: a Python that cannot run it fails then, with its last words, not after the quiet period.
AGENT_SETTLE: Final = 1.0

#: Run by the target's python3: its version, name, init system, cache and reach.
_FACTS: Final = f"""
import hashlib, json, os, socket, sys
path, digest, host, port = sys.argv[1:5]
cached = False
try:
    with open(path, "rb") as fh:
        cached = hashlib.sha256(fh.read()).hexdigest() == digest
except OSError:
    pass
reachable = None
if host:
    try:
        socket.create_connection((host, int(port)), {PROBE_TIMEOUT}).close()
        reachable = True
    except OSError:
        reachable = False
dirs = os.environ.get("PATH", "/usr/bin:/bin").split(":")
run = any(os.access(os.path.join(d, "systemd-run"), os.X_OK) for d in dirs)
print(json.dumps({{"python": list(sys.version_info[:2]), "hostname": socket.gethostname(),
    "systemd": run and os.path.isdir("/run/systemd/system"), "cached": cached,
    "reachable": reachable, "uid": os.getuid()}}))
"""

#: Stop an agent this tool started before (by its pid file, only if it is one), start anew.
_BACKGROUND: Final = """set -e
mkdir -p {state}
pidfile={state}/agent.pid
if [ -s "$pidfile" ]; then
  old=$(cat "$pidfile")
  if grep -q autoreg- "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" 2>/dev/null || true
    i=0
    while [ -d "/proc/$old" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  fi
fi
cd /
setsid {command} </dev/null >>{state}/agent.log 2>&1 &
pid=$!
echo "$pid" > "$pidfile"
sleep {settle}
if ! [ -e "/proc/$pid" ] || grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; then
  echo "the agent stopped at once; the end of {state}/agent.log:" >&2
  tail -n 5 {state}/agent.log >&2
  exit 1
fi
echo "$pid"
"""
#: After a start under systemd: the unit must still be active a moment later.
_STILL_ACTIVE: Final = """sleep {settle}
if ! systemctl is-active --quiet {unit}.service; then
  echo "the agent stopped at once:" >&2
  systemctl status --no-pager --lines=5 {unit}.service >&2
  exit 1
fi
"""
_TRANSIENT: Final = """systemctl stop {unit}.service 2>/dev/null || true
systemctl reset-failed {unit}.service 2>/dev/null || true
systemd-run --unit={unit} --description='autoreg node agent (autoreg bootstrap)' \\
  --property=Restart=on-failure --property=RestartSec=5 {command}
"""
_PERSISTENT_UNIT: Final = """[Unit]
Description=autoreg node agent (installed by autoreg bootstrap)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart={command}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""
_PERSISTENT: Final = """systemctl stop {unit}.service 2>/dev/null || true
systemctl daemon-reload
systemctl enable {unit}.service
systemctl restart {unit}.service
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    python: tuple[int, int]
    hostname: str
    systemd: bool
    cached: bool
    #: Whether a TCP connection to the registrar's endpoint worked (None: not asked).
    registrar_reachable: bool | None
    uid: int


class Remote:
    """The steps of a bootstrap on one machine, over ``session``."""

    def __init__(self, session: VerifiedSession, python: Sequence[str], timeout: float) -> None:
        self.session = session
        self.python = tuple(python)
        self.timeout = timeout

    def _run(self, step: str, command: str) -> str:
        """Run ``command``; its stdout (bounded).  A failure carries the evidence."""
        out = bytearray()
        err = bytearray()

        def keep(stream: str, data: bytes) -> None:
            buffer = out if stream == "out" else err
            if len(buffer) < OUTPUT_LIMIT:
                buffer.extend(data[: OUTPUT_LIMIT - len(buffer)])

        code = self.session.run_command(command, timeout=self.timeout, output=keep)
        if code != 0:
            target = self.session.target
            raise RemoteCommandError(
                step,
                host=target.host,
                port=target.port,
                command=command if len(command) < 200 else command[:200] + "…",
                returncode=code,
                stderr=err.decode("utf-8", "replace"),
            )
        return out.decode("utf-8", "replace")

    def facts(self, bundle_path: str, sha256: str, registrar: tuple[str, int] | None) -> Facts:
        host, port = registrar if registrar else ("", 0)
        argv = [*self.python, "-c", _FACTS, bundle_path, sha256, host, str(port)]
        try:
            text = self._run("looking at the machine (python3)", shlex.join(argv))
        except RemoteCommandError as exc:
            if exc.returncode == 127:
                raise SSHError(
                    f"{shlex.join(self.python)} is not installed there: bootstrap needs "
                    f"python3 >= {'.'.join(map(str, MIN_PYTHON))} on the machine",
                    host=exc.host,
                    port=exc.port,
                ) from exc
            raise
        return _parse_facts(text, self.session)

    def copy(self, path: str, data: bytes) -> None:
        """The agent into the cache: a temporary name, then renamed (atomic)."""
        self.session.write_file(path, data, mode=0o644)

    def install(self, *, config: str, token: str | None, host_key_line: str) -> None:
        self.session.write_file(AGENT_HOST_KEY, f"{host_key_line}\n".encode(), mode=0o644)
        if token is not None:
            self.session.write_file(AGENT_TOKEN, f"{token}\n".encode(), mode=0o600)
        self.session.write_file(AGENT_CONFIG, config.encode(), mode=0o644)

    def agent_command(self, bundle_path: str) -> str:
        # No -c: the default /etc/autoreg/autoreg.conf, which may be absent, and its drop-ins.
        return shlex.join([*self.python, "-I", bundle_path, "announce"])

    def start(self, bundle_path: str, *, systemd: bool, persist: bool) -> str:
        """Start (or restart) the agent; how it runs, in words."""
        command = self.agent_command(bundle_path)
        if persist:
            if not systemd:
                target = self.session.target
                raise SSHError(
                    "--persist needs systemd on the machine, and none runs there "
                    "(without --persist the agent runs as a background process)",
                    host=target.host,
                    port=target.port,
                )
            unit = _PERSISTENT_UNIT.format(command=command)
            self.session.write_file(PERSISTENT_UNIT_FILE, unit.encode(), mode=0o644)
            check = _STILL_ACTIVE.format(unit=AGENT_UNIT, settle=AGENT_SETTLE)
            self._run("starting the agent", _PERSISTENT.format(unit=AGENT_UNIT) + check)
            return f"systemd unit {AGENT_UNIT}.service (enabled)"
        if systemd:
            check = _STILL_ACTIVE.format(unit=AGENT_UNIT, settle=AGENT_SETTLE)
            start = _TRANSIENT.format(unit=AGENT_UNIT, command=command)
            self._run("starting the agent", start + check)
            return f"transient systemd unit {AGENT_UNIT}.service"
        pid = self._run(
            "starting the agent",
            _BACKGROUND.format(state=AGENT_STATE, command=command, settle=AGENT_SETTLE),
        ).strip()
        if not pid.isdigit():
            pid = "?"
        return f"background process {pid} (no systemd; log {AGENT_STATE}/agent.log)"


def cache_path(cache_dir: str, name: str) -> str:
    return posixpath.join(cache_dir, name)


def _parse_facts(text: str, session: VerifiedSession) -> Facts:
    target = session.target
    try:
        raw: Any = json.loads(text.strip().splitlines()[-1] if text.strip() else "")
        python = raw["python"]
        facts = Facts(
            python=(int(python[0]), int(python[1])),
            hostname=str(raw["hostname"])[:255],
            systemd=raw["systemd"] is True,
            cached=raw["cached"] is True,
            registrar_reachable=raw["reachable"] if isinstance(raw["reachable"], bool) else None,
            uid=int(raw["uid"]),
        )
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise SSHError(
            f"the machine's python3 answered something else than its facts ({exc})",
            host=target.host,
            port=target.port,
        ) from exc
    if facts.python < MIN_PYTHON:
        raise SSHError(
            f"its python3 is {facts.python[0]}.{facts.python[1]}; the agent needs "
            f"{'.'.join(map(str, MIN_PYTHON))} or later",
            host=target.host,
            port=target.port,
        )
    return facts
