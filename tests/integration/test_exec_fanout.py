"""``autoreg exec`` at wire speed: one SSH connection per node, one per proxy, a live line.

Real OpenSSH sshd on every node, logging at VERBOSE: each connection it accepts
is one ``Connection from`` line, so its log counts the handshakes.  The nodes
are queued with ``autoreg register`` and no daemon runs: every connection a
node's sshd sees during the test is ``exec``'s.  Everything that dials out runs
inside the controller's namespace.
``exec --follow`` selects by role, that is registered nodes only: there the test
walks a queued node to ``registered`` in the store itself, as the daemon would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration.cli._exec_display import ERASE
from registration.state import Change, NodeState
from support import netlab
from support.autoreg_lab import AutoregLab, Station, autoreg_argv
from support.records import OWNER
from support.sync_store import SyncStore
from support.terminal import raw_control_bytes, run_on_a_terminal

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

#: The inner network's lab index (its /24): distinct from every `alab` (10..249) and
#: from test_reach.py's inner network (251), in case both run at once.
INNER_INDEX = 253
#: Nodes behind the one proxy.
BEHIND_PROXY = 6


@pytest.fixture
def inner(alab: AutoregLab, tmp_path: Path) -> Iterator[netlab.Lab]:
    """A second network that only the proxy host reaches."""
    assert alab.lab.index != INNER_INDEX
    with netlab.Lab(tmp_path / "inner", index=INNER_INDEX) as lab:
        yield lab


def sshd_of(station: Station) -> netlab.Sshd:
    assert station.sshd is not None
    return station.sshd


def register(controller: Station, node: Station) -> None:
    """Queue ``node`` (no daemon runs: nothing connects to it but exec)."""
    args = ["register", "--role", node.role or "", "--ip", node.host.ip, "--id", node.node_id,
            "--fingerprint", sshd_of(node).fingerprint, "--name", node.host.name]  # fmt: skip
    if node.cluster:
        args += ["--cluster", node.cluster]
    controller.cli(*args)


def mark_registered(controller: Station, node: Station) -> None:
    """Walk the queued ``node`` to ``registered`` by legal steps, as the daemon would."""
    steps = {
        NodeState.SEEN: [NodeState.QUEUED, NodeState.REGISTERING, NodeState.REGISTERED],
        NodeState.QUEUED: [NodeState.REGISTERING, NodeState.REGISTERED],
    }
    with SyncStore(controller.state_dir / "autoreg.db") as store:
        rec = store.get(node.node_id)
        for step in steps[rec.state]:
            change = Change(expect=rec.state, to=step, reason="test", kind=step.value, owner=OWNER)
            rec = store.change(node.node_id, change)
    assert rec.state is NodeState.REGISTERED


class Connections:
    """Connections each sshd accepts from now on (``Connection from ADDR port …``)."""

    def __init__(self, stations: list[Station]) -> None:
        self._offsets = {s.node_id: len(sshd_of(s).proc.log_text()) for s in stations}
        self._stations = {s.node_id: s for s in stations}

    def since(self, station: Station, source: str = "") -> int:
        log = sshd_of(station).proc.log_text()[self._offsets[station.node_id] :]
        return log.count("Connection from " + (f"{source} " if source else ""))


def test_one_connection_per_node_on_every_path_and_one_per_proxy(
    alab: AutoregLab, inner: netlab.Lab
) -> None:
    clc = alab.registrar("clc", "clc")
    # a tunnel node's direct attempt (its SYN is dropped) costs connect_timeout
    clc.extra["controller"] = {"connect_timeout": "1"}
    gw = alab.node("gw", "walrus")  # the proxy of cluster foo: only sshd, never announces
    gw_inner_ip = inner.attach(gw.host)
    clc.extra["cluster:foo"] = {
        "proxy": gw.host.ip,
        "proxy_fingerprint": sshd_of(gw).fingerprint,
        "proxy_user": "root",
    }
    # any number of nodes of one role per cluster, registered by this clc
    clc.extra["role:fleet"] = {"registered_by": "clc", "unique": "none", "cluster": "yes"}
    walrus = alab.node("walrus", "walrus")
    sc = alab.node("sc", "sc", cluster="foo")
    behind = [alab.node(f"nc{i}", "fleet", cluster="foo", lab=inner) for i in range(BEHIND_PROXY)]
    clc.start_callback_sshd()
    ports = alab.tunnel(sc, clc)
    sc.host.drop_inbound_tcp(22)
    sc.start_callback()
    nodes = [walrus, sc, *behind]
    for node in nodes:
        register(clc, node)

    counted = Connections([gw, *nodes])
    script = 'set -- $SSH_CONNECTION; echo "from $1 at $3"'
    refs = [f"--node={n.node_id}" for n in nodes]
    r = clc.cli_in_ns("exec", "--parallel", "10", *refs, "--", "sh", "-c", script, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert f"[walrus] from {clc.host.ip} at {walrus.host.ip}" in lines
    assert f"[sc] from {sc.host.ip} at {sc.host.ip}" in lines  # its own callback's forward
    for node in behind:
        assert f"[{node.host.name}] from {gw_inner_ip} at {node.host.ip}" in lines
    paths = {row.split()[0]: row.split()[1] for row in lines if row and not row.startswith("[")}
    assert paths.pop("NODE") == "PATH"
    assert paths == {
        "walrus": "direct",
        "sc": f"tunnel:{ports[0]}",
        **{n.host.name: f"proxy:{gw.host.ip}" for n in behind},
    }

    # One handshake per node, whatever its path (before: two, paramiko's then OpenSSH's) ...
    assert {n.host.name: counted.since(n) for n in nodes} == {n.host.name: 1 for n in nodes}
    # ... and one with the proxy for all six nodes behind it (before: one per node, twice).
    assert counted.since(gw, clc.host.ip) == 1
    assert counted.since(gw) == 1


def test_progress_line_on_a_terminal_plain_lines_and_json_when_piped(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    nodes = [alab.node(f"n{i}", "walrus") for i in range(3)]
    for node in nodes:
        register(clc, node)
    failing = nodes[2].host.ip
    script = f'echo hello; case "$SSH_CONNECTION" in *" {failing} "*) echo bad >&2; exit 3;; esac'
    args = ["exec", *(f"--node={n.node_id}" for n in nodes), "--", "sh", "-c", script]
    clc.write_config()
    in_ns = [clc.host.lab.ip_bin, "netns", "exec", clc.host.netns]
    expected_output = {"[n0] hello", "[n1] hello", "[n2] hello", "[n2] bad"}
    error = "autoreg: error: 1 of 3 node(s) failed"

    # On a terminal: a live line, redrawn in place, erased before anything else is shown.
    raw = run_on_a_terminal([*in_ns, *autoreg_argv("-c", str(clc.conf), *args)], returncode=1)
    text = raw.decode()
    assert text.startswith(ERASE + "exec: 0 done, 0 failed, 0 running, 3 waiting (of 3)")
    assert ERASE + "exec: 2 done, 1 failed, 0 running, 0 waiting (of 3)" + ERASE in text
    screen = [line.rpartition(ERASE)[2] for line in text.split("\n")]  # what stays visible
    assert not [line for line in screen if line.startswith("exec:")], screen
    assert expected_output <= set(screen)
    header = screen.index(next(line for line in screen if line.startswith("NODE")))
    assert {line.split()[0] for line in screen[header + 1 : header + 4]} == {"n0", "n1", "n2"}
    assert screen[header + 4 :] == [error, ""]

    # Piped: plain lines only, exactly the node output and the summary.
    r = clc.cli_in_ns(*args, check=False)
    assert r.returncode == 1
    assert raw_control_bytes((r.stdout + r.stderr).encode()) == []
    out, err = r.stdout.splitlines(), r.stderr.splitlines()
    assert "exec:" not in r.stdout + r.stderr
    assert set(out[:3]) == {"[n0] hello", "[n1] hello", "[n2] hello"}
    assert out[3].split() == ["NODE", "PATH", "EXIT", "SECONDS", "ERROR"] and len(out) == 7
    assert err == ["[n2] bad", error]

    # --json for a script: one clean document on stdout.
    r = clc.cli_in_ns("exec", "--json", *(f"--node={n.node_id}" for n in nodes), "--", "true")
    results = json.loads(r.stdout)
    assert sorted((x["name"], x["path"], x["returncode"]) for x in results) == [
        (n.host.name, "direct", 0) for n in nodes
    ]


def test_follow_runs_a_node_registered_meanwhile_and_returns_once_quiet(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    first, second = alab.node("f0", "walrus"), alab.node("f1", "walrus")
    for node in (first, second):
        register(clc, node)
    mark_registered(clc, first)
    quiet = 3.0
    follow = ["exec", "--follow", "--converged-timeout", f"{quiet:g}", "--role", "walrus"]
    argv = autoreg_argv("-c", str(clc.conf), *follow, "--", "sh", "-c", "echo hello; sleep 1")
    clc.write_config()
    proc = clc.host.spawn(argv, env=clc.env or None, log_name="exec-follow")
    try:
        proc.wait_for_log(r"^\[f0\] hello$", 30)  # following now, its first command runs
        mark_registered(clc, second)
        registered = time.monotonic()
        code = proc.wait(60)
        took = time.monotonic() - registered
    finally:
        proc.terminate()
    log = proc.log_text()
    assert code == 0, log
    lines = log.splitlines()
    assert lines.count("[f0] hello") == 1 and lines.count("[f1] hello") == 1, log
    table = {line.split()[0]: line.split()[2] for line in lines if line.startswith("f")}
    assert table == {"f0": "0", "f1": "0"}, log
    assert f"nothing changed for {quiet:g}s" in log
    # f1's command takes a second, then nothing changes for the quiet period
    assert quiet + 1 <= took < quiet + 1 + 15, log
