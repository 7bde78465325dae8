"""The sqlite state store: nodes, lockdown switches and the event log.

Every write is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a node's
state change and the event that explains it land together or not at all.  The
database runs in WAL mode so the CLI can read while the daemon writes.

The store is synchronous; the daemon calls it through its bounded executor.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .._exceptions import NodeNotFound, StateError
from ._records import Event, NodeRecord, NodeState, Tunnel
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["GLOBAL_SCOPE", "Store"]

GLOBAL_SCOPE: Final = "*"
BUSY_TIMEOUT_MS: Final = 5000
_UPDATABLE: Final = frozenset(NodeRecord.__dataclass_fields__) - {"node_id", "first_seen"}


class Store:
    """One connection to the state database."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            if readonly:
                if not path.exists():
                    raise StateError(f"{path}: no state database (has the daemon run yet?)")
                uri = f"file:{path}?mode=ro"
                self._conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._migrate()
            else:
                self._check_version()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StateError(f"{path}: cannot open state database: {exc}") from exc
        if not readonly:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o640)

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; sqlite errors inside it become :class:`StateError`."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: cannot start a transaction: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                # sqlite may already have rolled back (disk full): never mask the cause.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StateError(f"{self.path}: write failed: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(
        self, sql: str, params: tuple[Any, ...] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params))
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: read failed: {exc}") from exc

    def _check_version(self) -> int:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: schema version {version} is newer than this autoreg "
                f"understands ({SCHEMA_VERSION}); upgrade autoreg"
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        for number in range(version, SCHEMA_VERSION):
            with self._write() as conn:
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")
                _insert_event(
                    conn, None, "schema", None, f"state schema migrated to version {number + 1}", {}
                )

    @property
    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    def data_version(self) -> int:
        """Changes when another connection commits (cheap change detection)."""
        return int(self._read("PRAGMA data_version")[0][0])

    # -- nodes -------------------------------------------------------------

    def get(self, node_id: str) -> NodeRecord | None:
        rows = self._read("SELECT * FROM nodes WHERE node_id = ?", (node_id,))
        return NodeRecord.from_row(rows[0]) if rows else None

    def find(self, ref: str) -> NodeRecord:
        """A node by id, unique id prefix, name or announced address."""
        exact = self.get(ref)
        if exact is not None:
            return exact
        rows = self._read(
            "SELECT * FROM nodes WHERE name = ? OR ip = ? OR node_id LIKE ? ESCAPE '\\'",
            (ref, ref, ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"),
        )
        if len(rows) == 1:
            return NodeRecord.from_row(rows[0])
        if not rows:
            raise NodeNotFound(f"no node {ref!r} (see `autoreg list`)")
        ids = ", ".join(r["node_id"] for r in rows)
        raise NodeNotFound(f"{ref!r} is ambiguous: {ids}")

    def nodes(self) -> list[NodeRecord]:
        rows = self._read("SELECT * FROM nodes ORDER BY role, cluster, first_seen")
        return [NodeRecord.from_row(r) for r in rows]

    def save(
        self, record: NodeRecord, *, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> NodeRecord:
        """Insert or replace a node and append the event that explains it, atomically."""
        with self._write() as conn:
            _upsert(conn, record)
            _insert_event(conn, record.node_id, kind, record.state.value, message, data or {})
        return record

    def update(
        self,
        node_id: str,
        fields: Mapping[str, Any],
        *,
        kind: str | None = None,
        message: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> NodeRecord | None:
        """Change only ``fields`` of a node (and log the event), atomically.

        Writers name the columns they own, so concurrent writers (the announcement
        path and a registration in flight) never overwrite each other's changes
        with stale copies.  Returns the node as it is after the change, or None
        when it no longer exists.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
        assignments = ", ".join(f"{col} = :{col}" for col in fields)
        params = {**fields, "node_id": node_id}
        with self._write() as conn:
            if fields:
                cur = conn.execute(
                    f"UPDATE nodes SET {assignments} WHERE node_id = :node_id",  # noqa: S608
                    params,
                )
                if cur.rowcount == 0:
                    return None
            rows = list(conn.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)))
            if not rows:
                return None
            record = NodeRecord.from_row(rows[0])
            if kind is not None and message is not None:
                _insert_event(conn, node_id, kind, record.state.value, message, data or {})
        return record

    def set_hook_pid(self, node_id: str, pid: int) -> None:
        """Record the running hook's pid (only while the node is still registering)."""
        with self._write() as conn:
            conn.execute(
                "UPDATE nodes SET hook_pid = ? WHERE node_id = ? AND state = ?",
                (pid, node_id, NodeState.REGISTERING),
            )

    def mark_all_absent(self) -> None:
        """At daemon start nothing is known to be announced until browsing sees it."""
        with self._write() as conn:
            conn.execute("UPDATE nodes SET present = 0 WHERE source = 'mdns'")

    def forget(self, node_id: str, *, message: str) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            if cur.rowcount:
                _insert_event(conn, node_id, "forgotten", None, message, {})
            return cur.rowcount > 0

    def count_holding(self, role: str, cluster: str | None, *, exclude: str) -> list[NodeRecord]:
        """Nodes of ``role`` (in ``cluster`` if given) that hold a registration slot."""
        sql = "SELECT * FROM nodes WHERE role = ? AND node_id != ? AND state IN (?, ?)"
        params: list[Any] = [role, exclude, NodeState.REGISTERED, NodeState.REGISTERING]
        if cluster is not None:
            sql += " AND cluster = ?"
            params.append(cluster)
        return [NodeRecord.from_row(r) for r in self._read(sql, tuple(params))]

    def registered(self, role: str, cluster: str | None) -> list[NodeRecord]:
        sql = "SELECT * FROM nodes WHERE role = ? AND state = ?"
        params: list[Any] = [role, NodeState.REGISTERED]
        if cluster is not None:
            sql += " AND cluster = ?"
            params.append(cluster)
        return [NodeRecord.from_row(r) for r in self._read(sql, tuple(params))]

    # -- tunnels -------------------------------------------------------------------

    def allocate_tunnel(
        self, node_id: str, public_key: str, *, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
        """Give ``node_id`` ``count`` free controller ports (lowest first), atomically.

        An existing allocation is kept (its key replaced if different): ports never
        move under a node that already has them.
        """
        first, last = port_range
        with self._write() as conn:
            existing = [
                r[0]
                for r in conn.execute(
                    "SELECT port FROM tunnel_ports WHERE node_id = ? ORDER BY port", (node_id,)
                )
            ]
            conn.execute(
                "INSERT INTO tunnels (node_id, public_key, created) VALUES (?, ?, ?) "
                "ON CONFLICT (node_id) DO UPDATE SET public_key = excluded.public_key",
                (node_id, public_key, time.time()),
            )
            if len(existing) < count:
                taken = {
                    r[0]
                    for r in conn.execute(
                        "SELECT port FROM tunnel_ports WHERE port BETWEEN ? AND ?", (first, last)
                    )
                }
                free = (p for p in range(first, last + 1) if p not in taken)
                new = [p for _, p in zip(range(count - len(existing)), free, strict=False)]
                if len(new) < count - len(existing):
                    raise StateError(
                        f"no free tunnel ports left in {first}-{last}: widen "
                        "[controller] tunnel_ports or remove unused tunnels"
                    )
                conn.executemany(
                    "INSERT INTO tunnel_ports (port, node_id) VALUES (?, ?)",
                    [(p, node_id) for p in new],
                )
                existing += new
            _insert_event(
                conn,
                node_id,
                "tunnel",
                None,
                f"tunnel ports {', '.join(map(str, existing))} allocated",
                {"ports": existing},
            )
        tunnel = self.tunnel(node_id)
        assert tunnel is not None
        return tunnel

    def tunnel(self, node_id: str) -> Tunnel | None:
        rows = self._read("SELECT * FROM tunnels WHERE node_id = ?", (node_id,))
        if not rows:
            return None
        ports = tuple(
            r[0]
            for r in self._read(
                "SELECT port FROM tunnel_ports WHERE node_id = ? ORDER BY port", (node_id,)
            )
        )
        return Tunnel(node_id, rows[0]["public_key"], ports, rows[0]["created"])

    def tunnels(self) -> list[Tunnel]:
        ids = [r[0] for r in self._read("SELECT node_id FROM tunnels ORDER BY node_id")]
        return [t for i in ids if (t := self.tunnel(i)) is not None]

    def remove_tunnel(self, node_id: str) -> bool:
        with self._write() as conn:
            conn.execute("DELETE FROM tunnel_ports WHERE node_id = ?", (node_id,))
            cur = conn.execute("DELETE FROM tunnels WHERE node_id = ?", (node_id,))
            if cur.rowcount:
                _insert_event(conn, node_id, "tunnel", None, "tunnel allocation removed", {})
            return cur.rowcount > 0

    # -- lockdown ------------------------------------------------------------

    def set_lockdown(self, scope: str, locked: bool, *, reason: str = "") -> None:
        word = "on" if locked else "off"
        what = "all registration" if scope == GLOBAL_SCOPE else f"registration of role {scope}"
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO lockdown (scope, locked, changed, reason) "
                "VALUES (?, ?, ?, ?)",
                (scope, int(locked), time.time(), reason),
            )
            _insert_event(
                conn,
                None,
                "lockdown",
                None,
                f"lockdown {word} for {what}" + (f": {reason}" if reason else ""),
                {"scope": scope, "locked": locked},
            )

    def lockdown(self) -> dict[str, bool]:
        return {r["scope"]: bool(r["locked"]) for r in self._read("SELECT * FROM lockdown")}

    def is_locked(self, role: str) -> bool:
        switches = self.lockdown()
        return switches.get(GLOBAL_SCOPE, False) or switches.get(role, False)

    # -- events --------------------------------------------------------------

    def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None = None,
        *,
        state: str | None = None,
    ) -> None:
        with self._write() as conn:
            _insert_event(conn, node_id, kind, state, message, data or {})

    def events(
        self, *, after: int = 0, node_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        sql = "SELECT * FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if node_id is not None:
            sql += " AND node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [Event.from_row(r) for r in self._read(sql, tuple(params))]

    def last_events(self, count: int, *, node_id: str | None = None) -> list[Event]:
        sql = "SELECT * FROM events"
        params: list[Any] = []
        if node_id is not None:
            sql += " WHERE node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(count)
        return [Event.from_row(r) for r in reversed(self._read(sql, tuple(params)))]


def _insert_event(
    conn: sqlite3.Connection,
    node_id: str | None,
    kind: str,
    state: str | None,
    message: str,
    data: Mapping[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO events (ts, node_id, kind, state, message, data) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), node_id, kind, state, message, json.dumps(dict(data), default=str)),
    )


def _upsert(conn: sqlite3.Connection, record: NodeRecord) -> None:
    values = record.to_json()
    cols = ", ".join(values)
    marks = ", ".join(f":{c}" for c in values)
    conn.execute(f"INSERT OR REPLACE INTO nodes ({cols}) VALUES ({marks})", values)  # noqa: S608
