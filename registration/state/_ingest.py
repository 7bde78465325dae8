"""How a node's record absorbs one announcement, from whatever source: a pure function.

Every source (mDNS browsing, a manual registration, …) ends in the store's
``ingest``, which reads the row, calls :func:`absorb`, and writes the result in
one transaction.  The rules for what an announcement may change live here and
nowhere else; state changes go through :func:`_machine.apply_change`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._machine import Change, NodeState, apply_change
from ._records import NodeRecord, Source

__all__ = ["PINNED", "Absorbed", "absorb"]

#: States in which a node's identity (key, role, cluster) is pinned: a registration
#: is under way or done, so an announcement with another identity is a conflict.
PINNED: Final = frozenset({NodeState.REGISTERING, NodeState.REGISTERED, NodeState.INTERRUPTED})

Outcome = Literal["new", "updated", "unchanged", "conflict"]


@dataclasses.dataclass(frozen=True, slots=True)
class Absorbed:
    record: NodeRecord
    outcome: Outcome
    kind: str | None = None  # the event to log (None: nothing worth a line)
    message: str | None = None
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def absorb(
    existing: NodeRecord | None,
    ann: Any,
    *,
    source: Source,
    now: float,
    was_present: bool,
) -> Absorbed:
    """The record after ``ann`` (an :class:`~registration.protocol.Announcement`)."""
    announcement = {"announcement": dataclasses.asdict(ann), "source": source.value}
    if existing is None:
        rec = NodeRecord.new(ann, source=source, reason="announced", now=now)
        where = f" of cluster {ann.cluster}" if ann.cluster else ""
        verb = "registered manually:" if source is Source.MANUAL else "announced at"
        return Absorbed(
            rec,
            "new",
            "manual" if source is Source.MANUAL else "announced",
            f"{rec.label}{where} {verb} {ann.ip}:{ann.port} ({ann.fingerprint})",
            announcement,
        )
    rec = existing
    identity_changed = (rec.fingerprint, rec.role, rec.cluster, rec.key_type) != (
        ann.fingerprint,
        ann.role,
        ann.cluster,
        ann.key_type,
    )
    moved = (rec.ip, rec.port, rec.name) != (ann.ip, ann.port, ann.name)
    if rec.state in PINNED and identity_changed:
        fresh = dataclasses.replace(rec, last_seen=now, present=True)
        return Absorbed(
            fresh,
            "conflict",
            "conflict",
            f"{rec.node_id} is {rec.state.value} with {rec.role}/{rec.cluster} "
            f"{rec.fingerprint} but now announces {ann.role}/{ann.cluster} "
            f"{ann.fingerprint}: ignored; `autoreg forget {rec.node_id}` to register it anew",
            announcement,
        )
    fresh = dataclasses.replace(
        rec,
        ip=ann.ip,
        port=ann.port,
        name=ann.name,
        announced_state=ann.state,
        source=source,
        present=True,
        last_seen=now,
    )
    restarted = False
    if rec.state not in PINNED:
        fresh = dataclasses.replace(
            fresh,
            fingerprint=ann.fingerprint,
            role=ann.role,
            cluster=ann.cluster,
            key_type=ann.key_type,
        )
        # A node that comes back (rebooted) gets another chance at failed or
        # unreachable; a rejected one only when what it announces changed.
        came_back = rec.state.retryable and not was_present
        changed = rec.state in (
            NodeState.FAILED,
            NodeState.UNREACHABLE,
            NodeState.REJECTED,
        ) and (identity_changed or moved)
        if came_back or changed:
            fresh = apply_change(
                fresh,
                Change(
                    expect=rec.state,
                    to=NodeState.SEEN,
                    reason="announced again with new data; re-evaluating",
                    kind="announced",
                    fields={"attempts": 0, "next_attempt": None},
                ),
                now=now,
                lease=0.0,
            )
            restarted = True
    if moved or identity_changed or not was_present or restarted:
        return Absorbed(
            fresh,
            "updated",
            "announced",
            f"{rec.label} re-announced at {ann.ip}:{ann.port} (state {ann.state})",
            announcement if (moved or identity_changed) else {"source": source.value},
        )
    return Absorbed(fresh, "unchanged")
