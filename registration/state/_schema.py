"""The state store's schema and its migrations.

The schema is versioned from day one: ``PRAGMA user_version`` holds the number
of migrations applied.  Each migration runs in its own transaction, so an
interrupted upgrade leaves the previous, consistent version behind.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: nodes, lockdown switches, the append-only event log.
    """
    CREATE TABLE nodes (
        node_id         TEXT PRIMARY KEY,
        role            TEXT NOT NULL,
        cluster         TEXT,
        name            TEXT,
        ip              TEXT NOT NULL,
        port            INTEGER NOT NULL,
        fingerprint     TEXT NOT NULL,
        key_type        TEXT NOT NULL,
        announced_state TEXT NOT NULL,
        source          TEXT NOT NULL,
        present         INTEGER NOT NULL DEFAULT 1,
        state           TEXT NOT NULL,
        reason          TEXT NOT NULL DEFAULT '',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt    REAL,
        path            TEXT,
        hook_pid        INTEGER,
        resumed         INTEGER NOT NULL DEFAULT 0,
        first_seen      REAL NOT NULL,
        last_seen       REAL NOT NULL,
        updated         REAL NOT NULL,
        registered_at   REAL
    );
    CREATE INDEX nodes_role_cluster ON nodes (role, cluster, state);
    CREATE TABLE lockdown (
        scope   TEXT PRIMARY KEY,
        locked  INTEGER NOT NULL,
        changed REAL NOT NULL,
        reason  TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE events (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        ts      REAL NOT NULL,
        node_id TEXT,
        kind    TEXT NOT NULL,
        state   TEXT,
        message TEXT NOT NULL,
        data    TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_node ON events (node_id, seq);
    """,
    # 2: reverse tunnels: each node's callback key and the controller ports it may
    #    listen on (CONTROLLER_PORT), allocated without collisions.
    """
    CREATE TABLE tunnels (
        node_id    TEXT PRIMARY KEY,
        public_key TEXT NOT NULL,
        created    REAL NOT NULL
    );
    CREATE TABLE tunnel_ports (
        port    INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL REFERENCES tunnels (node_id) ON DELETE CASCADE
    );
    CREATE INDEX tunnel_ports_node ON tunnel_ports (node_id);
    """,
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
