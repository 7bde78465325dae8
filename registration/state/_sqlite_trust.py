"""The sqlite backend's trust tables: tokens and their uses, install windows, denied
keys, approvals, settings."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from typing import Any

from .._exceptions import StateError
from ._machine import Change, LostRace, NodeState, apply_change
from ._records import NodeRecord, Token, Window
from ._sqlite_base import Connection

__all__ = ["TrustTables"]


class TrustTables(Connection):
    """Join tokens, install windows, denied host keys, approvals, settings."""

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

    def settings(self) -> dict[str, str]:
        try:
            return {str(r[0]): str(r[1]) for r in self._read("SELECT key, value FROM settings")}
        except StateError:
            return {}  # a store older than settings (read-only): nothing set

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
                lease=0.0,  # seen holds no claim
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
