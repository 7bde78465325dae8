"""The daemon's lifecycle with real processes: one daemon per store, stopping mid-hook,
a node forgotten while its hook runs.  Real sshd, real multicast in namespaces."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station, autoreg_argv, wait_until

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

S = NodeState


def blocking_hook(log: Path, started: Path, release: Path) -> str:
    """A hook that says something, then waits (bounded) for ``release``."""
    return f"""#!/bin/sh
echo "$AUTOREG_NODE_ID attempt=$AUTOREG_ATTEMPT resumed=$AUTOREG_RESUMED" >> {log}
echo "copying credentials to $AUTOREG_NODE_ID"
echo "half-way there" >&2
echo $$ > {started}
i=0; while [ ! -e {release} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "done"
"""


def _lab(alab: AutoregLab) -> tuple[Station, Station, Path, Path, Path]:
    log, started, release = (alab.lab.workdir / n for n in ("hooks.log", "started", "release"))
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.hook("walrus", blocking_hook(log, started, release))
    return clc, walrus, log, started, release


def test_a_second_daemon_on_the_same_state_dir_is_refused(alab: AutoregLab) -> None:
    clc, walrus, log, _, release = _lab(alab)
    release.touch()
    first = clc.start_daemon()
    second = clc.host.spawn(autoreg_argv("-c", str(clc.conf), "daemon"), log_name="daemon-2")
    assert second.wait(30) == 75
    assert f"already runs on {clc.state_dir} (pid {first.pid})" in second.log_text()
    # the refused one left the running one alone: its status, its registrations
    status = json.loads(clc.cli("status", "--json").stdout)
    assert status["daemon"]["pid"] == first.pid
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    assert len(log.read_text().splitlines()) == 1  # one hook run, by one daemon


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_during_a_hook_records_interrupted_with_its_output(
    alab: AutoregLab, sig: signal.Signals
) -> None:
    clc, walrus, log, started, release = _lab(alab)
    daemon = clc.start_daemon()
    walrus.start_announcer()
    wait_until(started.exists, 30, "the hook to start")
    daemon.signal(sig)
    assert daemon.wait(30) == 130
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is S.INTERRUPTED, rec
    assert "the daemon was stopped while the hook" in rec.reason
    event = next(e for e in reversed(clc.events(walrus.node_id)) if e.kind == "interrupted")
    assert "copying credentials to" in event.data["stdout"]
    assert "half-way there" in event.data["stderr"]
    assert "done" not in event.data["stdout"]
    listing = json.loads(clc.cli("list", "--json").stdout)
    assert [n["state"] for n in listing] == ["interrupted"]
    # not re-run behind the admin's back on the next start; retried on request
    release.touch()
    clc.start_daemon()
    clc.cli("retry", walrus.node_id)
    clc.wait_state(walrus.node_id, S.REGISTERED)
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and calls[1].endswith("resumed=1")


def test_a_clean_stop_exits_0(alab: AutoregLab) -> None:
    clc, walrus, _, _, release = _lab(alab)
    release.touch()
    daemon = clc.start_daemon()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    assert "daemon: not running" in clc.cli("status").stdout


def test_a_node_forgotten_while_its_hook_runs_is_not_registered(alab: AutoregLab) -> None:
    clc, walrus, log, started, release = _lab(alab)
    clc.start_daemon()
    walrus.start_announcer()
    wait_until(started.exists, 30, "the hook to start")
    clc.cli("forget", "--yes", walrus.node_id)
    release.touch()
    wait_until(
        lambda: any(e.kind == "outcome-dropped" for e in clc.events(walrus.node_id)),
        30,
        "the outcome to be dropped",
    )
    dropped = next(e for e in clc.events(walrus.node_id) if e.kind == "outcome-dropped")
    assert "forgotten meanwhile" in dropped.message
    assert not walrus.receipt.exists()  # no receipt for a node the registrar forgot
    kinds = [e.kind for e in clc.events(walrus.node_id)]
    assert "registered" not in kinds
    # announced again, it is a new node, decided (and hooked) anew
    assert walrus.announcer is not None
    walrus.announcer.terminate()
    started.unlink()
    walrus.start_announcer()
    clc.wait_state(walrus.node_id, S.REGISTERED)
    assert len(log.read_text().splitlines()) == 2
