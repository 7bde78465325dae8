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
    # 3: one state machine: "the hook started" is its own column (it was hook_pid's
    #    0 marker); claims (owner + lease) on nodes; a row generation for
    #    compare-and-set; presence per source and announcing instance; the writer of
    #    each event.
    """
    ALTER TABLE nodes ADD COLUMN hook_started INTEGER NOT NULL DEFAULT 0;
    UPDATE nodes SET hook_started = 1 WHERE hook_pid IS NOT NULL;
    ALTER TABLE nodes DROP COLUMN hook_pid;
    ALTER TABLE nodes ADD COLUMN claim_owner TEXT;
    ALTER TABLE nodes ADD COLUMN claim_expires REAL;
    ALTER TABLE nodes ADD COLUMN generation TEXT NOT NULL DEFAULT '';
    UPDATE nodes SET generation = lower(hex(randomblob(6)));
    CREATE TABLE presence (
        node_id  TEXT NOT NULL,
        source   TEXT NOT NULL,
        instance TEXT NOT NULL,
        observer TEXT NOT NULL DEFAULT '',
        expires  REAL,
        PRIMARY KEY (source, instance, observer)
    );
    CREATE INDEX presence_node ON presence (node_id);
    INSERT INTO presence (node_id, source, instance, observer)
        SELECT node_id, 'manual', node_id, '' FROM nodes WHERE source = 'manual';
    ALTER TABLE nodes DROP COLUMN present;
    ALTER TABLE events ADD COLUMN origin TEXT NOT NULL DEFAULT '';
    CREATE INDEX nodes_claims ON nodes (claim_owner) WHERE claim_owner IS NOT NULL;
    """,
    # 4: one host key is one node: look nodes up by key; a pinned node's announced
    #    move waits for verification; a conflict keeps the other key's announcement.
    """
    ALTER TABLE nodes ADD COLUMN moved_ip TEXT;
    ALTER TABLE nodes ADD COLUMN moved_port INTEGER;
    ALTER TABLE nodes ADD COLUMN moved_name TEXT;
    ALTER TABLE nodes ADD COLUMN contender TEXT;
    CREATE INDEX nodes_fingerprint ON nodes (fingerprint);
    """,
    # 5: trust.  Join tokens (their HMAC key, never the secret) and who used them;
    #    install windows; denied host keys; how each announcement was authenticated,
    #    the key an admin approved and what admitted each registration.  A store
    #    that already held data was made by a version without trust: it keeps
    #    registering as before (trust_default open); a new one starts at token.
    """
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,
        key         BLOB NOT NULL,
        roles       TEXT NOT NULL DEFAULT '',
        cluster     TEXT,
        uses        INTEGER NOT NULL,
        expires     REAL NOT NULL,
        created     REAL NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        revoked     REAL
    );
    CREATE TABLE token_uses (
        token_id    TEXT NOT NULL,
        node_id     TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        at          REAL NOT NULL,
        PRIMARY KEY (token_id, node_id, fingerprint)
    );
    CREATE TABLE windows (
        id            TEXT PRIMARY KEY,
        scope         TEXT NOT NULL,
        opened        REAL NOT NULL,
        expires       REAL NOT NULL,
        max_uses      INTEGER,
        used          INTEGER NOT NULL DEFAULT 0,
        closed        REAL,
        closed_reason TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE denied (
        fingerprint TEXT PRIMARY KEY,
        node_id     TEXT,
        at          REAL NOT NULL,
        reason      TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    ALTER TABLE nodes ADD COLUMN auth TEXT NOT NULL DEFAULT '';
    ALTER TABLE nodes ADD COLUMN token_id TEXT;
    ALTER TABLE nodes ADD COLUMN approved_fp TEXT;
    ALTER TABLE nodes ADD COLUMN granted TEXT;
    INSERT INTO settings (key, value) SELECT 'trust_default',
        CASE WHEN EXISTS (SELECT 1 FROM events WHERE kind != 'schema') THEN 'open' ELSE 'token' END;
    """,
    # 6: a bounded event log.  The same event again and again (a node that keeps
    #    failing the same way, a flood of one rejected name) is one row that counts;
    #    old events are pruned by count and age ([controller] events_keep/_max_age).
    """
    ALTER TABLE events ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE events ADD COLUMN first_ts REAL
    """,
)

SCHEMA_VERSION: Final = len(MIGRATIONS)
