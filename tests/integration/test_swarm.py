"""Many nodes at once, and a flood, on the namespace lab (issue 13).

The real daemon with its shipped timings, N real sshd (one per node, each with its
own host key and address), and the nodes announced by ONE publisher process
running one unchanged ``Announcer`` per node on a shared transport
(``tests/support/swarm.py``).  ``bench/swarm.py`` measures the same set-up at
larger sizes; these tests hold the line at sizes that run in well under two
minutes on two cores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from registration._config import ControllerConfig
from support.swarm import SwarmLab

pytestmark = [pytest.mark.netns, pytest.mark.timeout(150)]

#: Issue 13's goal is 1,000 nodes registered within 12 s on this machine; 300 get
#: 30 s, a margin of 2.5x for a third of the nodes, for a shared, loaded machine.
SWARM = 300
SWARM_BOUND_S = 30.0
#: The registrar has been up this long when the nodes announce: past its browser's
#: start-up queries (python-zeroconf 0.154: about 0, 1, 5 and 14 s after it starts;
#: after those it queries again only to refresh records before they expire), as a
#: registrar that has been running for a while.  Started just before the nodes, it
#: would recover what the burst lost with its last start-up query, by luck of timing.
UPTIME_S = 16.0
#: A few hundred black-holed announcements in front of one genuine node.
BOGUS = 300
#: The genuine node must be registered within one shipped connect_timeout plus 5 s of
#: its announcement.  A fair daemon may find every SSH slot taken by connects to bogus
#: nodes that started just before the genuine node arrived: it has to wait for those
#: (one connect_timeout at most, whatever their number), then its own registration
#: takes well under a second on an idle lab, a few seconds while the daemon ingests the
#: burst.  Taking bogus nodes first in, first out instead costs (BOGUS / max_parallel)
#: connect timeouts: 300 / 8 x 10 s, about six minutes.  (The benchmark's goal, within
#: 2x of the idle time, is stricter; too tight to assert on a shared machine.)
FLOOD_BOUND_S = ControllerConfig().connect_timeout + 5.0


@pytest.fixture
def swarm(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SwarmLab]:
    nodes, bogus = request.param
    with SwarmLab(tmp_path, index=203, nodes=nodes, bogus=bogus) as lab:
        yield lab


def _describe(lab: SwarmLab, ids: list[str]) -> str:
    rows = lab.snapshot()
    states = Counter(rows[i].state if i in rows else "never seen" for i in ids)
    log = lab.ctl.daemon.log_text()[-2500:] if lab.ctl.daemon else ""
    return f"{dict(states)}\n--- daemon log (tail) ---\n{log}"


@pytest.mark.parametrize("swarm", [(SWARM, 0)], indirect=True)
def test_300_nodes_at_once_are_all_seen_and_registered(swarm: SwarmLab) -> None:
    swarm.start_daemon("swarm", uptime=UPTIME_S)
    batch = swarm.batch("s-", SWARM)
    publisher = swarm.announce(batch)
    wait = swarm.wait(batch.ids, timeout=SWARM_BOUND_S, stall=SWARM_BOUND_S)
    ids = list(batch.ids)
    lost, registered = wait.lost(ids), wait.registered(ids)
    assert not lost, (
        f"{len(lost)} of {SWARM} nodes never reached the daemon's store within "
        f"{SWARM_BOUND_S} s (wait {wait.ended}): {_describe(swarm, ids)}"
    )
    assert len(registered) == SWARM, (
        f"{len(registered)} of {SWARM} registered within {SWARM_BOUND_S} s (wait "
        f"{wait.ended}): {_describe(swarm, ids)}"
    )
    last = max(wait.rows[i].registered_at or 0.0 for i in ids) - publisher.started
    assert last <= SWARM_BOUND_S
    assert swarm.receipts(batch) == SWARM


@pytest.mark.parametrize("swarm", [(1, BOGUS)], indirect=True)
@pytest.mark.parametrize("mode", ["token", "window"])
def test_a_genuine_node_behind_a_flood_of_bogus_ones(swarm: SwarmLab, mode: str) -> None:
    """token: the genuine node signs with a join token, the bogus ones do not (pending).
    window: an install window admits every unsigned node, bogus ones too."""
    swarm.start_daemon(mode, trust="token")
    token = None
    if mode == "token":
        token = swarm.cli("token", "create", "--role", "bench").strip().splitlines()[-1]
    else:
        swarm.cli("window", "open", "--role", "bench", "--for", "1h")
    bogus, flood = swarm.flood("b-", BOGUS)
    flood.wait_for_log(r'"round": 1,', 30)
    # The genuine node comes after the flood has reached the store.
    ingested = swarm.wait(
        bogus, timeout=30, stall=10, until=lambda rows: all(b in rows for b in bogus)
    )
    batch = swarm.batch("g-", 1)
    publisher = swarm.announce(batch, token=token)
    (node_id,) = batch.ids
    wait = swarm.wait(
        batch.ids,
        timeout=FLOOD_BOUND_S,
        stall=FLOOD_BOUND_S,
        until=lambda rows: node_id in rows and rows[node_id].state == "registered",
    )
    row = wait.rows.get(node_id)
    bogus_states = Counter(wait.rows[b].state for b in bogus if b in wait.rows)
    assert row is not None and row.state == "registered", (
        f"the genuine node is {row.state if row else 'not in the store'} "
        f"{FLOOD_BOUND_S:g} s after it announced behind {len(ingested.seen(bogus))} bogus "
        f"nodes ({dict(bogus_states)}): {_describe(swarm, [node_id])}"
    )
    assert row.registered_at is not None
    assert row.registered_at - publisher.started <= FLOOD_BOUND_S
