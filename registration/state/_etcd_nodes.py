"""The etcd backend's nodes: records, presence, compare-and-set changes, claims.

A claim is the key ``claims/<id>`` attached to the claiming registrar's lease:
taking it (``queued → registering``) and every later step of that registration
write it again with the registrar's *current* lease in the same transaction as the
state change, so etcd itself refuses the step once that lease is gone (a put with
an expired lease fails), and ``lease_for`` refuses it already when the lease may
run out within :data:`~._etcd_base.FENCE_MARGIN`.  When a registrar dies its lease
expires, etcd deletes its claim keys, and the node is reclaimable (``reclaimable``,
``watch_claims``): recovery then applies the policy of a daemon restart.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from .._exceptions import NodeNotFound
from ._etcd_base import EtcdBase
from ._etcd_io import LeaseLost
from ._etcd_keys import dump, load, node_of, node_value, presence_value
from ._etcd_txn import Txn
from ._ingest import Absorbed, absorb
from ._machine import Change, IllegalTransition, LostRace, NodeState, apply_change
from ._records import Arrival, Departure, NodeRecord, Note, Source

__all__ = ["EtcdNodes"]


class EtcdNodes(EtcdBase):
    """Nodes and their presence, compare-and-set changes, claims."""

    # -- reading a node ------------------------------------------------------------------

    def _present(self, tx: Txn, node_id: str, now: float) -> bool:
        for key, raw in tx.range(self.keys.presence(node_id), compare=False):
            expires = load(raw, key).get("expires")
            if expires is None or expires > now:
                return True
        return False

    def node(self, tx: Txn, node_id: str, now: float) -> NodeRecord | None:
        """The node as of ``tx`` (compared at commit), its presence and its claim."""
        raw = tx.get(self.keys.node(node_id))
        if raw is None:
            return None
        rec = node_of(raw, self.keys.node(node_id))
        claim = tx.get(self.keys.claim(node_id))
        if claim is not None:
            owner = load(claim, self.keys.claim(node_id)).get("owner")
            rec = dataclasses.replace(
                rec, claim_owner=owner, claim_expires=now + self.settings.lease_ttl
            )
        elif rec.claim_owner is not None:
            rec = dataclasses.replace(rec, claim_expires=None)  # its lease ran out
        return dataclasses.replace(rec, present=self._present(tx, node_id, now))

    def _prefetch_nodes(self, tx: Txn, ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(ids))
        tx.prefetch(
            [k for i in ids for k in (self.keys.node(i), self.keys.claim(i))],
            [self.keys.presence(i) for i in ids],
        )

    def put_node(self, tx: Txn, old: NodeRecord | None, new: NodeRecord) -> None:
        """Write ``new`` over ``old`` in ``tx``, with the indexes (state, slots, keys)."""
        keys = self.keys
        tx.put(keys.node(new.node_id), node_value(new))
        if old is None or old.state is not new.state:
            if old is not None:
                tx.delete(keys.state(old.state, old.node_id))
            tx.put(keys.state(new.state, new.node_id), b"")
        old_slot = old is not None and old.state.holds_slot
        same = old is not None and (old.role, old.cluster, old.fingerprint) == (
            new.role, new.cluster, new.fingerprint,
        )  # fmt: skip
        if old is not None and old_slot and not (new.state.holds_slot and same):
            tx.delete(keys.holding(old.role, old.cluster, old.node_id))
            tx.delete(keys.fp(old.fingerprint, old.node_id))
        if new.state.holds_slot and not (old_slot and same):
            tx.put(keys.holding(new.role, new.cluster, new.node_id), b"")
            tx.put(keys.fp(new.fingerprint, new.node_id), b"")

    def get(self, node_id: str) -> NodeRecord | None:
        def read(tx: Txn) -> NodeRecord | None:
            self._prefetch_nodes(tx, [node_id])
            return self.node(tx, node_id, time.time())

        return self._read(read)

    def nodes(self) -> list[NodeRecord]:
        def read(tx: Txn) -> list[NodeRecord]:
            now = time.time()
            tx.prefetch(prefixes=[self.keys.nodes, self.keys.claims, self.keys.presence_all])
            present: set[str] = set()
            for key, raw in tx.range(self.keys.presence_all, compare=False):
                expires = load(raw, key).get("expires")
                if expires is None or expires > now:
                    present.add(self.keys.last(key[: key.index(b"/", len(self.keys.presence_all))]))
            claims = {
                self.keys.last(k): load(v, k).get("owner")
                for k, v in tx.range(self.keys.claims, compare=False)
            }
            out = []
            for key, raw in tx.range(self.keys.nodes, compare=False):
                rec = node_of(raw, key)
                owner = claims.get(rec.node_id)
                out.append(dataclasses.replace(
                    rec, present=rec.node_id in present,
                    claim_owner=owner or rec.claim_owner,
                    claim_expires=now + self.settings.lease_ttl if owner else None,
                ))  # fmt: skip
            return sorted(out, key=lambda r: (r.role, r.cluster or "", r.first_seen))

        return self._read(read)

    def find(self, ref: str) -> NodeRecord:
        exact = self.get(ref)
        if exact is not None:
            return exact
        found = [r for r in self.nodes()
                 if ref in (r.name, r.ip) or r.node_id.startswith(ref)]  # fmt: skip
        if len(found) == 1:
            return found[0]
        if not found:
            raise NodeNotFound(f"no node {ref!r} (see `autoreg list`)")
        raise NodeNotFound(f"{ref!r} is ambiguous: {', '.join(r.node_id for r in found)}")

    def count(self, state: NodeState) -> int:
        def read(tx: Txn) -> int:
            return len(tx.range(self.keys.state(state), compare=False))

        return self._read(read)

    # -- ingestion -------------------------------------------------------------------------

    def ingest(
        self, ann: Any, source: Source, instance: str, observer: str, lease: float | None,
        auth: str, token_id: str | None,
    ) -> Absorbed:  # fmt: skip
        item = Arrival(ann=ann, source=source, instance=instance, observer=observer, lease=lease,
                       auth=auth, token_id=token_id)  # fmt: skip
        result = self.ingest_many([item])[0]
        assert isinstance(result, Absorbed)
        return result

    def ingest_many(
        self, items: Sequence[Arrival | Departure | Note]
    ) -> list[Absorbed | NodeRecord | None]:
        def one(tx: Txn, item: Arrival | Departure | Note) -> Absorbed | NodeRecord | None:
            now = time.time()
            if isinstance(item, Arrival):
                return self._arrive(tx, item, now)
            if isinstance(item, Departure):
                return self._depart(tx, item, now)
            self.event(tx, item.node_id, item.kind, None, item.message, item.data)
            return None

        def prefetch(tx: Txn, chunk: Sequence[Any]) -> None:
            self._prefetch_nodes(tx, [i.ann.node_id for i in chunk if isinstance(i, Arrival)])

        return self.write_many(list(items), one, what="announcements", prefetch=prefetch)

    def _arrive(self, tx: Txn, item: Arrival, now: float) -> Absorbed:
        ann, source = item.ann, item.source
        where = (source.value, item.observer, item.instance)
        existing = self.node(tx, ann.node_id, now)
        others = False
        for key, raw in tx.range(self.keys.presence(ann.node_id)):
            entry = load(raw, key)
            mine = (entry.get("source"), entry.get("observer"), entry.get("instance")) == where
            expires = entry.get("expires")
            if not mine and (expires is None or expires > now):
                others = True
        result = absorb(
            existing, ann, source=source, instance=item.instance, now=now,
            was_present=existing is not None and existing.present, others_present=others,
            auth=item.auth, token_id=item.token_id,
        )  # fmt: skip
        self.put_node(tx, existing, result.record)
        index = self.keys.instance(*where)
        before = tx.get(index)
        if before is not None and before.decode() != ann.node_id:  # the instance moved on
            tx.delete(self.keys.presence(before.decode(), where))
        tx.put(index, ann.node_id.encode())
        expires = None if item.lease is None else now + item.lease
        tx.put(self.keys.presence(ann.node_id, where),
               presence_value(source, item.observer, item.instance, expires))  # fmt: skip
        if result.kind is not None and result.message is not None:
            self.event(tx, ann.node_id, result.kind, result.record.state.value, result.message,
                       result.data)  # fmt: skip
        return dataclasses.replace(result, record=dataclasses.replace(result.record, present=True))

    def withdraw(self, source: Source, instance: str, observer: str) -> NodeRecord | None:
        result = self.ingest_many([Departure(source=source, instance=instance, observer=observer)])
        return result[0] if isinstance(result[0], NodeRecord) else None

    def _depart(self, tx: Txn, item: Departure, now: float) -> NodeRecord | None:
        where = (item.source.value, item.observer, item.instance)
        index = self.keys.instance(*where)
        node = tx.get(index)
        if node is None:
            return None
        node_id = node.decode()
        tx.delete(index)
        tx.delete(self.keys.presence(node_id, where))
        rec = self.node(tx, node_id, now)
        if rec is None or rec.present:
            return None
        self.event(tx, node_id, "withdrawn", rec.state.value,
                   f"{rec.label} withdrew its announcement (goodbye from {item.instance})",
                   {"source": item.source.value, "instance": item.instance})  # fmt: skip
        return rec

    def clear_presence(self, source: Source, observer: str) -> None:
        def build(tx: Txn) -> None:
            for key, raw in tx.range(self.keys.instance(source.value) + _q(observer) + b"/"):
                instance = self.keys.last(key)
                tx.delete(key)
                tx.delete(self.keys.presence(raw.decode(), (source.value, observer, instance)))

        self.write(build, what=f"presence seen by {observer}")

    # -- state changes -----------------------------------------------------------------------

    def change(self, node_id: str, change: Change) -> NodeRecord:
        result = self.change_many([(node_id, change)])[0]
        if isinstance(result, LostRace):
            raise result
        return result

    def change_many(self, changes: Sequence[tuple[str, Change]]) -> list[NodeRecord | LostRace]:
        for _, change in changes:
            _check_static(change)  # a bug in the caller aborts before anything is written

        def one(tx: Txn, item: tuple[str, Change]) -> NodeRecord | LostRace:
            point = tx.checkpoint()
            try:
                return self._change(tx, item[0], item[1], time.time())
            except LostRace as exc:
                tx.rollback(point)
                return exc

        def prefetch(tx: Txn, chunk: Sequence[tuple[str, Change]]) -> None:
            self._prefetch_nodes(tx, [node_id for node_id, _ in chunk])

        return self.write_many(list(changes), one, what="state changes", prefetch=prefetch)

    def _change(self, tx: Txn, node_id: str, change: Change, now: float) -> NodeRecord:
        rec = self.node(tx, node_id, now)
        lease = None
        if change.to.claimed and change.owner is not None:
            try:
                lease = self.lease_for(change.owner)
            except LeaseLost as exc:
                raise LostRace(f"{node_id}: not claimed: {exc}") from exc
        fresh = apply_change(rec, change, now=now, lease=self.settings.lease_ttl)
        assert rec is not None  # apply_change raised LostRace otherwise
        if fresh.state.holds_slot and not change.expect.holds_slot:
            # One host key is one node: checked in the transaction that takes the slot.
            for key, _ in tx.range(self.keys.fp(fresh.fingerprint)):
                holder = self.keys.last(key)
                if holder != node_id:
                    other = self.node(tx, holder, now)
                    label = other.label if other else holder
                    state = other.state.value if other else "registering"
                    raise LostRace(f"host key {fresh.fingerprint} is {state} as {label}")
        if change.exclusive is not None:
            role, cluster = change.exclusive
            for key, _ in tx.range(self.keys.holding(role, cluster)):
                holder = self.keys.last(key)
                if holder != node_id:
                    other = self.node(tx, holder, now)
                    raise LostRace(
                        f"{other.label if other else holder} holds the {role} slot"
                        + (f" of cluster {cluster}" if cluster else "")
                    )
        if change.grant is not None and fresh.state.holds_slot:
            if change.grant != rec.granted:
                self.consume(tx, fresh, change.grant, now)
            fresh = dataclasses.replace(fresh, granted=change.grant)
        self.put_node(tx, rec, fresh)
        if lease is not None:
            tx.put(self.keys.claim(node_id),
                   dump({"owner": change.owner, "lease": f"{lease.lease_id:x}"}),
                   lease=lease.lease_id)  # fmt: skip
        elif tx.get(self.keys.claim(node_id)) is not None:
            tx.delete(self.keys.claim(node_id))
        self.event(tx, node_id, change.kind, fresh.state.value, change.event_message(fresh),
                   change.data)  # fmt: skip
        return fresh

    def consume(self, tx: Txn, rec: NodeRecord, grant: str, now: float) -> None:
        raise NotImplementedError  # the trust module's

    def settle_move(
        self, node_id: str, generation: str, moved: tuple[str, int, str | None], adopt: bool,
        message: str,
    ) -> NodeRecord | None:  # fmt: skip
        def build(tx: Txn) -> NodeRecord | None:
            rec = self.node(tx, node_id, time.time())
            if rec is None or rec.generation != generation or rec.moved != moved:
                return None  # forgotten, or it moved again meanwhile: nothing to settle
            ip, port, name = moved
            fresh = dataclasses.replace(
                rec, ip=ip if adopt else rec.ip, port=port if adopt else rec.port,
                name=name if adopt else rec.name, path=None if adopt else rec.path,
                moved_ip=None, moved_port=None, moved_name=None,
            )  # fmt: skip
            self.put_node(tx, rec, fresh)
            self.event(tx, node_id, "moved" if adopt else "move-refused", fresh.state.value,
                       message, {"to": list(moved), "adopted": adopt})  # fmt: skip
            return fresh

        return self.write(build, what=f"the move of {node_id}")

    def note_path(self, node_id: str, path: str) -> NodeRecord | None:
        def build(tx: Txn) -> NodeRecord | None:
            rec = self.node(tx, node_id, time.time())
            if rec is None or rec.path == path:
                return rec
            fresh = dataclasses.replace(rec, path=path)
            self.put_node(tx, rec, fresh)
            was = f" (was {rec.path})" if rec.path else ""
            message = f"{rec.label}: reached via {path}{was}"
            self.event(tx, node_id, "path", rec.state.value, message,
                       {"path": path, "was": rec.path})  # fmt: skip
            return fresh

        return self.write(build, what=f"the path of {node_id}")

    def forget(self, node_id: str, message: str) -> NodeRecord | None:
        def build(tx: Txn) -> NodeRecord | None:
            rec = self.node(tx, node_id, time.time())
            if rec is None:
                return None
            self.drop_node(tx, rec)
            self.event(tx, node_id, "forgotten", None, message, {"was": rec.state.value})
            return rec

        return self.write(build, what=f"forgetting {node_id}")

    def drop_node(self, tx: Txn, rec: NodeRecord) -> None:
        keys = self.keys
        tx.delete(keys.node(rec.node_id))
        tx.delete(keys.state(rec.state, rec.node_id))
        if rec.state.holds_slot:
            tx.delete(keys.holding(rec.role, rec.cluster, rec.node_id))
            tx.delete(keys.fp(rec.fingerprint, rec.node_id))
        if tx.get(keys.claim(rec.node_id)) is not None:
            tx.delete(keys.claim(rec.node_id))
        for key, raw in tx.range(keys.presence(rec.node_id)):
            entry = load(raw, key)
            tx.delete(key)
            where = (str(entry.get("source")), str(entry.get("observer")),
                     str(entry.get("instance")))  # fmt: skip
            if tx.get(keys.instance(*where)) == rec.node_id.encode():
                tx.delete(keys.instance(*where))

    # -- claims ------------------------------------------------------------------------------

    def renew_claims(self, owner: str, lease: float) -> int:
        if lease <= 0:
            self.revoke(owner)  # "its lease ran out": every claim of it ends now
            return 0
        if self.leases.get(owner) is not None:
            self.keepalive(owner)
        return len(self._claims_of(owner))

    def _claims_of(self, owner: str) -> list[str]:
        def read(tx: Txn) -> list[str]:
            return [self.keys.last(k) for k, v in tx.range(self.keys.claims, compare=False)
                    if load(v, k).get("owner") == owner]  # fmt: skip

        return self._read(read)

    def reclaimable(self, owner: str) -> list[NodeRecord]:
        def read(tx: Txn) -> list[NodeRecord]:
            now = time.time()
            ids = [self.keys.last(k) for s in NodeState if s.claimed
                   for k, _ in tx.range(self.keys.state(s), compare=False)]  # fmt: skip
            self._prefetch_nodes(tx, ids)
            out = []
            for node_id in ids:
                rec = self.node(tx, node_id, now)
                if rec is None or not rec.state.claimed:
                    continue
                if rec.claim_expires is None or rec.claim_owner == owner:
                    out.append(rec)
            return out

        return self._read(read)


def _check_static(change: Change) -> None:
    """What ``apply_change`` refuses whatever the node: raised before any write."""
    from ._machine import DECISION_FIELDS, TRANSITIONS

    if change.to not in TRANSITIONS[change.expect]:
        raise IllegalTransition(
            f"{change.expect.value} → {change.to.value} is not an allowed transition"
        )
    unknown = set(change.fields) - DECISION_FIELDS
    if unknown:
        raise IllegalTransition(f"a state change may not set {', '.join(sorted(unknown))}")
    if change.to.claimed and change.owner is None:
        raise IllegalTransition(f"moving to {change.to.value} needs an owner")


def _q(text: str) -> bytes:
    from ._etcd_keys import q

    return q(text)
