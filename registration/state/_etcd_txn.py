"""Optimistic transactions on etcd: read a snapshot, apply pure rules, compare-and-set.

A :class:`Txn` reads at one revision ``R`` (the first read fixes it; a read-only
etcd transaction fetches many keys and ranges in one round trip) and buffers its
writes, so later reads in the same transaction see them.  Every key it read is
compared at commit (``mod_revision`` unchanged; 0 for a key that was absent), and
every range it read must hold no key modified after ``R``.  Events are numbered from
one counter key (``meta/seq``) that every event-writing transaction compares: their
sequence numbers follow the commit order, and such transactions are serialisable,
like sqlite's ``BEGIN IMMEDIATE``.

etcd's limits are respected: at most :data:`MAX_OPS` operations or compares and
about :data:`MAX_BYTES` per transaction (batches are cut into several, see
``_etcd_base``), and a key is written at most once per transaction.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterable
from typing import Any, Final

from .._exceptions import StateError
from ._etcd_io import EtcdIO, as_int, b64, prefix_end, unb64

__all__ = ["KV", "MAX_BYTES", "MAX_OPS", "Conflict", "Marker", "Txn"]

#: Operations (and compares) per transaction: etcd's --max-txn-ops is 128.
MAX_OPS: Final = 120
#: Bytes of keys and values per transaction, well under --max-request-bytes (1.5 MiB)
#: once base64 has grown them by a third.
MAX_BYTES: Final = 900 * 1024
#: Keys per page of a range read.
PAGE: Final = 500


class Conflict(Exception):
    """The compare failed: something this transaction read changed meanwhile."""


@dataclasses.dataclass(frozen=True, slots=True)
class KV:
    value: bytes
    mod: int
    create: int
    lease: int


@dataclasses.dataclass(frozen=True, slots=True)
class Marker:
    """How to tell, after an ambiguous failure, whether this transaction was applied."""

    nonce: str
    seq_key: bytes
    event_key: bytes
    event_value: bytes


def parse_kv(raw: object) -> tuple[bytes, KV]:
    if not isinstance(raw, dict):
        raise StateError("etcd answered a key-value that is not an object")
    return unb64(raw.get("key"), what="key"), KV(
        value=unb64(raw.get("value")),
        mod=as_int(raw.get("mod_revision"), "a revision"),
        create=as_int(raw.get("create_revision"), "a revision"),
        lease=as_int(raw.get("lease"), "a lease"),
    )


class Txn:
    """One optimistic transaction (single-threaded use)."""

    def __init__(self, io: EtcdIO, seq_key: bytes, *, what: str) -> None:
        self.io = io
        self.what = what
        self.revision = 0
        self._seq_key = seq_key
        self._kvs: dict[bytes, KV | None] = {}  # as of the snapshot
        self._ranges: dict[bytes, list[bytes]] = {}  # prefix -> keys as of the snapshot
        self._writes: dict[bytes, tuple[bytes, int] | None] = {}  # None: delete
        self._compares: dict[tuple[bytes, bytes], dict[str, Any]] = {}
        self._bytes = 0
        self._seq: int | None = None  # the last event sequence number taken
        self._first_event: tuple[bytes, bytes] | None = None
        self.nonce = secrets.token_hex(8)

    # -- reading ---------------------------------------------------------------------

    def _range_request(self, key: bytes, end: bytes | None, **extra: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"key": b64(key), **extra}
        if end is not None:
            request["range_end"] = b64(end)
        if self.revision:
            request["revision"] = self.revision
        return request

    def _fetch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Range requests in one read-only transaction, at the snapshot's revision."""
        out: list[dict[str, Any]] = []
        for start in range(0, len(requests), MAX_OPS):
            chunk = requests[start : start + MAX_OPS]
            answer = self.io.call(
                "/kv/txn",
                {"compare": [], "success": [{"request_range": r} for r in chunk], "failure": []},
                what=self.what,
                write=False,
            )
            if not self.revision:
                self.revision = as_int((answer.get("header") or {}).get("revision"), "revision")
                for r in requests[start + MAX_OPS :]:
                    r["revision"] = self.revision
            responses = answer.get("responses") or []
            if len(responses) != len(chunk):
                raise StateError(f"etcd answered {len(responses)} reads for {len(chunk)}")
            for response in responses:
                body = response.get("response_range") if isinstance(response, dict) else None
                out.append(body if isinstance(body, dict) else {})
        return out

    def prefetch(self, keys: Iterable[bytes] = (), prefixes: Iterable[bytes] = ()) -> None:
        """Read many keys and (small) ranges in one round trip."""
        keys = [k for k in dict.fromkeys(keys) if k not in self._kvs]
        prefixes = [p for p in dict.fromkeys(prefixes) if p not in self._ranges]
        if not keys and not prefixes:
            return
        requests = [self._range_request(k, None) for k in keys]
        requests += [self._range_request(p, prefix_end(p), limit=PAGE) for p in prefixes]
        answers = self._fetch(requests)
        for key, answer in zip(keys, answers, strict=False):
            kvs = answer.get("kvs") or []
            self._kvs[key] = parse_kv(kvs[0])[1] if kvs else None
        for prefix, answer in zip(prefixes, answers[len(keys) :], strict=True):
            if answer.get("more"):
                self._read_range(prefix)  # a big one: page through it
                continue
            found = [parse_kv(raw) for raw in answer.get("kvs") or []]
            self._ranges[prefix] = [k for k, _ in found]
            self._kvs.update(found)

    def _read_range(self, prefix: bytes) -> None:
        keys: list[bytes] = []
        start, end = prefix, prefix_end(prefix)
        while True:
            (answer,) = self._fetch([self._range_request(start, end, limit=PAGE)])
            found = [parse_kv(raw) for raw in answer.get("kvs") or []]
            for key, kv in found:
                keys.append(key)
                self._kvs[key] = kv
            if not answer.get("more") or not found:
                break
            start = found[-1][0] + b"\0"
        self._ranges[prefix] = keys

    def scan(
        self,
        start: bytes,
        end: bytes,
        *,
        limit: int = PAGE,
        keys_only: bool = False,
        descending: bool = False,
    ) -> list[tuple[bytes, KV]]:
        """One page of ``[start, end)`` at the snapshot, without a compare."""
        options: dict[str, Any] = {"limit": limit}
        if keys_only:
            options["keys_only"] = True
        if descending:
            options.update(sort_order="DESCEND", sort_target="KEY")
        (answer,) = self._fetch([self._range_request(start, end, **options)])
        return [parse_kv(raw) for raw in answer.get("kvs") or []]

    def kv(self, key: bytes, *, compare: bool = True) -> KV | None:
        """``key`` as of the snapshot (this transaction's own writes not included)."""
        if key not in self._kvs:
            self.prefetch([key])
        if compare:
            found = self._kvs[key]
            self._compares[(key, b"")] = {
                "key": b64(key), "target": "MOD", "result": "EQUAL",
                "mod_revision": found.mod if found else 0,
            }  # fmt: skip
        return self._kvs[key]

    def get(self, key: bytes, *, compare: bool = True) -> bytes | None:
        """``key``'s value, this transaction's own writes included."""
        if key in self._writes:
            write = self._writes[key]
            return None if write is None else write[0]
        found = self.kv(key, compare=compare)
        return None if found is None else found.value

    def range(self, prefix: bytes, *, compare: bool = True) -> list[tuple[bytes, bytes]]:
        """Every key under ``prefix`` with its value, sorted, own writes included."""
        if prefix not in self._ranges:
            self._read_range(prefix)
        if compare:
            self._compares[(prefix, b"*")] = {
                "key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                "target": "MOD", "result": "LESS", "mod_revision": self.revision + 1,
            }  # fmt: skip
        merged: dict[bytes, bytes] = {}
        for key in self._ranges[prefix]:
            kv = self._kvs.get(key)
            if kv is not None:
                merged[key] = kv.value
        for key, write in self._writes.items():
            if key.startswith(prefix):
                if write is None:
                    merged.pop(key, None)
                else:
                    merged[key] = write[0]
        return sorted(merged.items())

    def last_key(self, prefix: bytes) -> bytes | None:
        """The greatest key under ``prefix`` (own writes included), without a compare."""
        own = [k for k, w in self._writes.items() if k.startswith(prefix) and w is not None]
        if own:
            return max(own)
        found = self.scan(prefix, prefix_end(prefix), limit=1, keys_only=True, descending=True)
        if not found:
            return None
        key = found[0][0]
        return None if key in self._writes else key

    # -- writing ---------------------------------------------------------------------

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> None:
        self._writes[key] = (value, lease)
        self._bytes += len(key) + len(value)

    @property
    def leases(self) -> set[int]:
        """The leases this transaction's writes are attached to."""
        return {w[1] for w in self._writes.values() if w is not None and w[1]}

    def delete(self, key: bytes) -> None:
        self._writes[key] = None
        self._bytes += len(key)

    def next_seq(self) -> int:
        """The next event sequence number (the counter is compared and written at commit)."""
        if self._seq is None:
            raw = self.get(self._seq_key)
            self._seq = _seq_of(raw)
        self._seq += 1
        return self._seq

    def event_written(self, key: bytes, value: bytes) -> None:
        if self._first_event is None:
            self._first_event = (key, value)

    @property
    def marker(self) -> Marker | None:
        if self._first_event is None:
            return None
        return Marker(self.nonce, self._seq_key, *self._first_event)

    # -- size, checkpoints ---------------------------------------------------------------

    def size(self) -> tuple[int, int]:
        """(operations or compares, bytes) this transaction would send."""
        ops = len(self._writes) + (self._seq is not None)
        return max(ops, len(self._compares)), self._bytes

    def too_big(self) -> bool:
        ops, size = self.size()
        return ops > MAX_OPS or size > MAX_BYTES

    @property
    def empty(self) -> bool:
        return not self._writes and self._seq is None

    def checkpoint(self) -> tuple[Any, ...]:
        return (dict(self._writes), dict(self._compares), self._bytes, self._seq,
                self._first_event)  # fmt: skip

    def rollback(self, point: tuple[Any, ...]) -> None:
        writes, compares, size, seq, first = point
        self._writes, self._compares, self._bytes = dict(writes), dict(compares), size
        self._seq, self._first_event = seq, first

    # -- commit --------------------------------------------------------------------------

    def commit(self) -> int:
        """Compare and write; the revision it committed at, or :class:`Conflict`."""
        ops: list[dict[str, Any]] = []
        for key, write in self._writes.items():
            if write is None:
                ops.append({"request_delete_range": {"key": b64(key)}})
            else:
                put: dict[str, Any] = {"key": b64(key), "value": b64(write[0])}
                if write[1]:
                    put["lease"] = write[1]
                ops.append({"request_put": put})
        if self._seq is not None and self._seq_key not in self._writes:
            value = json.dumps({"seq": self._seq, "txn": self.nonce}).encode()
            ops.append({"request_put": {"key": b64(self._seq_key), "value": b64(value)}})
        answer = self.io.call(
            "/kv/txn",
            {"compare": list(self._compares.values()), "success": ops, "failure": []},
            what=self.what,
            write=True,
        )
        if not answer.get("succeeded"):
            raise Conflict(self.what)
        return as_int((answer.get("header") or {}).get("revision"), "revision")


def _seq_of(raw: bytes | None) -> int:
    if raw is None:
        return 0
    try:
        value = json.loads(raw)
        return int(value["seq"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the event counter holds {raw[:80]!r}, not a sequence number") from exc


def was_applied(io: EtcdIO, marker: Marker) -> bool:
    """Did the transaction that left ``marker`` get applied (checked now)?"""
    probe = Txn(io, marker.seq_key, what="checking an uncertain write")
    probe.prefetch([marker.seq_key, marker.event_key])
    counter = probe.get(marker.seq_key, compare=False)
    if counter is not None:
        try:
            if json.loads(counter).get("txn") == marker.nonce:
                return True
        except (ValueError, AttributeError):
            pass
    return probe.get(marker.event_key, compare=False) == marker.event_value
