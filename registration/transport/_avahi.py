"""Publishing through avahi-daemon over D-Bus (dbus-python), browsing with python-zeroconf.

On a host where avahi-daemon owns the mDNS responder, a second responder would
answer for the host twice and fight over names, so services are published as
``org.freedesktop.Avahi`` entry groups.  Only method calls are used (no D-Bus
signals, so no GLib main loop): the group's state is read after each commit
and on every maintenance tick, which is how collisions, entry-group failures
and avahi-daemon restarts are noticed and repaired.  dbus-python blocks, so
every call runs in a one-thread :class:`ThreadLimiter`.

Browsing stays with python-zeroconf, which shares UDP port 5353 with
avahi-daemon (both use SO_REUSEADDR/SO_REUSEPORT, and multicast is delivered to
every socket on the port): see docs/architecture.md for the evidence.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Mapping
from typing import Any, Final

from .._exceptions import TransportError
from .._threads import ThreadLimiter
from ._base import BrowseListener, Published
from ._zeroconf import ZeroconfTransport

__all__ = ["AvahiPublished", "AvahiTransport", "avahi_available"]

log = logging.getLogger(__name__)

AVAHI_BUS_NAME: Final = "org.freedesktop.Avahi"
SERVER_INTERFACE: Final = "org.freedesktop.Avahi.Server"
GROUP_INTERFACE: Final = "org.freedesktop.Avahi.EntryGroup"
IF_UNSPEC: Final = -1
PROTO_INET: Final = 0
# avahi-common/defs.h: AvahiEntryGroupState and AvahiServerState
GROUP_UNCOMMITED, GROUP_REGISTERING, GROUP_ESTABLISHED, GROUP_COLLISION, GROUP_FAILURE = range(5)
SERVER_RUNNING: Final = 2
#: Seconds a D-Bus call may take before avahi-daemon counts as not answering.
CALL_TIMEOUT: Final = 5.0
#: Alternative names tried after collisions before giving up (avahi picks "name #2" …).
MAX_RENAMES: Final = 10


@dataclasses.dataclass(slots=True)
class AvahiPublished(Published):
    service_type: str = ""
    host: str = ""
    ip: str = ""
    port: int = 0
    txt: dict[str, str] = dataclasses.field(default_factory=dict)
    group: str | None = None  # the entry group's object path while avahi holds it


def avahi_available(timeout: float = 2.0) -> str | None:
    """avahi-daemon's version when it answers on the system bus, else None."""
    try:
        import dbus
    except ImportError:
        return None
    try:
        bus = dbus.SystemBus(private=True)
        try:
            server = bus.get_object(AVAHI_BUS_NAME, "/")
            return str(server.GetVersionString(dbus_interface=SERVER_INTERFACE, timeout=timeout))
        finally:
            bus.close()
    except dbus.DBusException:
        return None


class AvahiTransport:
    """Publishes via avahi-daemon; browses via an embedded zeroconf listener."""

    name: Final = "avahi"

    def __init__(self, addresses: list[str] | None = None) -> None:
        self._addresses = addresses
        self._dbus = ThreadLimiter("autoreg-dbus", 1)
        self._bus: Any = None
        self._browser: ZeroconfTransport | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def async_start(self) -> None:
        await self._dbus.run(self._connect)

    async def async_close(self) -> None:
        if self._browser is not None:
            await self._browser.async_close()
            self._browser = None
        if self._bus is not None:
            bus, self._bus = self._bus, None
            await self._dbus.run(bus.close)
        self._dbus.shutdown()

    def _connect(self) -> None:
        try:
            import dbus
        except ImportError as exc:
            raise TransportError("transport avahi needs dbus-python (python3-dbus)") from exc
        try:
            self._bus = dbus.SystemBus(private=True)
            state = self._server().GetState(timeout=CALL_TIMEOUT)
        except dbus.DBusException as exc:
            raise TransportError(
                f"avahi-daemon does not answer on the system bus: {exc.get_dbus_message() or exc}"
            ) from exc
        if int(state) != SERVER_RUNNING:
            raise TransportError(f"avahi-daemon is not running normally (server state {state})")

    def _server(self) -> Any:
        import dbus

        return dbus.Interface(self._bus.get_object(AVAHI_BUS_NAME, "/"), SERVER_INTERFACE)

    def _group(self, path: str) -> Any:
        import dbus

        return dbus.Interface(self._bus.get_object(AVAHI_BUS_NAME, path), GROUP_INTERFACE)

    # -- publishing ------------------------------------------------------------------------

    async def async_publish(
        self,
        service_type: str,
        instance: str,
        *,
        host: str,
        ip: str,
        port: int,
        txt: Mapping[str, str],
        probe: bool,
    ) -> Published:
        # avahi-daemon always probes (it is the responder's job); ``probe`` cannot skip it.
        published = AvahiPublished(
            name=f"{instance}.{service_type}",
            service_type=service_type,
            host=host,
            ip=ip,
            port=port,
            txt=dict(txt),
        )
        await self._dbus.run(self._commit, published)
        return published

    async def async_update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None:
        assert isinstance(published, AvahiPublished)
        published.ip, published.port, published.txt = ip, port, dict(txt)
        await self._dbus.run(self._commit, published)

    async def async_withdraw(self, published: Published) -> None:
        assert isinstance(published, AvahiPublished)
        await self._dbus.run(self._free, published)

    async def async_maintain(self, published: Published) -> bool:
        """Re-publish when avahi-daemon lost the group (restart, failure, collision)."""
        assert isinstance(published, AvahiPublished)
        return await self._dbus.run(self._repair, published)

    def _commit(self, published: AvahiPublished) -> None:
        """(Re)build the entry group and commit it; settle collisions by renaming."""
        import dbus

        instance = published.name.removesuffix(f".{published.service_type}")
        stype = published.service_type.removesuffix(".local.").removesuffix(".")
        try:
            if self._bus is None:
                self._connect()
            self._free(published)
            for _ in range(MAX_RENAMES):
                path = str(self._server().EntryGroupNew(timeout=CALL_TIMEOUT))
                group = self._group(path)
                group.AddService(
                    dbus.Int32(self._interface_index(published.ip)),
                    dbus.Int32(PROTO_INET),
                    dbus.UInt32(0),
                    instance,
                    stype,
                    "local",
                    "",
                    dbus.UInt16(published.port),
                    _txt_array(published.txt),
                    timeout=CALL_TIMEOUT,
                )
                group.Commit(timeout=CALL_TIMEOUT)
                published.group = path
                state = int(group.GetState(timeout=CALL_TIMEOUT))
                if state != GROUP_COLLISION:
                    break
                new = str(self._server().GetAlternativeServiceName(instance, timeout=CALL_TIMEOUT))
                log.warning(
                    "name collision for %r: publishing as %r (node id unchanged)", instance, new
                )
                self._free(published)
                instance = new
            else:
                raise TransportError(f"no free service name after {MAX_RENAMES} collisions")
            published.name = f"{instance}.{published.service_type}"
            if state == GROUP_FAILURE:
                raise TransportError(f"avahi-daemon failed the entry group for {instance}")
        except dbus.DBusException as exc:
            published.group = None
            raise TransportError(f"avahi-daemon: {exc.get_dbus_message() or exc}") from exc

    def _repair(self, published: AvahiPublished) -> bool:
        import dbus

        try:
            if published.group is not None and self._bus is not None:
                state = int(self._group(published.group).GetState(timeout=CALL_TIMEOUT))
                if state in (GROUP_REGISTERING, GROUP_ESTABLISHED):
                    return False
                log.warning(
                    "avahi entry group for %s is in state %d: publishing again",
                    published.name,
                    state,
                )
        except dbus.DBusException as exc:
            # The group's object is gone: avahi-daemon restarted (or its bus went away).
            log.warning(
                "avahi-daemon lost %s (%s): publishing again", published.name, exc.get_dbus_name()
            )
            published.group = None
            if "Disconnected" in (exc.get_dbus_name() or ""):
                self._bus = None
        try:
            self._commit(published)
        except TransportError as exc:
            log.warning("cannot publish through avahi-daemon yet: %s", exc)
            return False
        return True

    def _free(self, published: AvahiPublished) -> None:
        import dbus

        if published.group is None or self._bus is None:
            return
        path, published.group = published.group, None
        try:
            self._group(path).Free(timeout=CALL_TIMEOUT)
        except dbus.DBusException as exc:
            log.debug("freeing entry group %s: %s", path, exc)

    def _interface_index(self, ip: str) -> int:
        """Publish on the interface that holds the announced address, else on all."""
        from .._netif import interface_address

        for index, name in socket.if_nameindex():
            if interface_address(name) == ip:
                return int(index)
        return IF_UNSPEC

    # -- browsing -------------------------------------------------------------------------

    async def async_browse(self, service_type: str, listener: BrowseListener) -> None:
        if self._browser is None:
            self._browser = ZeroconfTransport(self._addresses)
            await self._browser.async_start()
        await self._browser.async_browse(service_type, listener)


def _txt_array(txt: Mapping[str, str]) -> Any:
    import dbus

    return dbus.Array(
        [
            dbus.Array([dbus.Byte(b) for b in f"{k}={v}".encode()], signature="y")
            for k, v in txt.items()
        ],
        signature="ay",
    )
