"""Publishing through avahi-daemon over D-Bus (dbus-python), browsing with python-zeroconf.

On a host where avahi-daemon owns the mDNS responder, a second responder would
answer for the host twice and fight over names, so services are published as
``org.freedesktop.Avahi`` entry groups: the service (SRV, TXT, PTR) with the
protocol's host name ``autoreg-<id>.local`` as SRV target, plus that name's A
record (``AddAddress`` with ``AVAHI_PUBLISH_NO_REVERSE``: the reverse PTR of the
address belongs to the host's own name).

Only method calls are used (no D-Bus signals, so no GLib main loop): the group's
state is read after each commit until probing settles, and again on every
maintenance tick (:meth:`AvahiTransport.maintain`), which is how these are
noticed and repaired:

- a **name collision** (another host holds ``<role>-<id>``; seen while probing,
  after establishment when a non-probing responder announces the name, or
  locally as ``CollisionError``): the next ``GetAlternativeServiceName``
  (``nc-… #2``); the TXT record, and so the node ``id``, never change.  From the
  second collision on, the host name is renamed too (``GetAlternativeHostName``);
- an entry group that avahi-daemon reset (``UNCOMMITED``) or failed: rebuilt;
- **avahi-daemon restarting**: calls go to avahi-daemon's *unique* bus name, so a
  restart shows as a new owner of ``org.freedesktop.Avahi`` (the old group is
  gone with the old process): published again, the process keeps running;
- **avahi-daemon not running**: a clear :class:`TransportError` at start; while
  running, one warning per outage and a re-publish when it is back.

Nothing here sends to the well-known name, so no call ever D-Bus-activates
avahi-daemon.  dbus-python blocks, so every call runs in a one-thread
:class:`ThreadLimiter`.  A bus connection that went away (the system bus restarted)
is re-opened on the next call; it is set not to exit the process on disconnection
(libdbus's default for bus connections, though it only acts while dispatching, which
this code never does).

Browsing stays with python-zeroconf beside avahi-daemon: both bind UDP 5353 with
``SO_REUSEADDR``, multicast reaches both sockets, and the unicast answers to
python-zeroconf's QU questions reach python-zeroconf's address-bound socket (the
kernel prefers it over avahi-daemon's wildcard one).  See docs/testing.md for the
evidence; ``disallow-other-stacks=yes`` in avahi-daemon.conf forbids this and is
reported as such.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
import time
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
COLLISION_ERROR: Final = "org.freedesktop.Avahi.CollisionError"
IF_UNSPEC: Final = -1
PROTO_INET: Final = 0
# avahi-common/defs.h: AvahiPublishFlags, AvahiEntryGroupState, AvahiServerState
PUBLISH_NO_REVERSE: Final = 16
GROUP_UNCOMMITED, GROUP_REGISTERING, GROUP_ESTABLISHED, GROUP_COLLISION, GROUP_FAILURE = range(5)
SERVER_INVALID, SERVER_REGISTERING, SERVER_RUNNING, SERVER_COLLISION, SERVER_FAILURE = range(5)
#: Server states in which entry groups can be added (REGISTERING and COLLISION are
#: transient: avahi-daemon is probing, or renaming, its own host name).
SERVER_USABLE: Final = frozenset({SERVER_REGISTERING, SERVER_RUNNING, SERVER_COLLISION})
_GROUP_STATES: Final = ("uncommitted", "registering", "established", "collision", "failure")
#: Seconds a D-Bus call may take before avahi-daemon counts as not answering.
CALL_TIMEOUT: Final = 5.0
#: Seconds to wait for a committed group to finish probing (≈1 s normally).
SETTLE_TIMEOUT: Final = 5.0
SETTLE_POLL: Final = 0.05
#: Alternative names tried after collisions before giving up (avahi picks "name #2" …).
MAX_RENAMES: Final = 10


@dataclasses.dataclass(slots=True)
class AvahiPublished(Published):
    service_type: str = ""
    instance: str = ""  # the instance name in use (``<role>-<id>``, or an alternative)
    host: str = ""  # the host label in use (``autoreg-<id>``, or an alternative)
    ip: str = ""
    port: int = 0
    txt: dict[str, str] = dataclasses.field(default_factory=dict)
    interface: int = IF_UNSPEC
    group: str | None = None  # the entry group's object path while avahi-daemon holds it
    owner: str | None = None  # avahi-daemon's unique bus name that holds ``group``
    connection: int = 0  # which of our bus connections created ``group``
    collisions: int = 0
    lost: bool = False  # unpublished, and said so in the log once


def _dbus_text(exc: Any) -> str:
    return str(exc.get_dbus_message() or exc.get_dbus_name() or exc)


def avahi_available(timeout: float = 2.0) -> str | None:
    """avahi-daemon's version when it answers on the system bus, else None.

    Never D-Bus-activates avahi-daemon: it asks the bus for the name's owner first.
    """
    try:
        import dbus
    except ImportError:
        return None
    try:
        bus = dbus.SystemBus(private=True)
    except dbus.DBusException:
        return None
    try:
        bus.set_exit_on_disconnect(False)
        owner = _name_owner(bus)
        if owner is None:
            return None
        server = bus.get_object(owner, "/", introspect=False)
        state = int(server.GetState(dbus_interface=SERVER_INTERFACE, timeout=timeout))
        if state not in SERVER_USABLE:
            return None
        version = str(server.GetVersionString(dbus_interface=SERVER_INTERFACE, timeout=timeout))
        return version.removeprefix("avahi ")  # "avahi 0.8" → "0.8"
    except dbus.DBusException:
        return None
    finally:
        bus.close()


def _name_owner(bus: Any) -> str | None:
    """The unique name owning org.freedesktop.Avahi, None when nobody does (no activation)."""
    import dbus

    try:
        return str(bus.get_name_owner(AVAHI_BUS_NAME))
    except dbus.DBusException as exc:
        if exc.get_dbus_name() == "org.freedesktop.DBus.Error.NameHasNoOwner":
            return None
        raise


class AvahiTransport:
    """Publishes via avahi-daemon; browses via an embedded zeroconf listener."""

    name: Final = "avahi"

    def __init__(self, addresses: list[str] | None = None) -> None:
        self._addresses = addresses
        self._dbus = ThreadLimiter("autoreg-dbus", 1)
        self._bus: Any = None
        self._connections = 0  # bus connections opened so far; a group dies with its own
        self._browser: ZeroconfTransport | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await self._dbus.run(self._start)

    async def close(self) -> None:
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        await self._dbus.run(self._disconnect)
        self._dbus.shutdown()

    def _start(self) -> None:
        owner = self._owner()  # first: it says so when dbus-python is missing
        import dbus

        if owner is None:
            raise TransportError(
                "avahi-daemon is not running: nobody owns org.freedesktop.Avahi on the "
                "system bus (start avahi-daemon, or set [autoreg] transport = auto or zeroconf)"
            )
        try:
            state = int(self._server(owner).GetState(timeout=CALL_TIMEOUT))
        except dbus.DBusException as exc:
            raise TransportError(f"avahi-daemon does not answer: {_dbus_text(exc)}") from exc
        if state not in SERVER_USABLE:
            raise TransportError(f"avahi-daemon is not running normally (server state {state})")

    def _connection(self) -> Any:
        """The system bus connection, (re)opened when needed; TransportError without one."""
        try:
            import dbus
        except ImportError as exc:
            raise TransportError("transport avahi needs dbus-python (python3-dbus)") from exc
        if self._bus is not None and not self._bus.get_is_connected():
            self._disconnect()
        if self._bus is None:
            try:
                bus = dbus.SystemBus(private=True)
            except dbus.DBusException as exc:
                raise TransportError(
                    f"cannot reach the system bus for avahi-daemon: {_dbus_text(exc)}"
                ) from exc
            bus.set_exit_on_disconnect(False)  # the bus going away must not end the process
            self._bus = bus
            self._connections += 1
        return self._bus

    def _disconnect(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.close()

    def _owner(self) -> str | None:
        """avahi-daemon's unique bus name now, None when it is not on the bus."""
        bus = self._connection()  # TransportError without dbus-python or a bus
        import dbus

        try:
            return _name_owner(bus)
        except dbus.DBusException as exc:
            self._disconnect()
            raise TransportError(f"the system bus does not answer: {_dbus_text(exc)}") from exc

    def _server(self, owner: str) -> Any:
        import dbus

        obj = self._connection().get_object(owner, "/", introspect=False)
        return dbus.Interface(obj, SERVER_INTERFACE)

    def _group(self, owner: str, path: str) -> Any:
        import dbus

        obj = self._connection().get_object(owner, path, introspect=False)
        return dbus.Interface(obj, GROUP_INTERFACE)

    # -- publishing ------------------------------------------------------------------------

    async def publish(
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
            instance=instance,
            host=host.removesuffix(".").removesuffix(".local"),
            ip=ip,
            port=port,
            txt=dict(txt),
        )
        await self._dbus.run(self._publish, published)
        return published

    async def update(
        self, published: Published, *, ip: str, port: int, txt: Mapping[str, str]
    ) -> None:
        assert isinstance(published, AvahiPublished)
        await self._dbus.run(self._update, published, ip, port, dict(txt))

    async def withdraw(self, published: Published) -> None:
        assert isinstance(published, AvahiPublished)
        await self._dbus.run(self._free, published)

    async def reannounce(self, published: Published) -> bool:
        """avahi-daemon announces a record only when it changes (avahi-core's
        ``avahi_server_add`` with AVAHI_PUBLISH_UPDATE re-announces when the record
        differs): nodes on avahi are found again by the registrar's queries."""
        return False

    async def maintain(self, published: Published) -> bool:
        """Re-publish when avahi-daemon lost the group (restart, reset, failure, collision)."""
        assert isinstance(published, AvahiPublished)
        return await self._dbus.run(self._repair, published)

    def _publish(self, published: AvahiPublished) -> None:
        """(Re)build the entry group from scratch and commit it; settle collisions by renaming."""
        import dbus

        self._free(published)
        owner = self._owner()
        if owner is None:
            raise TransportError(
                f"avahi-daemon is not running: cannot publish {published.instance}"
            )
        stype = published.service_type.removesuffix(".").removesuffix(".local")
        published.interface = self._interface_index(published.ip)
        try:
            for _ in range(MAX_RENAMES + 1):
                path = str(self._server(owner).EntryGroupNew(timeout=CALL_TIMEOUT))
                published.group, published.owner = path, owner
                published.connection = self._connections
                group = self._group(owner, path)
                try:
                    self._fill(group, published, stype)
                    group.Commit(timeout=CALL_TIMEOUT)
                except dbus.DBusException as exc:
                    if exc.get_dbus_name() != COLLISION_ERROR:
                        raise
                    state = GROUP_COLLISION  # another client of this avahi-daemon has the name
                else:
                    state = self._settle(group)
                if state != GROUP_COLLISION:
                    break
                self._rename(published, owner)
            else:
                raise TransportError(
                    f"no free service name for {published.instance} after {MAX_RENAMES} collisions"
                )
            if state == GROUP_FAILURE:
                raise TransportError(f"avahi-daemon failed the entry group of {published.instance}")
        except dbus.DBusException as exc:
            self._free(published)
            raise TransportError(
                f"avahi-daemon cannot publish {published.instance}: {_dbus_text(exc)}"
            ) from exc
        except TransportError:
            self._free(published)
            raise
        published.lost = False

    def _fill(self, group: Any, published: AvahiPublished, stype: str) -> None:
        import dbus

        fqdn = f"{published.host}.local"
        group.AddService(
            dbus.Int32(published.interface),
            dbus.Int32(PROTO_INET),
            dbus.UInt32(0),
            published.instance,
            stype,
            "local",
            fqdn,
            dbus.UInt16(published.port),
            _txt_array(published.txt),
            timeout=CALL_TIMEOUT,
        )
        group.AddAddress(
            dbus.Int32(published.interface),
            dbus.Int32(PROTO_INET),
            dbus.UInt32(PUBLISH_NO_REVERSE),
            fqdn,
            published.ip,
            timeout=CALL_TIMEOUT,
        )

    def _settle(self, group: Any) -> int:
        """The group's state once probing is over (or still REGISTERING after the bound)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            state = int(group.GetState(timeout=CALL_TIMEOUT))
            if state != GROUP_REGISTERING or time.monotonic() >= deadline:
                return state
            time.sleep(SETTLE_POLL)

    def _rename(self, published: AvahiPublished, owner: str) -> None:
        """Free the group and move to the next alternative name (the TXT record stays)."""
        self._free(published)
        server = self._server(owner)
        published.collisions += 1
        old = published.instance
        published.instance = str(server.GetAlternativeServiceName(old, timeout=CALL_TIMEOUT))
        published.name = f"{published.instance}.{published.service_type}"
        if published.collisions >= 2:  # it may be the host name that collides
            published.host = str(
                server.GetAlternativeHostName(published.host, timeout=CALL_TIMEOUT)
            )
        log.warning(
            "name collision for %r: publishing as %r on host %s.local (node id unchanged)",
            old,
            published.instance,
            published.host,
        )

    def _update(self, published: AvahiPublished, ip: str, port: int, txt: dict[str, str]) -> None:
        """A TXT-only change updates the group in place (no goodbye, no probing).

        While avahi-daemon is away the new data is only kept: maintenance publishes it
        when avahi-daemon is back (an outage is reported once, not on every update).
        """
        import dbus

        in_place = (ip, port) == (published.ip, published.port)
        published.ip, published.port, published.txt = ip, port, txt
        try:
            owner = self._owner()
        except TransportError as exc:
            self._lost(published, str(exc))
            return
        if owner is None:
            self._lost(published, "avahi-daemon is not on the system bus")
            return
        if (
            in_place
            and published.group is not None
            and owner == published.owner
            and published.connection == self._connections
        ):
            stype = published.service_type.removesuffix(".").removesuffix(".local")
            try:
                self._group(owner, published.group).UpdateServiceTxt(
                    dbus.Int32(published.interface),
                    dbus.Int32(PROTO_INET),
                    dbus.UInt32(0),
                    published.instance,
                    stype,
                    "local",
                    _txt_array(txt),
                    timeout=CALL_TIMEOUT,
                )
                return
            except dbus.DBusException as exc:
                log.debug("updating TXT of %s in place: %s", published.name, _dbus_text(exc))
        self._publish(published)

    def _repair(self, published: AvahiPublished) -> bool:
        import dbus

        try:
            owner = self._owner()
        except TransportError as exc:
            self._lost(published, str(exc))
            return False
        if owner is None:
            self._lost(published, "avahi-daemon is not on the system bus")
            return False
        state: int | None = None
        if published.group is not None and published.connection != self._connections:
            # Unique names restart with a new bus, so only the connection tells.
            what = "the system bus restarted"
            published.group = None  # avahi-daemon freed it when our old connection closed
        elif published.group is not None and owner == published.owner:
            try:
                state = int(self._group(owner, published.group).GetState(timeout=CALL_TIMEOUT))
            except dbus.DBusException as exc:
                log.debug("entry group %s: %s", published.group, _dbus_text(exc))
            if state in (GROUP_REGISTERING, GROUP_ESTABLISHED):
                return False
            what = f"its entry group is {_GROUP_STATES[state] if state is not None else 'gone'}"
        elif published.group is not None:
            what = f"avahi-daemon restarted, now {owner} on the bus"
            published.group = None  # it died with the old avahi-daemon
        else:
            what = "avahi-daemon is back"
        was_lost = published.lost  # the outage is in the log already: say only how it ends
        if not was_lost:
            log.warning("%s lost by the responder (%s): publishing again", published.name, what)
        try:
            if state == GROUP_COLLISION:
                self._rename(published, owner)
            self._publish(published)
        except (TransportError, dbus.DBusException) as exc:
            self._lost(published, str(exc))
            return False
        if was_lost:
            log.warning("%s published again (%s)", published.name, what)
        return True

    def _lost(self, published: AvahiPublished, why: str) -> None:
        if not published.lost:
            log.warning("%s is not published: %s; retrying", published.name, why)
            published.lost = True
        else:
            log.debug("%s still not published: %s", published.name, why)

    def _free(self, published: AvahiPublished) -> None:
        import dbus

        path, owner = published.group, published.owner
        published.group = None
        if path is None or owner is None or self._bus is None:
            return
        if published.connection != self._connections:
            return  # it went with the connection that created it
        try:
            self._group(owner, path).Free(timeout=CALL_TIMEOUT)
        except (dbus.DBusException, TransportError) as exc:
            log.debug("freeing entry group %s: %s", path, exc)

    def _interface_index(self, ip: str) -> int:
        """Publish on the interface that holds the announced address, else on all."""
        from .._netif import interface_address

        for index, name in socket.if_nameindex():
            if interface_address(name) == ip:
                return int(index)
        return IF_UNSPEC

    # -- browsing -------------------------------------------------------------------------

    async def browse(self, service_type: str, listener: BrowseListener) -> None:
        if self._browser is None:
            browser = ZeroconfTransport(self._addresses)
            try:
                await browser.start()
            except TransportError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE:
                    raise TransportError(
                        "cannot browse beside avahi-daemon: it holds UDP port 5353 alone "
                        "(set disallow-other-stacks=no in avahi-daemon.conf)"
                    ) from exc
                raise
            self._browser = browser
        await self._browser.browse(service_type, listener)


def _txt_array(txt: Mapping[str, str]) -> Any:
    import dbus

    return dbus.Array(
        [dbus.ByteArray(f"{k}={v}".encode()) for k, v in txt.items()],
        signature="ay",
    )
