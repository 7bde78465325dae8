"""The sqlite backend's node tables: nodes, presence, state changes and claims."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Final

from .._exceptions import NodeNotFound, StateError
from ._ingest import Absorbed, absorb
from ._lockfile import LOCK_FILE, lock_state_dir
from ._machine import Change, LostRace, NodeState, apply_change
from ._records import Arrival, Departure, NodeRecord, Note, Source
from ._sqlite_base import PRESENT, Connection, expiry, record_of

__all__ = ["CLAIM_LEASE", "LOCK_FILE", "NodeTables"]

#: Seconds a claim lasts unless renewed (the daemon renews every third of it).
CLAIM_LEASE: Final = 30.0


class NodeTables(Connection):
    """Nodes and their presence, compare-and-set changes, claims, one daemon per store."""

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
            f"SELECT *, {PRESENT} FROM nodes "  # noqa: S608
            "WHERE name = :ref OR ip = :ref OR node_id LIKE :like ESCAPE '\\'",
            {"ref": ref, "like": like, "now": time.time()},
        )
        if len(rows) == 1:
            return record_of(rows[0])
        if not rows:
            raise NodeNotFound(f"no node {ref!r} (see `autoreg list`)")
        ids = ", ".join(r["node_id"] for r in rows)
        raise NodeNotFound(f"{ref!r} is ambiguous: {ids}")

    def nodes(self) -> list[NodeRecord]:
        rows = self._read(
            f"SELECT *, {PRESENT} FROM nodes ORDER BY role, cluster, first_seen",  # noqa: S608
            {"now": time.time()},
        )
        return [record_of(r) for r in rows]

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
        arrival = Arrival(
            ann=ann,
            source=source,
            instance=instance,
            observer=observer,
            lease=lease,
            auth=auth,
            token_id=token_id,
        )
        with self._write() as conn:
            return self._arrive(conn, arrival, time.time())

    def ingest_many(
        self, items: Sequence[Arrival | Departure | Note]
    ) -> list[Absorbed | NodeRecord | None]:
        """A burst in one transaction: each arrival absorbed, each goodbye noted."""
        now = time.time()
        out: list[Absorbed | NodeRecord | None] = []
        with self._write() as conn:
            for item in items:
                if isinstance(item, Arrival):
                    out.append(self._arrive(conn, item, now))
                elif isinstance(item, Departure):
                    out.append(self._depart(conn, item))
                else:
                    self._event(conn, item.node_id, item.kind, None, item.message, item.data)
                    out.append(None)
        return out

    def _arrive(self, conn: sqlite3.Connection, item: Arrival, now: float) -> Absorbed:
        ann, source = item.ann, item.source
        existing = self._get(conn, ann.node_id)
        others = conn.execute(
            "SELECT 1 FROM presence WHERE node_id = ? AND (expires IS NULL OR expires > ?) "
            "AND NOT (source = ? AND instance = ? AND observer = ?) LIMIT 1",
            (ann.node_id, now, source.value, item.instance, item.observer),
        ).fetchone()
        result = absorb(
            existing,
            ann,
            source=source,
            instance=item.instance,
            now=now,
            was_present=existing is not None and existing.present,
            others_present=others is not None,
            auth=item.auth,
            token_id=item.token_id,
        )
        self._put(conn, result.record)
        conn.execute(
            "INSERT OR REPLACE INTO presence (node_id, source, instance, observer, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (ann.node_id, source.value, item.instance, item.observer, expiry(now, item.lease)),
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
            return self._depart(
                conn, Departure(source=source, instance=instance, observer=observer)
            )

    def _depart(self, conn: sqlite3.Connection, item: Departure) -> NodeRecord | None:
        where = (item.source.value, item.instance, item.observer)
        rows = list(
            conn.execute(
                "SELECT node_id FROM presence WHERE source = ? AND instance = ? AND observer = ?",
                where,
            )
        )
        if not rows:
            return None
        node_id = rows[0][0]
        conn.execute(
            "DELETE FROM presence WHERE source = ? AND instance = ? AND observer = ?", where
        )
        rec = self._get(conn, node_id)
        if rec is None or rec.present:
            return None
        self._event(
            conn,
            node_id,
            "withdrawn",
            rec.state.value,
            f"{rec.label} withdrew its announcement (goodbye from {item.instance})",
            {"source": item.source.value, "instance": item.instance},
        )
        return rec

    def presence(self) -> list[tuple[str, str, str, str, float | None]]:
        """Every presence row: (node id, source, instance, observer, expires)."""
        rows = self._read("SELECT node_id, source, instance, observer, expires FROM presence")
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def clear_presence(self, source: Source, observer: str) -> None:
        with self._write() as conn:
            conn.execute(
                "DELETE FROM presence WHERE source = ? AND observer = ?", (source.value, observer)
            )

    def change(self, node_id: str, change: Change) -> NodeRecord:
        with self._write() as conn:
            return self._change(conn, node_id, change, time.time())

    def change_many(self, changes: Sequence[tuple[str, Change]]) -> list[NodeRecord | LostRace]:
        """Each change on its own terms (a lost race drops that one only), one commit."""
        now = time.time()
        out: list[NodeRecord | LostRace] = []
        with self._write() as conn:
            for node_id, change in changes:
                conn.execute("SAVEPOINT one_change")
                try:
                    out.append(self._change(conn, node_id, change, now))
                except LostRace as exc:
                    conn.execute("ROLLBACK TO one_change")
                    out.append(exc)
                finally:
                    conn.execute("RELEASE one_change")
        return out

    def _change(
        self, conn: sqlite3.Connection, node_id: str, change: Change, now: float
    ) -> NodeRecord:
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
                    f"host key {fresh.fingerprint} is {keyholder.state.value} as {keyholder.label}"
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
            f"SELECT *, {PRESENT} FROM nodes WHERE role = :role "  # noqa: S608
            f"AND node_id != :exclude AND state IN ({states})"
        )
        if cluster is not None:
            sql += " AND cluster = :cluster"
            params["cluster"] = cluster
        rows = list(conn.execute(sql + " LIMIT 1", params))
        return record_of(rows[0]) if rows else None

    def _key_holder(
        self, conn: sqlite3.Connection, fingerprint: str, *, exclude: str
    ) -> NodeRecord | None:
        holding = [s.value for s in NodeState if s.holds_slot]
        params: dict[str, Any] = {"fp": fingerprint, "exclude": exclude, "now": time.time()}
        params.update({f"s{i}": s for i, s in enumerate(holding)})
        states = ", ".join(f":s{i}" for i in range(len(holding)))
        rows = list(
            conn.execute(
                f"SELECT *, {PRESENT} FROM nodes WHERE fingerprint = :fp "  # noqa: S608
                f"AND node_id != :exclude AND state IN ({states}) LIMIT 1",
                params,
            )
        )
        return record_of(rows[0]) if rows else None

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

    def count(self, state: NodeState) -> int:
        return int(self._read("SELECT COUNT(*) FROM nodes WHERE state = ?", (state.value,))[0][0])

    # -- claims ------------------------------------------------------------------------

    def lock_registrar(self, owner: str) -> None:
        self.registrar_lock = lock_state_dir(self.path.parent, owner)

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
            f"SELECT *, {PRESENT.replace(':now', '?')} FROM nodes "  # noqa: S608
            f"WHERE state IN ({marks})",
            (time.time(), *claimed),
        )
        now = time.time()
        out = []
        for row in rows:
            rec = record_of(row)
            expired = rec.claim_expires is None or rec.claim_expires <= now
            dead = self.registrar_lock is not None and rec.claim_owner != owner
            if expired or dead or rec.claim_owner == owner:
                out.append(rec)
        return out
