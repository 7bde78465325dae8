"""Reaching nodes the controller cannot dial: reverse tunnels, proxies, ``ssh``/``exec``.

Real OpenSSH everywhere: every node runs sshd, the controller runs the callback
sshd with autoreg's ``Match User`` block, nodes run ``autoreg callback`` (which
supervises the real ``ssh -R``), hooks use plain ``ssh -F "$AUTOREG_SSH_CONFIG"``.
Anything that touches the network from the controller (``tunnel list``
probing, ``ssh``, ``exec``, tunnel probes) runs *inside* the controller's
namespace: the tunnel ports live on that namespace's loopback.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from registration.state import NodeState
from support import netlab
from support.autoreg_lab import (
    CALLBACK_PORT,
    CALLBACK_USER,
    AutoregLab,
    Station,
    wait_until,
)

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

S = NodeState
#: The inner network's lab index (its /24): distinct from every `alab` (10..249).
INNER_INDEX = 251
#: How many nodes call back at once in the thundering-herd test.
HERD = 50

# A tunnel probe that runs inside the controller's namespace.  Modes: once; up (until
# every port group has a port where an SSH banner comes within a second); down (until
# no port has); bounded by the deadline.  Then, for each port, the SHA256 fingerprint
# of the host key presented there (None: nothing, or nothing that speaks SSH).
# Independent of autoreg's own code (raw socket for the banner, paramiko + hashlib).
TUNNEL_PROBE = r"""
import base64, hashlib, json, socket, sys, time
import paramiko

mode, budget = sys.argv[1], float(sys.argv[2])
groups = [[int(p) for p in g.split(",")] for g in sys.argv[3:]]
started = time.monotonic()
deadline = started + budget

def banner(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False

def fingerprint(port):
    if not banner(port):
        return None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        t = paramiko.Transport(sock)
        t.banner_timeout = t.handshake_timeout = 3
        try:
            t.start_client(timeout=3)
            blob = base64.b64decode(t.get_remote_server_key().get_base64())
        finally:
            t.close()
    except Exception:
        return None
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

while True:
    now = time.monotonic()
    live = {p for g in groups for p in g if banner(p)}
    up = [any(p in live for p in g) for g in groups]
    done = {"once": True, "up": all(up), "down": not any(up)}[mode]
    if done or time.monotonic() >= deadline:
        found = {str(p): fingerprint(p) if p in live else None for g in groups for p in g}
        print(json.dumps({"ok": done, "found": found, "seconds": now - started}))
        sys.exit(0 if done else 1)
    time.sleep(0.1)
"""

# The controller probing a tunnel port over and over (what `tunnel list`, `ssh` and
# the daemon do), bounded: one line per connection attempt, until the deadline.
PROBER = r"""
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    t = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.settimeout(1)
            data = s.recv(64)
            result = "banner" if data.startswith(b"SSH-") else "closed"
    except TimeoutError:
        result = "stale"  # accepted, but nothing answers: the old session's forward
    except ConnectionRefusedError:
        result = "refused"
    except OSError as e:
        result = "error " + type(e).__name__
    print(f"{t:.3f} {result}", flush=True)
    time.sleep(0.2)
print("prober done", flush=True)
"""


def probing_hook(outdir: Path) -> str:
    """A hook that records its call and, with plain ssh, what only the node can answer:
    where its sshd saw the connection come from, and its own eth0 address."""
    return f"""#!/bin/sh
set -eu
echo "$AUTOREG_NODE_ID $AUTOREG_PATH" >> {outdir}/calls
ssh -F "$AUTOREG_SSH_CONFIG" node 'echo "$SSH_CONNECTION"; ip -o -4 addr show dev eth0' \\
    > {outdir}/"$AUTOREG_NODE_ID".out
"""


def hook_calls(outdir: Path) -> list[str]:
    calls = outdir / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def seen_by_node(outdir: Path, node: Station) -> tuple[str, str]:
    """(client address the node's sshd saw, the node's eth0 address), from the hook's ssh."""
    lines = (outdir / f"{node.node_id}.out").read_text().splitlines()
    client = lines[0].split()[0]
    m = re.search(r"inet (\S+)/24", lines[1])
    assert m is not None, lines
    return client, m.group(1)


def autoreg_in(
    station: Station, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The autoreg CLI, run inside the station's namespace (for commands that dial out)."""
    return station.cli_in_ns(*args, timeout=timeout, check=check)


def probe_tunnels(
    controller: Station, groups: list[list[int]], mode: str = "once", timeout: float = 10
) -> dict[str, Any]:
    """Run :data:`TUNNEL_PROBE` in the controller's namespace; its JSON report."""
    r = controller.host.run(
        [
            sys.executable,
            "-c",
            TUNNEL_PROBE,
            mode,
            str(timeout),
            *(",".join(map(str, g)) for g in groups),
        ],
        check=False,
        timeout=timeout + 30,
    )
    try:
        report: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        raise AssertionError(f"tunnel probe failed: {r.stdout!r} {r.stderr!r}") from None
    return report


def live_ports(report: dict[str, Any], fingerprint: str) -> list[int]:
    return [int(p) for p, fp in report["found"].items() if fp == fingerprint]


def sshd_of(station: Station) -> netlab.Sshd:
    assert station.sshd is not None
    return station.sshd


def callback_ssh(node: Station, controller: Station, *args: str) -> list[str]:
    """The real OpenSSH client, as the node's callback key, against the callback sshd."""
    cb = node.extra["callback"]
    return [
        "ssh", "-v", "-F", "/dev/null", "-i", cb["key"], "-p", str(CALLBACK_PORT),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={cb['known_hosts']}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "HostKeyAlias=autoreg-controller", "-o", "StrictHostKeyChecking=yes",
        "-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=5",
        "-o", "ControlMaster=no", "-o", "ControlPath=none",
        *args,
    ]  # fmt: skip


def other_key(tmp_path: Path) -> Path:
    """The public half of a key no node has (to announce or register a wrong fingerprint)."""
    key = tmp_path / "other_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    return key.with_suffix(".pub")


def fingerprint_of(pub: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub)], check=True, capture_output=True, text=True, timeout=30
    )
    return out.stdout.split()[1]


@pytest.fixture
def inner(alab: AutoregLab, tmp_path: Path) -> Iterator[netlab.Lab]:
    """A second, inner network: only a multi-homed proxy host reaches it."""
    assert alab.lab.index != INNER_INDEX
    with netlab.Lab(tmp_path / "inner", index=INNER_INDEX) as lab:
        yield lab


def with_proxy(alab: AutoregLab, inner: netlab.Lab, controller: Station) -> tuple[Station, str]:
    """A proxy host on both networks, configured as the proxy of cluster foo."""
    gw = alab.node("gw", "walrus")  # an ordinary host with sshd; it never announces
    inner_ip = inner.attach(gw.host)
    controller.extra["cluster:foo"] = {
        "proxy": gw.host.ip,
        "proxy_fingerprint": sshd_of(gw).fingerprint,
        "proxy_user": "root",
    }
    controller.write_config()
    return gw, inner_ip


def register_inner(
    controller: Station, node: Station, *, fingerprint: str | None = None, wait: float = 60
) -> subprocess.CompletedProcess[str]:
    """`autoreg register` for a node on the inner network (it cannot announce here)."""
    return autoreg_in(
        controller,
        "register", "--role", node.role or "", "--cluster", node.cluster or "",
        "--ip", node.host.ip, "--fingerprint", fingerprint or sshd_of(node).fingerprint,
        "--id", node.node_id, "--name", node.host.name, "--wait", str(wait),
        timeout=wait + 30, check=False,
    )  # fmt: skip


def unreachable_directly(controller: Station, node: Station) -> bool:
    """The controller's kernel has no route to the node at all."""
    r = controller.host.run(["ip", "route", "get", node.host.ip], check=False, timeout=10)
    return r.returncode != 0 and b"unreachable" in r.stderr


# -- 1. tunnel --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_firewalled_node_registers_through_its_tunnel(alab: AutoregLab) -> None:
    out = alab.lab.workdir
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook("walrus", probing_hook(out))
    clc.start_callback_sshd()
    ports = alab.tunnel(walrus, clc)
    walrus.host.drop_inbound_tcp(22)  # nobody dials this node
    walrus.start_callback()
    clc.start_daemon()
    walrus.start_announcer()

    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.path == f"tunnel:{ports[0]}"
    assert hook_calls(out) == [f"{walrus.node_id} tunnel"]
    # The hook's plain ssh reached the node's own sshd, through the tunnel: the sshd saw
    # the connection come from the node itself (the forward), never from the controller.
    client, eth0 = seen_by_node(out, walrus)
    assert (client, eth0) == (walrus.host.ip, walrus.host.ip)
    assert f"Connection from {clc.host.ip} " not in sshd_of(walrus).proc.log_text()
    config = (clc.state_dir / "nodes" / walrus.node_id / "ssh_config").read_text()
    assert "HostName 127.0.0.1" in config and f"Port {ports[0]}" in config
    # The receipt went the same way, and `autoreg ssh` follows the recorded path.
    assert json.loads(walrus.receipt.read_text())["node_id"] == walrus.node_id
    r = autoreg_in(clc, "ssh", walrus.node_id, "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert f"inet {walrus.host.ip}/24" in r.stdout


# -- 2. proxy ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_inner_node_registers_through_proxy(alab: AutoregLab, inner: netlab.Lab) -> None:
    out = alab.lab.workdir
    clc = alab.registrar("clc", "clc")
    gw, gw_inner_ip = with_proxy(alab, inner, clc)
    cc = alab.node("cc", "cc", cluster="foo", lab=inner)
    alab.authorize_all()
    clc.hook("cc", probing_hook(out))
    clc.start_daemon()
    assert unreachable_directly(clc, cc)

    r = register_inner(clc, cc)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{cc.node_id}: registered" in r.stdout
    rec = clc.node(cc.node_id)
    assert rec is not None and rec.path == f"proxy:{gw.host.ip}"
    assert hook_calls(out) == [f"{cc.node_id} proxy"]
    # The node's sshd saw the hook's plain ssh come from the proxy's inner address.
    assert seen_by_node(out, cc) == (gw_inner_ip, cc.host.ip)
    config = (clc.state_dir / "nodes" / cc.node_id / "ssh_config").read_text()
    assert "ProxyCommand ssh -F" in config and f"HostName {gw.host.ip}" in config
    assert json.loads(cc.receipt.read_text())["node_id"] == cc.node_id


# -- 3. wrong host keys -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_wrong_host_key_rejected_on_tunnel_and_proxy_paths(
    alab: AutoregLab, inner: netlab.Lab, tmp_path: Path
) -> None:
    out = alab.lab.workdir
    wrong = other_key(tmp_path)
    clc = alab.registrar("clc", "clc")
    gw, gw_inner_ip = with_proxy(alab, inner, clc)
    walrus = alab.node("walrus", "walrus")
    cc = alab.node("cc", "cc", cluster="foo", lab=inner)
    alab.authorize_all()
    for role in ("walrus", "cc"):
        clc.hook(role, probing_hook(out))
    clc.start_callback_sshd()
    alab.tunnel(walrus, clc)
    walrus.host.drop_inbound_tcp(22)
    walrus.extra["node"] = {"host_key": str(wrong)}  # announces a key it does not have
    walrus.start_callback()
    clc.start_daemon()
    walrus.start_announcer()
    r = register_inner(clc, cc, fingerprint=fingerprint_of(wrong))
    assert r.returncode != 0 and "rejected" in r.stdout, r.stdout + r.stderr

    for node in (walrus, cc):
        rec = clc.wait_state(node.node_id, S.REJECTED)
        assert "possible spoofing" in rec.reason, rec.reason
        assert sshd_of(node).fingerprint in rec.reason  # the key actually presented
        kinds = [e.kind for e in clc.events(node.node_id)]
        assert "spoofing" in kinds and "registered" not in kinds
        assert not node.receipt.exists()
    assert hook_calls(out) == []
    # The keys were checked on the tunnel and on the proxy path (nothing else reaches
    # these nodes): the tunnel's forward comes from the node itself, the proxy's from
    # its inner address.
    assert f"Connection from {walrus.host.ip} " in sshd_of(walrus).proc.log_text()
    assert f"Connection from {gw_inner_ip} " in sshd_of(cc).proc.log_text()
    # The right key, through a proxy whose own key is not the pinned one: not registered.
    assert clc.daemon is not None and clc.daemon.terminate() == 0
    clc.extra["cluster:foo"]["proxy_fingerprint"] = fingerprint_of(wrong)
    clc.start_daemon()
    autoreg_in(clc, "forget", "--yes", cc.node_id)
    r = register_inner(clc, cc)
    assert r.returncode != 0, r.stdout + r.stderr
    final = clc.node(cc.node_id)
    assert final is not None and final.state is S.REJECTED, final
    assert "possible spoofing" in final.reason, final.reason
    # ... and the reason blames the proxy, not the node (whose key was never the issue).
    assert f"the proxy {gw.host.ip}:22 presented host key {sshd_of(gw).fingerprint}" in (
        final.reason
    )
    assert hook_calls(out) == []
    assert not cc.receipt.exists()


# -- 4. controller sshd restart, node reboot ------------------------------------------------


@pytest.mark.timeout(120)
def test_tunnel_survives_controller_sshd_restart_and_node_reboot(alab: AutoregLab) -> None:
    out = alab.lab.workdir
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook("walrus", probing_hook(out))
    sshd = clc.start_callback_sshd()
    ports = alab.tunnel(walrus, clc)
    fp = sshd_of(walrus).fingerprint
    walrus.host.drop_inbound_tcp(22)
    walrus.start_callback()
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)

    # A plain restart of the listener (systemctl restart ssh): sessions live on.
    sshd.stop()
    sshd = clc.start_callback_sshd(reuse_key=True)
    assert live_ports(probe_tunnels(clc, [ports]), fp)

    # The controller's sshd goes away with every session (a crash, a reboot).
    sshd.stop(sessions=True)
    report = probe_tunnels(clc, [ports], "down", timeout=10)
    assert report["ok"], report
    started = time.monotonic()
    clc.start_callback_sshd(reuse_key=True)
    report = probe_tunnels(clc, [ports], "up", timeout=15)
    back_after = time.monotonic() - started
    assert report["ok"] and live_ports(report, fp), report
    assert back_after < 15, f"tunnel back after {back_after:.1f}s"
    r = autoreg_in(clc, "ssh", walrus.node_id, "--", "true")
    assert r.returncode == 0

    # The node reboots: its announcer says goodbye, its callback (and its ssh) die hard.
    assert walrus.callback is not None and walrus.announcer is not None
    assert walrus.callback.kill_tree(), "the callback had no ssh child"
    walrus.announcer.terminate()
    wait_until(lambda: not (r := clc.node(walrus.node_id)) or not r.present, 20, "goodbye")
    report = probe_tunnels(clc, [ports], "down", timeout=10)
    assert report["ok"], report
    walrus.start_callback()
    walrus.start_announcer()
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.present,
        30,
        "the daemon to see the rebooted node",
    )
    assert live_ports(probe_tunnels(clc, [ports], "up", timeout=10), fp)
    r = autoreg_in(clc, "ssh", walrus.node_id, "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert f"inet {walrus.host.ip}/24" in r.stdout
    # Registered once: the hook ran once, one `registered` event, still registered.
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is S.REGISTERED
    assert hook_calls(out) == [f"{walrus.node_id} tunnel"]
    assert [e.kind for e in clc.events(walrus.node_id)].count("registered") == 1


# -- 5. what a callback key may do ----------------------------------------------------------


@pytest.mark.timeout(90)
def test_callback_key_only_listens_on_its_own_ports(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    other = alab.node("other", "walrus")
    alab.authorize_all()
    sshd = clc.start_callback_sshd(log_level="DEBUG1")  # agent/pty refusals log at debug1
    mine = alab.tunnel(walrus, clc)
    theirs = alab.tunnel(other, clc)
    walrus.start_callback()  # holds mine[0]: the key itself works
    fp = sshd_of(walrus).fingerprint
    dest = f"{CALLBACK_USER}@{clc.host.ip}"
    target = f"{walrus.host.ip}:22"
    log = sshd.proc.log_text

    def ssh(*args: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        try:
            r = walrus.host.run(callback_ssh(walrus, clc, *args), check=False, timeout=timeout)
        except subprocess.TimeoutExpired:  # e.g. `ssh -N -R` whose forward was accepted
            raise AssertionError(f"ssh {args} still running after {timeout}s") from None
        return subprocess.CompletedProcess(
            r.args, r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode()
        )

    # Its own free port, the same command line: allowed (so the refusals below are
    # about the port, not the form).
    control = walrus.host.spawn(
        callback_ssh(walrus, clc, "-N", "-R", f"127.0.0.1:{mine[1]}:{target}", dest),
        log_name="control",
    )
    control.wait_for_log(rf"remote forward success for: listen 127\.0\.0\.1:{mine[1]}", 20)
    assert live_ports(probe_tunnels(clc, [[mine[1]]]), fp) == [mine[1]]
    control.terminate()

    # Another node's port, a port nobody has, its own port on another address or on
    # every address, a Unix socket: refused, and nothing listens there.
    sock = alab.lab.workdir / "stolen.sock"
    refusals: dict[str, str] = {}
    for spec, what in (
        (f"127.0.0.1:{theirs[0]}:{target}", f"listen port {theirs[0]}"),
        (f"127.0.0.1:{theirs[1] + 100}:{target}", f"listen port {theirs[1] + 100}"),
        (f"{clc.host.ip}:{mine[1]}:{target}", f"listen port {mine[1]}"),
        (f"0.0.0.0:{mine[1]}:{target}", f"listen port {mine[1]}"),
        (f"{sock}:{target}", f"listen path {sock}"),
    ):
        r = ssh("-N", "-R", spec, dest)
        assert r.returncode == 255, (spec, r.returncode, r.stderr[-800:])
        assert f"remote port forwarding failed for {what}" in r.stderr, (spec, r.stderr[-800:])
        refusals[spec] = r.stderr
    assert not sock.exists()
    report = probe_tunnels(clc, [[theirs[0]], [theirs[1] + 100], [mine[1]]])
    assert not any(report["found"].values()), report
    listening = clc.host.run(["ss", "-Hltn"], timeout=10).stdout.decode()
    assert f"{clc.host.ip}:{mine[1]} " not in listening
    assert f"0.0.0.0:{mine[1]} " not in listening
    assert log().count("but the request was denied") == 4  # the four TCP ones
    assert "Remote: Server has disabled streamlocal forwarding" in refusals[f"{sock}:{target}"]

    # A local forward (-L) to the node's own tunnel port: the channel is refused, so the
    # client's listener leads nowhere (with -L allowed, the node's sshd banner would come).
    local = 40000
    fwd = walrus.host.spawn(
        callback_ssh(walrus, clc, "-N", "-L", f"127.0.0.1:{local}:127.0.0.1:{mine[0]}", dest),
        log_name="localfwd",
    )
    fwd.wait_for_log(rf"Local connections to 127\.0\.0\.1:{local} forwarded", 20)
    got = walrus.host.run(
        [sys.executable, "-c", "import socket; s = socket.create_connection(('127.0.0.1', "
         f"{local}), timeout=5); s.settimeout(5); print(repr(s.recv(64)))"],
        timeout=20,
    ).stdout.decode()  # fmt: skip
    assert "SSH-" not in got, got
    fwd.wait_for_log(r"open failed: administratively prohibited", 10)
    fwd.terminate()
    assert "refused local port forward" in log()

    # A command, a pty, a subsystem: each gets the forced /bin/false (through nologin).
    forced = "Starting session: forced-command (config) '/bin/false' for nobody"

    def logged_once_more(before: int) -> bool:
        return log().count(forced) == before + 1

    for args in ((dest, "id"), ("-tt", dest, "id"), ("-s", dest, "sftp")):
        before = log().count(forced)
        r = ssh(*args)
        assert r.returncode != 0 and "uid=" not in r.stdout, (args, r)
        wait_until(partial(logged_once_more, before), 5, f"sshd to log {forced}")
        if "-tt" in args:
            assert "PTY allocation request failed" in r.stderr, r.stderr[-800:]
            assert "Allocating a pty not permitted for this connection" in log()

    # Agent forwarding: requested by the client, refused by the server.
    agent_sock = alab.lab.workdir / "agent.sock"
    agent = walrus.host.spawn(["ssh-agent", "-D", "-a", str(agent_sock)], log_name="agent")
    wait_until(agent_sock.exists, 10, "ssh-agent's socket")
    fwd_agent = walrus.host.run(
        callback_ssh(walrus, clc, "-A", dest, 'echo "sock=$SSH_AUTH_SOCK"'),
        check=False,
        timeout=20,
        env={"SSH_AUTH_SOCK": str(agent_sock)},
    )
    agent.terminate()
    assert fwd_agent.returncode != 0 and b"sock=" not in fwd_agent.stdout
    assert b"Requesting authentication agent forwarding" in fwd_agent.stderr
    assert "session_auth_agent_req: agent forwarding disabled" in log()
    # And through all of it, the node's own tunnel stayed up.
    assert live_ports(probe_tunnels(clc, [[mine[0]]]), fp) == [mine[0]]


# -- 6. cut off without a clean close ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_node_cut_off_uncleanly_gets_a_tunnel_again_at_once(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_callback_sshd()
    ports = alab.tunnel(walrus, clc)
    fp = sshd_of(walrus).fingerprint
    walrus.host.drop_inbound_tcp(22)
    walrus.start_callback()
    clc.start_daemon()
    walrus.start_announcer()
    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.path == f"tunnel:{ports[0]}"
    old_port = callback_source_port(clc, walrus)

    # The controller keeps probing the old port throughout (bounded by its own deadline).
    prober = clc.host.spawn([sys.executable, "-c", PROBER, str(ports[0]), "60"], log_name="prober")
    prober.wait_for_log(r" banner$", 10)
    # The cable is pulled and the node dies: its FIN is lost.  When it is back, nothing
    # of the old connection reaches the controller any more (as if the controller had
    # not retransmitted yet, which can take minutes): the old session lives on.
    walrus.host.unplug()
    assert walrus.callback is not None
    walrus.callback.kill_tree()
    clc.host.drop_inbound_from(walrus.host.ip, old_port)
    walrus.host.plug()
    prober.wait_for_log(r" stale$", 15)  # the old forward: accepted, never answered

    started = time.monotonic()
    walrus.start_callback(wait=False)
    assert walrus.callback is not None
    m = walrus.callback.wait_for_log(r"tunnel up: controller port (\d+)", 10)
    up_after = time.monotonic() - started
    assert up_after < 10, f"tunnel back after {up_after:.1f}s"
    assert int(m.group(1)) == ports[1], "the old session still holds the first port"
    assert live_ports(probe_tunnels(clc, [ports], "up", timeout=10), fp) == [ports[1]]
    # The controller finds the new port by itself: the recorded one is stale, so the
    # chain moves on (a stale tunnel port gets 3 s, direct is firewalled: 3 s).
    r = autoreg_in(clc, "ssh", walrus.node_id, "--", "ip", "-o", "-4", "addr", "show", "eth0")
    assert f"inet {walrus.host.ip}/24" in r.stdout
    now = clc.node(walrus.node_id)
    assert now is not None and now.path == f"tunnel:{ports[1]}"
    # All along, the old port was probed, and it was held by the dead session to the end.
    assert prober.alive(), "the prober was to keep going during the whole test"
    results = re.findall(r"^\d+\.\d+ (.+)$", prober.log_text(), re.MULTILINE)
    after_cut = results[results.index("stale") :]
    assert set(after_cut) == {"stale"}, after_cut
    prober.terminate()


def callback_source_port(controller: Station, node: Station) -> int:
    """The node's end of its established callback connection, as the controller sees it."""
    out = controller.host.run(["ss", "-Htn", "state", "established"], timeout=10).stdout.decode()
    peers = [
        int(fields[3].rpartition(":")[2])
        for fields in (line.split() for line in out.splitlines())
        if fields[2] == f"{controller.host.ip}:{CALLBACK_PORT}"
        and fields[3].startswith(f"{node.host.ip}:")
    ]
    assert len(peers) == 1, out
    return peers[0]


# -- 7. a herd of callbacks --------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_many_nodes_calling_back_at_once_all_get_tunnels(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    sshd = clc.start_callback_sshd()
    nodes = [alab.node(f"n{i:02d}", "nc", cluster="foo") for i in range(HERD)]
    allocated = alab.tunnels(nodes, clc)
    assert len({p for ports in allocated.values() for p in ports}) == 2 * HERD
    # The controller's sshd is down while every node's callback starts: they all keep
    # retrying, and all dial in within their backoff once it is back (a real herd,
    # well past sshd's MaxStartups 10:30:100).
    sshd.stop()
    for node in nodes:
        node.start_callback(wait=False)
    for node in nodes:
        assert node.callback is not None
        node.callback.wait_for_log(r"reconnecting in", 60)
    started = time.monotonic()
    sshd = clc.start_callback_sshd(reuse_key=True)
    groups = [allocated[n.node_id] for n in nodes]
    report = probe_tunnels(clc, groups, "up", timeout=60)
    took = time.monotonic() - started
    down = [n.node_id for n, g in zip(nodes, groups, strict=True)
            if not any(report["found"][str(p)] for p in g)]  # fmt: skip
    assert report["ok"], f"no tunnel after {took:.0f}s for {down}"
    # Every port leads to the right node (its own host key), never another's.
    for node, ports in zip(nodes, groups, strict=True):
        fps = {report["found"][str(p)] for p in ports} - {None}
        assert fps == {sshd_of(node).fingerprint}, (node.node_id, fps)
    # And autoreg's own view agrees.
    listing = json.loads(autoreg_in(clc, "tunnel", "list", "--json").stdout)
    assert sorted(row["node_id"] for row in listing) == sorted(allocated)
    dead = [row["node_id"] for row in listing if not any(row["live"].values())]
    assert not dead, dead
    drops = sshd.proc.log_text().count("past MaxStartups")
    print(
        f"{HERD} tunnels: every banner {report['seconds']:.1f}s into the probe, checked "
        f"{took:.1f}s after the sshd restart began; {drops} MaxStartups drops"
    )


# -- 8. exec over every path -------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_exec_over_direct_proxy_and_tunnel_nodes(alab: AutoregLab, inner: netlab.Lab) -> None:
    clc = alab.registrar("clc", "clc")
    gw, gw_inner_ip = with_proxy(alab, inner, clc)
    walrus = alab.node("walrus", "walrus")  # direct
    cc = alab.node("cc", "cc", cluster="foo", lab=inner)  # through the proxy
    sc = alab.node("sc", "sc", cluster="foo")  # through its tunnel
    alab.authorize_all()
    clc.start_callback_sshd()
    ports = alab.tunnel(sc, clc)
    sc.host.drop_inbound_tcp(22)
    sc.start_callback()
    clc.start_daemon()
    walrus.start_announcer()
    sc.start_announcer()
    r = register_inner(clc, cc)
    assert r.returncode == 0, r.stdout + r.stderr
    paths = {
        walrus.node_id: "direct",
        cc.node_id: f"proxy:{gw.host.ip}",
        sc.node_id: f"tunnel:{ports[0]}",
    }
    for station in (walrus, cc, sc):
        rec = clc.wait_state(station.node_id, S.REGISTERED)
        assert rec.path == paths[station.node_id]

    # Each node says where its sshd saw the connection from; the tunnel node fails.
    script = (
        'set -- $SSH_CONNECTION; echo "from $1 at $3"; echo "to stderr" >&2; '
        f'if [ "$3" = {sc.host.ip} ]; then exit 3; fi'
    )
    r = autoreg_in(clc, "exec", "--parallel", "3", "--", "sh", "-c", script, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"[walrus] from {clc.host.ip} at {walrus.host.ip}" in lines
    assert f"[cc] from {gw_inner_ip} at {cc.host.ip}" in lines
    assert f"[sc] from {sc.host.ip} at {sc.host.ip}" in lines
    for name in ("walrus", "cc", "sc"):
        assert f"[{name}] to stderr" in r.stderr.splitlines()
    summary = {
        row.split()[0]: row.split()[1:3]
        for row in lines
        if row.split() and row.split()[0] in ("walrus", "cc", "sc")
    }
    assert summary == {
        "walrus": ["direct", "0"],
        "cc": [f"proxy:{gw.host.ip}", "0"],
        "sc": [f"tunnel:{ports[0]}", "3"],
    }, r.stdout
    assert "1 of 3 node(s) failed" in r.stderr

    # Filters pick nodes; all succeeding means exit 0.  JSON summary for scripts.
    r = autoreg_in(clc, "exec", "--cluster", "foo", "--json", "--", "true")
    results = json.loads(r.stdout[r.stdout.index("[") :])
    assert {x["name"]: (x["path"], x["returncode"]) for x in results} == {
        "cc": (f"proxy:{gw.host.ip}", 0),
        "sc": (f"tunnel:{ports[0]}", 0),
    }
