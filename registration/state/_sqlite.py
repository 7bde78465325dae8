"""The embedded state store: sqlite (WAL), behind the async :class:`StateStore` contract.

Every write is one transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a node's state
change and the event that explains it land together or not at all, and a
compare-and-set reads and writes the row inside the same transaction.  The
database runs in WAL mode so the CLI can read while the daemon writes.

:class:`SqliteStore` owns a one-thread executor; the blocking work is in the
private :class:`_Database`.  One daemon per store: :meth:`SqliteStore.lock_registrar`
takes an exclusive ``flock`` on ``daemon.lock`` beside the database, which the
kernel releases when the holder dies, so a second daemon is refused while the
first runs, and a restarted daemon knows every claim it finds is a dead one's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, ParamSpec, TypeVar

from .._exceptions import AlreadyRunning, NodeNotFound, StateError
from .._threads import ThreadLimiter
from ._contract import GLOBAL_SCOPE
from ._ingest import Absorbed, absorb
from ._machine import Change, LostRace, NodeState, apply_change
from ._records import Event, NodeRecord, Source, Token, Tunnel, Window
from ._schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["CLAIM_LEASE", "WATCH_INTERVAL", "SqliteStore"]

BUSY_TIMEOUT_MS: Final = 5000
#: Seconds a claim lasts unless renewed (the daemon renews every third of it).
CLAIM_LEASE: Final = 30.0
#: Seconds between checks for events committed by other processes (lockdown switches,
#: manual registrations, retries, forgets): the one polling interval of this backend.
WATCH_INTERVAL: Final = 0.25
LOCK_FILE: Final = "daemon.lock"

P = ParamSpec("P")
T = TypeVar("T")

_NODE_COLUMNS: Final = tuple(f.name for f in dataclasses.fields(NodeRecord) if f.name != "present")
_PRESENT: Final = (
    "EXISTS (SELECT 1 FROM presence p WHERE p.node_id = nodes.node_id "
    "AND (p.expires IS NULL OR p.expires > :now)) AS present"
)


def _record(row: sqlite3.Row) -> NodeRecord:
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


def _expiry(now: float, lease: float | None) -> float | None:
    return None if lease is None else now + lease


def _event(row: sqlite3.Row) -> Event:
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
    )


class _Database:
    """One sqlite connection; blocking.  Only :class:`SqliteStore` calls it."""

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
        columns = "ts, node_id, kind, state, message, data"
        values: tuple[Any, ...] = (
            time.time(),
            node_id,
            kind,
            state,
            message,
            json.dumps(dict(data), default=str),
        )
        if self._has_origin(conn):
            columns += ", origin"
            values += (self.origin,)
        marks = ", ".join("?" * len(values))
        conn.execute(f"INSERT INTO events ({columns}) VALUES ({marks})", values)  # noqa: S608

    _origin_column = False

    def _has_origin(self, conn: sqlite3.Connection) -> bool:
        # Migrations before schema 3 write events too, before the column exists.
        if not self._origin_column:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
            self._origin_column = "origin" in columns
        return self._origin_column

    def _get(self, conn: sqlite3.Connection, node_id: str) -> NodeRecord | None:
        rows = list(
            conn.execute(
                f"SELECT *, {_PRESENT} FROM nodes WHERE node_id = :id",  # noqa: S608
                {"id": node_id, "now": time.time()},
            )
        )
        return _record(rows[0]) if rows else None

    @staticmethod
    def _put(conn: sqlite3.Connection, rec: NodeRecord) -> None:
        values = rec.to_json()
        cols = ", ".join(_NODE_COLUMNS)
        marks = ", ".join(f":{c}" for c in _NODE_COLUMNS)
        conn.execute(f"INSERT OR REPLACE INTO nodes ({cols}) VALUES ({marks})", values)  # noqa: S608

    # -- nodes --------------------------------------------------------------------------

    def get(self, node_id: str) -> NodeRecord | None:
        with self._lock:
            try:
                return self._get(self._conn, node_id)
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: read failed: {exc}") from exc

    def find(self, ref: str) -> NodeRecord:
        exact = self.get(ref)
        if exact is not None:
            return exact
        like = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read(
            f"SELECT *, {_PRESENT} FROM nodes "  # noqa: S608
            "WHERE name = :ref OR ip = :ref OR node_id LIKE :like ESCAPE '\\'",
            {"ref": ref, "like": like, "now": time.time()},
        )
        if len(rows) == 1:
            return _record(rows[0])
        if not rows:
            raise NodeNotFound(f"no node {ref!r} (see `autoreg list`)")
        ids = ", ".join(r["node_id"] for r in rows)
        raise NodeNotFound(f"{ref!r} is ambiguous: {ids}")

    def nodes(self) -> list[NodeRecord]:
        rows = self._read(
            f"SELECT *, {_PRESENT} FROM nodes ORDER BY role, cluster, first_seen",  # noqa: S608
            {"now": time.time()},
        )
        return [_record(r) for r in rows]

    def ingest(
        self,
        ann: Any,
        source: Source,
        instance: str,
        observer: str,
        lease: float | None,
        auth: str,
        token_id: str | None,
    ) -> Absorbed:
        now = time.time()
        with self._write() as conn:
            existing = self._get(conn, ann.node_id)
            others = conn.execute(
                "SELECT 1 FROM presence WHERE node_id = ? AND (expires IS NULL OR expires > ?) "
                "AND NOT (source = ? AND instance = ? AND observer = ?) LIMIT 1",
                (ann.node_id, now, source.value, instance, observer),
            ).fetchone()
            result = absorb(
                existing,
                ann,
                source=source,
                instance=instance,
                now=now,
                was_present=existing is not None and existing.present,
                others_present=others is not None,
                auth=auth,
                token_id=token_id,
            )
            self._put(conn, result.record)
            conn.execute(
                "INSERT OR REPLACE INTO presence (node_id, source, instance, observer, expires) "
                "VALUES (?, ?, ?, ?, ?)",
                (ann.node_id, source.value, instance, observer, _expiry(now, lease)),
            )
            if result.kind is not None and result.message is not None:
                self._event(
                    conn,
                    ann.node_id,
                    result.kind,
                    result.record.state.value,
                    result.message,
                    result.data,
                )
        return result

    def withdraw(self, source: Source, instance: str, observer: str) -> NodeRecord | None:
        with self._write() as conn:
            rows = list(
                conn.execute(
                    "SELECT node_id FROM presence WHERE source = ? AND instance = ? "
                    "AND observer = ?",
                    (source.value, instance, observer),
                )
            )
            if not rows:
                return None
            node_id = rows[0][0]
            conn.execute(
                "DELETE FROM presence WHERE source = ? AND instance = ? AND observer = ?",
                (source.value, instance, observer),
            )
            rec = self._get(conn, node_id)
            if rec is None or rec.present:
                return None
            self._event(
                conn,
                node_id,
                "withdrawn",
                rec.state.value,
                f"{rec.label} withdrew its announcement (goodbye from {instance})",
                {"source": source.value, "instance": instance},
            )
            return rec

    def clear_presence(self, source: Source, observer: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM presence WHERE source = ? AND observer = ?", (source.value, observer)
            )

    def change(self, node_id: str, change: Change) -> NodeRecord:
        now = time.time()
        with self._write() as conn:
            rec = self._get(conn, node_id)
            owner_alive = not (
                self.registrar_lock is not None
                and rec is not None
                and rec.claim_owner not in (None, change.owner)
            )
            fresh = apply_change(rec, change, now=now, lease=CLAIM_LEASE, owner_alive=owner_alive)
            if fresh.state.holds_slot and not change.expect.holds_slot:
                # One host key is one node: checked in the transaction that takes the slot.
                keyholder = self._key_holder(conn, fresh.fingerprint, exclude=node_id)
                if keyholder is not None:
                    raise LostRace(
                        f"host key {fresh.fingerprint} is {keyholder.state.value} as "
                        f"{keyholder.label}"
                    )
            if change.exclusive is not None:
                role, cluster = change.exclusive
                holder = self._slot_holder(conn, role, cluster, exclude=node_id)
                if holder is not None:
                    raise LostRace(
                        f"{holder.label} holds the {role} slot"
                        + (f" of cluster {cluster}" if cluster else "")
                    )
            if change.grant is not None and fresh.state.holds_slot:
                if change.grant != (rec.granted if rec else None):
                    self._consume(conn, fresh, change.grant, now)
                fresh = dataclasses.replace(fresh, granted=change.grant)
            self._put(conn, fresh)
            self._event(
                conn,
                node_id,
                change.kind,
                fresh.state.value,
                change.event_message(fresh),
                change.data,
            )
        return fresh

    def _slot_holder(
        self, conn: sqlite3.Connection, role: str, cluster: str | None, *, exclude: str
    ) -> NodeRecord | None:
        holding = [s.value for s in NodeState if s.holds_slot]
        params: dict[str, Any] = {"role": role, "exclude": exclude, "now": time.time()}
        params.update({f"s{i}": s for i, s in enumerate(holding)})
        states = ", ".join(f":s{i}" for i in range(len(holding)))
        sql = (
            f"SELECT *, {_PRESENT} FROM nodes WHERE role = :role "  # noqa: S608
            f"AND node_id != :exclude AND state IN ({states})"
        )
        if cluster is not None:
            sql += " AND cluster = :cluster"
            params["cluster"] = cluster
        rows = list(conn.execute(sql + " LIMIT 1", params))
        return _record(rows[0]) if rows else None

    def _key_holder(
        self, conn: sqlite3.Connection, fingerprint: str, *, exclude: str
    ) -> NodeRecord | None:
        holding = [s.value for s in NodeState if s.holds_slot]
        params: dict[str, Any] = {"fp": fingerprint, "exclude": exclude, "now": time.time()}
        params.update({f"s{i}": s for i, s in enumerate(holding)})
        states = ", ".join(f":s{i}" for i in range(len(holding)))
        rows = list(
            conn.execute(
                f"SELECT *, {_PRESENT} FROM nodes WHERE fingerprint = :fp "  # noqa: S608
                f"AND node_id != :exclude AND state IN ({states}) LIMIT 1",
                params,
            )
        )
        return _record(rows[0]) if rows else None

    def _consume(self, conn: sqlite3.Connection, rec: NodeRecord, grant: str, now: float) -> None:
        """Spend one use of the token or window that admits ``rec`` (in the caller's
        transaction), or LostRace when none is left."""
        kind, _, ident = grant.partition(":")
        if kind == "token":
            token = self._token(conn, ident)
            refusal = (
                f"token {ident} does not exist any more"
                if token is None
                else token.refusal(rec.node_id, rec.fingerprint, rec.role, rec.cluster, now)
            )
            if refusal:
                raise LostRace(refusal)
            conn.execute(
                "INSERT OR IGNORE INTO token_uses (token_id, node_id, fingerprint, at) "
                "VALUES (?, ?, ?, ?)",
                (ident, rec.node_id, rec.fingerprint, now),
            )
            self._event(
                conn,
                None,
                "token",
                None,
                f"token {ident} used by {rec.label} ({rec.fingerprint})",
                {"token": ident, "node_id": rec.node_id, "fingerprint": rec.fingerprint},
            )
        elif kind == "window":
            window = self._window(conn, ident)
            if window is None or not window.is_open(now):
                raise LostRace(f"install window {ident} is closed")
            used = window.used + 1
            conn.execute("UPDATE windows SET used = ? WHERE id = ?", (used, ident))
            if window.max_uses is not None and used >= window.max_uses:
                self._close_window(conn, window, now, f"sealed after {used} registrations")

    def settle_move(
        self,
        node_id: str,
        generation: str,
        moved: tuple[str, int, str | None],
        adopt: bool,
        message: str,
    ) -> NodeRecord | None:
        with self._write() as conn:
            rec = self._get(conn, node_id)
            if rec is None or rec.generation != generation or rec.moved != moved:
                return None  # forgotten, or it moved again meanwhile: nothing to settle
            ip, port, name = moved
            fresh = dataclasses.replace(
                rec,
                ip=ip if adopt else rec.ip,
                port=port if adopt else rec.port,
                name=name if adopt else rec.name,
                path=None if adopt else rec.path,
                moved_ip=None,
                moved_port=None,
                moved_name=None,
            )
            self._put(conn, fresh)
            self._event(
                conn,
                node_id,
                "moved" if adopt else "move-refused",
                fresh.state.value,
                message,
                {"to": list(moved), "adopted": adopt},
            )
            return fresh

    def note_path(self, node_id: str, path: str) -> NodeRecord | None:
        with self._write() as conn:
            rec = self._get(conn, node_id)
            if rec is None or rec.path == path:
                return rec
            conn.execute("UPDATE nodes SET path = ? WHERE node_id = ?", (path, node_id))
            self._event(
                conn,
                node_id,
                "path",
                rec.state.value,
                f"{rec.label}: reached via {path}" + (f" (was {rec.path})" if rec.path else ""),
                {"path": path, "was": rec.path},
            )
            return dataclasses.replace(rec, path=path)

    def forget(self, node_id: str, message: str) -> NodeRecord | None:
        with self._write() as conn:
            rec = self._get(conn, node_id)
            if rec is None:
                return None
            conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
            conn.execute("DELETE FROM presence WHERE node_id = ?", (node_id,))
            self._event(conn, node_id, "forgotten", None, message, {"was": rec.state.value})
            return rec

    # -- trust -------------------------------------------------------------------------

    @staticmethod
    def _token_from(conn: sqlite3.Connection, row: sqlite3.Row) -> Token:
        uses = tuple(
            (r["node_id"], r["fingerprint"], r["at"])
            for r in conn.execute(
                "SELECT * FROM token_uses WHERE token_id = ? ORDER BY at", (row["id"],)
            )
        )
        return Token(
            token_id=row["id"],
            key=bytes(row["key"]),
            roles=tuple(r for r in row["roles"].split(",") if r),
            cluster=row["cluster"],
            uses=row["uses"],
            expires=row["expires"],
            created=row["created"],
            description=row["description"],
            revoked=row["revoked"],
            used_by=uses,
        )

    def _token(self, conn: sqlite3.Connection, token_id: str) -> Token | None:
        rows = list(conn.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)))
        return self._token_from(conn, rows[0]) if rows else None

    def tokens(self) -> list[Token]:
        with self._lock:
            conn = self._conn
            try:
                rows = list(conn.execute("SELECT * FROM tokens ORDER BY created"))
                return [self._token_from(conn, r) for r in rows]
            except sqlite3.DatabaseError as exc:
                raise StateError(f"{self.path}: read failed: {exc}") from exc

    def create_token(self, token: Token) -> Token:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tokens (id, key, roles, cluster, uses, expires, created, "
                "description) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token.token_id,
                    token.key,
                    ",".join(token.roles),
                    token.cluster,
                    token.uses,
                    token.expires,
                    token.created,
                    token.description,
                ),
            )
            scope = "/".join(token.roles) or "any role"
            where = f" of cluster {token.cluster}" if token.cluster else ""
            self._event(
                conn,
                None,
                "token",
                None,
                f"token {token.token_id} created: {scope}{where}, {token.uses} use(s)"
                + (f" ({token.description})" if token.description else ""),
                {"token": token.token_id, **token.to_json()},
            )
        return token

    def revoke_token(self, token_id: str) -> Token | None:
        now = time.time()
        with self._write() as conn:
            token = self._token(conn, token_id)
            if token is None:
                return None
            if token.revoked is None:
                conn.execute("UPDATE tokens SET revoked = ? WHERE id = ?", (now, token_id))
                self._event(
                    conn, None, "token", None, f"token {token_id} revoked", {"token": token_id}
                )
            return self._token(conn, token_id)

    @staticmethod
    def _window_from(row: sqlite3.Row) -> Window:
        return Window(
            window_id=row["id"],
            scope=row["scope"],
            opened=row["opened"],
            expires=row["expires"],
            max_uses=row["max_uses"],
            used=row["used"],
            closed=row["closed"],
            closed_reason=row["closed_reason"],
        )

    def _window(self, conn: sqlite3.Connection, window_id: str) -> Window | None:
        rows = list(conn.execute("SELECT * FROM windows WHERE id = ?", (window_id,)))
        return self._window_from(rows[0]) if rows else None

    def windows(self) -> list[Window]:
        return [self._window_from(r) for r in self._read("SELECT * FROM windows ORDER BY opened")]

    def _close_window(
        self, conn: sqlite3.Connection, window: Window, now: float, reason: str
    ) -> None:
        conn.execute(
            "UPDATE windows SET closed = ?, closed_reason = ? WHERE id = ? AND closed IS NULL",
            (now, reason, window.window_id),
        )
        what = "every role" if window.scope == "*" else f"role {window.scope}"
        self._event(
            conn,
            None,
            "window",
            None,
            f"install window {window.window_id} for {what} closed: {reason}",
            {"window": window.window_id, "scope": window.scope, "open": False},
        )

    def open_window(self, window: Window) -> Window:
        with self._write() as conn:
            for row in conn.execute(
                "SELECT * FROM windows WHERE scope = ? AND closed IS NULL", (window.scope,)
            ).fetchall():
                self._close_window(conn, self._window_from(row), window.opened, "replaced")
            conn.execute(
                "INSERT INTO windows (id, scope, opened, expires, max_uses) VALUES (?, ?, ?, ?, ?)",
                (window.window_id, window.scope, window.opened, window.expires, window.max_uses),
            )
            what = "every role" if window.scope == "*" else f"role {window.scope}"
            limit = "" if window.max_uses is None else f", at most {window.max_uses} registrations"
            self._event(
                conn,
                None,
                "window",
                None,
                f"install window {window.window_id} opened for {what} until "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(window.expires))}{limit}: "
                "unsigned announcements are admitted",
                {"window": window.window_id, "scope": window.scope, "open": True},
            )
        return window

    def close_windows(self, scope: str | None, reason: str) -> list[Window]:
        now = time.time()
        closed = []
        with self._write() as conn:
            sql = "SELECT * FROM windows WHERE closed IS NULL"
            params: tuple[Any, ...] = ()
            if scope is not None:
                sql += " AND scope = ?"
                params = (scope,)
            for row in conn.execute(sql, params).fetchall():
                window = self._window_from(row)
                reason_here = "its time ran out" if window.expires <= now else reason
                self._close_window(conn, window, now, reason_here)
                closed.append(window)
        return closed

    def deny(self, node_id: str, fingerprint: str, reason: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO denied (fingerprint, node_id, at, reason) "
                "VALUES (?, ?, ?, ?)",
                (fingerprint, node_id, time.time(), reason),
            )
            self._event(
                conn,
                node_id,
                "deny",
                None,
                f"host key {fingerprint} denied by admin"
                + (f": {reason}" if reason else "")
                + "; refused whenever it announces",
                {"fingerprint": fingerprint},
            )

    def undeny(self, fingerprint: str, node_id: str | None) -> bool:
        with self._write() as conn:
            cur = conn.execute("DELETE FROM denied WHERE fingerprint = ?", (fingerprint,))
            if cur.rowcount:
                self._event(
                    conn, node_id, "deny", None,
                    f"host key {fingerprint} is no longer denied", {"fingerprint": fingerprint},
                )  # fmt: skip
            return cur.rowcount > 0

    def denied(self) -> dict[str, str]:
        return {r["fingerprint"]: r["reason"] for r in self._read("SELECT * FROM denied")}

    def setting(self, key: str) -> str | None:
        try:
            rows = self._read("SELECT value FROM settings WHERE key = ?", (key,))
        except StateError:
            return None  # a store older than settings (read-only): nothing set
        return str(rows[0][0]) if rows else None

    def set_setting(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))
            self._event(conn, None, "setting", None, f"{key} = {value}", {key: value})

    def approve(self, node_id: str, fingerprint: str, generation: str) -> NodeRecord:
        """Pin ``fingerprint`` as the node's approved key and decide it anew; for a
        conflict, ``fingerprint`` picks which of the two keys is the node."""
        now = time.time()
        with self._write() as conn:
            rec = self._get(conn, node_id)
            if rec is None or rec.generation != generation:
                raise LostRace(f"{node_id} was forgotten or announced anew meanwhile")
            if fingerprint != rec.fingerprint:
                contender = json.loads(rec.contender) if rec.contender else {}
                if rec.state is not NodeState.CONFLICT or contender.get("fingerprint") != (
                    fingerprint
                ):
                    raise LostRace(
                        f"{node_id} announces {rec.fingerprint}, not {fingerprint}: approve "
                        "the key it announces (`autoreg pending` shows it)"
                    )
                rec = dataclasses.replace(
                    rec,
                    fingerprint=contender["fingerprint"],
                    key_type=contender["key_type"],
                    ip=contender["ip"],
                    port=contender["port"],
                    name=contender.get("name"),
                )
            conn.execute("DELETE FROM denied WHERE fingerprint = ?", (fingerprint,))
            fresh = apply_change(
                dataclasses.replace(rec, contender=None),
                Change(
                    expect=rec.state,
                    to=NodeState.SEEN,
                    reason=f"approved by admin with host key {fingerprint}",
                    kind="approve",
                    fields={"approved_fp": fingerprint, "attempts": 0, "next_attempt": None},
                ),
                now=now,
                lease=CLAIM_LEASE,
            )
            self._put(conn, fresh)
            self._event(
                conn,
                node_id,
                "approve",
                fresh.state.value,
                f"{fresh.label}: approved by admin with host key {fingerprint}",
                {"fingerprint": fingerprint},
            )
            return fresh

    def count(self, state: NodeState) -> int:
        return int(self._read("SELECT COUNT(*) FROM nodes WHERE state = ?", (state.value,))[0][0])

    # -- claims ------------------------------------------------------------------------

    def lock_registrar(self, owner: str) -> None:
        lock_path = self.path.with_name(LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateError(f"{lock_path}: cannot lock: {exc.strerror}") from exc
            pid = holder[0] if holder else "?"
            raise AlreadyRunning(
                f"another autoreg daemon already runs on {self.path.parent} (pid {pid}); "
                "one daemon per state directory (stop it first, or give this one its own "
                "--state-dir)"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)
        self.registrar_lock = fd

    def renew_claims(self, owner: str, lease: float) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE nodes SET claim_expires = ? WHERE claim_owner = ?",
                (time.time() + lease, owner),
            )
            return cur.rowcount

    def reclaimable(self, owner: str) -> list[NodeRecord]:
        claimed = [s.value for s in NodeState if s.claimed]
        marks = ", ".join("?" * len(claimed))
        rows = self._read(
            f"SELECT *, {_PRESENT.replace(':now', '?')} FROM nodes "  # noqa: S608
            f"WHERE state IN ({marks})",
            (time.time(), *claimed),
        )
        now = time.time()
        out = []
        for row in rows:
            rec = _record(row)
            expired = rec.claim_expires is None or rec.claim_expires <= now
            dead = self.registrar_lock is not None and rec.claim_owner != owner
            if expired or dead or rec.claim_owner == owner:
                out.append(rec)
        return out

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

    def events(self, after: int, node_id: str | None, limit: int) -> list[Event]:
        sql = "SELECT * FROM events WHERE seq > ?"
        params: list[Any] = [after]
        if node_id is not None:
            sql += " AND node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq LIMIT ?"
        params.append(limit)
        return [_event(r) for r in self._read(sql, tuple(params))]

    def last_events(self, count: int, node_id: str | None) -> list[Event]:
        sql = "SELECT * FROM events"
        params: list[Any] = []
        if node_id is not None:
            sql += " WHERE node_id = ?"
            params.append(node_id)
        sql += " ORDER BY seq DESC LIMIT ?"
        params.append(count)
        return [_event(r) for r in reversed(self._read(sql, tuple(params)))]

    def last_seq(self) -> int:
        return int(self._read("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0])

    # -- tunnels -------------------------------------------------------------------------

    def allocate_tunnel(
        self, node_id: str, public_key: str, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
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
            self._event(
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
                self._event(conn, node_id, "tunnel", None, "tunnel allocation removed", {})
            return cur.rowcount > 0


class SqliteStore:
    """The :class:`~registration.state.StateStore` contract on sqlite."""

    backend: Final = "sqlite"

    def __init__(self, db: _Database, executor: ThreadLimiter) -> None:
        self._db = db
        self._executor = executor

    @classmethod
    async def open(cls, path: Path, *, readonly: bool = False, origin: str = "") -> SqliteStore:
        executor = ThreadLimiter("autoreg-db", 1)
        try:
            db = await executor.run(_Database, path, readonly=readonly, origin=origin)
        except BaseException:
            await executor.aclose()
            raise
        return cls(db, executor)

    async def _run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._executor.run(fn, *args, **kwargs)

    @property
    def location(self) -> str:
        return str(self._db.path)

    @property
    def origin(self) -> str:
        return self._db.origin

    @property
    def path(self) -> Path:
        return self._db.path

    async def close(self) -> None:
        try:
            await self._run(self._db.close)
        finally:
            await self._executor.aclose()

    async def __aenter__(self) -> SqliteStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return await self._run(self._db.schema_version)

    async def get(self, node_id: str) -> NodeRecord | None:
        return await self._run(self._db.get, node_id)

    async def find(self, ref: str) -> NodeRecord:
        return await self._run(self._db.find, ref)

    async def nodes(self) -> list[NodeRecord]:
        return await self._run(self._db.nodes)

    async def ingest(
        self,
        ann: Any,
        *,
        source: Source,
        instance: str,
        observer: str = "",
        lease: float | None = None,
        auth: str = "",
        token_id: str | None = None,
    ) -> Absorbed:
        return await self._run(
            self._db.ingest, ann, source, instance, observer, lease, auth, token_id
        )

    async def withdraw(
        self, *, source: Source, instance: str, observer: str = ""
    ) -> NodeRecord | None:
        return await self._run(self._db.withdraw, source, instance, observer)

    async def clear_presence(self, *, source: Source, observer: str) -> None:
        await self._run(self._db.clear_presence, source, observer)

    async def change(self, node_id: str, change: Change) -> NodeRecord:
        return await self._run(self._db.change, node_id, change)

    async def note_path(self, node_id: str, path: str) -> NodeRecord | None:
        return await self._run(self._db.note_path, node_id, path)

    async def settle_move(
        self,
        node_id: str,
        *,
        generation: str,
        moved: tuple[str, int, str | None],
        adopt: bool,
        message: str,
    ) -> NodeRecord | None:
        return await self._run(self._db.settle_move, node_id, generation, moved, adopt, message)

    async def forget(self, node_id: str, *, message: str) -> NodeRecord | None:
        return await self._run(self._db.forget, node_id, message)

    async def tokens(self) -> list[Token]:
        return await self._run(self._db.tokens)

    async def create_token(self, token: Token) -> Token:
        return await self._run(self._db.create_token, token)

    async def revoke_token(self, token_id: str) -> Token | None:
        return await self._run(self._db.revoke_token, token_id)

    async def windows(self) -> list[Window]:
        return await self._run(self._db.windows)

    async def open_window(self, window: Window) -> Window:
        return await self._run(self._db.open_window, window)

    async def close_windows(self, scope: str | None, *, reason: str) -> list[Window]:
        return await self._run(self._db.close_windows, scope, reason)

    async def deny(self, node_id: str, fingerprint: str, *, reason: str = "") -> None:
        await self._run(self._db.deny, node_id, fingerprint, reason)

    async def undeny(self, fingerprint: str, *, node_id: str | None = None) -> bool:
        return await self._run(self._db.undeny, fingerprint, node_id)

    async def denied(self) -> dict[str, str]:
        return await self._run(self._db.denied)

    async def approve(self, node_id: str, *, fingerprint: str, generation: str) -> NodeRecord:
        return await self._run(self._db.approve, node_id, fingerprint, generation)

    async def count(self, state: NodeState) -> int:
        return await self._run(self._db.count, state)

    async def setting(self, key: str) -> str | None:
        return await self._run(self._db.setting, key)

    async def set_setting(self, key: str, value: str) -> None:
        await self._run(self._db.set_setting, key, value)

    async def lock_registrar(self, owner: str) -> None:
        await self._run(self._db.lock_registrar, owner)

    async def renew_claims(self, owner: str, lease: float) -> int:
        return await self._run(self._db.renew_claims, owner, lease)

    async def reclaimable(self, owner: str) -> list[NodeRecord]:
        return await self._run(self._db.reclaimable, owner)

    async def lockdown(self) -> dict[str, bool]:
        return await self._run(self._db.lockdown)

    async def set_lockdown(self, scope: str, locked: bool, *, reason: str = "") -> None:
        await self._run(self._db.set_lockdown, scope, locked, reason)

    async def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None = None,
        *,
        state: str | None = None,
    ) -> None:
        await self._run(self._db.add_event, node_id, kind, message, data, state)

    async def events(
        self, *, after: int = 0, node_id: str | None = None, limit: int = 1000
    ) -> list[Event]:
        return await self._run(self._db.events, after, node_id, limit)

    async def last_events(self, count: int, *, node_id: str | None = None) -> list[Event]:
        return await self._run(self._db.last_events, count, node_id)

    async def watch(self, *, after: int) -> AsyncIterator[list[Event]]:
        """Poll for new events every :data:`WATCH_INTERVAL` (sqlite has no push)."""
        last = after
        while True:
            if await self._run(self._db.last_seq) > last:
                batch = await self._run(self._db.events, last, None, 10_000)
                if batch:
                    last = batch[-1].seq
                    yield batch
                    continue
            await asyncio.sleep(WATCH_INTERVAL)

    async def allocate_tunnel(
        self, node_id: str, public_key: str, *, count: int, port_range: tuple[int, int]
    ) -> Tunnel:
        return await self._run(self._db.allocate_tunnel, node_id, public_key, count, port_range)

    async def tunnel(self, node_id: str) -> Tunnel | None:
        return await self._run(self._db.tunnel, node_id)

    async def tunnels(self) -> list[Tunnel]:
        return await self._run(self._db.tunnels)

    async def remove_tunnel(self, node_id: str) -> bool:
        return await self._run(self._db.remove_tunnel, node_id)
