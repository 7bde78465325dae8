"""Schema migrations keep every row: an upgrade never loses registrations or switches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from registration.state import SCHEMA_VERSION, NodeState, Source
from registration.state._schema import MIGRATIONS
from support.sync_store import SyncStore

FP = "SHA256:" + "A" * 43


def _old_database(path: Path, version: int) -> None:
    """A store as an older release wrote it: migrations up to ``version``, with data."""
    conn = sqlite3.connect(path)
    for number in range(version):
        conn.executescript(MIGRATIONS[number])
    conn.execute(f"PRAGMA user_version = {version}")
    rows = [
        # node_id, source, present, state, hook_pid
        ("nc-1", "mdns", 1, "registered", None),
        ("nc-2", "mdns", 1, "registering", 0),  # hook about to start (the old 0 marker)
        ("nc-3", "mdns", 1, "registering", 4242),  # hook running
        ("nc-4", "manual", 1, "waiting", None),
        ("nc-5", "mdns", 0, "registering", None),  # verifying: hook never started
    ]
    for node_id, source, present, state, pid in rows:
        conn.execute(
            "INSERT INTO nodes (node_id, role, cluster, name, ip, port, fingerprint, key_type, "
            "announced_state, source, present, state, reason, first_seen, last_seen, updated, "
            "hook_pid) VALUES (?, 'nc', 'foo', ?, '198.18.0.5', 22, ?, 'ssh-ed25519', 'ready', "
            "?, ?, ?, 'r', 1, 2, 3, ?)",
            (node_id, node_id, FP, source, present, state, pid),
        )
    conn.execute("INSERT INTO lockdown (scope, locked, changed) VALUES ('sc', 1, 5)")
    conn.commit()
    conn.close()


def test_upgrade_from_v1_keeps_nodes_and_lockdown(tmp_path: Path) -> None:
    db = tmp_path / "autoreg.db"
    _old_database(db, 1)
    with SyncStore(db) as store:
        assert store.schema_version() == SCHEMA_VERSION >= 3
        rec = store.get("nc-1")
        assert rec is not None and rec.state is NodeState.REGISTERED
        assert store.lockdown() == {"sc": True}
        tunnel = store.allocate_tunnel(
            "nc-1", "ssh-ed25519 AAAA", count=2, port_range=(20000, 20010)
        )
        assert tunnel.ports == (20000, 20001)
        kinds = [e.message for e in store.events() if e.kind == "schema"]
        assert kinds == [
            f"state schema migrated to version {n}" for n in range(2, SCHEMA_VERSION + 1)
        ]


def test_upgrade_to_3_splits_the_hook_marker_and_keeps_manual_presence(tmp_path: Path) -> None:
    db = tmp_path / "autoreg.db"
    _old_database(db, 2)
    with SyncStore(db) as store:
        nodes = {r.node_id: r for r in store.nodes()}
        # hook_pid None / 0 / pid was a three-way flag: now "did the hook start" is its own
        assert {n: r.hook_started for n, r in nodes.items()} == {
            "nc-1": False,
            "nc-2": True,
            "nc-3": True,
            "nc-4": False,
            "nc-5": False,
        }
        # presence is per source now: a manual node stays present, mDNS ones wait for
        # the browser to see them again (a daemon start clears them anyway)
        assert nodes["nc-4"].present and nodes["nc-4"].source is Source.MANUAL
        assert not nodes["nc-1"].present
        assert len({r.generation for r in nodes.values()}) == 5  # every row its own
        assert all(r.claim_owner is None for r in nodes.values())
    with sqlite3.connect(db) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
    assert not {"hook_pid", "present"} & columns
