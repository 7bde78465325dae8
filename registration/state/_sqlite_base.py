"""The sqlite backend's connection: plumbing shared by its table modules.

One connection, one lock; every write is one ``BEGIN IMMEDIATE`` transaction, and
the event that explains a change is written in the same one.  Also the lockdown
switches and the event log, which every table module writes to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from .._exceptions import StateError
from ._contract import GLOBAL_SCOPE
from ._machine import NodeState
from ._records import Event, NodeRecord, Source
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["NODE_COLUMNS", "PRESENT", "Connection", "expiry", "record_of"]

BUSY_TIMEOUT_MS: Final = 5000
NODE_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(NodeRecord) if f.name != "present")
#: The ``present`` column, computed from the presence table (``:now`` is a parameter).
PRESENT: Final = (
    "EXISTS (SELECT 1 FROM presence p WHERE p.node_id = nodes.node_id "
    "AND (p.expires IS NULL OR p.expires > :now)) AS present"
)


def record_of(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        node_id=row["node_id"],
        role=row["role"],
        cluster=row["cluster"],
        name=row["name"],
        ip=row["ip"],
        port=row["port"],
        fingerprint=row["fingerprint"],
        key_type=row["key_type"],
        announced_state=row["announced_state"],
        source=Source(row["source"]),
        present=bool(row["present"]),
        moved_ip=row["moved_ip"],
        moved_port=row["moved_port"],
        moved_name=row["moved_name"],
        contender=row["contender"],
        auth=row["auth"],
        token_id=row["token_id"],
        approved_fp=row["approved_fp"],
        granted=row["granted"],
        state=NodeState(row["state"]),
        reason=row["reason"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        path=row["path"],
        hook_started=bool(row["hook_started"]),
        resumed=bool(row["resumed"]),
        registered_at=row["registered_at"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        updated=row["updated"],
        claim_owner=row["claim_owner"],
        claim_expires=row["claim_expires"],
        generation=row["generation"],
    )


def expiry(now: float, lease: float | None) -> float | None:
    return None if lease is None else now + lease


def _event_of(row: sqlite3.Row) -> Event:
    try:
        data = json.loads(row["data"])
    except ValueError:
        data = {"raw": row["data"]}
    return Event(
        seq=row["seq"],
        ts=row["ts"],
        node_id=row["node_id"],
        kind=row["kind"],
        state=row["state"],
        message=row["message"],
        data=data,
        origin=row["origin"] if "origin" in row.keys() else "",  # noqa: SIM118 - sqlite3.Row
        repeats=row["repeats"] if "repeats" in row.keys() else 1,  # noqa: SIM118
        first_ts=row["first_ts"] if "first_ts" in row.keys() else None,  # noqa: SIM118
    )


class Connection:
    """One sqlite connection; blocking.  Only the backend's own modules use it."""

    def __init__(self, path: Path, *, readonly: bool, origin: str) -> None:
        self.path = path
        self.origin = origin
        self.registrar_lock: int | None = None  # fd of daemon.lock while we hold it
        self._lock = threading.RLock()
        try:
            if readonly:
                if not path.exists():
                    raise StateError(f"{path}: no state database (has the daemon run yet?)")
                self._conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if readonly:
                self._check_version()
            else:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = FULL")
                self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StateError(f"{path}: cannot open state database: {exc}") from exc
        if not readonly:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o640)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self.registrar_lock is not None:
                os.close(self.registrar_lock)  # the kernel drops the flock with the fd
                self.registrar_lock = None

    # -- plumbing ---------------------------------------------------------------------

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
                self._event(
                    conn, None, "schema", None, f"state schema migrated to version {number + 1}", {}
                )

    def schema_version(self) -> int:
        return int(self._read("PRAGMA user_version")[0][0])

    def _event(
        self,
        conn: sqlite3.Connection,
        node_id: str | None,
        kind: str,
        state: str | None,
        message: str,
        data: Mapping[str, Any],
    ) -> None:
        now = time.time()
        columns = "ts, node_id, kind, state, message, data"
        values: tuple[Any, ...] = (
            now,
            node_id,
            kind,
            state,
            message,
            json.dumps(dict(data), default=str),
        )
        if self._has_origin(conn):
            columns += ", origin"
            values += (self.origin,)
            if self._has_repeats(conn):
                repeats, first = self._coalesce(conn, node_id, kind, state, message)
                columns += ", repeats, first_ts"
                values += (repeats, first)
        marks = ", ".join("?" * len(values))
        conn.execute(f"INSERT INTO events ({columns}) VALUES ({marks})", values)  # noqa: S608

    def _coalesce(
        self,
        conn: sqlite3.Connection,
        node_id: str | None,
        kind: str,
        state: str | None,
        message: str,
    ) -> tuple[int, float | None]:
        """The same event as this node's last one: that row goes, its count comes along
        (the new row gets a new sequence number, so every watcher sees it)."""
        row = conn.execute(
            "SELECT seq, ts, kind, state, message, origin, repeats, first_ts FROM events "
            "WHERE node_id IS ? ORDER BY seq DESC LIMIT 1",
            (node_id,),
        ).fetchone()
        if row is None or (row["kind"], row["state"], row["message"], row["origin"]) != (
            kind,
            state,
            message,
            self.origin,
        ):
            return 1, None
        conn.execute("DELETE FROM events WHERE seq = ?", (row["seq"],))
        return row["repeats"] + 1, row["first_ts"] if row["first_ts"] is not None else row["ts"]

    _repeats_column = False

    def _has_repeats(self, conn: sqlite3.Connection) -> bool:
        if not self._repeats_column:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
            self._repeats_column = "repeats" in columns
        return self._repeats_column

    _origin_column = False

    def _has_origin(self, conn: sqlite3.Connection) -> bool:
        # Migrations before schema 3 write events too, before the column exists.
        if not self._origin_column:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
            self._origin_column = "origin" in columns
        return self._origin_column

    def _consume(self, conn: sqlite3.Connection, rec: NodeRecord, grant: str, now: float) -> None:
        """Spend what admits ``rec`` (a token's or a window's use): the trust tables'."""
        raise NotImplementedError

    def _get(self, conn: sqlite3.Connection, node_id: str) -> NodeRecord | None:
        rows = list(
            conn.execute(
                f"SELECT *, {PRESENT} FROM nodes WHERE node_id = :id",  # noqa: S608
                {"id": node_id, "now": time.time()},
            )
        )
        return record_of(rows[0]) if rows else None

    @staticmethod
    def _put(conn: sqlite3.Connection, rec: NodeRecord) -> None:
        values = rec.to_json()
        cols = ", ".join(NODE_COLUMNS)
        marks = ", ".join(f":{c}" for c in NODE_COLUMNS)
        conn.execute(f"INSERT OR REPLACE INTO nodes ({cols}) VALUES ({marks})", values)  # noqa: S608

    # -- lockdown ------------------------------------------------------------------------

    def set_lockdown(self, scope: str, locked: bool, reason: str) -> None:
        word = "on" if locked else "off"
        what = "all registration" if scope == GLOBAL_SCOPE else f"registration of role {scope}"
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO lockdown (scope, locked, changed, reason) "
                "VALUES (?, ?, ?, ?)",
                (scope, int(locked), time.time(), reason),
            )
            self._event(
                conn,
                None,
                "lockdown",
                None,
                f"lockdown {word} for {what}" + (f": {reason}" if reason else ""),
                {"scope": scope, "locked": locked},
            )

    def lockdown(self) -> dict[str, bool]:
        return {r["scope"]: bool(r["locked"]) for r in self._read("SELECT * FROM lockdown")}

    # -- events --------------------------------------------------------------------------

    def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None,
        state: str | None,
    ) -> None:
        with self._write() as conn:
            self._event(conn, node_id, kind, state, message, data or {})

    def events(
        self, after: int, node_id: str | None, limit: int, origin_not: str | None = None
    ) -> list[Event]:
        sql = "SELECT * FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if node_id is not None:
            sql += " AND node_id = ?"
            params.append(node_id)
        if origin_not is not None:
            sql += " AND origin != ?"
            params.append(origin_not)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [_event_of(r) for r in self._read(sql, tuple(params))]

    def last_events(self, count: int, node_id: str | None) -> list[Event]:
        sql = "SELECT * FROM events"
        params: list[Any] = []
        if node_id is not None:
            sql += " WHERE node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(count)
        return [_event_of(r) for r in reversed(self._read(sql, tuple(params)))]

    def prune_events(self, keep: int, max_age: float | None) -> int:
        """Delete all but the newest ``keep`` events, and those older than ``max_age``."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            cutoff = row[0] if row is not None else 0
            if max_age is not None:
                young = conn.execute(
                    "SELECT seq FROM events WHERE ts >= ? ORDER BY seq LIMIT 1",
                    (time.time() - max_age,),
                ).fetchone()
                last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
                cutoff = max(cutoff, young[0] - 1 if young is not None else last)
            if cutoff <= 0:
                return 0
            return conn.execute("DELETE FROM events WHERE seq <= ?", (cutoff,)).rowcount

    def last_seq(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])
