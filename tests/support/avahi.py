"""A real avahi-daemon, on a private system bus, inside a :mod:`netlab` host.

Per host, :func:`start_avahi` starts two processes, both with :meth:`Host.spawn` (so
both are killed by PID and process group when the lab closes, even if a test fails):

1. ``dbus-daemon --nofork --print-address --config-file=<workdir>/dbus/system.conf``: a
   system-bus-like configuration (``<type>system</type>``, ``<auth>EXTERNAL</auth>``, the
   stock default-deny policy, ``<includedir>/usr/share/dbus-1/system.d</includedir>``
   for avahi's own policy) that listens on ``unix:path=<workdir>/dbus/system_bus_socket``
   only.  No activation, no pid file, no syslog.  Ready when it prints its address.
2. ``avahi-daemon --no-chroot --no-drop-root --no-proc-title -f <workdir>/avahi-daemon.conf``
   in the host's network namespace *and* a private mount namespace: it runs as
   ``unshare --mount --propagation private sh -c 'mount -n -t tmpfs tmpfs /run && mkdir
   /run/avahi-daemon && exec avahi-daemon …'``, so its pid file and its socket
   (``/run/avahi-daemon``, compiled in) are private to it and nothing is created on the
   machine's own ``/run``.  ``ip netns exec``, ``unshare`` and ``sh`` all exec, so the
   spawned PID *is* avahi-daemon's.  ``DBUS_SYSTEM_BUS_ADDRESS`` points it at the bus of
   step 1.  Ready when it logs ``Server startup complete`` and ``org.freedesktop.Avahi``
   answers ``GetState()`` with ``AVAHI_SERVER_RUNNING`` on that bus.

The generated ``avahi-daemon.conf`` makes it a quiet responder on ``eth0`` only, IPv4
only, with a host name unique on the lab network (``avahi-<host>``), no workstation or
HINFO records, no wide-area, no reflector (unless asked for: ``reflector=True``, on
every interface of a router), and ``disallow-other-stacks=no`` so that python-zeroconf
may share UDP port 5353 with it.

Processes that must use this avahi get :attr:`Avahi.env` (``DBUS_SYSTEM_BUS_ADDRESS``):
``use_avahi()`` puts it into a :class:`~support.autoreg_lab.Station`'s ``env``;
``avahi-publish`` and ``avahi-browse`` run inside the namespace with it.  No avahi-daemon
and no dbus-daemon ever runs in the root namespace.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netlab import Host, Proc
from .prerequisites import unavailable

__all__ = [
    "Avahi",
    "BrowsedService",
    "parse_browse",
    "require_avahi",
    "start_avahi",
    "use_avahi",
]

AVAHI_DAEMON = "avahi-daemon"
DBUS_DAEMON = "dbus-daemon"
AVAHI_TOOLS = ("avahi-publish", "avahi-browse")
AVAHI_BUS_NAME = "org.freedesktop.Avahi"
AVAHI_SERVER_RUNNING = 2  # avahi-common/defs.h: AVAHI_SERVER_RUNNING
READY_TIMEOUT = 20.0
_POLL = 0.05

_DBUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- A private system bus for one netlab host (tests/support/avahi.py). -->
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <!-- avahi-dbus.conf: root may own org.freedesktop.Avahi, anyone may call it -->
  <includedir>/usr/share/dbus-1/system.d</includedir>
</busconfig>
"""

_AVAHI_CONFIG = """[server]
host-name={host_name}
use-ipv4=yes
use-ipv6=no
allow-interfaces={ifname}
enable-dbus=yes
disallow-other-stacks=no
ratelimit-interval-usec=1000000
ratelimit-burst=1000

[wide-area]
enable-wide-area=no

[publish]
publish-hinfo=no
publish-workstation=no
publish-aaaa-on-ipv4=no
publish-a-on-ipv6=no

[reflector]
enable-reflector={reflector}
"""


def require_avahi() -> None:
    """Skip (fail under ``CI=true``) when avahi-daemon, its tools or dbus-daemon are missing."""
    missing = [b for b in (AVAHI_DAEMON, DBUS_DAEMON, "unshare", *AVAHI_TOOLS) if not _which(b)]
    try:
        import dbus  # noqa: F401
    except ImportError:
        missing.append("dbus-python")
    if missing:
        unavailable(f"avahi tests need {', '.join(missing)}")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


@dataclass(frozen=True)
class BrowsedService:
    """One resolved line (``=``) of ``avahi-browse -rpt``."""

    interface: str
    protocol: str
    name: str
    service_type: str
    domain: str
    host_name: str
    address: str
    port: int
    txt: tuple[str, ...]

    @property
    def txt_map(self) -> dict[str, str]:
        """TXT strings as a dict, first occurrence of a key wins (RFC 6763 §6.4)."""
        out: dict[str, str] = {}
        for entry in self.txt:
            key, _, value = entry.partition("=")
            out.setdefault(key.lower(), value)
        return out


_TXT_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_DECIMAL_ESCAPE = re.compile(r"\\(\d{3})")


def _unescape_label(text: str) -> str:
    r"""avahi-browse -p prints names escaped as DNS labels (``\032`` for a space, ``\.``…)."""
    raw = _DECIMAL_ESCAPE.sub(lambda m: chr(int(m.group(1))), text)
    return re.sub(r"\\(.)", r"\1", raw)


def parse_browse(output: str) -> list[BrowsedService]:
    """The resolved services in ``avahi-browse --parsable --resolve`` output."""
    found: list[BrowsedService] = []
    for line in output.splitlines():
        if not line.startswith("="):
            continue
        fields = line.split(";", 9)
        if len(fields) < 10:
            continue
        _, iface, proto, name, stype, domain, host_name, address, port, txt = fields
        strings = tuple(re.sub(r"\\(.)", r"\1", m.group(1)) for m in _TXT_STRING.finditer(txt))
        found.append(
            BrowsedService(
                interface=iface,
                protocol=proto,
                name=_unescape_label(name),
                service_type=stype,
                domain=domain,
                host_name=host_name,
                address=address,
                port=int(port),
                txt=strings,
            )
        )
    return found


@dataclass
class Avahi:
    """avahi-daemon and its private system bus on one netlab host."""

    host: Host
    host_name: str
    bus_socket: Path
    config_path: Path
    bus_config_path: Path
    dbus: Proc | None = None
    daemon: Proc | None = None

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.bus_socket}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a process needs to use this avahi-daemon."""
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bus_address}

    # -- avahi-daemon -----------------------------------------------------------------

    def start_daemon(self, timeout: float = READY_TIMEOUT) -> Proc:
        """Start avahi-daemon (private /run) and wait until it runs and answers on D-Bus."""
        if self.daemon is not None and self.daemon.alive():
            raise RuntimeError(f"avahi-daemon already runs on {self.host.name}")
        script = (
            "mount -n -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/avahi-daemon && "
            f'exec {AVAHI_DAEMON} --no-chroot --no-drop-root --no-proc-title -f "$1"'
        )
        self.daemon = self.host.spawn(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(self.config_path),
            ],
            env=self.env,
            log_name="avahi-daemon",
        )
        try:
            self.wait_ready(timeout)
            # ip netns exec, unshare and sh each exec: the PID we hold is avahi-daemon's own.
            comm = Path(f"/proc/{self.daemon.pid}/comm").read_text().strip()
            assert comm == AVAHI_DAEMON, f"pid {self.daemon.pid} is {comm!r}, not avahi-daemon"
        except BaseException:
            self.daemon.kill()
            raise
        return self.daemon

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Wait (bounded) for the startup line, then for GetState() == RUNNING on the bus."""
        if self.daemon is None:
            raise RuntimeError("avahi-daemon was not started")
        deadline = time.monotonic() + timeout
        self.daemon.wait_for_log(r"Server startup complete", timeout)
        last: object = None
        while time.monotonic() < deadline:
            if not self.daemon.alive():
                break
            try:
                last = self.call("GetState")
            except Exception as exc:  # not on the bus yet
                last = exc
            else:
                if last == AVAHI_SERVER_RUNNING:
                    return
            time.sleep(_POLL)
        raise AssertionError(
            f"avahi-daemon on {self.host.name} not running on its bus after {timeout}s "
            f"(last answer: {last!r}); log:\n{self.daemon.log_text()[-2000:]}"
        )

    def stop_daemon(self, timeout: float = 10) -> int | None:
        """SIGTERM avahi-daemon (it sends goodbyes and leaves the bus) and reap it."""
        if self.daemon is None:
            return None
        return self.daemon.terminate(timeout)

    def crash_daemon(self) -> None:
        """SIGKILL avahi-daemon: no goodbye, the bus just sees it vanish."""
        if self.daemon is not None:
            self.daemon.signal(signal.SIGKILL)
            self.daemon.kill()

    def restart_daemon(self, *, crash: bool = False, timeout: float = READY_TIMEOUT) -> Proc:
        """Stop (or crash) avahi-daemon, wait until its bus name is gone, start it again."""
        if crash:
            self.crash_daemon()
        else:
            self.stop_daemon()
        deadline = time.monotonic() + timeout
        while self.name_owner() is not None:
            if time.monotonic() > deadline:
                raise AssertionError("org.freedesktop.Avahi still owned after avahi-daemon died")
            time.sleep(_POLL)
        return self.start_daemon(timeout)

    # -- the bus ------------------------------------------------------------------------

    def start_bus(self, timeout: float = READY_TIMEOUT) -> Proc:
        """Start the private system bus; ready once dbus-daemon prints its address."""
        if self.dbus is not None and self.dbus.alive():
            raise RuntimeError(f"the system bus already runs on {self.host.name}")
        self.bus_socket.unlink(missing_ok=True)
        self.dbus = self.host.spawn(
            [DBUS_DAEMON, f"--config-file={self.bus_config_path}", "--nofork", "--print-address"],
            log_name="dbus-daemon",
        )
        self.dbus.wait_for_log(rf"^unix:path={re.escape(str(self.bus_socket))}", timeout)
        return self.dbus

    def stop_bus(self, timeout: float = 10) -> int | None:
        """Stop the system bus (avahi-daemon, if running, is left to notice on its own)."""
        if self.dbus is None:
            return None
        return self.dbus.terminate(timeout)

    def _connection(self) -> Any:
        import dbus

        return dbus.bus.BusConnection(self.bus_address)

    def call(self, method: str, *args: Any, path: str = "/", timeout: float = 5) -> Any:
        """Call ``org.freedesktop.Avahi.Server.<method>`` (or an object at ``path``)."""
        bus = self._connection()
        try:
            obj = bus.get_object(AVAHI_BUS_NAME, path, introspect=False)
            interface = (
                "org.freedesktop.Avahi.Server"
                if path == "/"
                else ("org.freedesktop.Avahi.EntryGroup")
            )
            return getattr(obj, method)(*args, dbus_interface=interface, timeout=timeout)
        finally:
            bus.close()

    def name_owner(self) -> str | None:
        """The unique bus name owning org.freedesktop.Avahi, None when nobody does."""
        import dbus

        bus = self._connection()
        try:
            return str(bus.get_name_owner(AVAHI_BUS_NAME))
        except dbus.DBusException:
            return None
        finally:
            bus.close()

    # -- avahi's own tools, inside the namespace ---------------------------------------

    def run(self, argv: Sequence[str], *, timeout: float = 30, check: bool = True) -> str:
        return self.host.run(list(argv), env=self.env, timeout=timeout, check=check).stdout.decode(
            errors="replace"
        )

    def publish(
        self,
        instance: str,
        service_type: str,
        port: int,
        txt: Sequence[str] | Mapping[str, str],
        *,
        log_name: str = "avahi-publish",
        wait: bool = True,
        timeout: float = READY_TIMEOUT,
    ) -> Proc:
        """``avahi-publish -s INSTANCE TYPE PORT TXT…`` in the background (until stopped)."""
        strings = [f"{k}={v}" for k, v in txt.items()] if isinstance(txt, Mapping) else list(txt)
        proc = self.host.spawn(
            ["avahi-publish", "-s", instance, service_type, str(port), *strings],
            env=self.env,
            log_name=log_name,
        )
        if wait:
            proc.wait_for_log(r"Established under name", timeout)
        return proc

    def browse(self, service_type: str, *, timeout: float = 15) -> list[BrowsedService]:
        """One ``avahi-browse -rpt TYPE`` run: what avahi-daemon resolves right now."""
        out = self.run(["avahi-browse", "-rpt", service_type], timeout=timeout)
        return parse_browse(out)

    def wait_browse(
        self,
        service_type: str,
        predicate: Any,
        *,
        timeout: float = 30,
        what: str = "a matching service",
    ) -> list[BrowsedService]:
        """Repeat :meth:`browse` until ``predicate(services)`` holds; the services then."""
        deadline = time.monotonic() + timeout
        services: list[BrowsedService] = []
        while time.monotonic() < deadline:
            try:
                services = self.browse(
                    service_type, timeout=max(1.0, min(15.0, deadline - time.monotonic()))
                )
            except subprocess.TimeoutExpired:
                services = []
            if predicate(services):
                return services
            time.sleep(_POLL)
        raise AssertionError(
            f"avahi-browse on {self.host.name}: no {what} for {service_type} after {timeout}s; "
            f"last: {services}"
        )


def start_avahi(
    host: Host,
    *,
    start_daemon: bool = True,
    timeout: float = READY_TIMEOUT,
    reflector: bool = False,
) -> Avahi:
    """Start a private system bus on ``host`` and (by default) avahi-daemon on it.

    ``reflector``: the spec's "reflector proxy" on a router: avahi-daemon on every
    interface of the host (``eth0`` and those ``Lab.attach`` added) with
    ``enable-reflector=yes``, so mDNS heard on one network is repeated on the others.
    """
    require_avahi()
    busdir = host.workdir / "dbus"
    busdir.mkdir(parents=True, exist_ok=True)
    socket_path = busdir / "system_bus_socket"
    socket_path.unlink(missing_ok=True)
    bus_conf = busdir / "system.conf"
    bus_conf.write_text(_DBUS_CONFIG.format(socket=socket_path))
    host_name = "avahi-" + re.sub(r"[^A-Za-z0-9-]", "-", host.name)
    avahi_conf = host.workdir / "avahi-daemon.conf"
    interfaces = [host.ifname, *host.extra_interfaces] if reflector else [host.ifname]
    avahi_conf.write_text(
        _AVAHI_CONFIG.format(
            host_name=host_name,
            ifname=",".join(interfaces),
            reflector="yes" if reflector else "no",
        )
    )
    avahi = Avahi(
        host=host,
        host_name=host_name,
        bus_socket=socket_path,
        config_path=avahi_conf,
        bus_config_path=bus_conf,
    )
    avahi.start_bus(timeout)
    if start_daemon:
        avahi.start_daemon(timeout)
    return avahi


def use_avahi(station: Any, avahi: Avahi | None, transport: str = "avahi") -> None:
    """Point ``station``'s processes at ``avahi``'s bus and select ``transport``.

    ``avahi=None`` still gives the station an (empty) private bus address, so that
    ``transport = auto`` can never reach a system bus outside the lab.
    """
    if avahi is not None:
        station.env.update(avahi.env)
    else:
        missing = station.host.workdir / "dbus" / "no_bus_here"
        station.env["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={missing}"
    station.extra.setdefault("autoreg", {})["transport"] = transport
