"""The node's callback service: keep a reverse SSH tunnel to the controller up.

``autoreg callback`` runs OpenSSH's ``ssh`` (the real client: it does remote
forwards, keepalives and host-key pinning the way sysadmins know) as a
supervised child:

- it dials the controller's CALLBACK_PORT as CALLBACK_USER with CALLBACK_KEY,
  trusting only the pinned controller host key (``known_hosts``, under an alias,
  so the controller's address may change);
- it remote-forwards the node's own sshd to one of its CONTROLLER_PORTs on the
  controller's loopback, and exits if the forward fails (``ExitOnForwardFailure``);
- it checks the tunnel *through* the connection: SSH keepalive requests every
  ``keepalive_interval`` seconds must be answered by the controller's sshd, or
  ssh gives up after ``keepalive_count`` misses (a dead link is noticed within
  seconds, not when TCP times out);
- when ssh exits, the service re-reads its configuration (and, with
  ``controller = auto``, the controller's own announcement), moves to its next
  port (the old session may still hold the last one on the controller) and
  reconnects after a jittered, bounded backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Sequence
from typing import Final

from .._clock import wait_event
from .._config import CallbackConfig, Config
from .._exceptions import AutoregError, ConfigError
from .._sshkeys import parse_public_key
from ..protocol import RegistrarAnnouncement
from ._discover import discover_registrars

__all__ = ["CallbackService", "rank_registrars", "ssh_command"]

log = logging.getLogger(__name__)

#: Seconds a session must have lasted to count as stable (the backoff starts over).
STABLE_AFTER: Final = 30.0
#: Seconds to browse for the controller's announcement with ``controller = auto``.
DISCOVER_TIMEOUT: Final = 3.0
#: Seconds given to ssh to exit on SIGTERM before SIGKILL.
STOP_GRACE: Final = 5.0
#: Lines of ssh's stderr kept to explain an exit.
STDERR_TAIL: Final = 20
_CONTROLLER_ALIAS: Final = "autoreg-controller"
_FORWARD_OK = re.compile(r"remote forward success for: listen [^:]+:(\d+)")
_FORWARD_FAILED = re.compile(r"remote port forwarding failed for listen port (\d+)")


def ssh_command(config: Config, controller: str, listen_port: int) -> list[str]:
    """The OpenSSH client command line for one tunnel session."""
    cb = config.callback
    host, _, port = cb.forward.rpartition(":")
    options = {
        "BatchMode": "yes",
        "IdentitiesOnly": "yes",
        "ExitOnForwardFailure": "yes",
        "ServerAliveInterval": str(max(1, round(cb.keepalive_interval))),
        "ServerAliveCountMax": str(cb.keepalive_count),
        "StrictHostKeyChecking": "yes",
        "UserKnownHostsFile": str(cb.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "HostKeyAlias": _CONTROLLER_ALIAS,
        "ConnectTimeout": "10",
        "LogLevel": "DEBUG1",  # the forward's success is reported at debug1 only
        "ControlMaster": "no",
        "ControlPath": "none",
    }
    argv = ["ssh", "-N", "-T", "-F", "/dev/null", "-i", str(cb.key), "-p", str(cb.port)]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return [*argv, "-R", f"127.0.0.1:{listen_port}:{host}:{port}", f"{cb.user}@{controller}"]


class CallbackService:
    """Supervises one ``ssh -R`` session at a time, forever (until :meth:`stop`)."""

    def __init__(self, reload: Callable[[], Config]) -> None:
        self._reload = reload
        self._stopping = asyncio.Event()
        self._attempt = 0
        self._port_index = 0
        self._candidate = 0

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        delay: float | None = None
        defaults = CallbackConfig()
        retry = (defaults.retry_initial, defaults.retry_max)
        while not self._stopping.is_set():
            try:
                config = self._reload()
                retry = (config.callback.retry_initial, config.callback.retry_max)
                ports = config.callback.listen_ports
                if not ports:
                    raise ConfigError(
                        "no [callback] listen_ports: run `autoreg tunnel add` on "
                        "the controller and copy its [callback] section here"
                    )
                candidates = await self._controllers(config)
            except AutoregError as exc:
                log.error("cannot call back: %s", exc)
                ended_stable = False
            else:
                controller = candidates[self._candidate % len(candidates)]
                port = ports[self._port_index % len(ports)]
                started = time.monotonic()
                outcome = await self._session(config, controller, port)
                lasted = time.monotonic() - started
                if outcome == "hostkey":
                    self._candidate += 1
                    log.warning(
                        "the registrar at %s does not present the pinned host key (%s)%s",
                        controller,
                        config.callback.known_hosts,
                        "; trying the next one"
                        if self._candidate % len(candidates)
                        else "; no other candidate",
                    )
                    if self._candidate % len(candidates):
                        continue
                # A session that got its forward may linger on the controller holding
                # this port (a vanished node's does): next time, the next port.  A
                # controller that was not reachable at all keeps the port (and the
                # controller's record of it) as it is.
                if outcome in ("up", "refused"):
                    self._port_index += 1
                ended_stable = outcome == "up" or lasted >= STABLE_AFTER
                if outcome == "refused" and self._port_index % len(ports):
                    continue  # that port is held: try the next one at once
            if self._stopping.is_set():
                break
            delay = _next_delay(delay, *retry, reset=ended_stable)
            log.info("reconnecting in %.1fs", delay)
            await wait_event(self._stopping, delay)

    async def _controllers(self, config: Config) -> list[str]:
        """Where to call: the configured address, or (``auto``) the registrars that
        announce themselves, best first (see :func:`rank_registrars`)."""
        configured = config.callback.controller
        if configured and configured != "auto":
            return [configured]
        if config.node.role is None:
            raise ConfigError("controller = auto needs [node] role to find its registrar")
        spec = config.profile.role(config.node.role)
        wanted = spec.registered_by if spec else None
        found = await discover_registrars(config, timeout=DISCOVER_TIMEOUT)
        ranked = rank_registrars(
            found, role=wanted, cluster=config.node.cluster, pin=_pinned(config)
        )
        if not ranked:
            raise ConfigError(
                f"no {wanted} registrar announced itself within {DISCOVER_TIMEOUT}s "
                "(set [callback] controller)"
            )
        for reg, why in ranked:
            log.info("registrar candidate %s at %s: %s", reg.node_id, reg.ip, why)
        return [reg.ip for reg, _ in ranked]

    async def _session(self, config: Config, controller: str, port: int) -> str:
        """Run one ssh session to its end: "up" (the forward worked), "refused" (the
        port is held), "hostkey" (not the pinned controller), or "failed" (no session:
        unreachable, refused key, …)."""
        argv = ssh_command(config, controller, port)
        self._attempt += 1
        log.info(
            "calling back to %s:%d (attempt %d), forwarding %s to controller port %d",
            controller,
            config.callback.port,
            self._attempt,
            config.callback.forward,
            port,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            log.error("cannot run ssh: %s", exc)
            return "failed"
        assert proc.stderr is not None
        tail: list[str] = []
        seen: set[str] = set()
        reader = asyncio.ensure_future(self._read(proc.stderr, tail, seen, port))
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if self._stopping.is_set() and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                proc.kill()
        stopper.cancel()
        code = await proc.wait()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        if not self._stopping.is_set():
            why = "; ".join(tail[-3:]) or "no output"
            log.warning("tunnel on controller port %d ended (ssh exit %s): %s", port, code, why)
        if "up" in seen:
            return "up"
        if "hostkey" in seen:
            return "hostkey"
        return "refused" if "refused" in seen else "failed"

    @staticmethod
    async def _read(
        stream: asyncio.StreamReader, tail: list[str], seen: set[str], port: int
    ) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            tail.append(text)
            del tail[:-STDERR_TAIL]
            if _FORWARD_FAILED.search(text):
                seen.add("refused")
            if text.startswith("Host key verification failed") or "IDENTIFICATION HAS CHANGED" in (
                text
            ):
                seen.add("hostkey")
            if _FORWARD_OK.search(text):
                seen.add("up")
                log.info("tunnel up: controller port %d leads to this node's sshd", port)
            elif text.startswith("Authenticated to"):
                log.info("%s", text)


def rank_registrars(
    found: Sequence[RegistrarAnnouncement],
    *,
    role: str | None,
    cluster: str | None,
    pin: str | None,
) -> list[tuple[RegistrarAnnouncement, str]]:
    """The registrars of ``role`` (and ``cluster``), best first, each with why it ranks so.

    Active ones before standby or locked ones; among those, the ones that announce
    the host key this node pins before the others (an impostor's announcement, or a
    standby, may come first by id).  Announcements are not trusted for the key: the
    pin is checked by ssh itself, and a registrar that fails it is skipped.
    """

    def why(reg: RegistrarAnnouncement) -> str:
        key = (
            "announces the pinned host key"
            if pin is not None and reg.fingerprint == pin
            else "does not announce the pinned host key"
        )
        return f"{reg.state}, {key}"

    matching = [reg for reg in found if reg.role == role and reg.cluster in (None, cluster)]
    matching.sort(
        key=lambda reg: (reg.state != "active", pin is None or reg.fingerprint != pin, reg.node_id)
    )
    return [(reg, why(reg)) for reg in matching]


def _pinned(config: Config) -> str | None:
    """The fingerprint of the controller host key this node pins (None: unreadable)."""
    try:
        line = config.callback.known_hosts.read_text(encoding="ascii").split()
        return parse_public_key(" ".join(line[1:3]), source="known_hosts").fingerprint
    except (OSError, UnicodeDecodeError, IndexError, AutoregError):
        return None


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM if this service dies (even by SIGKILL), so no ssh
    outlives it holding the node's port (Linux PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)


def _next_delay(previous: float | None, initial: float, maximum: float, *, reset: bool) -> float:
    """Exponential backoff with jitter in [delay/2, delay], bounded by ``maximum``."""
    base = initial if previous is None or reset else min(maximum, previous * 2)
    return max(initial / 2, random.uniform(base / 2, base))  # noqa: S311 - not crypto
