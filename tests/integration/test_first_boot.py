"""A node that registers itself on first boot, from nothing but its install medium.

The registrar (an AutoregLab station: keys, daemon, and for the callback case
its callback sshd) writes the node's AFTER_INSTALL script with `autoreg media
script`.  The script runs against a fresh root; that root is then booted as a
test host (support.firstboot: its network namespace, private mount and UTS
namespaces with the installed files laid over /etc, /root and /var/lib): the
node's sshd with a host key made at first boot, then exactly the units the
install enabled, run from their ExecStart and reading the real paths.  The
node must be registered, directly, or through its callback tunnel when nothing
can dial it, and must learn so from its receipt.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station
from support.cloudinit import CloudInit, cloud_init
from support.firstboot import FirstBoot, make_fresh_root, run_after_install

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

__all__ = ["cloud_init"]  # the fixture, for this module's tests

S = NodeState
RECEIPT = "/var/lib/autoreg/node/receipt.json"
CONFIG = "/etc/autoreg/autoreg.conf.d/50-medium.conf"


def seeing_hook(out: Path) -> str:
    """Proves plain ssh reaches the booted node: its host name and its medium's config."""
    return f"""#!/bin/sh
set -eu
ssh -F "$AUTOREG_SSH_CONFIG" node 'hostname; cat {CONFIG}' > {out}/"$AUTOREG_NODE_ID".seen
echo "$AUTOREG_NODE_ID $AUTOREG_PATH" >> {out}/hook.log
"""


def registrar(alab: AutoregLab) -> Station:
    clc = alab.registrar("clc", "clc")
    # Receipts go where a real node's announcer looks for them (its /var/lib is an overlay).
    clc.extra.setdefault("controller", {})["node_receipt_path"] = RECEIPT
    clc.hook("walrus", seeing_hook(alab.lab.workdir))
    return clc


def install(clc: Station, tmp: Path, *args: str) -> Path:
    """`autoreg media script` on the registrar, run against a fresh root."""
    script = tmp / "after-install.sh"
    clc.cli("media", "script", "--role", "walrus", *args, "-o", str(script))
    root = make_fresh_root(tmp / "target")
    result = run_after_install(script, root)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def boot(alab: AutoregLab, root: Path) -> FirstBoot:
    node = FirstBoot(alab.lab.add_host("walrus"), root)
    node.boot()
    return node


def assert_registered(clc: Station, node: FirstBoot, node_id: str, *, hostname: str) -> str:
    rec = clc.wait_state(node_id, S.REGISTERED, timeout=60)
    assert rec.fingerprint == node.host_key_fingerprint  # the key made at first boot
    assert rec.ip == node.host.ip and rec.name == hostname
    # The hook's plain ssh reached the booted node and saw what the medium installed.
    seen = (clc.lab.lab.workdir / f"{node_id}.seen").read_text().splitlines()
    assert seen[0] == hostname
    assert f"id = {node_id}" in seen and "role = walrus" in seen
    # The receipt landed in the node's /var/lib and its announcer says so.
    announce = node.units["autoreg-announce.service"]
    announce.wait_for_log(r"re-announced walrus id=\S+ .* state=registered", 30)
    receipt = json.loads(node.var_lib("autoreg/node/receipt.json").read_text())
    assert (receipt["node_id"], receipt["fingerprint"]) == (node_id, rec.fingerprint)
    # transport = auto, and no system bus in the node's namespaces: the embedded responder.
    assert "transport auto: no avahi-daemon on the system bus" in announce.log_text()
    return rec.path or ""


def assert_host_untouched() -> None:
    for path in ("/etc/autoreg/autoreg.conf.d/50-medium.conf", RECEIPT, "/etc/hostname.autoreg"):
        assert not os.path.exists(path), f"{path} appeared on the machine itself"


@pytest.mark.timeout(120)
def test_installed_node_registers_itself_on_first_boot(
    alab: AutoregLab, tmp_path: Path, cloud_init: CloudInit
) -> None:
    clc = registrar(alab)
    root = install(clc, tmp_path, "--node-id", "walrus-fb01", "--hostname", "walrus-fb")
    clc.start_daemon()
    node = boot(alab, root)
    assert sorted(node.units) == ["autoreg-announce.service"]

    path = assert_registered(clc, node, "walrus-fb01", hostname="walrus-fb")
    assert path == "direct"
    assert (alab.lab.workdir / "hook.log").read_text().split() == ["walrus-fb01", "direct"]
    # The node's own host name came from the installed /etc/hostname.
    assert node.run(["cat", "/proc/sys/kernel/hostname"]).stdout.decode().strip() == "walrus-fb"
    # With no network-config on the seed, cloud-init's fallback is DHCP on this host's
    # primary interface: its own code, run in the node's network namespace, says eth0.
    fallback = node.host.run(
        ["env", *(f"{k}={v}" for k, v in cloud_init.env().items()), "/usr/bin/python3", "-c",
         "import json; from cloudinit.net import generate_fallback_config as g; "
         "print(json.dumps(g()))"],
        timeout=60,
    )  # fmt: skip
    config = json.loads(fallback.stdout)
    assert config["ethernets"]["eth0"]["dhcp4"] is True
    assert_host_untouched()


@pytest.mark.timeout(120)
def test_firewalled_node_registers_through_its_callback_on_first_boot(
    alab: AutoregLab, tmp_path: Path
) -> None:
    clc = registrar(alab)
    clc.start_callback_sshd()  # CALLBACK_PORT, the Match block, the host key nodes pin
    args = ["--node-id", "walrus-cb01", "--hostname", "walrus-cb"]
    root = install(clc, tmp_path, *args, "--callback", "--controller", clc.host.ip)
    ports = json.loads(clc.cli("tunnel", "list", "--json", "--no-probe").stdout)
    (tunnel,) = [t for t in ports if t["node_id"] == "walrus-cb01"]
    clc.start_daemon()

    host = alab.lab.add_host("walrus")
    host.drop_inbound_tcp(22)  # nobody dials this node
    node = FirstBoot(host, root)
    node.boot()
    assert sorted(node.units) == ["autoreg-announce.service", "autoreg-callback.service"]
    node.units["autoreg-callback.service"].wait_for_log(r"tunnel up", 30)

    path = assert_registered(clc, node, "walrus-cb01", hostname="walrus-cb")
    assert path.startswith("tunnel:") and int(path.split(":")[1]) in tunnel["ports"]
    # Direct really is closed: the daemon tried it first and gave up on it.
    sshd_log = node.sshd.log_text() if node.sshd else ""
    assert f"Connection from {clc.host.ip} " not in sshd_log
    # The callback key on the node is private; ssh would refuse it otherwise anyway.
    key = node.run(["stat", "-c", "%a %U", "/etc/autoreg/keys/callback_ed25519"])
    assert key.stdout.decode().split() == ["600", "root"]
    assert_host_untouched()
