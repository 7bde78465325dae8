"""Typed records kept in the state store."""

from __future__ import annotations

import dataclasses
import enum
import json
import sqlite3
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..protocol import Announcement

__all__ = ["Event", "NodeRecord", "NodeState", "Tunnel"]


class NodeState(enum.StrEnum):
    """Where a node stands with this registrar.  See docs/architecture.md."""

    SEEN = "seen"  # announced, not decided yet
    WAITING = "waiting"  # a requirement is not met yet (reason says which)
    LOCKED = "locked"  # lockdown is on for its role
    REFUSED = "refused"  # uniqueness: another node holds the slot
    REJECTED = "rejected"  # spoofed fingerprint, or the hook declined it
    UNREACHABLE = "unreachable"  # SSH failed; retried with backoff
    REGISTERING = "registering"  # the hook is running (committed before it starts)
    FAILED = "failed"  # the hook failed; retried with backoff, then gives up
    INTERRUPTED = "interrupted"  # the daemon died during the hook: needs a decision
    REGISTERED = "registered"  # done, exactly once

    @property
    def is_final(self) -> bool:
        return self in (NodeState.REGISTERED, NodeState.REJECTED, NodeState.INTERRUPTED)


@dataclasses.dataclass(frozen=True, slots=True)
class NodeRecord:
    node_id: str
    role: str
    cluster: str | None
    name: str | None
    ip: str
    port: int
    fingerprint: str
    key_type: str
    announced_state: str
    source: str
    present: bool
    state: NodeState
    reason: str
    attempts: int
    next_attempt: float | None
    path: str | None
    hook_pid: int | None
    resumed: bool
    first_seen: float
    last_seen: float
    updated: float
    registered_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> NodeRecord:
        values = dict(row)
        values["present"] = bool(values["present"])
        values["resumed"] = bool(values["resumed"])
        values["state"] = NodeState(values["state"])
        return cls(**values)

    @classmethod
    def new(cls, ann: Announcement, *, source: str, reason: str, now: float) -> NodeRecord:
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
            attempts=0,
            next_attempt=None,
            path=None,
            hook_pid=None,
            resumed=False,
            first_seen=now,
            last_seen=now,
            updated=now,
            registered_at=None,
        )

    @property
    def display_name(self) -> str:
        return self.name or self.node_id

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["state"] = self.state.value
        return out


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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Event:
        values = dict(row)
        try:
            values["data"] = json.loads(values["data"])
        except ValueError:
            values["data"] = {"raw": values["data"]}
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
