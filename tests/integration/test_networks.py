"""The seed spec's multi-network test plan, with real routers (namespaces forwarding
between bridges, no multicast routing), signed records, real sshd and the shipped hooks:

1. CLC+Walrus / CC1+SC1 / NC1 / CC2+SC2 / NC2 on one network (mDNS);
2. the same on three adjacent routed networks, CLC | CC1, SC1, NC1 | CC2, SC2, NC2:
   a. with avahi-daemon reflecting mDNS on both routers (``enable-reflector=yes``);
   b. with no reflector: the nodes the CLC registers post to its HTTPS endpoint;
3. CLC+Walrus+CC1+SC1 / NC1 on one network and CC2+SC2 / NC2 on a remote one: CC2
   and SC2 post to the CLC over HTTPS, NC2 registers with CC2 over mDNS once CC2 is.

Each ends with every component registered exactly once, in dependency order
(support.spec_cloud.check).
"""

from __future__ import annotations

import pytest

from registration.state import Source
from support import spec_cloud
from support.autoreg_lab import AutoregLab
from support.avahi import require_avahi, start_avahi
from support.routed import RoutedLabs

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

#: Which network each station of the spec's topology is on, in the routed scenarios.
THREE = {"clc": 0, "walrus": 0, "cc1": 1, "sc1": 1, "nc1": 1, "cc2": 2, "sc2": 2, "nc2": 2}
REMOTE = {"clc": 0, "walrus": 0, "cc1": 0, "sc1": 0, "nc1": 0, "cc2": 1, "sc2": 1, "nc2": 1}


def _on(nets: RoutedLabs, plan: dict[str, int]) -> tuple[AutoregLab, dict[str, object]]:
    alab = AutoregLab(nets.labs[0])
    return alab, {name: nets.labs[n] for name, n in plan.items()}


def test_one_network(alab: AutoregLab) -> None:
    cloud = spec_cloud.build(alab, {})
    spec_cloud.boot(cloud)
    spec_cloud.check(cloud)
    for node in cloud.clc_nodes:
        assert spec_cloud.sources(cloud.clc, node) == {Source.MDNS}


def test_three_routed_networks_with_avahi_reflectors(routed: RoutedLabs) -> None:
    require_avahi()
    routed.router("r01", 0, 1)
    routed.router("r12", 1, 2)
    alab, where = _on(routed, THREE)
    cloud = spec_cloud.build(alab, where)  # type: ignore[arg-type]
    routed.route()
    for router in routed.routers:
        start_avahi(router.host, reflector=True)
    spec_cloud.boot(cloud)
    spec_cloud.check(cloud)
    for node in (*cloud.cc.values(), *cloud.sc.values()):  # heard through the reflectors
        assert spec_cloud.sources(cloud.clc, node) == {Source.MDNS}


def test_three_routed_networks_over_the_https_endpoint(routed: RoutedLabs) -> None:
    routed.router("r01", 0, 1)
    routed.router("r12", 1, 2)
    alab, where = _on(routed, THREE)
    posting = ("walrus", "cc1", "sc1", "cc2", "sc2")
    cloud = spec_cloud.build(alab, where, unicast=posting)  # type: ignore[arg-type]
    routed.route()
    spec_cloud.boot(cloud)
    spec_cloud.check(cloud, unicast=posting)
    for node in (*cloud.cc.values(), *cloud.sc.values()):  # mDNS stops at the routers
        assert spec_cloud.sources(cloud.clc, node) == {Source.UNICAST}
    # the Walrus, on the CLC's network, is heard both ways (one row all the same: check()):
    # it posts to the endpoint, unless mDNS was faster and it was registered (receipt and
    # all) before its own announcement was out, when there is nothing left to post.
    assert cloud.walrus.announcer is not None
    said = cloud.walrus.announcer.log_text()
    assert f"at {cloud.url()}" in said or "_report: registered (" in said, said
    assert spec_cloud.sources(cloud.clc, cloud.walrus) & {Source.MDNS, Source.UNICAST}
    status = cloud.cc["c2"].cli("status").stdout
    assert "node: registered (receipt from clc" in status


def test_two_remote_networks(routed: RoutedLabs) -> None:
    routed.router("gw", 0, 1)
    alab, where = _on(routed, REMOTE)
    posting = ("cc2", "sc2")
    cloud = spec_cloud.build(alab, where, unicast=posting)  # type: ignore[arg-type]
    routed.route()
    spec_cloud.boot(cloud)
    spec_cloud.check(cloud, unicast=posting)
    assert spec_cloud.sources(cloud.clc, cloud.cc["c2"]) == {Source.UNICAST}
    assert spec_cloud.sources(cloud.cc["c2"], cloud.nc["c2"]) == {Source.MDNS}
