"""Nothing missed: bursts of announcements, roles defined purely by configuration."""

from __future__ import annotations

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

# A role that exists only in configuration: the profile is data, not code.
WORKER_ROLE = {"role:worker": {"registered_by": "clc", "unique": "none"}}
BURST = 12


def _workers(alab: AutoregLab) -> list[Station]:
    workers = []
    for i in range(BURST):
        station = alab.node(f"w{i:02d}", "worker")
        station.extra = dict(WORKER_ROLE)
        workers.append(station)
    return workers


@pytest.mark.parametrize("daemon_first", [False, True], ids=["burst-before-browser",
                                                              "burst-into-browser"])
def test_burst_of_announcements_all_registered(alab: AutoregLab, daemon_first: bool) -> None:
    """A freshly started browser facing many services at once loses none of them."""
    clc = alab.registrar("clc", "clc")
    clc.extra = dict(WORKER_ROLE)
    workers = _workers(alab)
    alab.authorize_all()
    if daemon_first:
        clc.start_daemon()
    for station in workers:
        station.start_announcer(wait=False)
    for station in workers:
        assert station.announcer is not None
        station.announcer.wait_for_log(r"announced ", 60)
    if not daemon_first:
        clc.start_daemon()
    for station in workers:
        clc.wait_state(station.node_id, NodeState.REGISTERED, timeout=60)
    assert len(clc.events()) > BURST
    registered = [e for e in clc.events() if e.kind == "registered"]
    assert sorted(e.node_id or "" for e in registered) == sorted(s.node_id for s in workers)


def test_goodbye_marks_node_absent_and_reannouncement_is_quiet(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    clc.start_daemon()
    announcer = walrus.start_announcer()
    clc.wait_state(walrus.node_id, NodeState.REGISTERED)
    assert announcer.terminate() == 0
    assert "goodbye sent" in announcer.log_text()
    from support.autoreg_lab import wait_until

    wait_until(lambda: (r := clc.node(walrus.node_id)) is not None and not r.present, 15,
               "the goodbye to be seen")
    walrus.start_announcer()
    wait_until(lambda: (r := clc.node(walrus.node_id)) is not None and r.present, 15,
               "the node to come back")
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is NodeState.REGISTERED
    assert [e.kind for e in clc.events(walrus.node_id)].count("registered") == 1
