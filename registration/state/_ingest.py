"""How a node's record absorbs one announcement, from whatever source: a pure function.

Every source (mDNS browsing, a manual registration, …) ends in the store's
``ingest``, which reads the row, calls :func:`absorb`, and writes the result in
one transaction.  The rules for what an announcement may change live here and
nowhere else; state changes go through :func:`_machine.apply_change`.

What an announcement may not do (docs/security.md, "What an attacker on the LAN
can do"):

- **take over a node that is being announced**: a second host key for the same
  id while the node is present, or another address from a second announcer while
  the first still announces it, makes it a ``conflict``, and neither is
  registered until the admin picks one.  A new key is taken only from a node that
  was gone (said goodbye: reinstalled) and is not pinned;
- **change a pinned node** (registering, registered, interrupted): another key,
  role or cluster is a conflict event and is ignored; another address (or name) is
  kept aside, ``moved_*``, until the daemon has seen the new address present the
  registered key.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from ._machine import Change, NodeState, apply_change
from ._records import NodeRecord, Source

__all__ = ["PINNED", "Absorbed", "absorb"]

#: States in which a node's identity (key, role, cluster) and address are pinned: a
#: registration is under way or done.
PINNED: Final = frozenset({NodeState.REGISTERING, NodeState.REGISTERED, NodeState.INTERRUPTED})

Outcome = Literal["new", "updated", "unchanged", "conflict", "moved"]


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
    instance: str,
    now: float,
    was_present: bool,
    others_present: bool = False,
    auth: str = "",
    token_id: str | None = None,
) -> Absorbed:
    """The record after ``ann`` (an :class:`~registration.protocol.Announcement`).

    ``was_present``: the node was announced (by anyone) before this announcement;
    ``others_present``: another announcer (source or instance) announces it now;
    ``auth``/``token_id``: how this announcement was authenticated (``_records``).
    """
    announced = ann.summary()
    announcement = {"announcement": announced, "source": source.value, "instance": instance}
    if existing is None:
        rec = NodeRecord.new(ann, source=source, reason="announced", now=now)
        rec = dataclasses.replace(rec, auth=auth, token_id=token_id)
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
    seen = dataclasses.replace(rec, present=True, last_seen=now)
    new_key = (rec.fingerprint, rec.key_type) != (ann.fingerprint, ann.key_type)
    new_role = (rec.role, rec.cluster) != (ann.role, ann.cluster)
    moved = (rec.ip, rec.port, rec.name) != (ann.ip, ann.port, ann.name)
    pinned = rec.state in PINNED

    if (new_key or new_role) and pinned:
        return Absorbed(
            seen,
            "conflict",
            "conflict",
            f"{rec.node_id} is {rec.state.value} with {rec.role}/{rec.cluster} "
            f"{rec.fingerprint} but now announces {ann.role}/{ann.cluster} "
            f"{ann.fingerprint} ({source.value} {instance}): ignored; "
            f"`autoreg forget {rec.node_id}` to register it anew",
            announcement,
        )
    if new_key and rec.state is NodeState.CONFLICT:
        contender = _contender(ann, source, instance)
        if ann.fingerprint == rec.fingerprint or contender == rec.contender:
            return Absorbed(seen, "unchanged")
        return Absorbed(
            dataclasses.replace(seen, contender=contender),
            "conflict",
            "conflict",
            f"{rec.label}: yet another host key announces this id: {ann.fingerprint} "
            f"({source.value} {instance})",
            announcement,
        )
    # Two announcers of one id: another key while the node is announced, or another
    # address from another announcer while the first still announces it.
    two_announcers = new_key or (moved and others_present)
    if two_announcers and was_present and not pinned:
        contested = apply_change(
            seen,
            Change(
                expect=rec.state,
                to=NodeState.CONFLICT,
                reason=(
                    f"two {'host keys' if new_key else 'announcers'} announce id "
                    f"{rec.node_id}: {rec.fingerprint} at {rec.ip}:{rec.port} and "
                    f"{ann.fingerprint} at {ann.ip}:{ann.port}; neither is registered "
                    f"until you pick one (stop the wrong one and `autoreg forget "
                    f"{rec.node_id}`)"
                ),
                kind="conflict",
            ),
            now=now,
            lease=0.0,
        )
        return Absorbed(
            dataclasses.replace(contested, contender=_contender(ann, source, instance)),
            "conflict",
            "conflict",
            f"{rec.label}: conflict: {ann.fingerprint} at {ann.ip}:{ann.port} "
            f"({source.value} {instance}) announces the id that {rec.fingerprint} at "
            f"{rec.ip}:{rec.port} holds",
            announcement,
        )
    if moved and pinned:
        target = (ann.ip, ann.port, ann.name)
        if target == rec.moved:
            return Absorbed(seen, "unchanged")
        if (rec.ip, rec.port, rec.name) == target:  # back where it was: nothing to verify
            back = dataclasses.replace(
                seen, announced_state=ann.state, moved_ip=None, moved_port=None, moved_name=None
            )
            return Absorbed(back, "updated")
        return Absorbed(
            dataclasses.replace(
                seen,
                announced_state=ann.state,
                moved_ip=ann.ip,
                moved_port=ann.port,
                moved_name=ann.name,
            ),
            "moved",
            "moved",
            f"{rec.label} now announces {ann.ip}:{ann.port}"
            + (f" as {ann.name}" if ann.name != rec.name else "")
            + f"; it stays at {rec.ip}:{rec.port} until that address presents its "
            f"registered key {rec.fingerprint}",
            announcement,
        )
    fresh = dataclasses.replace(
        seen,
        announced_state=ann.state,
        source=source,
        moved_ip=None,
        moved_port=None,
        moved_name=None,
        auth=auth,
        token_id=token_id,
    )
    new_auth = (auth, token_id) != (rec.auth, rec.token_id)
    if not pinned:
        fresh = dataclasses.replace(
            fresh,
            ip=ann.ip,
            port=ann.port,
            name=ann.name,
            fingerprint=ann.fingerprint,
            key_type=ann.key_type,
            role=ann.role,
            cluster=ann.cluster,
        )
    restarted = False
    if not pinned and rec.state is not NodeState.CONFLICT:
        # A node that comes back (rebooted) gets another chance at failed or
        # unreachable; a rejected one only when what it announces changed.
        came_back = rec.state.retryable and not was_present
        changed = rec.state in (
            NodeState.FAILED,
            NodeState.UNREACHABLE,
            NodeState.REJECTED,
        ) and (new_key or new_role or moved)
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
    if moved or new_key or new_role or not was_present or restarted or new_auth:
        return Absorbed(
            fresh,
            "updated",
            "announced",
            f"{rec.label} re-announced at {ann.ip}:{ann.port} (state {ann.state})"
            + (f" with a new host key {ann.fingerprint}" if new_key else "")
            + (f"; {_auth_words(auth, token_id)}" if new_auth else ""),
            announcement if (moved or new_key or new_role) else {"source": source.value},
        )
    if fresh.announced_state != rec.announced_state:
        return Absorbed(fresh, "updated")
    return Absorbed(fresh, "unchanged")


def _contender(ann: Any, source: Source, instance: str) -> str:
    return json.dumps(
        {
            "fingerprint": ann.fingerprint,
            "key_type": ann.key_type,
            "ip": ann.ip,
            "port": ann.port,
            "role": ann.role,
            "cluster": ann.cluster,
            "name": ann.name,
            "source": source.value,
            "instance": instance,
        },
        sort_keys=True,
    )


def _auth_words(auth: str, token_id: str | None) -> str:
    if auth == "signed":
        return f"signed with token {token_id}"
    if auth.startswith("bad:"):
        return f"bad signature ({auth[4:].strip()})"
    return auth if auth else "unsigned"
