"""The core loop on a real network: announce → browse → decide → verify → hook → record.

Real multicast between network namespaces, real OpenSSH sshd on every node,
the real daemon and announcer as processes.  No fakes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

S = NodeState


def recording_hook(log: Path, *, extra: str = "") -> str:
    """A hook that records its call and proves plain ssh reaches the node."""
    return f"""#!/bin/sh
set -eu
echo "$AUTOREG_ROLE $AUTOREG_NODE_ID attempt=$AUTOREG_ATTEMPT resumed=$AUTOREG_RESUMED" >> {log}
ssh -F "$AUTOREG_SSH_CONFIG" node true
{extra}
"""


def hook_calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_default_topology_registers_in_dependency_order(alab: AutoregLab) -> None:
    log = alab.lab.workdir / "hooks.log"
    clc = alab.registrar("clc", "clc")
    cc = alab.registrar("cc", "cc", cluster="foo", node_role="cc")
    walrus = alab.node("walrus", "walrus")
    sc = alab.node("sc", "sc", cluster="foo")
    ncs = [alab.node(f"nc{i}", "nc", cluster="foo") for i in (1, 2)]
    alab.authorize_all()
    for role in ("walrus", "cc", "sc"):
        clc.hook(role, recording_hook(log))
    cc.hook("nc", recording_hook(log))
    clc.start_daemon()
    cc.start_daemon()

    # The worst order: the nodes that depend on the CC come up before it.
    for station in (*ncs, sc, walrus):
        station.start_announcer()
    rec = clc.wait_state(sc.node_id, S.WAITING)
    assert rec.reason == "waiting for cc of cluster foo to be registered"
    rec = cc.wait_state(ncs[0].node_id, S.WAITING)
    assert "waiting for this cc foo to be registered itself" in rec.reason
    clc.wait_state(walrus.node_id, S.REGISTERED)

    cc.start_announcer()
    registered = {}
    for station, registrar in ((cc, clc), (sc, clc), (ncs[0], cc), (ncs[1], cc)):
        registered[station.node_id] = registrar.wait_state(station.node_id, S.REGISTERED)
    cc_at = registered[cc.node_id].registered_at
    assert cc_at is not None
    for dependent in (sc, *ncs):
        at = registered[dependent.node_id].registered_at
        assert at is not None and at > cc_at, f"{dependent.node_id} registered before its CC"

    # Exactly once each, and every hook reached its node with plain ssh.
    calls = hook_calls(log)
    assert sorted(c.split()[1] for c in calls) == sorted(s.node_id for s in (walrus, cc, sc, *ncs))
    # Every node learnt it is registered and says so in its announcement.
    for station in (walrus, cc, sc, *ncs):
        assert station.announcer is not None
        station.announcer.wait_for_log(r"re-announced .* state=registered", 15)
        receipt = json.loads(station.receipt.read_text())
        assert receipt["node_id"] == station.node_id
    # The CLC never touched the NCs, the CC never touched the others.
    assert clc.node(ncs[0].node_id) is None
    assert cc.node(walrus.node_id) is None


def test_uniqueness_refusals_are_recorded_with_reason(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    first = {
        r: alab.node(f"{r}1", r, cluster="foo" if r != "walrus" else None)
        for r in ("walrus", "cc", "sc")
    }
    second = {
        r: alab.node(f"{r}2", r, cluster="foo" if r != "walrus" else None)
        for r in ("walrus", "cc", "sc")
    }
    other = alab.node("cc3", "cc", cluster="bar")
    alab.authorize_all()
    clc.start_daemon()
    for role in ("walrus", "cc", "sc"):
        first[role].start_announcer()
        clc.wait_state(first[role].node_id, S.REGISTERED)
    for role in ("walrus", "cc", "sc"):
        second[role].start_announcer()
    other.start_announcer()
    for role in ("walrus", "cc", "sc"):
        rec = clc.wait_state(second[role].node_id, S.REFUSED)
        assert f"is already registered: {role}1" in rec.reason
        assert first[role].node_id in rec.reason
    clc.wait_state(other.node_id, S.REGISTERED)  # another cluster's CC is fine
    listing = json.loads(clc.cli("list", "--json", "--state", "refused").stdout)
    assert sorted(n["node_id"] for n in listing) == sorted(s.node_id for s in second.values())


def test_lockdown_switch_takes_effect_live(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    cc = alab.node("cc", "cc", cluster="foo")
    alab.authorize_all()
    clc.start_daemon()
    clc.cli("lockdown", "on", "--role", "walrus", "--reason", "maintenance")
    walrus.start_announcer()
    rec = clc.wait_state(walrus.node_id, S.LOCKED)
    assert rec.reason == "lockdown is on for walrus registration"
    # A per-role switch leaves the other roles alone.
    cc.start_announcer()
    clc.wait_state(cc.node_id, S.REGISTERED)
    clc.cli("lockdown", "off", "--role", "walrus")
    clc.wait_state(walrus.node_id, S.REGISTERED, timeout=10)
    status = json.loads(clc.cli("status", "--json").stdout)
    assert status["daemon"]["registrar_state"] == "active"
    assert status["lockdown"] == {"walrus": False}


def test_spoofed_fingerprint_is_rejected(alab: AutoregLab, tmp_path: Path) -> None:
    log = alab.lab.workdir / "hooks.log"
    clc = alab.registrar("clc", "clc")
    spoof = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook("walrus", recording_hook(log))
    other_key = tmp_path / "other_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    spoof.extra = {"node": {"host_key": f"{other_key}.pub"}}
    clc.start_daemon()
    spoof.start_announcer()
    rec = clc.wait_state(spoof.node_id, S.REJECTED)
    assert "possible spoofing" in rec.reason
    assert spoof.sshd is not None and spoof.sshd.fingerprint in rec.reason
    assert hook_calls(log) == []
    kinds = [e.kind for e in clc.events(spoof.node_id)]
    assert "spoofing" in kinds and "registered" not in kinds


def test_missing_hook_is_ignored_and_failing_hook_retried_then_failed(alab: AutoregLab) -> None:
    log = alab.lab.workdir / "hooks.log"
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    cc = alab.node("cc", "cc", cluster="foo")
    alab.authorize_all()
    clc.hook("cc", recording_hook(log, extra="echo 'euca: cannot register' >&2; exit 3"))
    clc.start_daemon()
    walrus.start_announcer()
    cc.start_announcer()
    rec = clc.wait_state(walrus.node_id, S.REGISTERED)
    assert rec.reason.startswith("no hook ") and "nothing to run" in rec.reason
    rec = clc.wait_state(cc.node_id, S.FAILED, timeout=40)
    wait_until(lambda: (clc.node(cc.node_id) or rec).next_attempt is None, 40, "giving up")
    rec = clc.node(cc.node_id)
    assert rec is not None and rec.reason.startswith("gave up after 3 attempts")
    assert "euca: cannot register" in rec.reason
    assert [c.split()[2] for c in hook_calls(log)] == ["attempt=1", "attempt=2", "attempt=3"]
    failures = [e for e in clc.events(cc.node_id) if e.kind == "hook-failed"]
    assert len(failures) == 3 and failures[-1].data["exit"] == 3
    assert "euca: cannot register" in failures[-1].data["stderr"]


def test_restart_does_not_register_again(alab: AutoregLab) -> None:
    log = alab.lab.workdir / "hooks.log"
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook("walrus", recording_hook(log))
    clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    assert clc.daemon is not None
    assert clc.daemon.terminate() == 0
    clc.start_daemon()
    # The restarted daemon sees the node again (present) and leaves it registered.
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.present,
        20,
        "the node to be seen again",
    )
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is S.REGISTERED
    assert len(hook_calls(log)) == 1


def test_daemon_killed_mid_hook_is_interrupted_not_rerun(alab: AutoregLab) -> None:
    log = alab.lab.workdir / "hooks.log"
    release = alab.lab.workdir / "release"
    started = alab.lab.workdir / "started"
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook(
        "walrus",
        recording_hook(
            log,
            extra=f"""echo $$ > {started}
i=0; while [ ! -e {release} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done""",
        ),
    )
    daemon = clc.start_daemon()
    walrus.start_announcer()
    wait_until(started.exists, 30, "the hook to start")
    hook_pid = int(started.read_text())
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    os.kill(hook_pid, signal.SIGKILL)  # a hook we started, by pid (systemd would kill the cgroup)
    clc.start_daemon()
    rec = clc.wait_state(walrus.node_id, S.INTERRUPTED)
    assert "may or may not have registered" in rec.reason
    assert len(hook_calls(log)) == 1  # not re-run behind the admin's back
    release.touch()
    clc.cli("retry", walrus.node_id)
    clc.wait_state(walrus.node_id, S.REGISTERED)
    calls = hook_calls(log)
    assert len(calls) == 2 and calls[1].endswith("resumed=1")


def test_malformed_announcements_rejected_while_daemon_keeps_serving(
    alab: AutoregLab, tmp_path: Path
) -> None:
    clc = alab.registrar("clc", "clc")
    rogue_host = alab.lab.add_host("rogue")
    good = alab.node("walrus", "walrus")
    # Another implementation: a record written by hand, byte for byte, for a real node.
    other = alab.node("cc", "cc", cluster="foo")
    alab.authorize_all()
    fp = "SHA256:" + "A" * 43
    base = ["v=1", "role=cc", "cluster=foo", "ip=198.18.0.9", f"fp={fp}", "state=ready"]
    bad = {
        "v2": (["v=2", *base[1:], "id=badv2"], "unsupported protocol version"),
        "noid": (base, "id: missing"),
        "badip": ([*base[:3], "ip=999.1.1.1", *base[4:], "id=badip"], "must be an IPv4 or IPv6"),
        "badfp": ([*base[:4], "fp=MD5:00", "state=ready", "id=badfp"], "fp: invalid value"),
        "utf8": ([*base, "id=utf8x", "hex:" + b"name=\xff".hex()], "not valid UTF-8"),
        "bool": ([*base[:4], "fp", "state=ready", "id=boolfp"], "present without a value"),
        "huge": ([*base, "id=huge", *(f"x{i}=" + "n" * 240 for i in range(6))], "over 1300 bytes"),
    }
    spec = [{"instance": name, "port": 22, "txt": txt} for name, (txt, _) in bad.items()]
    assert other.sshd is not None
    spec.append(
        {
            "instance": "hand-written",
            "port": other.sshd.port,
            "txt": [
                "v=1",
                "role=cc",
                "cluster=foo",
                f"id={other.node_id}",
                f"ip={other.host.ip}",
                f"fp={other.sshd.fingerprint}",
                "state=ready",
                "future-key=ignored",
            ],
        }
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    clc.start_daemon()
    rogue = rogue_host.spawn(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "support" / "raw_publisher.py"),
            rogue_host.ip,
            str(spec_path),
        ],
        log_name="rogue",
    )
    rogue.wait_for_log("published", 20)

    def rejected() -> dict[str, str]:
        return {
            e.data["name"].split(".")[0]: e.message
            for e in clc.events()
            if e.kind == "rejected-announcement"
        }

    wait_until(
        lambda: len(rejected()) == len(bad),
        30,
        lambda: f"every malformed record rejected; got {sorted(rejected())}",
    )
    got = rejected()
    for instance, (_, reason) in bad.items():
        assert reason in got[instance], got[instance]
    clc.wait_state(other.node_id, S.REGISTERED)  # the hand-written record registers
    # ... and the daemon still serves: a good node registers afterwards.
    good.start_announcer()
    clc.wait_state(good.node_id, S.REGISTERED)
    assert clc.daemon is not None and clc.daemon.alive()
    rogue.terminate()


def test_manual_registration_and_registrar_announcement(alab: AutoregLab) -> None:
    """A node that does not announce (another network) goes through the same path."""
    clc = alab.registrar("clc", "clc")
    walrus: Station = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    assert walrus.sshd is not None
    result = clc.cli(
        "register",
        "--role",
        "walrus",
        "--ip",
        walrus.host.ip,
        "--port",
        str(walrus.sshd.port),
        "--fingerprint",
        walrus.sshd.fingerprint,
        "--id",
        walrus.node_id,
        "--wait",
        "30",
    )
    assert f"{walrus.node_id}: registered" in result.stdout
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.source == "manual"
    assert json.loads(walrus.receipt.read_text())["registrar_role"] == "clc"
