"""autoreg beside a real avahi-daemon: ``transport = auto|avahi``, interoperability both
ways, an avahi-daemon restart under a publishing node, and name collisions.

Every host that needs one gets its own avahi-daemon on a private system bus
(tests/support/avahi.py); the autoreg processes reach it through ``Station.env``.
"""

from __future__ import annotations

import json

import pytest

from registration.protocol import Announcement, decode_node, encode_node
from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station, wait_until
from support.avahi import Avahi, BrowsedService, start_avahi, use_avahi

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

S = NodeState
NODE = "_autoreg._tcp"
CTL = "_autoreg-ctl._tcp"
AUTO_AVAHI = r"transport auto: avahi-daemon \S+ answers on the system bus: publishing through it"
AUTO_ZEROCONF = "transport auto: no avahi-daemon on the system bus: using the embedded zeroconf"


def expected(station: Station, state: str) -> Announcement:
    assert station.role is not None and station.sshd is not None
    return Announcement(
        node_id=station.node_id,
        role=station.role,
        ip=station.host.ip,
        port=station.sshd.port,
        fingerprint=station.sshd.fingerprint,
        state=state,  # type: ignore[arg-type]
        cluster=station.cluster,
        name=station.host.name,
    )


def instance(station: Station) -> str:
    return f"{station.role}-{station.node_id}"


def one(services: list[BrowsedService], name: str) -> BrowsedService:
    found = [s for s in services if s.name == name]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def check_exact(service: BrowsedService, ann: Announcement) -> None:
    """`avahi-browse -rpt _autoreg._tcp` shows what docs/protocol.md says, nothing else."""
    assert service.host_name == f"autoreg-{ann.node_id}.local"
    assert service.address == ann.ip and service.port == ann.port
    assert sorted(service.txt) == sorted(f"{k}={v}" for k, v in encode_node(ann).items())
    assert decode_node(service.txt_map, service.port) == ann


def browse_until_state(avahi: Avahi, station: Station, state: str) -> BrowsedService:
    name = instance(station)
    services = avahi.wait_browse(
        NODE,
        lambda s: [x.txt_map.get("state") for x in s if x.name == name] == [state],
        what=f"{name} with state={state}",
    )
    return one(services, name)


def test_auto_picks_avahi_says_so_and_registers_through_it(alab: AutoregLab) -> None:
    """CLC, CC (registrar *and* node on one avahi-daemon) and NC, all `auto` beside avahi."""
    clc = alab.registrar("clc", "clc")
    cc = alab.registrar("cc", "cc", cluster="foo", node_role="cc")
    nc = alab.node("nc", "nc", cluster="foo")
    obs = start_avahi(alab.lab.add_host("obs"))
    for station in (clc, cc, nc):
        use_avahi(station, start_avahi(station.host), "auto")
    alab.authorize_all()
    clc.start_daemon()
    cc.start_daemon()
    cc.start_announcer()
    nc.start_announcer()
    clc.wait_state(cc.node_id, S.REGISTERED)
    cc.wait_state(nc.node_id, S.REGISTERED)

    for proc in (clc.daemon, cc.daemon, cc.announcer, nc.announcer):
        assert proc is not None
        proc.wait_for_log(AUTO_AVAHI, 5)
        assert "Traceback" not in proc.log_text()
    assert "transport avahi" in clc.cli("status").stdout
    assert json.loads(cc.cli("status", "--json").stdout)["daemon"]["transport"] == "avahi"

    # Seen from another host's avahi-daemon exactly as the protocol says.
    for station in (cc, nc):
        check_exact(browse_until_state(obs, station, "registered"), expected(station, "registered"))
    registrars = obs.wait_browse(CTL, lambda s: len(s) == 2, what="both registrars")
    assert sorted(s.txt_map["role"] for s in registrars) == ["cc", "clc"]
    assert {s.host_name for s in registrars} == {
        f"autoreg-{clc.node_id}.local",
        f"autoreg-{cc.node_id}.local",
    }


def test_auto_without_avahi_daemon_falls_back_to_zeroconf(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    use_avahi(clc, start_avahi(clc.host, start_daemon=False), "auto")  # a bus, nobody on it
    use_avahi(walrus, None, "auto")  # no bus at all
    alab.authorize_all()
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    for proc in (clc.daemon, walrus.announcer):
        assert proc is not None
        proc.wait_for_log(AUTO_ZEROCONF, 5)
    assert "transport zeroconf" in clc.cli("status").stdout


def test_transport_avahi_without_avahi_daemon_is_a_clear_error(alab: AutoregLab) -> None:
    walrus = alab.node("walrus", "walrus")
    use_avahi(walrus, start_avahi(walrus.host, start_daemon=False), "avahi")
    announcer = walrus.start_announcer(wait=False)
    assert announcer.wait(20) == 69  # EX_UNAVAILABLE
    assert "avahi-daemon is not running" in announcer.log_text()
    assert "Traceback" not in announcer.log_text()


def test_node_published_with_avahi_publish_is_registered_by_zeroconf_controller(
    alab: AutoregLab,
) -> None:
    """Another implementation: a shell one-liner with avahi-publish, TXT from protocol.md."""
    clc = alab.registrar("clc", "clc")  # [autoreg] transport = zeroconf, no avahi here
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    assert walrus.sshd is not None
    txt = [
        "v=1",
        "role=walrus",
        f"id={walrus.node_id}",
        f"ip={walrus.host.ip}",
        f"fp={walrus.sshd.fingerprint}",
        "state=ready",
    ]
    start_avahi(walrus.host).publish(f"walrus-{walrus.node_id}", NODE, walrus.sshd.port, txt)
    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.ip == walrus.host.ip
    assert json.loads(walrus.receipt.read_text())["node_id"] == walrus.node_id


def test_zeroconf_node_is_registered_by_controller_beside_avahi_daemon(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")  # [autoreg] transport = zeroconf
    clc_avahi = start_avahi(clc.host)
    use_avahi(clc, clc_avahi, "avahi")
    alab.authorize_all()
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    # The controller's own avahi-daemon sees the zeroconf node too, and publishes the
    # registrar announcement for the controller.
    check_exact(browse_until_state(clc_avahi, walrus, "registered"), expected(walrus, "registered"))
    (ctl,) = clc_avahi.wait_browse(CTL, lambda s: len(s) == 1, what="the registrar")
    assert ctl.name == f"clc-{clc.node_id}" and ctl.txt_map["role"] == "clc"


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_node_comes_back_after_avahi_daemon_restarts(alab: AutoregLab, crash: bool) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    clc_avahi = start_avahi(clc.host)
    node_avahi = start_avahi(walrus.host)
    use_avahi(clc, clc_avahi, "avahi")
    use_avahi(walrus, node_avahi, "avahi")
    alab.authorize_all()
    clc.start_daemon()
    announcer = walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    announcer.wait_for_log(r"re-announced .* state=registered", 15)
    browse_until_state(clc_avahi, walrus, "registered")

    old = node_avahi.daemon
    node_avahi.restart_daemon(crash=crash)
    assert node_avahi.daemon is not old
    if not crash:  # avahi-daemon said goodbye for the node: the controller saw it leave
        wait_until(
            lambda: "withdrawn" in [e.kind for e in clc.events(walrus.node_id)],
            15,
            "the controller to see the node leave",
        )
    # Either it noticed the restart, or first the outage and then the return.
    announcer.wait_for_log(r"publishing again|published again", 15)
    announcer.wait_for_log(r"re-announced \S+ after the responder lost it", 15)
    assert announcer.alive(), "the node agent must not restart"
    # The new avahi-daemon publishes it again, and the controller's avahi-daemon hears it.
    check_exact(
        browse_until_state(node_avahi, walrus, "registered"), expected(walrus, "registered")
    )
    check_exact(browse_until_state(clc_avahi, walrus, "registered"), expected(walrus, "registered"))
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.present,
        15,
        "the controller to see the node again",
    )
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is S.REGISTERED  # not registered twice
    assert [e.kind for e in clc.events(walrus.node_id)].count("registered") == 1


def test_name_collision_takes_the_next_name_and_keeps_the_id(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    squatter = alab.lab.add_host("squatter")
    use_avahi(walrus, start_avahi(walrus.host), "avahi")
    alab.authorize_all()
    # Someone else already holds the node's instance name (with a record that is no
    # autoreg announcement at all).
    start_avahi(squatter).publish(instance(walrus), NODE, 2222, ["hello=world"])
    clc.start_daemon()
    announcer = walrus.start_announcer()
    announcer.wait_for_log(rf"name collision for '{instance(walrus)}': publishing as", 5)
    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.node_id == walrus.node_id
    obs = start_avahi(alab.lab.add_host("obs"))
    services = obs.wait_browse(
        NODE,
        lambda s: (
            [x.txt_map.get("state") for x in s if x.name == f"{instance(walrus)} #2"]
            == ["registered"]
        ),
        what="the node under its alternative name",
    )
    check_exact(one(services, f"{instance(walrus)} #2"), expected(walrus, "registered"))
    assert one(services, instance(walrus)).txt == ("hello=world",)
    assert announcer.terminate() == 0
    assert f"withdrew {instance(walrus)} #2.{NODE}.local. (goodbye sent)" in announcer.log_text()
