"""``autoreg bootstrap`` on machines that have only sshd and python3.

Each machine is a namespace host whose sshd runs in a private mount namespace:
``/etc/autoreg``, ``/var/lib/autoreg`` and ``/var/cache/autoreg`` are its own
(nothing of autoreg is installed there), so what bootstrap copies, writes and
starts is that machine's alone.  The agent runs with ``python3 -S``: no
site-packages at all, only the standard library and what the zipapp carries.
The registrar's receipt goes to the default path on the machine, over SSH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from registration.state import NodeState
from support import netlab
from support.autoreg_lab import AutoregLab, Station
from support.bare import API_PORT, MOUNTS, Machine, bootstrap_cli, cc_registrar, make_machine

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

MACHINES = 10


@pytest.fixture
def machine(alab: AutoregLab) -> Iterator[Callable[[str, Station], Machine]]:
    with netlab.mountpoints(MOUNTS):
        yield lambda name, registrar: make_machine(alab, name, registrar)


Make = Callable[[str, Station], Machine]
bootstrap = bootstrap_cli


def diagnose(registrar: Station, machines: list[Machine]) -> str:
    """What went wrong: the first machine's agent log and the registrar's log, tails."""
    agent = machines[0].agent_log
    text = agent.read_text()[-3000:] if agent.exists() else "(no agent log)"
    daemon = registrar.daemon.log_text()[-3000:] if registrar.daemon else ""
    return f"--- agent ---\n{text}\n--- registrar ---\n{daemon}"


def rows(summary: dict[str, object]) -> list[dict[str, object]]:
    targets = summary["targets"]
    assert isinstance(targets, list)
    return targets


def test_ten_bare_machines_register_and_the_cache_spares_copies(
    alab: AutoregLab, machine: Make, tmp_path: Path
) -> None:
    cc = cc_registrar(alab)
    machines = [machine(f"m{i}", cc) for i in range(MACHINES)]
    ips = [m.ip for m in machines]
    flags = ["--role", "nc", "--cluster", "c1", "--accept-new", "--converged-timeout", "40"]

    code, first, stderr = bootstrap(cc, *flags, *ips)
    assert code == 0, stderr + diagnose(cc, machines)
    assert first["copied"] == MACHINES
    # Settled: it returned when the last machine registered, not after the quiet period.
    assert float(first["elapsed"]) < 40  # type: ignore[arg-type]
    for m, row in zip(machines, rows(first), strict=True):
        assert row["state"] == "registered" and row["ok"], row
        assert row["fingerprint"] == m.sshd.fingerprint  # recorded, and what the sshd has
        assert row["name"] == m.host.name  # the machine's own host name
        rec = cc.node(str(row["node_id"]))
        assert rec is not None and rec.state is NodeState.REGISTERED
        assert rec.granted and rec.granted.startswith("token:"), rec.granted  # its own token
        assert [p.name for p in m.cached()] == [first["bundle"]]
        assert (m.root["/var/lib/autoreg"] / "node" / "receipt.json").exists()
    hooked = (cc.host.workdir / "hook.log").read_text().split()
    assert sorted(hooked) == sorted(str(r["node_id"]) for r in rows(first))  # once each
    # Self-contained: under -I -S every library the node side uses comes from the zipapp.
    pyz = machines[0].cached()[0]
    check = machines[0].host.run(["python3", "-I", "-S", str(pyz), "check"], timeout=60)
    modules = json.loads(check.stdout)["modules"]
    assert all(path.startswith(str(pyz)) for path in modules.values()), modules

    # A second run copies nothing, and changes nothing.
    stamps = [m.cached()[0].stat().st_mtime_ns for m in machines]
    code, second, stderr = bootstrap(cc, *flags, *ips)
    assert code == 0, stderr
    assert second["copied"] == 0 and second["bundle"] == first["bundle"]
    assert [m.cached()[0].stat().st_mtime_ns for m in machines] == stamps
    assert all(r["state"] == "registered" for r in rows(second))
    assert (cc.host.workdir / "hook.log").read_text().split() == hooked  # no hook again

    # Another autoreg version is another bundle: copied again, everywhere.
    changed = tmp_path / "changed"
    shutil.copytree(Path(__file__).parents[2] / "registration", changed / "registration",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    version = changed / "registration" / "_version.py"
    version.write_text(version.read_text().replace('__version__ = "', '__version__ = "9.9.9+'))
    env = {"PYTHONPATH": str(changed)}
    code, third, stderr = bootstrap(cc, *flags, *ips, env=env)
    assert code == 0, stderr
    assert third["copied"] == MACHINES and "9.9.9" in str(third["bundle"])
    assert all(len(m.cached()) == 2 for m in machines)
    assert all(r["state"] == "registered" for r in rows(third))


def test_a_machine_that_cannot_reach_the_registrar_registers_through_the_ssh_connection(
    alab: AutoregLab, machine: Make
) -> None:
    cc = cc_registrar(alab)
    cut = machine("cut", cc)
    # New connections from the machine to the registrar, and its mDNS, are dropped.
    rules = (
        "table inet autoreg_cut {\n chain out {\n  type filter hook output priority 0;\n"
        f"  ip daddr {cc.host.ip} ct state new drop\n  ip daddr 224.0.0.251 drop\n }}\n}}\n"
    )
    cut.host.run(["nft", "-f", "-"], input=rules.encode(), timeout=15)
    probe = f"import socket; socket.create_connection(('{cc.host.ip}', {API_PORT}), 2)"
    assert cut.host.run(["python3", "-c", probe], check=False, timeout=30).returncode != 0

    code, summary, stderr = bootstrap(cc, "--role", "nc", "--cluster", "c1", "--accept-new",
                                      "--converged-timeout", "30", cut.ip)  # fmt: skip
    assert code == 0, stderr
    (row,) = rows(summary)
    assert row["route"] == "ssh-forward" and row["state"] == "registered", row
    rec = cc.node(str(row["node_id"]))
    assert rec is not None and rec.state is NodeState.REGISTERED
    events = [e.message for e in cc.events(rec.node_id)]
    assert any("unicast" in m for m in events) or rec.source.value == "unicast", events


def test_an_unknown_or_wrong_host_key_is_refused_before_anything_is_copied(
    alab: AutoregLab, machine: Make, tmp_path: Path
) -> None:
    cc = cc_registrar(alab, listen=False)
    unknown, spoofed = machine("unknown", cc), machine("spoofed", cc)
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"{spoofed.ip} {' '.join(other.with_suffix('.pub').read_text().split()[:2])}\n"
    )

    code, summary, _ = bootstrap(cc, "--role", "nc", "--cluster", "c1", "--known-hosts",
                                 str(known_hosts), unknown.ip, spoofed.ip)  # fmt: skip
    assert code == 1
    first, second = rows(summary)
    assert first["state"] == "failed" and "--accept-new" in str(first["detail"])
    assert first["fingerprint"] == unknown.sshd.fingerprint  # recorded all the same
    assert second["state"] == "refused" and "host key mismatch" in str(second["detail"])
    assert second["fingerprint"] == spoofed.sshd.fingerprint
    for m in (unknown, spoofed):
        assert m.cached() == [] and not any(m.root["/etc/autoreg"].iterdir())
        assert "Accepted publickey" not in m.sshd.proc.log_text()  # never even logged in
    assert cc.cli("token", "list", "--json").stdout.strip() in ("[]", "")


def test_an_agent_that_stops_at_once_fails_its_machine_at_once_with_its_last_words(
    alab: AutoregLab, machine: Make
) -> None:
    cc = cc_registrar(alab, listen=False)
    broken = machine("broken", cc)
    dropins = broken.root["/etc/autoreg"] / "autoreg.conf.d"
    dropins.mkdir()
    (dropins / "99-local.conf").write_text("[node]\nbogus_key = 1\n")  # the admin's typo
    code, summary, _ = bootstrap(cc, "--role", "nc", "--cluster", "c1", "--accept-new",
                                 "--converged-timeout", "60", broken.ip)  # fmt: skip
    assert code == 1
    (row,) = rows(summary)
    assert row["state"] == "failed" and row["agent"] == "", row
    assert "starting the agent" in str(row["detail"]) and "bogus_key" in str(row["detail"]), row
    assert float(summary["elapsed"]) < 30  # type: ignore[arg-type]  # not the quiet period
    tokens = json.loads(cc.cli("token", "list", "--json").stdout or "[]")
    assert tokens and all(t.get("revoked") for t in tokens), tokens  # never left usable


def test_converged_timeout_returns_after_the_quiet_period_while_a_hook_still_runs(
    alab: AutoregLab, machine: Make
) -> None:
    cc = cc_registrar(alab, hook="sleep 15\n", listen=False)
    slow = machine("slow", cc)
    started = time.monotonic()
    code, summary, _ = bootstrap(cc, "--role", "nc", "--cluster", "c1", "--accept-new",
                                 "--converged-timeout", "3", slow.ip)  # fmt: skip
    took = time.monotonic() - started
    assert code == 1
    (row,) = rows(summary)
    assert row["state"] == "registering" and "no change for 3 s" in str(row["detail"]), row
    assert 3 <= took < 14  # the quiet period after the hook started, not the hook's end
    rec = cc.node(str(row["node_id"]))
    assert rec is not None and rec.state is NodeState.REGISTERING


def test_via_a_cc_the_operator_makes_one_connection(
    alab: AutoregLab, machine: Make, tmp_path: Path
) -> None:
    cc = cc_registrar(alab, listen=False)
    clc = alab.stations["clc"]
    ncs = [machine(f"nc{i}", cc) for i in range(2)]
    # The CC's own autoreg, with the CC's own configuration, state and keys.
    remote = f"{sys.executable} -P -m registration -c {cc.conf}"

    # The targets in a hosts file, each with its role and cluster: read here, sent there.
    hosts = tmp_path / "ncs.txt"
    hosts.write_text("".join(f"{m.ip} nc c1\n" for m in ncs))
    via = ["--via", cc.node_id, "--remote-autoreg", remote]
    flags = ["--accept-new", "--converged-timeout", "30", "--hosts", str(hosts)]
    code, summary, stderr = bootstrap(clc, *via, *flags)
    assert code == 0, stderr
    for m, row in zip(ncs, rows(summary), strict=True):
        assert row["state"] == "registered" and str(row["route"]).startswith(f"via {cc.host.name}")
        rec = cc.node(str(row["node_id"]))  # registered by the CC, in the CC's store
        assert rec is not None and rec.state is NodeState.REGISTERED
        assert clc.node(str(row["node_id"])) is None
        assert m.accepted_from() == {cc.host.ip}  # the operator never connected to it
    assert os.path.exists(cc.state_dir / "bootstrap_known_hosts")


#: Stand-ins for systemd's two commands, on machines where no systemd runs (this lab has
#: none to offer): they log how they were called and start what systemd would start.
FAKE_SYSTEMD_RUN = """#!/bin/sh
echo "systemd-run $*" >> /run/systemd-calls.log
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
setsid "$@" </dev/null >>/run/agent.log 2>&1 &
"""
FAKE_SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> /run/systemd-calls.log
if [ "$1" = restart ]; then
  command=$(sed -n 's/^ExecStart=//p' /etc/systemd/system/autoreg-agent.service)
  setsid sh -c "exec $command" </dev/null >>/run/agent.log 2>&1 &
fi
"""


def test_where_systemd_runs_the_agent_is_a_transient_unit_or_with_persist_an_enabled_one(
    alab: AutoregLab, tmp_path: Path
) -> None:
    mounts = (*MOUNTS, "/run", "/etc/systemd/system", "/usr/local/bin")
    with netlab.mountpoints(mounts):
        cc = cc_registrar(alab, listen=False)
        machines = []
        for name in ("transient", "persistent"):
            m = make_machine(alab, name, cc, extra={
                "/run": {"sshd": None, "systemd/system": None},
                "/usr/local/bin": {"systemd-run": FAKE_SYSTEMD_RUN, "systemctl": FAKE_SYSTEMCTL},
                "/etc/systemd/system": {},
            })  # fmt: skip
            machines.append(m)
        transient, persistent = machines
        base = ["--role", "nc", "--cluster", "c1", "--accept-new", "--converged-timeout", "30"]
        code, summary, stderr = bootstrap(cc, *base, transient.ip)
        assert code == 0, stderr
        code, summary2, stderr = bootstrap(cc, *base, "--persist", persistent.ip)
        assert code == 0, stderr
    (row,) = rows(summary)
    assert row["state"] == "registered" and "transient systemd unit" in str(row["agent"])
    calls = (transient.root["/run"] / "systemd-calls.log").read_text()
    assert "systemd-run --unit=autoreg-agent " in calls and "--property=Restart=on-failure" in calls
    (row,) = rows(summary2)
    assert row["state"] == "registered" and "(enabled)" in str(row["agent"])
    unit = (persistent.root["/etc/systemd/system"] / "autoreg-agent.service").read_text()
    assert "ExecStart=python3 -S -I /var/cache/autoreg/autoreg-" in unit
    assert "WantedBy=multi-user.target" in unit
    calls = (persistent.root["/run"] / "systemd-calls.log").read_text().splitlines()
    assert calls[-4:] == ["systemctl daemon-reload", "systemctl enable autoreg-agent.service",
                          "systemctl restart autoreg-agent.service",
                          "systemctl is-active --quiet autoreg-agent.service"]  # fmt: skip
    for m in machines:  # no fallback background process where systemd runs
        assert not (m.root["/var/lib/autoreg"] / "bootstrap" / "agent.pid").exists()
