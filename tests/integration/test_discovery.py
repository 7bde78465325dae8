"""Nothing missed: bursts of announcements, roles defined purely by configuration."""

from __future__ import annotations

import pytest

from registration.state import NodeState
from support.autoreg_lab import AutoregLab, Station, wait_until

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


@pytest.mark.parametrize(
    "daemon_first", [False, True], ids=["burst-before-browser", "burst-into-browser"]
)
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

    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and not r.present,
        15,
        "the goodbye to be seen",
    )
    walrus.start_announcer()
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.present,
        15,
        "the node to come back",
    )
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.state is NodeState.REGISTERED
    assert [e.kind for e in clc.events(walrus.node_id)].count("registered") == 1


def test_registrars_announce_themselves_with_their_state(alab: AutoregLab) -> None:
    """Nodes and installers find their registrar: "I am the CLC", and whether it is open."""
    import json

    from support.autoreg_lab import autoreg_argv

    clc = alab.registrar("clc", "clc")
    cc = alab.registrar("cc", "cc", cluster="foo", node_role="cc")
    probe = alab.node("probe", "walrus")
    clc.start_daemon()
    cc.start_daemon()

    def discover() -> dict[str, str]:
        probe.write_config()
        out = probe.host.run(
            autoreg_argv("-c", str(probe.conf), "discover", "--json", "--timeout", "1.5")
        ).stdout
        return {f"{r['role']}/{r['cluster']}": r["state"] for r in json.loads(out)}

    assert discover() == {"clc/None": "active", "cc/foo": "standby"}
    clc.cli("lockdown", "on")
    wait_until(lambda: discover().get("clc/None") == "locked", 15, "the CLC to say locked")


def test_unreachable_node_is_retried_with_backoff_then_given_up(alab: AutoregLab) -> None:
    clc = alab.registrar("clc", "clc")
    walrus = alab.node("walrus", "walrus")
    alab.authorize_all()
    assert walrus.sshd is not None
    walrus.sshd.stop()  # its sshd is down: announced, but nobody answers on port 22
    clc.start_daemon()
    walrus.start_announcer()
    rec = clc.wait_state(walrus.node_id, NodeState.UNREACHABLE)
    assert "connection refused" in rec.reason and "retrying in" in rec.reason
    wait_until(
        lambda: (r := clc.node(walrus.node_id)) is not None and r.next_attempt is None,
        30,
        "giving up",
    )
    rec = clc.node(walrus.node_id)
    assert rec is not None and rec.reason.startswith("gave up after 3 attempts")
    assert [e.kind for e in clc.events(walrus.node_id)].count("ssh") == 3
