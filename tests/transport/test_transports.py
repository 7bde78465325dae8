"""The Transport contract, run against both implementations with the same assertions.

Each transport runs in-process inside a lab host, driven over stdin/stdout by this very
file run as a script (``ip netns exec NS python test_transports.py``: one JSON command per
line in; replies and browse events as JSON lines out).  Observers are real:
``avahi-browse -rpt`` on a host running avahi-daemon, and python-zeroconf (through
:class:`ZeroconfTransport`) browsing *beside* that same avahi-daemon.  For ``avahi``, the
publishing host runs its own avahi-daemon on a private system bus (tests/support/avahi.py);
for ``zeroconf`` it runs none.

The tests after the contract are avahi-only: what avahi-daemon adds (a clear error when it
is absent, collisions, restarts, an entry group lost after it was established).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

if __name__ != "__main__":
    from registration.protocol import Announcement, decode_node, encode_node
    from support.autoreg_lab import AutoregLab
    from support.avahi import Avahi, BrowsedService, start_avahi
    from support.netlab import Host, Lab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

IMPLEMENTATIONS = ("zeroconf", "avahi")
NODE_TYPE = "_autoreg._tcp.local."
BROWSE_TYPE = "_autoreg._tcp"
REPO = Path(__file__).resolve().parents[2]
FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"


# -- the driver: runs inside a lab host ---------------------------------------------------


def _driver_main() -> None:  # pragma: no cover - runs in a subprocess
    import asyncio
    import logging

    from registration.transport import AvahiTransport, ResolvedService, ZeroconfTransport

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    class Listener:
        def service_resolved(self, service: ResolvedService) -> None:
            props = [
                [k.decode(), None if v is None else v.decode()]
                for k, v in service.properties.items()
            ]
            emit({"event": "resolved", "name": service.name, "port": service.port, "txt": props})

        def service_removed(self, name: str) -> None:
            emit({"event": "removed", "name": name})

        def service_unusable(self, name: str, reason: str) -> None:
            emit({"event": "unusable", "name": name, "reason": reason})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def read() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
            loop.call_soon_threadsafe(commands.put_nowait, None)

        threading.Thread(target=read, daemon=True).start()
        transport: Any = None
        published: Any = None
        while (cmd := await commands.get()) is not None:
            op = cmd.pop("op")
            reply: dict[str, Any] = {"reply": op, "ok": True}
            try:
                if op == "start":
                    cls = AvahiTransport if cmd["impl"] == "avahi" else ZeroconfTransport
                    transport = cls(cmd.get("addresses"))
                    await transport.start()
                elif op == "publish":
                    published = await transport.publish(
                        cmd["type"],
                        cmd["instance"],
                        host=cmd["host"],
                        ip=cmd["ip"],
                        port=cmd["port"],
                        txt=cmd["txt"],
                        probe=cmd.get("probe", False),
                    )
                    reply["name"] = published.name
                elif op == "update":
                    await transport.update(
                        published, ip=cmd["ip"], port=cmd["port"], txt=cmd["txt"]
                    )
                    reply["name"] = published.name
                elif op == "maintain":
                    reply["result"] = await transport.maintain(published)
                    reply["name"] = published.name
                elif op == "withdraw":
                    await transport.withdraw(published)
                elif op == "browse":
                    await transport.browse(cmd["type"], Listener())
                elif op == "send_answer":
                    _send_answer(**cmd)
                elif op == "close":
                    await transport.close()
                    transport = None
                else:
                    raise ValueError(f"unknown op {op!r}")
            except Exception as exc:
                reply.update(ok=False, error=f"{type(exc).__name__}: {exc}")
            emit(reply)
        if transport is not None:
            await transport.close()

    asyncio.run(main())


def _send_answer(  # pragma: no cover - runs in a subprocess
    *, source: str, target: str, instance: str, ip: str, port: int, txt: list[str]
) -> None:
    """One unsolicited mDNS response (PTR, SRV, TXT, A) from source:5353 to target:5353."""
    import socket

    from zeroconf import DNSAddress, DNSOutgoing, DNSPointer, DNSService, DNSText, const

    name, host = f"{instance}.{NODE_TYPE}", f"{instance}.local."
    unique = const._CLASS_IN | const._CLASS_UNIQUE
    rdata = b"".join(bytes([len(s.encode())]) + s.encode() for s in txt)
    out = DNSOutgoing(const._FLAGS_QR_RESPONSE | const._FLAGS_AA)
    for record in (
        DNSPointer(NODE_TYPE, const._TYPE_PTR, const._CLASS_IN, 4500, name),
        DNSService(name, const._TYPE_SRV, unique, 120, 0, 0, port, host),
        DNSText(name, const._TYPE_TXT, unique, 4500, rdata),
        DNSAddress(host, const._TYPE_A, unique, 120, socket.inet_aton(ip)),
    ):
        out.add_answer_at_time(record, 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 5353))
        for packet in out.packets():
            sock.sendto(packet, (target, 5353))


if __name__ == "__main__":  # pragma: no cover
    _driver_main()
    sys.exit(0)


# -- the test side ----------------------------------------------------------------------


class Driver:
    """One transport in a lab host, driven line by line; killed by PID group on close."""

    def __init__(self, host: Host, name: str, env: dict[str, str] | None = None) -> None:
        self.host = host
        self.name = name
        self.stderr_path = host.workdir / f"driver-{name}.log"
        path = os.pathsep.join([str(REPO), str(REPO / "tests")])
        full_env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [host.lab.ip_bin, "netns", "exec", host.netns, sys.executable, __file__],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=full_env,
                start_new_session=True,
                text=True,
            )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(json.loads(line))
        self._lines.put(None)

    def _pump(self, timeout: float) -> dict[str, Any] | None:
        """Next line within ``timeout`` (events are filed in :attr:`events`); None on timeout."""
        try:
            item = self._lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if item is None:
            raise AssertionError(f"driver {self.name} exited; stderr:\n{self.stderr()}")
        if "event" in item:
            self.events.append(item)
        return item

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def call(self, op: str, timeout: float = 45, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self._pump(deadline - time.monotonic())
            if item is not None and item.get("reply") == op:
                return item
        raise AssertionError(
            f"driver {self.name}: no reply to {op} in {timeout}s:\n{self.stderr()}"
        )

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.call(op, **args)
        assert reply["ok"], f"{op} failed on {self.name}: {reply.get('error')}\n{self.stderr()}"
        return reply

    def wait_event(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float,
        what: str,
        *,
        since: int = 0,
    ) -> dict[str, Any]:
        """The first event from index ``since`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = since
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"driver {self.name}: no {what} within {timeout}s; events: {self.events}"
                )
            self._pump(min(0.2, deadline - time.monotonic()))

    def drain(self) -> None:
        while self._pump(0) is not None:
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Net:
    lab: Lab
    drivers: list[Driver]

    def driver(self, host: Host, name: str, avahi: Avahi | None = None) -> Driver:
        d = Driver(host, name, env=avahi.env if avahi is not None else _no_bus(host))
        self.drivers.append(d)
        return d


def _no_bus(host: Host) -> dict[str, str]:
    """A bus address where nothing listens: nothing in a lab ever reaches the machine's bus."""
    return {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={host.workdir / 'no-bus-here'}"}


@pytest.fixture
def net(alab: AutoregLab) -> Iterator[Net]:
    n = Net(alab.lab, [])
    try:
        yield n
    finally:
        for d in n.drivers:
            d.close()


def announcement(host: Host, node_id: str, state: str = "ready") -> Announcement:
    return Announcement(
        node_id=node_id,
        role="nc",
        ip=host.ip,
        port=22,
        fingerprint=FP,
        state=state,  # type: ignore[arg-type]
        cluster="foo",
        name=host.name,
    )


def publisher(net: Net, impl: str, name: str = "pub") -> tuple[Host, Driver, Avahi | None]:
    host = net.lab.add_host(name)
    avahi = start_avahi(host) if impl == "avahi" else None
    driver = net.driver(host, name, avahi)
    driver.ok("start", impl=impl, addresses=[host.ip])
    return host, driver, avahi


def observer(net: Net, name: str = "obs") -> tuple[Host, Avahi, Driver]:
    """A host with avahi-daemon, and python-zeroconf browsing beside it."""
    host = net.lab.add_host(name)
    avahi = start_avahi(host)
    driver = net.driver(host, f"{name}-zc", avahi)
    driver.ok("start", impl="zeroconf", addresses=[host.ip])
    driver.ok("browse", type=NODE_TYPE)
    return host, avahi, driver


def publish(driver: Driver, ann: Announcement, **extra: Any) -> dict[str, Any]:
    return driver.ok(
        "publish",
        type=NODE_TYPE,
        instance=f"{ann.role}-{ann.node_id}",
        host=f"autoreg-{ann.node_id}.local.",
        ip=ann.ip,
        port=ann.port,
        txt=encode_node(ann),
        **extra,
    )


def wire_txt(ann: Announcement) -> list[str]:
    return [f"{k}={v}" for k, v in encode_node(ann).items()]


def seen_as(ann: Announcement, instance: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A zeroconf 'resolved' event carrying exactly ``ann``'s TXT, in wire order."""
    name = f"{instance or f'{ann.role}-{ann.node_id}'}.{NODE_TYPE}"

    def match(event: dict[str, Any]) -> bool:
        return (
            event["event"] == "resolved"
            and event["name"] == name
            and [f"{k}={v}" for k, v in event["txt"]] == wire_txt(ann)
        )

    return match


def browsed(services: list[BrowsedService], instance: str) -> list[BrowsedService]:
    return [s for s in services if s.name == instance]


def check_browsed(service: BrowsedService, ann: Announcement) -> None:
    """What docs/protocol.md says an avahi-browse of a node announcement shows."""
    assert service.service_type == BROWSE_TYPE and service.domain == "local"
    assert service.host_name == f"autoreg-{ann.node_id}.local"
    assert service.address == ann.ip
    assert service.port == ann.port
    assert sorted(service.txt) == sorted(wire_txt(ann))
    assert all("=" in s and s.split("=", 1)[0] == s.split("=", 1)[0].lower() for s in service.txt)
    assert decode_node(service.txt_map, service.port) == ann


# -- the contract, for both implementations -------------------------------------------------


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_published_node_is_seen_exactly_as_the_protocol_says(net: Net, impl: str) -> None:
    _, obs_avahi, obs = observer(net)
    host, pub, _ = publisher(net, impl)
    ann = announcement(host, "n1a2b3c4")
    reply = publish(pub, ann)
    assert reply["name"] == f"nc-n1a2b3c4.{NODE_TYPE}"

    event = obs.wait_event(seen_as(ann), 15, "the node resolved by zeroconf beside avahi-daemon")
    assert event["port"] == 22
    assert decode_node({k: v for k, v in event["txt"]}, event["port"]) == ann
    services = obs_avahi.wait_browse(
        BROWSE_TYPE, lambda s: bool(browsed(s, "nc-n1a2b3c4")), what="nc-n1a2b3c4"
    )
    (service,) = browsed(services, "nc-n1a2b3c4")
    check_browsed(service, ann)
    assert pub.ok("maintain")["result"] is False  # healthy: nothing to repair


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_update_changes_the_txt_in_place(net: Net, impl: str) -> None:
    _, obs_avahi, obs = observer(net)
    host, pub, _ = publisher(net, impl)
    ann = announcement(host, "u1a2b3c4")
    publish(pub, ann)
    obs.wait_event(seen_as(ann), 15, "the first announcement")

    registered = announcement(host, "u1a2b3c4", state="registered")
    pub.ok("update", ip=host.ip, port=22, txt=encode_node(registered))
    obs.wait_event(seen_as(registered), 15, "the updated TXT")
    assert not [e for e in obs.events if e["event"] == "removed"], "an update must not say goodbye"
    services = obs_avahi.wait_browse(
        BROWSE_TYPE,
        lambda s: [x.txt_map.get("state") for x in browsed(s, "nc-u1a2b3c4")] == ["registered"],
        what="exactly one nc-u1a2b3c4 with state=registered",
    )
    check_browsed(browsed(services, "nc-u1a2b3c4")[0], registered)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_withdraw_says_goodbye(net: Net, impl: str) -> None:
    _, obs_avahi, obs = observer(net)
    host, pub, _ = publisher(net, impl)
    ann = announcement(host, "w1a2b3c4")
    publish(pub, ann)
    obs.wait_event(seen_as(ann), 15, "the announcement")
    obs_avahi.wait_browse(BROWSE_TYPE, lambda s: bool(browsed(s, "nc-w1a2b3c4")))

    pub.ok("withdraw")
    name = f"nc-w1a2b3c4.{NODE_TYPE}"
    obs.wait_event(lambda e: e == {"event": "removed", "name": name}, 10, "the goodbye")
    obs_avahi.wait_browse(
        BROWSE_TYPE, lambda s: not browsed(s, "nc-w1a2b3c4"), what="no nc-w1a2b3c4 any more"
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_browse_finds_avahi_and_zeroconf_publishers(net: Net, impl: str) -> None:
    # The browsing host runs avahi-daemon when the transport is avahi (browsing beside it).
    ctl = net.lab.add_host("ctl")
    ctl_avahi = start_avahi(ctl) if impl == "avahi" else None
    browser = net.driver(ctl, "ctl", ctl_avahi)
    browser.ok("start", impl=impl, addresses=[ctl.ip])
    browser.ok("browse", type=NODE_TYPE)

    by_avahi = net.lab.add_host("pa")
    ann_a = announcement(by_avahi, "a1a2b3c4")
    start_avahi(by_avahi).publish("nc-a1a2b3c4", BROWSE_TYPE, 22, wire_txt(ann_a))
    by_zeroconf, zc, _ = publisher(net, "zeroconf", name="pz")
    ann_z = announcement(by_zeroconf, "z1a2b3c4")
    publish(zc, ann_z)

    for ann in (ann_a, ann_z):
        event = browser.wait_event(seen_as(ann), 15, f"{ann.node_id} resolved")
        assert decode_node({k: v for k, v in event["txt"]}, event["port"]) == ann


@pytest.mark.parametrize(
    "avahi_first", [True, False], ids=["avahi-bound-first", "avahi-bound-last"]
)
def test_zeroconf_beside_avahi_daemon_gets_the_unicast_answers(net: Net, avahi_first: bool) -> None:
    """The evidence for browsing with python-zeroconf beside avahi-daemon.

    Multicast reaches every socket bound to 5353, but a unicast datagram reaches one
    socket only.  python-zeroconf asks its first questions with the QU bit (RFC 6762
    §5.4), so answers come back by unicast to <host>:5353: they must reach
    python-zeroconf, not avahi-daemon.  Here the *only* copy of a service is one
    unsolicited unicast response: the browser beside avahi-daemon resolves it, whichever
    of the two bound port 5353 last (the kernel prefers python-zeroconf's socket, bound
    to the interface address, over avahi-daemon's wildcard one).
    """
    ctl = net.lab.add_host("ctl")
    avahi = start_avahi(ctl)
    browser = net.driver(ctl, "ctl", avahi)
    browser.ok("start", impl="avahi", addresses=[ctl.ip])
    browser.ok("browse", type=NODE_TYPE)
    if not avahi_first:  # avahi-daemon restarts under the browser: it binds 5353 last
        avahi.restart_daemon()
    sockets = ctl.run(["ss", "-uanpH", "sport", "=", "5353"]).stdout.decode()
    assert "avahi-daemon" in sockets and f"{ctl.ip}:5353" in sockets, sockets

    sender_host = net.lab.add_host("sender")
    sender = net.driver(sender_host, "sender")
    unicast = announcement(sender_host, "q1a2b3c4")
    multicast = announcement(sender_host, "m1a2b3c4")  # the control: one copy to 224.0.0.251
    for ann, target in ((unicast, ctl.ip), (multicast, "224.0.0.251")):
        sender.ok(
            "send_answer",
            source=sender_host.ip,
            target=target,
            instance=f"nc-{ann.node_id}",
            ip=ann.ip,
            port=ann.port,
            txt=wire_txt(ann),
        )
        browser.wait_event(seen_as(ann), 10, f"nc-{ann.node_id} from one datagram to {target}")
    # avahi-daemon caches what reaches it: the multicast copy did, the unicast one did not.
    names = {
        s.name for s in avahi.wait_browse(BROWSE_TYPE, lambda s: bool(browsed(s, "nc-m1a2b3c4")))
    }
    assert "nc-q1a2b3c4" not in names


def test_zeroconf_beside_avahi_daemon_sees_what_that_avahi_daemon_publishes(net: Net) -> None:
    """A controller host's own services, published by its avahi-daemon (looped back)."""
    ctl = net.lab.add_host("ctl")
    avahi = start_avahi(ctl)
    browser = net.driver(ctl, "ctl", avahi)
    browser.ok("start", impl="avahi", addresses=[ctl.ip])
    browser.ok("browse", type=NODE_TYPE)
    local = announcement(ctl, "h1a2b3c4")
    avahi.publish("nc-h1a2b3c4", BROWSE_TYPE, 22, wire_txt(local))
    browser.wait_event(seen_as(local), 10, "the service of its own host")


# -- what avahi-daemon adds ---------------------------------------------------------------------


def test_avahi_without_avahi_daemon_is_a_clear_error(net: Net) -> None:
    host = net.lab.add_host("pub")
    no_daemon = start_avahi(host, start_daemon=False)  # a system bus, but nobody on it
    d = net.driver(host, "pub", no_daemon)
    reply = d.call("start", impl="avahi", addresses=[host.ip])
    assert not reply["ok"]
    assert "TransportError: avahi-daemon is not running" in reply["error"]
    d.ok("close")

    d2 = net.driver(host, "pub2")  # no system bus at all
    reply = d2.call("start", impl="avahi", addresses=[host.ip])
    assert not reply["ok"]
    assert "TransportError: the system bus does not answer" in reply["error"] or (
        "cannot reach the system bus" in reply["error"]
    )


def test_avahi_browsing_when_avahi_daemon_keeps_port_5353_alone_is_a_clear_error(
    net: Net,
) -> None:
    host = net.lab.add_host("ctl")
    avahi = start_avahi(host, start_daemon=False)
    conf = avahi.config_path.read_text()
    avahi.config_path.write_text(
        conf.replace("disallow-other-stacks=no", "disallow-other-stacks=yes")
    )
    avahi.start_daemon()
    d = net.driver(host, "ctl", avahi)
    d.ok("start", impl="avahi", addresses=[host.ip])  # publishing would work …
    reply = d.call("browse", type=NODE_TYPE)  # … but browsing beside it cannot
    assert not reply["ok"]
    assert "cannot browse beside avahi-daemon" in reply["error"]
    assert "disallow-other-stacks=no" in reply["error"]


def test_avahi_collision_while_probing_takes_the_next_name(net: Net) -> None:
    _, obs_avahi, obs = observer(net)
    squatter = net.lab.add_host("squat")
    start_avahi(squatter).publish("nc-c1a2b3c4", BROWSE_TYPE, 2222, ["hello=world"])
    host, pub, _ = publisher(net, "avahi")
    ann = announcement(host, "c1a2b3c4")
    reply = publish(pub, ann)
    assert reply["name"] == f"nc-c1a2b3c4 #2.{NODE_TYPE}"
    obs.wait_event(seen_as(ann, "nc-c1a2b3c4 #2"), 15, "the node under its alternative name")
    services = obs_avahi.wait_browse(
        BROWSE_TYPE, lambda s: bool(browsed(s, "nc-c1a2b3c4 #2")), what="nc-c1a2b3c4 #2"
    )
    check_browsed(browsed(services, "nc-c1a2b3c4 #2")[0], ann)  # same id, same TXT
    assert browsed(services, "nc-c1a2b3c4")[0].txt == ("hello=world",)
    assert "name collision for 'nc-c1a2b3c4'" in pub.stderr()


def test_avahi_local_collision_takes_the_next_name(net: Net) -> None:
    host, pub, avahi = publisher(net, "avahi")
    assert avahi is not None
    avahi.publish("nc-l1a2b3c4", BROWSE_TYPE, 2222, ["hello=world"])  # same avahi-daemon
    ann = announcement(host, "l1a2b3c4")
    assert publish(pub, ann)["name"] == f"nc-l1a2b3c4 #2.{NODE_TYPE}"


def test_avahi_group_lost_to_a_collision_after_it_was_established(net: Net) -> None:
    """A responder that does not probe claims our name: avahi-daemon puts the established
    group in COLLISION; maintenance moves to the next name, TXT (and id) unchanged."""
    _, _, obs = observer(net)
    host, pub, _ = publisher(net, "avahi")
    ann = announcement(host, "e1a2b3c4")
    publish(pub, ann)
    obs.wait_event(seen_as(ann), 15, "the announcement")

    rude_host, rude, _ = publisher(net, "zeroconf", name="rude")
    impostor = dataclasses.replace(announcement(rude_host, "e1a2b3c4"), node_id="impostor1")
    rude.ok(
        "publish",
        type=NODE_TYPE,
        instance="nc-e1a2b3c4",
        host="rude.local.",
        ip=rude_host.ip,
        port=2222,
        txt=encode_node(impostor),
        probe=False,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = pub.ok("maintain")
        if reply["result"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"maintain never repaired the publication:\n{pub.stderr()}")
    assert reply["name"] == f"nc-e1a2b3c4 #2.{NODE_TYPE}"
    assert "its entry group is collision" in pub.stderr()
    obs.wait_event(seen_as(ann, "nc-e1a2b3c4 #2"), 15, "the node under its alternative name")
    assert pub.ok("maintain")["result"] is False


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_avahi_daemon_restart_is_repaired_by_maintain(net: Net, crash: bool) -> None:
    _, obs_avahi, obs = observer(net)
    host, pub, avahi = publisher(net, "avahi")
    assert avahi is not None
    ann = announcement(host, "r1a2b3c4")
    publish(pub, ann)
    obs.wait_event(seen_as(ann), 15, "the announcement")

    avahi.stop_daemon() if not crash else avahi.crash_daemon()
    name = f"nc-r1a2b3c4.{NODE_TYPE}"
    if not crash:  # SIGTERM: avahi-daemon says goodbye for what it published
        obs.wait_event(lambda e: e == {"event": "removed", "name": name}, 10, "the goodbye")
    assert pub.ok("maintain")["result"] is False  # nobody to publish through: no crash, no spin
    # An update while avahi-daemon is away is kept, not failed, and not reported again.
    registered = announcement(host, "r1a2b3c4", state="registered")
    pub.ok("update", ip=host.ip, port=22, txt=encode_node(registered))
    assert pub.ok("maintain")["result"] is False
    assert pub.stderr().count("is not published") == 1  # said once per outage

    avahi.start_daemon()
    seen = len(obs.events)
    assert pub.ok("maintain")["result"] is True
    assert "r1a2b3c4._autoreg._tcp.local. published again (avahi-daemon restarted" in pub.stderr()
    assert pub.ok("maintain")["result"] is False
    # The new avahi-daemon holds the group (it knows nothing it was not given again) …
    services = avahi.wait_browse(
        BROWSE_TYPE, lambda s: bool(browsed(s, "nc-r1a2b3c4")), what="nc-r1a2b3c4 published again"
    )
    check_browsed(browsed(services, "nc-r1a2b3c4")[0], registered)
    # … and the network hears it, with the update made during the outage.
    obs.wait_event(seen_as(registered), 15, "it back, registered", since=seen)
    services = obs_avahi.wait_browse(
        BROWSE_TYPE,
        lambda s: [x.txt_map.get("state") for x in browsed(s, "nc-r1a2b3c4")] == ["registered"],
        what="nc-r1a2b3c4 registered",
    )
    check_browsed(browsed(services, "nc-r1a2b3c4")[0], registered)
    assert pub.proc.poll() is None  # the same process all along


def test_avahi_system_bus_restart_is_survived(net: Net) -> None:
    """The system bus itself goes away (and avahi-daemon with it): the publisher keeps
    running, reconnects, and publishes again once the bus and avahi-daemon are back (a new
    bus hands out the same unique names again, so only the connection tells)."""
    host, pub, avahi = publisher(net, "avahi")
    assert avahi is not None and avahi.daemon is not None
    ann = announcement(host, "b1a2b3c4")
    publish(pub, ann)

    avahi.stop_bus()
    daemon_exit = avahi.daemon.wait(10)  # avahi-daemon cannot live without its bus
    assert pub.ok("maintain")["result"] is False
    assert pub.proc.poll() is None, "a lost system bus must not end the process"
    avahi.daemon.kill()  # reap it

    avahi.start_bus()
    avahi.start_daemon()
    assert pub.ok("maintain")["result"] is True
    services = avahi.wait_browse(
        BROWSE_TYPE, lambda s: bool(browsed(s, "nc-b1a2b3c4")), what="nc-b1a2b3c4 published again"
    )
    check_browsed(browsed(services, "nc-b1a2b3c4")[0], ann)
    assert daemon_exit is not None
