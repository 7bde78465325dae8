"""Several registrars sharing etcd: exactly once, takeover, fencing, etcd's own failures.

Real ``autoreg daemon`` processes (``store = etcd``), a real three-member TLS etcd
cluster, real sshd per node, in namespaces (:mod:`support.halab`).  One lab and one
cluster for the module (each test has its own etcd prefix, registrars and node ids);
the tests that break the cluster (a member killed, the quorum lost) mend it before
they end.  The hook logs each run's start, end or termination: runs are counted from
that log.  Lease TTL 10 s (``halab.LEASE_TTL``), fence margin 6 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from registration.state import FENCE_MARGIN, NodeState
from support.halab import LEASE_TTL, HALab, HookRun, Scenario
from support.netlab import Host

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]

LAB_INDEX = 253


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HALab]:
    with HALab(tmp_path_factory.mktemp("etcd-ha"), index=LAB_INDEX) as lab:
        yield lab


@pytest.fixture
def scenario(ha: HALab, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    """The test's store, registrars and nodes; ``resume_interrupted`` when its name says
    it takes a registration over (the held hook is run again, resumed)."""
    name = request.node.name.removeprefix("test_")
    s = Scenario(ha, name.replace("_", "")[:16], resume="takes_over" in name)
    try:
        yield s
    finally:
        s.close()


def once_each(s: Scenario, *, killed: float | None = None) -> None:
    """Every node's hook ran to its end exactly once; with ``killed`` (when a registrar
    was killed, under ``resume_interrupted = yes``) a second, resumed run is allowed
    for a node whose first run ended before the kill but was not recorded yet: what
    the crash-recovery policy documents (the hook sees AUTOREG_RESUMED=1)."""
    wrong = {}
    for node_id, runs in s.completed().items():
        twice_ok = killed is not None and len(runs) == 2 and runs[0].at < killed and runs[1].resumed
        if len(runs) != 1 and not twice_ok:
            wrong[node_id] = runs
    assert wrong == {}


def test_two_registrars_register_thirty_nodes_exactly_once(scenario: Scenario) -> None:
    a, b = scenario.registrar("a"), scenario.registrar("b")
    scenario.announce(30)
    scenario.registered(timeout=90)
    once_each(scenario)
    who = {run.registrar for runs in scenario.completed().values() for run in runs}
    assert who <= {a.host.name, b.host.name}
    events = scenario.store.events()
    registering = [e.node_id for e in events if e.kind == "registering"]
    assert sorted(registering) == sorted(scenario.node_ids)  # one claim per node
    lost = sum("not applied" in s.daemon.log_text() for s in (a, b) if s.daemon)
    print(f"registered by {sorted(who)}; registrars that lost a race: {lost}")


def test_kill_9_of_the_claim_holder_mid_hook_the_other_takes_over(scenario: Scenario) -> None:
    scenario.pause_hooks(6)
    a = scenario.registrar("a")
    ids = scenario.announce(4)
    scenario.wait_nodes(
        lambda n: any(r.state is NodeState.REGISTERING and r.hook_started for r in n.values()),
        "a hook running under a",
    )
    b = scenario.registrar("b")
    held = [r.node_id for r in scenario.store.nodes().values()
            if r.state is NodeState.REGISTERING]  # fmt: skip
    assert a.daemon is not None
    killed = time.time()
    a.daemon.kill_tree()  # a crash, hooks and all (systemd kills the unit's cgroup)
    scenario.pause_hooks(0)
    scenario.registered(ids, timeout=90)
    runs = scenario.hook_runs()
    resumed = [r for r in runs if r.resumed and r.what == "start"]
    assert resumed, runs  # a started hook was held, then run again with AUTOREG_RESUMED=1
    first_takeover = min(r.at for r in runs if r.registrar == b.host.name)
    # not before a's lease ran out (its last keep-alive was at most one interval earlier)
    interval = (LEASE_TTL - FENCE_MARGIN) / 3
    assert killed + LEASE_TTL - interval - 0.5 <= first_takeover <= killed + LEASE_TTL + 8, (
        first_takeover - killed
    )
    once_each(scenario, killed=killed)
    assert {r.node_id for r in resumed} <= set(held)
    events = scenario.store.events()
    taken = [e for e in events if e.kind in ("interrupted", "recovered") and e.node_id in held]
    assert taken and all("lost its etcd lease" in e.message for e in taken), taken
    print(f"takeover {first_takeover - killed:.1f}s after kill -9; held {held}")


def test_a_registrar_cut_off_from_etcd_stops_and_the_other_takes_over(
    scenario: Scenario, ha: HALab
) -> None:
    scenario.pause_hooks(30)
    a = scenario.registrar("a")
    ids = scenario.announce(3)
    scenario.wait_nodes(
        lambda n: sum(r.state is NodeState.REGISTERING and r.hook_started for r in n.values()) == 3,
        "three hooks running under a",
    )
    b = scenario.registrar("b")
    assert a.daemon is not None
    cut = time.time()
    cut_off_from_etcd(a.host, ha)
    a.daemon.wait_for_log(r"fenced: ", LEASE_TTL + 5)
    terminated = _wait_runs(scenario, "term", 3, LEASE_TTL + 10)
    fenced_at = max(r.at for r in terminated)
    assert fenced_at < cut + LEASE_TTL, fenced_at - cut  # before the lease can run out
    scenario.pause_hooks(0)
    scenario.registered(ids, timeout=60)
    b_starts = [r for r in scenario.hook_runs() if r.what == "start" and r.registrar == b.host.name]
    assert b_starts and min(r.at for r in b_starts) > fenced_at  # never two at once
    restore_etcd(a.host)
    a.daemon.wait_for_log(r"acts again", 30)
    more = scenario.announce(4, tag="late")
    scenario.registered(more, timeout=60)
    once_each(scenario)
    log = a.daemon.log_text()
    assert "Traceback" not in log.split("fenced: ")[-1], log[-3000:]
    print(f"a fenced {fenced_at - cut:.1f}s after the cut; b took over "
          f"{min(r.at for r in b_starts) - cut:.1f}s after it")  # fmt: skip


def test_one_etcd_member_killed_disrupts_nothing(scenario: Scenario, ha: HALab) -> None:
    a, b = scenario.registrar("a"), scenario.registrar("b")
    leader = ha.cluster.leader(host=ha.client)
    assert leader is not None
    leader.kill()
    try:
        scenario.announce(10)
        scenario.registered(timeout=60)
        once_each(scenario)
        for station in (a, b):
            assert station.daemon is not None and "fenced" not in station.daemon.log_text()
    finally:
        leader.restart()
        ha.cluster.wait_healthy(30, host=ha.client)


def test_quorum_lost_registrars_stop_say_why_and_resume(scenario: Scenario, ha: HALab) -> None:
    a, b = scenario.registrar("a"), scenario.registrar("b")
    before = scenario.announce(3)
    scenario.registered(before, timeout=60)
    down = ha.cluster.members[1:]
    for member in down:
        member.kill()
    try:
        for station in (a, b):
            assert station.daemon is not None
            station.daemon.wait_for_log(r"fenced: ", LEASE_TTL + 10)
        during = scenario.announce(4, tag="dark")  # announced while nobody may decide
        status = a.cli_in_ns("status", timeout=60).stdout
        assert "no quorum" in status or "unreachable" in status, status
        assert "FENCED" in status, status
    finally:
        for member in down:
            member.restart()
        ha.cluster.wait_healthy(30, host=ha.client)
    for station in (a, b):
        assert station.daemon is not None
        station.daemon.wait_for_log(r"acts again", 40)
    scenario.registered(during, timeout=90)
    once_each(scenario)


def test_store_migrate_from_a_populated_sqlite_store(scenario: Scenario, ha: HALab) -> None:
    a = scenario.registrar("a", start=False)
    sqlite = {k: v for k, v in a.extra["autoreg"].items() if not k.startswith("etcd_")}
    sqlite["store"] = "sqlite"
    a.extra["autoreg"] = sqlite
    a.start_daemon()
    ids = scenario.announce(5)
    a.wait_state(ids[-1], NodeState.REGISTERED)
    for node_id in ids:
        a.wait_state(node_id, NodeState.REGISTERED)
    a.cli("lockdown", "on", "--role", "walrus", "--reason", "no walrus here")
    token = a.cli("token", "create", "--role", "ha", "--uses", "3").stdout
    assert a.daemon is not None
    a.daemon.terminate(30)
    a.daemon = None
    runs = len(scenario.hook_runs())
    a.extra["autoreg"].update(scenario.config_sections()["autoreg"])
    a.extra["autoreg"]["store"] = "sqlite"  # migrate first, then switch
    copied = json.loads(a.cli_in_ns("store", "migrate", "--to", "etcd", "--json").stdout)
    assert copied["nodes"] == 5 and copied["tokens"] == 1 and copied["lockdown"] == 1
    a.extra["autoreg"]["store"] = "etcd"
    a.start_daemon()
    nodes = scenario.store.nodes()
    assert all(nodes[i].state is NodeState.REGISTERED for i in ids)
    lockdown = a.cli_in_ns("lockdown", "status").stdout
    assert "walrus: on" in lockdown, lockdown
    assert token.strip().split(".")[0] in a.cli_in_ns("token", "list").stdout
    more = scenario.announce(2, tag="new")
    scenario.registered(more, timeout=60)
    assert len(scenario.hook_runs()) == runs + 2 * 2  # start + end of the new ones only
    once_each(scenario)


def cut_off_from_etcd(host: Host, ha: HALab) -> None:
    """Drop every packet between ``host`` and the etcd members (nft, in its namespace)."""
    members = ", ".join(m.ip for m in ha.cluster.members)
    rules = (
        "table inet ha_cut {\n"
        f"  chain output {{ type filter hook output priority -20; policy accept;\n"
        f"    ip daddr {{ {members} }} drop; }}\n"
        f"  chain input {{ type filter hook input priority -20; policy accept;\n"
        f"    ip saddr {{ {members} }} drop; }}\n"
        "}\n"
    )
    host.run(["nft", "-f", "-"], input=rules.encode())


def restore_etcd(host: Host) -> None:
    host.run(["nft", "delete", "table", "inet", "ha_cut"])


def _wait_runs(scenario: Scenario, what: str, count: int, timeout: float) -> list[HookRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in scenario.hook_runs() if r.what == what]
        if len(runs) >= count:
            return runs
        time.sleep(0.2)
    raise AssertionError(f"{count} hook runs '{what}' not seen: {scenario.hook_runs()}")
