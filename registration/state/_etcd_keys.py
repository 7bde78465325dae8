"""The etcd store's key layout and value codecs.

Every key is ASCII bytes below the configured prefix ``P`` (``[autoreg]
etcd_prefix``, default ``/autoreg/``); each component that comes from outside (a
node id, a fingerprint, an instance name) is percent-encoded, so ``/`` separates
components only.  Values are JSON.

==============================================  =============================================
``P meta/schema``                               layout version (``1``)
``P meta/seq``                                  the last event sequence number (+ txn nonce)
``P nodes/<id>``                                a node (``NodeRecord`` without ``present``)
``P state/<state>/<id>``                        index: nodes per state
``P holding/<role>/<cluster>/<id>``             index: nodes that hold a slot (uniqueness)
``P fp/<fingerprint>/<id>``                     index: slot holders by host key
``P claims/<id>``                               a claim: owner and lease (attached to it)
``P presence/<id>/<source>/<observer>/<inst>``  who announces it (expiry, if any)
``P instance/<source>/<observer>/<inst>``       index: the node an instance announces
``P events/<seq>/<id or ->``                    an event (seq zero-padded: key order = seq)
``P evnode/<id or ->/<seq>``                    index: a node's events
``P lockdown/<scope>``                          a lockdown switch
``P tokens/<id>``, ``P windows/<id>``           join tokens (their uses), install windows
``P denied/<fingerprint>``, ``P settings/<k>``  denied host keys, settings
``P tunnels/<id>``, ``P tunnelports/<port>``    reverse tunnels and their ports
``P registrars/<owner>``                        a running registrar (attached to its lease)
==============================================  =============================================
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Final
from urllib.parse import quote, unquote

from .._exceptions import StateError
from ._machine import NodeState
from ._records import Event, NodeRecord, Source, Token, Tunnel, Window

__all__ = ["LAYOUT_VERSION", "Keys", "dump", "load"]

#: The version of this layout (``meta/schema``); a newer one is refused.
LAYOUT_VERSION: Final = 1
_SEQ_DIGITS: Final = 20
NO_NODE: Final = "-"  # node ids have 4-40 characters: never "-"


def q(text: str) -> bytes:
    return quote(text, safe="").encode("ascii")


def uq(raw: bytes) -> str:
    return unquote(raw.decode("ascii", "replace"))


class Keys:
    """Key builders for one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode("ascii")
        p = self.prefix
        self.schema = p + b"meta/schema"
        self.seq = p + b"meta/seq"
        self.nodes = p + b"nodes/"
        self.claims = p + b"claims/"
        self.presence_all = p + b"presence/"
        self.events = p + b"events/"
        self.evnodes = p + b"evnode/"
        self.lockdowns = p + b"lockdown/"
        self.tokens = p + b"tokens/"
        self.windows = p + b"windows/"
        self.denied_all = p + b"denied/"
        self.settings = p + b"settings/"
        self.tunnels = p + b"tunnels/"
        self.ports = p + b"tunnelports/"
        self.registrars = p + b"registrars/"

    def node(self, node_id: str) -> bytes:
        return self.nodes + q(node_id)

    def state(self, state: NodeState, node_id: str | None = None) -> bytes:
        base = self.prefix + b"state/" + state.value.encode() + b"/"
        return base if node_id is None else base + q(node_id)

    def holding(self, role: str, cluster: str | None, node_id: str | None = None) -> bytes:
        """With ``node_id`` None: the scope (``cluster`` None: every cluster of the role)."""
        base = self.prefix + b"holding/" + q(role) + b"/"
        if node_id is None and cluster is None:
            return base
        base += q(cluster or "") + b"/"
        return base if node_id is None else base + q(node_id)

    def fp(self, fingerprint: str, node_id: str | None = None) -> bytes:
        base = self.prefix + b"fp/" + q(fingerprint) + b"/"
        return base if node_id is None else base + q(node_id)

    def claim(self, node_id: str) -> bytes:
        return self.claims + q(node_id)

    def presence(self, node_id: str, where: tuple[str, str, str] | None = None) -> bytes:
        base = self.presence_all + q(node_id) + b"/"
        if where is None:
            return base
        source, observer, instance = where
        return base + q(source) + b"/" + q(observer) + b"/" + q(instance)

    def instance(self, source: str, observer: str | None = None, instance: str = "") -> bytes:
        base = self.prefix + b"instance/" + q(source) + b"/"
        return base if observer is None else base + q(observer) + b"/" + q(instance)

    def event(self, seq: int, node_id: str | None) -> bytes:
        return self.events + f"{seq:0{_SEQ_DIGITS}d}/".encode() + q(node_id or NO_NODE)

    def event_from(self, seq: int) -> bytes:
        """The first event key with a sequence number of ``seq`` or more."""
        return self.events + f"{seq:0{_SEQ_DIGITS}d}".encode()

    def evnode(self, node_id: str | None, seq: int | None = None) -> bytes:
        base = self.evnodes + q(node_id or NO_NODE) + b"/"
        return base if seq is None else base + f"{seq:0{_SEQ_DIGITS}d}".encode()

    def parse_event(self, key: bytes) -> tuple[int, str | None]:
        """(seq, node id) of an ``events/`` key."""
        seq, _, node = key[len(self.events) :].partition(b"/")
        try:
            number = int(seq)
        except ValueError as exc:
            raise StateError(f"{key!r} is not an event key") from exc
        name = uq(node)
        return number, None if name == NO_NODE else name

    def parse_evnode(self, key: bytes) -> tuple[int, str | None]:
        node, _, seq = key[len(self.evnodes) :].rpartition(b"/")
        name = uq(node)
        try:
            return int(seq), None if name == NO_NODE else name
        except ValueError as exc:
            raise StateError(f"{key!r} is not an event index key") from exc

    def lockdown(self, scope: str) -> bytes:
        return self.lockdowns + q(scope)

    def token(self, token_id: str) -> bytes:
        return self.tokens + q(token_id)

    def window(self, window_id: str) -> bytes:
        return self.windows + q(window_id)

    def denied(self, fingerprint: str) -> bytes:
        return self.denied_all + q(fingerprint)

    def setting(self, key: str) -> bytes:
        return self.settings + q(key)

    def tunnel(self, node_id: str) -> bytes:
        return self.tunnels + q(node_id)

    def port(self, port: int) -> bytes:
        return self.ports + f"{port:05d}".encode()

    def registrar(self, owner: str) -> bytes:
        return self.registrars + q(owner)

    def last(self, key: bytes) -> str:
        """The last component of a key, decoded."""
        return uq(key.rpartition(b"/")[2])


# -- values -----------------------------------------------------------------------------


def dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def load(raw: bytes, what: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise StateError(f"etcd key {what!r} does not hold JSON ({raw[:60]!r})") from exc


def node_value(rec: NodeRecord) -> bytes:
    values = rec.to_json()
    values.pop("present", None)
    return dump(values)


def node_of(raw: bytes, key: bytes) -> NodeRecord:
    values = load(raw, key)
    try:
        return NodeRecord.from_json(dict(values, present=False))
    except (TypeError, ValueError, KeyError) as exc:
        raise StateError(f"etcd key {key!r} does not hold a node: {exc}") from exc


def event_value(event: Event) -> bytes:
    values = event.to_json()
    del values["seq"]
    return dump(values)


def event_of(raw: bytes, seq: int, node_id: str | None, key: bytes) -> Event:
    values = load(raw, key)
    try:
        data = values.get("data")
        return Event(
            seq=seq,
            ts=float(values["ts"]),
            node_id=node_id,
            kind=str(values["kind"]),
            state=values.get("state"),
            message=str(values["message"]),
            data=data if isinstance(data, dict) else {"raw": data},
            origin=str(values.get("origin", "")),
            repeats=int(values.get("repeats", 1)),
            first_ts=values.get("first_ts"),
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise StateError(f"etcd key {key!r} does not hold an event: {exc}") from exc


def token_value(token: Token) -> bytes:
    values = dataclasses.asdict(token)
    values["key"] = base64.b64encode(token.key).decode()
    return dump(values)


def token_of(raw: bytes, key: bytes) -> Token:
    values = load(raw, key)
    try:
        return Token(
            token_id=str(values["token_id"]),
            key=base64.b64decode(values["key"], validate=True),
            roles=tuple(values["roles"]),
            cluster=values["cluster"],
            uses=int(values["uses"]),
            expires=float(values["expires"]),
            created=float(values["created"]),
            description=str(values.get("description", "")),
            revoked=values.get("revoked"),
            used_by=tuple((str(n), str(f), float(t)) for n, f, t in values.get("used_by", ())),
        )
    except (TypeError, ValueError, KeyError) as exc:
        raise StateError(f"etcd key {key!r} does not hold a token: {exc}") from exc


def window_value(window: Window) -> bytes:
    return dump(dataclasses.asdict(window))


def window_of(raw: bytes, key: bytes) -> Window:
    try:
        return Window(**load(raw, key))
    except TypeError as exc:
        raise StateError(f"etcd key {key!r} does not hold a window: {exc}") from exc


def tunnel_value(tunnel: Tunnel) -> bytes:
    return dump({"public_key": tunnel.public_key, "created": tunnel.created,
                 "ports": list(tunnel.ports)})  # fmt: skip


def tunnel_of(raw: bytes, node_id: str, key: bytes) -> Tunnel:
    values = load(raw, key)
    try:
        return Tunnel(node_id, str(values["public_key"]),
                      tuple(int(p) for p in values["ports"]), float(values["created"]))  # fmt: skip
    except (TypeError, ValueError, KeyError) as exc:
        raise StateError(f"etcd key {key!r} does not hold a tunnel: {exc}") from exc


def presence_value(source: Source, observer: str, instance: str, expires: float | None) -> bytes:
    return dump({"source": source.value, "observer": observer, "instance": instance,
                 "expires": expires})  # fmt: skip
