"""Typed records kept in the state store."""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._machine import NodeState

if TYPE_CHECKING:
    from ..protocol import Announcement

__all__ = [
    "Arrival",
    "Departure",
    "Event",
    "NodeRecord",
    "Note",
    "Source",
    "Standing",
    "Token",
    "Tunnel",
    "Window",
    "new_generation",
]


class Source(enum.StrEnum):
    """Where an announcement came from; presence is tracked per source and instance."""

    MDNS = "mdns"  # browsed on the LAN; present until its goodbye (or the daemon restarts)
    MANUAL = "manual"  # `autoreg register`: present until forgotten
    UNICAST = "unicast"  # posted to the HTTPS endpoint, signed; present while its lease lasts


def new_generation() -> str:
    """A fresh row identity: a forgotten and re-announced node is another row."""
    return secrets.token_hex(6)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    # What the node announced (ingestion owns these columns).
    node_id: str
    role: str
    cluster: str | None = None
    name: str | None = None
    ip: str
    port: int
    fingerprint: str
    key_type: str = "ssh-ed25519"
    announced_state: str = "ready"
    source: Source = Source.MDNS
    present: bool = True
    # A pinned node (registering, registered, interrupted) that announces another
    # address keeps its old one until the new one presents the registered key.
    moved_ip: str | None = None
    moved_port: int | None = None
    moved_name: str | None = None
    # In a conflict: the other host key that announces this id (JSON, as received).
    contender: str | None = None
    # Trust (docs/security.md): how the last announcement was authenticated —
    # "" unsigned, "signed" (a valid signature of token_id), "admin" (registered by
    # hand), or "bad: <why>" — checked when it was received.
    auth: str = ""
    token_id: str | None = None
    # What the registrar decided (state changes own these; see _machine.apply_change).
    state: NodeState = NodeState.SEEN
    reason: str = ""
    attempts: int = 0
    next_attempt: float | None = None
    path: str | None = None
    hook_started: bool = False
    resumed: bool = False
    registered_at: float | None = None
    approved_fp: str | None = None  # the key the admin approved (an approval pins it)
    granted: str | None = None  # what admitted its registration (token:ID, window:ID, …)
    # Bookkeeping.
    first_seen: float = 0.0
    last_seen: float = 0.0
    updated: float = 0.0
    claim_owner: str | None = None
    claim_expires: float | None = None
    generation: str = ""

    @classmethod
    def new(cls, ann: Announcement, *, source: Source, reason: str, now: float) -> NodeRecord:
        """A node seen for the first time (announced, or registered by hand)."""
        return cls(
            node_id=ann.node_id,
            role=ann.role,
            cluster=ann.cluster,
            name=ann.name,
            ip=ann.ip,
            port=ann.port,
            fingerprint=ann.fingerprint,
            key_type=ann.key_type,
            announced_state=ann.state,
            source=source,
            present=True,
            state=NodeState.SEEN,
            reason=reason,
            first_seen=now,
            last_seen=now,
            updated=now,
            generation=new_generation(),
        )

    @property
    def display_name(self) -> str:
        return self.name or self.node_id

    @property
    def moved(self) -> tuple[str, int, str | None] | None:
        """Where the node says it is now, while that is not verified yet."""
        if self.moved_ip is None or self.moved_port is None:
            return None
        return self.moved_ip, self.moved_port, self.moved_name

    @property
    def label(self) -> str:
        """How events name a node: role, name and id."""
        return f"{self.role} {self.display_name} ({self.node_id})"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        out["source"] = self.source.value
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> NodeRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        args = {k: v for k, v in values.items() if k in known}
        args["state"] = NodeState(args["state"])
        args["source"] = Source(args.get("source", "mdns"))
        return cls(**args)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One announcement to absorb (:meth:`StateStore.ingest_many`)."""

    ann: Announcement
    source: Source
    instance: str
    observer: str = ""
    lease: float | None = None  # seconds it stays present without news; None: until goodbye
    auth: str = ""
    token_id: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Departure:
    """A goodbye: ``instance`` from ``source``, as ``observer`` saw it, is gone."""

    source: Source
    instance: str
    observer: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """An event to record with a batch (a rejected announcement, say)."""

    node_id: str | None
    kind: str
    message: str
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """A registrar's standing with its store (``StateStore.keep_registrar``).

    sqlite: nothing expires (the daemon lock lasts as long as the process), so every
    field but ``owner`` is None.  etcd: the registrar's lease, its TTL, and until when
    (``time.monotonic()`` of this process) it certainly has not expired: the last
    keep-alive that got through was sent then minus the TTL.
    """

    owner: str
    lease: str | None = None
    ttl: float | None = None
    valid_until: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Tunnel:
    """A node's reverse tunnel allocation: its callback key and controller ports."""

    node_id: str
    public_key: str
    ports: tuple[int, ...]
    created: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    seq: int
    ts: float
    node_id: str | None
    kind: str
    state: str | None
    message: str
    data: dict[str, Any]
    origin: str = ""  # who wrote it: a registrar's owner id, or an admin's command
    #: The same event (node, kind, state, message, writer) in a row is kept once:
    #: how many times it happened, and when first (``ts`` is the latest).
    repeats: int = 1
    first_ts: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """A join token as the registrar keeps it: its HMAC key, never its secret."""

    token_id: str
    key: bytes = dataclasses.field(repr=False)
    roles: tuple[str, ...]  # empty: any role
    cluster: str | None  # None: any cluster
    uses: int
    expires: float
    created: float
    description: str = ""
    revoked: float | None = None
    used_by: tuple[tuple[str, str, float], ...] = ()  # (node id, fingerprint, when)

    @property
    def used(self) -> int:
        return len(self.used_by)

    @property
    def uses_left(self) -> int:
        return max(0, self.uses - self.used)

    def covers(self, role: str, cluster: str | None) -> bool:
        return (not self.roles or role in self.roles) and (
            self.cluster is None or self.cluster == cluster
        )

    def refusal(self, node_id: str, fingerprint: str, role: str, cluster: str | None,
                now: float) -> str | None:  # fmt: skip
        """Why this token does not admit that node now, or None (it does)."""
        if self.revoked is not None:
            return f"token {self.token_id} was revoked"
        if now >= self.expires:
            return f"token {self.token_id} expired"
        if not self.covers(role, cluster):
            scope = "/".join(self.roles) or "any role"
            where = f" of cluster {self.cluster}" if self.cluster else ""
            return f"token {self.token_id} is for {scope}{where}, not {role}" + (
                f" of cluster {cluster}" if cluster else ""
            )
        mine = any(n == node_id and f == fingerprint for n, f, _ in self.used_by)
        if not mine and self.uses_left == 0:
            return f"token {self.token_id} is used up ({self.uses} of {self.uses})"
        return None

    def to_json(self) -> dict[str, Any]:
        """Everything but the key: what `autoreg token list` shows."""
        return {
            "id": self.token_id,
            "roles": list(self.roles),
            "cluster": self.cluster,
            "uses": self.uses,
            "uses_left": self.uses_left,
            "expires": self.expires,
            "created": self.created,
            "description": self.description,
            "revoked": self.revoked,
            "used_by": [{"node_id": n, "fingerprint": f, "at": t} for n, f, t in self.used_by],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    """An install window: unsigned announcements of ``scope`` are admitted while open."""

    window_id: str
    scope: str  # a role, or "*" for every role
    opened: float
    expires: float
    max_uses: int | None
    used: int = 0
    closed: float | None = None
    closed_reason: str = ""

    def is_open(self, now: float) -> bool:
        return (
            self.closed is None
            and now < self.expires
            and (self.max_uses is None or self.used < self.max_uses)
        )

    def covers(self, role: str) -> bool:
        return self.scope in ("*", role)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
