"""Schema migrations keep every row: an upgrade never loses registrations or switches."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from registration.state import GLOBAL_SCOPE, SCHEMA_VERSION, NodeState, Store
from registration.state._schema import MIGRATIONS


def _v1_database(path: Path) -> None:
    """A store as the first release wrote it: migration 1 only, with data."""
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO nodes (node_id, role, cluster, name, ip, port, fingerprint, key_type, "
        "announced_state, source, present, state, reason, first_seen, last_seen, updated) "
        "VALUES ('nc-1', 'nc', 'foo', 'nc1', '198.18.0.5', 22, ?, 'ssh-ed25519', 'registered', "
        "'mdns', 1, 'registered', 'hook succeeded', 1, 2, 3)",
        ("SHA256:" + "A" * 43,),
    )
    conn.execute("INSERT INTO lockdown (scope, locked, changed) VALUES ('sc', 1, 5)")
    conn.commit()
    conn.close()


def test_upgrade_from_v1_keeps_nodes_and_lockdown(tmp_path: Path) -> None:
    db = tmp_path / "autoreg.db"
    _v1_database(db)
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION >= 2
        rec = store.get("nc-1")
        assert rec is not None and rec.state is NodeState.REGISTERED
        assert store.lockdown() == {"sc": True}
        # The new tables work on the upgraded store.
        tunnel = store.allocate_tunnel(
            "nc-1", "ssh-ed25519 AAAA", count=2, port_range=(20000, 20010)
        )
        assert tunnel.ports == (20000, 20001)
        kinds = [e.message for e in store.events() if e.kind == "schema"]
        assert kinds == [f"state schema migrated to version {SCHEMA_VERSION}"]


def test_tunnel_ports_never_collide_and_stay_put(tmp_path: Path) -> None:
    with Store(tmp_path / "autoreg.db") as store:
        seen: set[int] = set()
        for i in range(5):
            ports = store.allocate_tunnel(
                f"n{i}", f"key{i}", count=2, port_range=(20000, 20009)
            ).ports
            assert len(ports) == 2 and not seen & set(ports)
            seen |= set(ports)
        # Idempotent: a node keeps its ports, even with a new key.
        again = store.allocate_tunnel("n2", "newkey", count=2, port_range=(20000, 20009))
        assert again.ports == (20004, 20005) and again.public_key == "newkey"
        # Exhausted range: a clear error, nothing half-allocated.
        from registration import StateError

        with pytest.raises(StateError, match="no free tunnel ports"):
            store.allocate_tunnel("n9", "k", count=2, port_range=(20000, 20009))
        assert store.tunnel("n9") is None
        # Removing frees the ports for the next node.
        assert store.remove_tunnel("n0")
        assert store.allocate_tunnel("n9", "k", count=2, port_range=(20000, 20009)).ports == (
            20000,
            20001,
        )


def test_lockdown_scope_constant_is_global() -> None:
    assert GLOBAL_SCOPE == "*"
