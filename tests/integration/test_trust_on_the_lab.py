"""Trust with real processes: pending without SSH, approvals, denials, join tokens that
are spent once, tampered and replayed records, install windows, the queue bound.

The registrars run `trust = token` (a new installation's default) unless a test
says otherwise; nodes sign with tokens made by `autoreg token create`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from registration.protocol import Announcement, encode_node, parse_token
from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

S = NodeState
RAW_PUBLISHER = Path(__file__).parents[1] / "support" / "raw_publisher.py"


def registrar(alab: AutoregLab, *, trust: str = "token", **controller: str) -> Station:
    clc = alab.registrar("clc", "clc")
    clc.extra["controller"] = {"trust": trust, **controller}
    return clc


def token(clc: Station, *args: str) -> str:
    """`autoreg token create …`: the token is the last line of stdout."""
    return clc.cli("token", "create", *args).stdout.strip().splitlines()[-1]


def give_token(node: Station, joined: str) -> Path:
    path = node.host.workdir / "join_token"
    path.write_text(joined + "\n")
    path.chmod(0o600)
    node.extra.setdefault("node", {})["token_file"] = str(path)
    return path


def connections_from(node: Station, ip: str) -> int:
    assert node.sshd is not None
    return node.sshd.proc.log_text().count(f"Connection from {ip} ")


def publish(host: Any, spec: list[dict[str, Any]], tmp: Path, name: str = "rogue") -> Any:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(spec))
    proc = host.spawn([sys.executable, str(RAW_PUBLISHER), host.ip, str(path)], log_name=name)
    proc.wait_for_log("published", 60)
    return proc


def hook_log(clc: Station) -> Path:
    log = clc.lab.lab.workdir / "hooks.log"
    for role in ("walrus", "cc", "sc"):
        clc.hook(role, f'#!/bin/sh\necho "$AUTOREG_NODE_ID" >> {log}\n')
    return log


def test_unsigned_waits_without_ssh_then_approval_registers(alab: AutoregLab) -> None:
    clc = registrar(alab)
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    walrus.start_announcer()
    rec = clc.wait_state(walrus.node_id, S.PENDING)
    assert f"unsigned announcement: `autoreg approve {walrus.node_id}`" in rec.reason
    queue = json.loads(clc.cli("pending", "--json").stdout)
    assert [(n["node_id"], n["fingerprint"]) for n in queue] == [
        (walrus.node_id, walrus.sshd.fingerprint if walrus.sshd else "")
    ]
    status = clc.cli("status").stdout
    assert "trust: token" in status and "1 pending" in status
    assert connections_from(walrus, clc.host.ip) == 0  # a pending node costs no SSH
    out = clc.cli("approve", walrus.node_id).stdout
    assert f"approved walrus walrus ({walrus.node_id})" in out
    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.granted == "approval"
    assert connections_from(walrus, clc.host.ip) >= 1


def test_a_denied_key_is_refused_again_when_it_comes_back(alab: AutoregLab) -> None:
    clc = registrar(alab)
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.PENDING)
    clc.cli("deny", walrus.node_id, "--reason", "not in the inventory")
    clc.wait_state(walrus.node_id, S.REJECTED)
    clc.cli("forget", "--yes", walrus.node_id)
    assert walrus.announcer is not None
    walrus.announcer.terminate()
    walrus.start_announcer()  # it comes back
    rec = clc.wait_state(walrus.node_id, S.REJECTED)
    assert "was denied by the admin (not in the inventory)" in rec.reason
    assert connections_from(walrus, clc.host.ip) == 0


def test_a_signed_node_registers_and_its_token_is_spent_exactly_once(alab: AutoregLab) -> None:
    clc = registrar(alab)
    cc = alab.node("cc", "cc", cluster="foo")
    alab.authorize_all()
    log = hook_log(clc)
    joined = token(clc, "--role", "cc", "--cluster", "foo", "--description", "rack 4")
    path = give_token(cc, joined)
    clc.start_daemon()
    cc.start_announcer()
    rec = clc.wait_state(cc.node_id, S.REGISTERED)
    token_id = joined.split(".")[0]
    assert (rec.auth, rec.granted) == ("signed", f"token:{token_id}")
    wait_until(lambda: not path.exists(), 15, "the node to delete its used token")
    # the registrar restarts; the node keeps announcing: nothing is spent again
    assert clc.daemon is not None
    clc.daemon.terminate()
    clc.start_daemon()
    wait_until(lambda: (r := clc.node(cc.node_id)) is not None and r.present, 20, "seen again")
    (listed,) = json.loads(clc.cli("token", "list", "--json").stdout)
    assert (listed["uses_left"], [u["node_id"] for u in listed["used_by"]]) == (0, [cc.node_id])
    assert joined.split(".")[1] not in clc.cli("token", "list").stdout
    assert joined.split(".")[1] not in clc.cli("events", "-n", "1000").stdout
    assert log.read_text().splitlines() == [cc.node_id]


@pytest.mark.parametrize("field", ["ip", "fp", "role", "cluster"])
def test_a_field_changed_after_signing_is_rejected(
    alab: AutoregLab, tmp_path: Path, field: str
) -> None:
    clc = registrar(alab)
    attacker = alab.lab.add_host("attacker")
    sshd = attacker.start_sshd()
    clc.start_daemon()
    joined = parse_token(token(clc, "--role", "sc", "--cluster", "foo"))
    ann = Announcement(node_id="sc-000001", role="sc", cluster="foo", ip=attacker.ip,
                       port=sshd.port, fingerprint=sshd.fingerprint)  # fmt: skip
    txt = encode_node(ann, token=joined, now=__import__("time").time())
    txt[field] = {
        "ip": "198.18.200.1",
        "fp": "SHA256:" + "Q" * 43,
        "role": "cc",
        "cluster": "bar",
    }[field]
    publish(attacker, [{"instance": "sc-sc-000001", "port": sshd.port,
                        "txt": [f"{k}={v}" for k, v in txt.items()]}], tmp_path)  # fmt: skip
    rec = clc.wait_state("sc-000001", S.REJECTED)
    assert "bad signature: the signature does not match the record" in rec.reason
    assert sshd.proc.log_text().count("Connection from") == 0


def test_tokens_that_do_not_admit_a_node_leave_it_pending(alab: AutoregLab) -> None:
    clc = registrar(alab)
    revoked = alab.node("walrus", "walrus")
    scoped = alab.node("cc", "cc", cluster="foo")
    exhausted = alab.node("sc", "sc", cluster="bar")
    alab.authorize_all()
    clc.start_daemon()
    first = token(clc, "--role", "walrus")
    clc.cli("token", "revoke", first.split(".")[0])
    give_token(revoked, first)
    give_token(scoped, token(clc, "--role", "cc", "--cluster", "bar"))  # not cluster foo
    used_up = token(clc, "--role", "sc", "--uses", "1")
    give_token(exhausted, used_up)
    spender = alab.node("sc2", "sc", cluster="baz")
    alab.authorize_all()
    give_token(spender, used_up)
    cc_bar = alab.node("ccbar", "cc", cluster="baz")  # the SC of baz needs its CC
    alab.authorize_all()
    clc.cli("approve", "--help")
    cc_bar.start_announcer()
    spender.start_announcer()
    clc.wait_state(cc_bar.node_id, S.PENDING)
    clc.cli("approve", cc_bar.node_id)
    clc.wait_state(spender.node_id, S.REGISTERED)
    for node in (revoked, scoped, exhausted):
        node.start_announcer()
    reasons = {n.node_id: clc.wait_state(n.node_id, S.PENDING).reason
               for n in (revoked, scoped, exhausted)}  # fmt: skip
    assert "was revoked" in reasons[revoked.node_id]
    assert "is for cc of cluster bar, not cc of cluster foo" in reasons[scoped.node_id]
    assert "is used up (1 of 1)" in reasons[exhausted.node_id]


def test_a_captured_record_replayed_by_another_machine_is_not_registered(
    alab: AutoregLab, tmp_path: Path
) -> None:
    clc = registrar(alab)
    walrus = alab.node("walrus", "walrus")
    attacker = alab.lab.add_host("attacker")
    sshd = attacker.start_sshd()
    alab.authorize_all()
    log = hook_log(clc)
    joined = token(clc, "--role", "walrus", "--uses", "5")
    give_token(walrus, joined)
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    # the attacker captured the walrus's signed record: replay it as it is, and with its
    # own address and key in place of the victim's, under another instance name
    assert walrus.sshd is not None
    ann = Announcement(node_id=walrus.node_id, role="walrus", ip=walrus.host.ip,
                       port=walrus.sshd.port, fingerprint=walrus.sshd.fingerprint,
                       name=walrus.host.name)  # fmt: skip
    captured = encode_node(ann, token=parse_token(joined), now=__import__("time").time() - 5)
    hijacked = {**captured, "ip": attacker.ip, "fp": sshd.fingerprint}
    publish(
        attacker,
        [
            {
                "instance": "walrus-replayed",
                "port": walrus.sshd.port,
                "txt": [f"{k}={v}" for k, v in captured.items()],
            },
            {
                "instance": "walrus-hijack0",
                "port": sshd.port,
                "txt": [
                    f"{k}={v}".replace(walrus.node_id, "hijack0-id") for k, v in hijacked.items()
                ],
            },
        ],
        tmp_path,
    )
    rec = clc.wait_state("hijack0-id", S.REJECTED)
    assert "bad signature" in rec.reason
    assert sshd.proc.log_text().count("Connection from") == 0
    walrus_rec = clc.node(walrus.node_id)
    assert walrus_rec is not None and walrus_rec.state is S.REGISTERED
    assert log.read_text().splitlines() == [walrus.node_id]  # registered once, not again


def test_an_install_window_seals_after_n_registrations(alab: AutoregLab) -> None:
    clc = registrar(alab)
    nodes = [alab.node(f"cc{i}", "cc", cluster=f"c{i}") for i in range(3)]
    alab.authorize_all()
    clc.start_daemon()
    out = clc.cli("window", "open", "--role", "cc", "--for", "10m", "--max", "2").stdout
    assert "at most 2 registration(s)" in out
    for node in nodes[:2]:
        node.start_announcer()
        clc.wait_state(node.node_id, S.REGISTERED)
    nodes[2].start_announcer()
    rec = clc.wait_state(nodes[2].node_id, S.PENDING)
    assert "unsigned announcement" in rec.reason
    (window,) = json.loads(clc.cli("window", "status", "--json").stdout)
    assert (window["open"], window["used"], window["closed_reason"]) == (
        False, 2, "sealed after 2 registrations",
    )  # fmt: skip
    assert any("sealed after 2 registrations" in e.message for e in clc.events())


def test_the_approval_queue_holds_under_a_flood(alab: AutoregLab, tmp_path: Path) -> None:
    clc = registrar(alab, max_pending="100")
    attacker = alab.lab.add_host("flooder")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    spec = [
        {
            "instance": f"nc-flood{i:05d}",
            "port": 22,
            "raw": True,
            "txt": [
                "v=1",
                "role=walrus",
                f"id=flood{i:05d}",
                f"ip=198.18.{100 + i // 250}.{i % 250 + 1}",
                f"fp=SHA256:{i:043d}",
                "state=ready",
            ],
        }
        for i in range(5000)
    ]
    flood = publish(attacker, spec, tmp_path, name="flood")
    wait_until(lambda: any(e.kind == "pending-full" for e in clc.events()), 90, "the queue to fill")
    flood.terminate()
    full = [e for e in clc.events() if e.kind == "pending-full"]
    assert "dropped, not stored" in full[0].message
    listing = json.loads(clc.cli("list", "--json").stdout)
    assert len(listing) <= 100
    # and the daemon keeps serving: a node with a token registers as usual
    give_token(walrus, token(clc, "--role", "walrus"))
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED, timeout=60)
