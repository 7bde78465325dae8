"""An attacker on the LAN, with real processes: relabelling, taking over, hiding and
moving nodes, hostile text on the admin's terminal, impostor registrars.

Each attack runs against the real daemon with real sshd and real multicast in
namespaces; the attacker is another host running a raw DNS-SD publisher (no
autoreg code) and, where it needs one, its own sshd or a fake SSH server.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, autoreg_argv, wait_until
from support.netlab import Host, Proc
from support.terminal import raw_control_bytes, run_on_a_terminal, run_piped

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

S = NodeState
RAW_PUBLISHER = Path(__file__).parents[1] / "support" / "raw_publisher.py"
CTL_TYPE = "_autoreg-ctl._tcp.local."


def publish(host: Host, spec: list[dict[str, Any]], tmp: Path, name: str = "rogue") -> Proc:
    """The attacker's raw publisher: exactly these records, goodbyes when it stops."""
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    proc = host.spawn([sys.executable, str(RAW_PUBLISHER), host.ip, str(path)], log_name=name)
    proc.wait_for_log("published", 20)
    return proc


def txt(**fields: str) -> list[str]:
    return ["v=1", *(f"{k}={v}" for k, v in fields.items())]


def test_relabelling_a_registered_machine_is_refused(alab: AutoregLab, tmp_path: Path) -> None:
    clc = alab.registrar("clc", "clc")
    cc = alab.node("cc", "cc", cluster="foo")
    walrus = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    alab.authorize_all()
    clc.start_daemon()
    cc.start_announcer()
    clc.wait_state(cc.node_id, S.REGISTERED)
    receipt = cc.receipt.read_text()
    assert cc.sshd is not None
    publish(
        attacker,
        [
            # the CC's address, port and key under a new id, as a Walrus
            {
                "instance": "walrus-evil0001",
                "port": cc.sshd.port,
                "txt": txt(
                    role="walrus",
                    id="evil0001",
                    ip=cc.host.ip,
                    fp=cc.sshd.fingerprint,
                    state="ready",
                ),
            },
            # addresses that lead back into the registrar, or nowhere
            {
                "instance": "walrus-evil0002",
                "port": 22,
                "txt": txt(
                    role="walrus",
                    id="evil0002",
                    ip="127.0.0.1",
                    fp="SHA256:" + "A" * 43,
                    state="ready",
                ),
            },
            {
                "instance": "walrus-evil0003",
                "port": 22,
                "txt": txt(
                    role="walrus",
                    id="evil0003",
                    ip=clc.host.ip,
                    fp="SHA256:" + "B" * 43,
                    state="ready",
                ),
            },
        ],
        tmp_path,
    )
    rec = clc.wait_state("evil0001", S.REFUSED)
    assert f"belongs to cc cc ({cc.node_id})" in rec.reason, rec.reason
    assert "one host key is one node" in rec.reason
    wait_until(
        lambda: (
            {e.node_id for e in clc.events() if e.kind == "rejected-announcement"}
            >= {"evil0002", "evil0003"}
        ),
        20,
        "the loopback and own-address announcements to be refused",
    )
    refusals = {e.node_id: e.message for e in clc.events() if e.kind == "rejected-announcement"}
    assert "127.0.0.1 is a loopback address" in refusals["evil0002"], refusals
    assert "one of this registrar's own addresses" in refusals["evil0003"]
    assert clc.node("evil0002") is None and clc.node("evil0003") is None
    # the real Walrus is not refused, and the CC is untouched
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    assert cc.receipt.read_text() == receipt
    cc_rec = clc.node(cc.node_id)
    assert cc_rec is not None and cc_rec.state is S.REGISTERED


def test_a_second_key_for_a_locked_node_is_a_conflict(alab: AutoregLab, tmp_path: Path) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    alab.authorize_all()
    sshd = attacker.start_sshd()  # the attacker's machine really holds its own key
    clc.start_daemon()
    clc.cli("lockdown", "on", "--role", "walrus")
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.LOCKED)
    publish(
        attacker,
        [
            {
                "instance": "walrus-takeover",
                "port": sshd.port,
                "txt": txt(
                    role="walrus",
                    id=walrus.node_id,
                    ip=attacker.ip,
                    fp=sshd.fingerprint,
                    state="ready",
                ),
            }
        ],
        tmp_path,
    )
    rec = clc.wait_state(walrus.node_id, S.CONFLICT)
    assert walrus.sshd is not None and rec.fingerprint == walrus.sshd.fingerprint
    assert sshd.fingerprint in rec.reason and "neither is registered" in rec.reason
    clc.cli("lockdown", "off", "--role", "walrus")
    listing = json.loads(clc.cli("list", "--json").stdout)
    assert [(n["node_id"], n["state"]) for n in listing] == [(walrus.node_id, "conflict")]
    assert not any(e.kind == "registering" for e in clc.events(walrus.node_id))


def test_another_instances_goodbye_does_not_hide_a_node(alab: AutoregLab, tmp_path: Path) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    alab.authorize_all()
    clc.start_daemon()
    clc.cli("lockdown", "on", "--role", "walrus")
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.LOCKED)
    assert walrus.sshd is not None
    seen_before = clc.wait_state(walrus.node_id, S.LOCKED).last_seen
    rogue = publish(
        attacker,
        [
            {
                # an exact copy of the victim's record, under another instance name
                "instance": "hider",
                "port": walrus.sshd.port,
                "txt": txt(
                    role="walrus",
                    id=walrus.node_id,
                    ip=walrus.host.ip,
                    fp=walrus.sshd.fingerprint,
                    state="ready",
                    name=walrus.host.name,
                ),
            }
        ],
        tmp_path,
    )
    # (the copy changes nothing, so it says nothing: the record's last_seen tells)
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.last_seen > seen_before,
        20,
        "the rogue record to be seen",
    )
    rogue.terminate()  # goodbye for "hider", which carried the victim's id
    wait_until(lambda: rogue.returncode is not None, 10, "the goodbyes")
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.present, rec
    clc.cli("lockdown", "off", "--role", "walrus")
    clc.wait_state(walrus.node_id, S.REGISTERED)


def test_a_registered_node_moves_only_where_its_key_is(alab: AutoregLab, tmp_path: Path) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    alab.authorize_all()
    sshd = attacker.start_sshd(authorized_keys=[])
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    assert walrus.sshd is not None
    publish(
        attacker,
        [
            {
                "instance": f"walrus-{walrus.node_id}",
                "port": sshd.port,
                "txt": txt(
                    role="walrus",
                    id=walrus.node_id,
                    ip=attacker.ip,
                    fp=walrus.sshd.fingerprint,
                    state="ready",
                ),
            }
        ],
        tmp_path,
    )
    wait_until(
        lambda: any(e.kind == "move-refused" for e in clc.events(walrus.node_id)),
        30,
        "the move to be checked and refused",
    )
    refused = next(e for e in clc.events(walrus.node_id) if e.kind == "move-refused")
    assert "does not present the registered key" in refused.message
    rec = clc.node(walrus.node_id)
    assert rec is not None and (rec.ip, rec.state) == (walrus.host.ip, S.REGISTERED)
    # `exec`, `ssh` and receipts keep the old, verified path
    assert clc.cli_in_ns("exec", "--node", walrus.node_id, "--", "true").returncode == 0

    # a real move: the node's sshd now answers on another port, with its own key
    old_key = walrus.sshd.host_key_path
    new_key = walrus.host.workdir / "sshd2200_host_ed25519_key"
    shutil.copy(old_key, new_key)
    shutil.copy(f"{old_key}.pub", f"{new_key}.pub")
    moved = walrus.host.start_sshd(port=2200, reuse_key=True, authorized_keys=alab._authorized)
    assert moved.fingerprint == walrus.sshd.fingerprint
    assert walrus.announcer is not None
    walrus.announcer.terminate()
    walrus.extra = {"node": {"ssh_port": "2200"}}
    walrus.start_announcer()
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.port == 2200,
        30,
        "the move to be adopted",
    )
    assert any(
        e.kind == "moved" and "presents the registered key" in e.message
        for e in clc.events(walrus.node_id)
    )


FAKE_SSHD = r"""
import socket, sys
banner = b"SSH-\x1b]0;pwned\x07\x1b[2J\xc2\x9b6n\xe2\x80\xae-x\r\n"
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
for _ in range(50):
    conn, _ = server.accept()
    try:
        conn.sendall(banner)
        conn.recv(1024)
    except OSError:
        pass
    conn.close()
"""


def test_hostile_text_never_reaches_the_admins_terminal(alab: AutoregLab, tmp_path: Path) -> None:
    clc = alab.registrar("clc", "clc")
    attacker = alab.lab.add_host("attacker")
    clc.start_daemon()
    fake = attacker.spawn(
        [sys.executable, "-c", FAKE_SSHD, attacker.ip, "2022"], log_name="fake-sshd"
    )
    fake.wait_for_log("listening", 10)
    publish(
        attacker,
        [
            {
                "instance": "walrus-banner01",
                "port": 2022,
                "txt": txt(
                    role="walrus",
                    id="banner01",
                    ip=attacker.ip,
                    fp="SHA256:" + "D" * 43,
                    state="ready",
                ),
            },
            # an instance name with ESC (python-zeroconf would not publish it: raw packets)
            {
                "instance": "evil\x1b]0;owned\x07name",
                "port": 22,
                "txt": txt(role="walrus"),
                "raw": True,
            },
        ],
        tmp_path,
    )
    rec = clc.wait_state("banner01", S.UNREACHABLE)
    assert "\x1b]0;pwned\x07" in rec.reason  # stored as received, for the record
    wait_until(
        lambda: any(
            "owned" in e.message for e in clc.events() if e.kind == "rejected-announcement"
        ),
        20,
        "the hostile instance name to be rejected",
    )
    argv = autoreg_argv("-c", str(clc.conf))
    for command in (
        ["list"],
        ["show", "banner01"],
        ["events"],
        ["events", "--json"],
        ["show", "banner01", "--json"],
    ):
        for run in (run_on_a_terminal, run_piped):
            output = run([*argv, *command])
            assert b"pwned" in output, (command, output[-500:])  # the text is shown …
            assert raw_control_bytes(output) == [], (command, run.__name__)  # … escaped
        if command == ["events"]:
            assert b"owned" in output


def test_callback_skips_an_impostor_registrar(alab: AutoregLab, tmp_path: Path) -> None:
    """`controller = auto`: an impostor announcing itself first by id is not the end."""
    clc = alab.registrar("clc", "clc", node_id="zzzz-real-clc")
    node = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    alab.authorize_all()
    clc.start_callback_sshd()
    alab.tunnel(node, clc)
    node.extra["callback"]["controller"] = "auto"
    node.write_config()
    impostor_sshd = attacker.start_sshd(port=2222)  # another key on the callback port
    assert clc.callback_sshd is not None
    publish(
        attacker,
        [
            {
                "instance": "clc-aaaa-impostor",
                "port": 22,
                "type": CTL_TYPE,
                # it even claims the real registrar's key: announcements are not trusted for that
                "txt": txt(
                    role="clc",
                    id="aaaa-impostor",
                    ip=attacker.ip,
                    state="active",
                    fp=clc.callback_sshd.fingerprint,
                ),
            }
        ],
        tmp_path,
    )
    clc.start_daemon()
    node.host.drop_inbound_tcp(node.sshd.port if node.sshd else 22)
    callback = node.start_callback(wait=False)
    callback.wait_for_log(r"tunnel up", 60)
    log = callback.log_text()
    assert "does not present the pinned host key" in log and attacker.ip in log
    assert impostor_sshd.fingerprint != clc.callback_sshd.fingerprint
    node.start_announcer()
    rec = clc.wait_state(node.node_id, S.REGISTERED, timeout=60)
    assert rec.path is not None and rec.path.startswith("tunnel:")
