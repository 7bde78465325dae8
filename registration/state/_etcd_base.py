"""The etcd backend's plumbing shared by its table modules: the write loop, events,
lockdown, leases.  Blocking; only ``_etcd.EtcdStore`` calls it (from its executor).

Every write is :meth:`EtcdBase._write`: read a snapshot, apply the pure rules
(``_machine.apply_change``, ``_ingest.absorb``), commit with compares; on a conflict
start over from a fresh snapshot (bounded, jittered); on an ambiguous failure (no
member answered for sure) find out whether it was applied before trying again.  A
write of this process waits for the one before it (like sqlite's one connection),
so only other processes conflict with it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from .._config import EtcdConfig
from .._exceptions import StateError
from ._contract import GLOBAL_SCOPE
from ._etcd_io import Compacted, EtcdIO, EtcdUnavailable, LeaseLost
from ._etcd_keys import LAYOUT_VERSION, Keys, dump, event_of, event_value, load
from ._etcd_txn import Conflict, Marker, Txn, was_applied
from ._records import Event

__all__ = ["FENCE_MARGIN", "EtcdBase", "Lease"]

T = TypeVar("T")

#: Seconds before its lease could expire at the earliest (last keep-alive sent +
#: TTL) at which a registrar stops acting: no claim taken, no hook started, running
#: hooks terminated (SIGTERM, SIGKILL ``KILL_GRACE`` = 5 s later), so that none of its
#: hooks still runs when another registrar may take its claims over.
FENCE_MARGIN: Final = 6.0
#: Attempts of one write that conflicted with other writers before giving up.
MAX_ATTEMPTS: Final = 60


@dataclasses.dataclass(slots=True)
class Lease:
    """A registrar's etcd lease, as this process knows it."""

    lease_id: int
    ttl: float
    valid_until: float  # time.monotonic(): it cannot have expired before this
    lost: bool = False  # etcd said it is gone: nothing acts under it any more

    @property
    def left(self) -> float:
        return self.valid_until - time.monotonic()


class EtcdBase:
    """One etcd cluster, one prefix; blocking."""

    def __init__(
        self, settings: EtcdConfig, *, readonly: bool, origin: str, create: bool = True
    ) -> None:
        self.settings = settings
        self.io = EtcdIO(settings)
        self.keys = Keys(settings.prefix)
        self.origin = origin
        self.readonly = readonly
        self.leases: dict[str, Lease] = {}
        self._write_lock = threading.Lock()
        self._lease_lock = threading.RLock()
        self.deadline = max(15.0, 3 * settings.timeout * len(settings.endpoints))
        if create:
            self._open()

    @property
    def location(self) -> str:
        return self.io.location

    def _open(self) -> None:
        found = self._read(lambda tx: tx.get(self.keys.schema, compare=False))
        if found is None:
            if self.readonly:
                raise StateError(
                    f"etcd {self.location}: no autoreg store here yet (has a daemon with "
                    "store = etcd run, or `autoreg store migrate --to etcd`?)"
                )
            self._create()
            return
        version = self._layout(found)
        if version > LAYOUT_VERSION:
            raise StateError(
                f"etcd {self.location}: store layout {version} is newer than this autoreg "
                f"understands ({LAYOUT_VERSION}); upgrade autoreg"
            )

    def _layout(self, raw: bytes) -> int:
        try:
            return int(load(raw, self.keys.schema))
        except (TypeError, ValueError) as exc:
            raise StateError(f"etcd {self.location}: bad layout version {raw[:40]!r}") from exc

    def _create(self) -> None:
        def create(tx: Txn) -> None:
            if tx.get(self.keys.schema) is not None:
                return  # another process was first
            tx.put(self.keys.schema, dump(LAYOUT_VERSION))
            tx.put(self.keys.setting("trust_default"), b"token")
            message = f"etcd store created at {self.location} (layout {LAYOUT_VERSION})"
            self.event(tx, None, "schema", None, message, {})

        self.write(create, what="creating the store")

    def close(self) -> None:
        with self._lease_lock:
            leases, self.leases = list(self.leases.values()), {}
        for lease in leases:
            if not lease.lost:
                with contextlib.suppress(StateError):  # it expires by itself
                    self.io.revoke(lease.lease_id)

    # -- the write loop ------------------------------------------------------------------

    def _txn(self, what: str) -> Txn:
        return Txn(self.io, self.keys.seq, what=what)

    def write(self, build: Callable[[Txn], T], *, what: str) -> T:
        """Run ``build`` on a fresh snapshot and commit what it wrote, until it sticks."""
        if self.readonly:
            raise StateError(f"etcd {self.location}: opened read-only ({what})")
        with self._write_lock:
            return self._write(build, what)

    def _write(self, build: Callable[[Txn], T], what: str) -> T:
        started = time.monotonic()
        uncertain: list[tuple[Marker, T]] = []
        last: StateError | None = None
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if uncertain:
                applied = self._applied(uncertain)
                if applied is not None:
                    return applied[0]
            tx = self._txn(what)
            try:
                result = build(tx)
            except StateError as exc:  # a LostRace too: our own earlier attempt may be why
                if uncertain and (applied := self._applied(uncertain)) is not None:
                    return applied[0]
                if not isinstance(exc, (EtcdUnavailable, Compacted)):
                    raise
                last = exc
            else:
                if tx.empty:
                    return result
                try:
                    tx.commit()
                    return result
                except Conflict:
                    last = None
                except LeaseLost as exc:  # a claim put under a lease that is gone
                    self._check_leases(tx.leases)
                    last = exc
                except Compacted as exc:
                    last = exc
                except EtcdUnavailable as exc:
                    last = exc
                    if exc.ambiguous and tx.marker is not None:
                        uncertain.append((tx.marker, result))
            elapsed = time.monotonic() - started
            if elapsed > self.deadline:
                break
            if last is None:  # contention: a short, jittered pause
                time.sleep(random.uniform(0.002, min(0.2, 0.005 * attempt)))  # noqa: S311
            else:
                time.sleep(min(1.0, 0.1 * attempt))
        if last is not None:
            raise last
        raise StateError(f"etcd {self.location}: {what}: gave up after {MAX_ATTEMPTS} "
                         "conflicting attempts (other writers)")  # fmt: skip

    def _check_leases(self, used: set[int]) -> None:
        """A write under one of ``used`` was refused: mark the leases that are gone."""
        for owner, lease in list(self.leases.items()):
            if lease.lease_id in used:
                with contextlib.suppress(LeaseLost, StateError):
                    self.keepalive(owner)

    def _applied(self, uncertain: list[tuple[Marker, T]]) -> tuple[T] | None:
        for marker, result in uncertain:
            try:
                if was_applied(self.io, marker):
                    return (result,)
            except StateError:
                return None
        return None

    def _read(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` on a snapshot, retrying while no member answers (bounded)."""
        started = time.monotonic()
        while True:
            try:
                return fn(self._txn("reading"))
            except (EtcdUnavailable, Compacted):
                if time.monotonic() - started > self.deadline:
                    raise
                time.sleep(0.2)

    def write_many(
        self,
        items: Sequence[Any],
        one: Callable[[Txn, Any], T],
        *,
        what: str,
        prefetch: Callable[[Txn, Sequence[Any]], None] | None = None,
    ) -> list[T]:
        """``one(tx, item)`` for each item, committed in as few transactions as etcd's
        limits allow (each one is the single calls in order)."""
        results: list[T] = []
        done = 0
        while done < len(items):
            start = done

            def build(tx: Txn, start: int = start) -> tuple[list[T], int]:
                if prefetch is not None:
                    prefetch(tx, items[start : start + 32])
                out: list[T] = []
                for index in range(start, len(items)):
                    point = tx.checkpoint()
                    result = one(tx, items[index])
                    if tx.too_big():
                        if index == start:
                            raise StateError(f"{what}: one item exceeds etcd's request limits")
                        tx.rollback(point)
                        return out, index
                    out.append(result)
                return out, len(items)

            out, done = self.write(build, what=what)
            results += out
        return results

    # -- events ----------------------------------------------------------------------------

    def event(
        self,
        tx: Txn,
        node_id: str | None,
        kind: str,
        state: str | None,
        message: str,
        data: Mapping[str, Any],
    ) -> None:
        """Append an event in ``tx``; the same as this node's last one counts instead."""
        now = time.time()
        repeats, first = 1, None
        last = tx.last_key(self.keys.evnode(node_id))
        if last is not None:
            seq, _ = self.keys.parse_evnode(last)
            key = self.keys.event(seq, node_id)
            raw = tx.get(key, compare=False)
            if raw is not None:
                prev = event_of(raw, seq, node_id, key)
                if (prev.kind, prev.state, prev.message, prev.origin) == (
                    kind, state, message, self.origin,
                ):  # fmt: skip
                    tx.delete(key)
                    tx.delete(last)
                    repeats, first = prev.repeats + 1, prev.first_ts or prev.ts
        seq = tx.next_seq()
        event = Event(seq, now, node_id, kind, state, message, dict(data), self.origin,
                      repeats, first)  # fmt: skip
        key, value = self.keys.event(seq, node_id), event_value(event)
        tx.put(key, value)
        tx.put(self.keys.evnode(node_id, seq), b"")
        tx.event_written(key, value)

    def add_event(
        self,
        node_id: str | None,
        kind: str,
        message: str,
        data: Mapping[str, Any] | None,
        state: str | None,
    ) -> None:
        self.write(lambda tx: self.event(tx, node_id, kind, state, message, data or {}),
                   what=f"an event of {node_id or 'the store'}")  # fmt: skip

    def _events_of(self, pairs: list[tuple[bytes, bytes]]) -> list[Event]:
        out = []
        for key, raw in pairs:
            seq, node_id = self.keys.parse_event(key)
            out.append(event_of(raw, seq, node_id, key))
        return out

    def events_page(self, after: int, limit: int) -> tuple[list[Event], int]:
        """Up to ``limit`` events after ``after`` and the revision they were read at."""

        def read(tx: Txn) -> tuple[list[Event], int]:
            found = tx.scan(self.keys.event_from(after + 1), _end(self.keys.events), limit=limit)
            return self._events_of([(k, kv.value) for k, kv in found]), tx.revision

        return self._read(read)

    def events(
        self, after: int, node_id: str | None, limit: int, origin_not: str | None = None
    ) -> list[Event]:
        out: list[Event] = []
        if node_id is None:
            while len(out) < limit:
                page, _ = self.events_page(after, min(500, limit - len(out) + 50))
                if not page:
                    break
                after = page[-1].seq
                out += [e for e in page if origin_not is None or e.origin != origin_not]
            return out[:limit]

        def read(tx: Txn) -> list[Event]:
            index = tx.range(self.keys.evnode(node_id), compare=False)
            seqs = [self.keys.parse_evnode(k)[0] for k, _ in index]
            return self._fetch_events(tx, [s for s in seqs if s > after], node_id)

        found = self._read(read)
        return [e for e in found if origin_not is None or e.origin != origin_not][:limit]

    def _fetch_events(self, tx: Txn, seqs: list[int], node_id: str | None) -> list[Event]:
        keys = [self.keys.event(s, node_id) for s in seqs]
        tx.prefetch(keys)
        pairs = [(k, v) for k in keys if (v := tx.get(k, compare=False)) is not None]
        return self._events_of(pairs)

    def last_events(self, count: int, node_id: str | None) -> list[Event]:
        if count <= 0:
            return []

        def read(tx: Txn) -> list[Event]:
            prefix = self.keys.evnode(node_id) if node_id is not None else self.keys.events
            found = tx.scan(prefix, _end(prefix), limit=count, descending=True,
                            keys_only=node_id is not None)  # fmt: skip
            if node_id is None:
                return list(reversed(self._events_of([(k, kv.value) for k, kv in found])))
            seqs = sorted(self.keys.parse_evnode(k)[0] for k, _ in found)
            return self._fetch_events(tx, seqs, node_id)

        return self._read(read)

    def prune_events(self, keep: int, max_age: float | None) -> int:
        """Delete all but the newest ``keep`` events and those older than ``max_age``."""

        def cutoff(tx: Txn) -> int:
            newest = tx.scan(self.keys.events, _end(self.keys.events), limit=keep + 1,
                             keys_only=True, descending=True)  # fmt: skip
            found = [k for k, _ in newest]
            upto = self.keys.parse_event(found[keep])[0] if len(found) > keep else 0
            if max_age is not None:
                oldest_kept = time.time() - max_age
                after = 0
                while True:
                    page, _ = self.events_page(after, 200)
                    young = next((e for e in page if e.ts >= oldest_kept), None)
                    if young is not None:
                        upto = max(upto, young.seq - 1)
                        break
                    if not page:
                        upto = max(upto, after)
                        break
                    after = page[-1].seq
            return upto

        upto = self._read(cutoff)
        pruned = 0
        while upto > 0:

            def chunk(tx: Txn) -> list[bytes]:
                found = tx.scan(self.keys.events, self.keys.event_from(upto + 1), limit=55,
                                keys_only=True)  # fmt: skip
                return [k for k, _ in found]

            keys = self._read(chunk)
            if not keys:
                break

            def delete(tx: Txn, keys: list[bytes] = keys) -> None:
                for key in keys:
                    seq, node_id = self.keys.parse_event(key)
                    tx.delete(key)
                    tx.delete(self.keys.evnode(node_id, seq))

            self.write(delete, what="pruning events")  # no compare: idempotent deletes
            pruned += len(keys)
        return pruned

    # -- lockdown ------------------------------------------------------------------------

    def set_lockdown(self, scope: str, locked: bool, reason: str) -> None:
        word = "on" if locked else "off"
        what = "all registration" if scope == GLOBAL_SCOPE else f"registration of role {scope}"

        def build(tx: Txn) -> None:
            tx.put(self.keys.lockdown(scope),
                   dump({"locked": locked, "changed": time.time(), "reason": reason}))  # fmt: skip
            self.event(tx, None, "lockdown", None,
                       f"lockdown {word} for {what}" + (f": {reason}" if reason else ""),
                       {"scope": scope, "locked": locked})  # fmt: skip

        self.write(build, what=f"lockdown {scope}")

    def lockdown(self) -> dict[str, bool]:
        def read(tx: Txn) -> dict[str, bool]:
            return {
                self.keys.last(k): bool(load(v, k).get("locked"))
                for k, v in tx.range(self.keys.lockdowns, compare=False)
            }

        return self._read(read)

    # -- leases ---------------------------------------------------------------------------

    def lease_for(self, owner: str, *, grant: bool = True) -> Lease | None:
        """``owner``'s lease, fresh enough to act under; granted if there is none yet.

        Raises :class:`LeaseLost` when it is gone or may be (FENCE_MARGIN).
        """
        with self._lease_lock:
            lease = self.leases.get(owner)
            if lease is not None and lease.lost:
                raise LeaseLost(f"the etcd lease of {owner} expired: not acting under it")
            if lease is None:
                if not grant:
                    return None
                sent = time.monotonic()
                ttl = float(self.settings.lease_ttl)
                lease = Lease(self.io.grant(ttl), ttl, sent + ttl)
                self.leases[owner] = lease
                return lease
            if lease.left < lease.ttl / 2:  # nobody kept it alive lately: do it now
                try:
                    self.keepalive(owner)
                except LeaseLost:
                    raise
                except StateError:
                    pass  # unreachable: what it is still certainly valid for decides
            if lease.left < FENCE_MARGIN:
                raise LeaseLost(
                    f"the etcd lease of {owner} may run out in {max(0.0, lease.left):.1f}s "
                    "(no keep-alive got through): not acting under it"
                )
            return lease

    def keepalive(self, owner: str) -> Lease:
        """Renew ``owner``'s lease: :class:`LeaseLost` if it is gone (and stays so until
        ``lock_registrar`` replaces it: nothing acts under a lost lease meanwhile)."""
        with self._lease_lock:
            lease = self.leases.get(owner)
            if lease is None:
                raise LeaseLost(f"{owner} holds no etcd lease")
            if lease.lost:
                raise LeaseLost(f"the etcd lease of {owner} expired")
            sent = time.monotonic()
            try:
                ttl = self.io.keepalive(lease.lease_id)
            except LeaseLost:
                lease.lost = True
                raise
            lease.ttl = float(ttl)
            lease.valid_until = max(lease.valid_until, sent + ttl)
            return lease

    def revoke(self, owner: str) -> None:
        with self._lease_lock:
            lease = self.leases.pop(owner, None)
        if lease is not None and not lease.lost:
            self.io.revoke(lease.lease_id)


def _end(prefix: bytes) -> bytes:
    from ._etcd_io import prefix_end

    return prefix_end(prefix)
