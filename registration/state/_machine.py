"""The node state machine: every state, what it means, and every allowed transition.

This module is the one place that says which state may follow which.  Every
write of a node's ``state`` goes through :func:`apply_change`, which refuses a
transition the table does not allow and a write whose premise no longer holds
(compare-and-set: the writer names the state it read, the row's generation, and
the claim it holds).  Stores call it inside their transaction; nothing else
writes ``state``.

Adding a state is one entry in :data:`TRAITS`, its row in :data:`TRANSITIONS`,
and the rule in ``controller._rules.decide`` that leads to it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from .._exceptions import StateError

if TYPE_CHECKING:
    from ._records import NodeRecord

__all__ = [
    "DECISION_FIELDS",
    "TRAITS",
    "TRANSITIONS",
    "Change",
    "IllegalTransition",
    "LostRace",
    "NodeState",
    "Traits",
    "apply_change",
    "is_settled",
    "mermaid_diagram",
]


class NodeState(enum.StrEnum):
    """Where a node stands with its registrar (the table below says what each means)."""

    SEEN = "seen"
    PENDING = "pending"
    WAITING = "waiting"
    LOCKED = "locked"
    REFUSED = "refused"
    REJECTED = "rejected"
    UNREACHABLE = "unreachable"
    QUEUED = "queued"
    REGISTERING = "registering"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CONFLICT = "conflict"
    REGISTERED = "registered"

    @property
    def traits(self) -> Traits:
        return TRAITS[self]

    @property
    def decidable(self) -> bool:
        """The reconcile pass decides it (again) whenever something relevant changes."""
        return TRAITS[self].decidable

    @property
    def retryable(self) -> bool:
        """Retried on a timer (``next_attempt``) until ``max_attempts``; then it gave up."""
        return TRAITS[self].retryable

    @property
    def holds_slot(self) -> bool:
        """Counts toward uniqueness ("one Walrus per cloud")."""
        return TRAITS[self].holds_slot

    @property
    def claimed(self) -> bool:
        """A registrar works on it: it holds a claim (owner + lease) while in this state."""
        return TRAITS[self].claimed

    @property
    def final(self) -> bool:
        """Nothing happens to it without new data or an admin."""
        return TRAITS[self].final


@dataclasses.dataclass(frozen=True, slots=True)
class Traits:
    meaning: str
    decidable: bool = False
    retryable: bool = False
    holds_slot: bool = False
    claimed: bool = False
    final: bool = False


S = NodeState

#: What each state means and which predicates hold for it.
TRAITS: Final[Mapping[NodeState, Traits]] = {
    S.SEEN: Traits("announced, not decided yet", decidable=True),
    S.PENDING: Traits(
        "not trusted yet: waits for an approval, a token or an install window", decidable=True
    ),
    S.WAITING: Traits("a requirement is not met yet (the reason says which)", decidable=True),
    S.LOCKED: Traits("lockdown is on for its role", decidable=True),
    S.REFUSED: Traits("uniqueness: another node holds the slot", decidable=True),
    S.REJECTED: Traits("spoofed, malformed, or declined by the hook", final=True),
    S.UNREACHABLE: Traits("SSH failed; retried with backoff", decidable=True, retryable=True),
    S.QUEUED: Traits("to be registered: waits for a free SSH slot", decidable=True),
    S.REGISTERING: Traits("verifying over SSH and running the hook", holds_slot=True, claimed=True),
    S.FAILED: Traits("the hook failed; retried with backoff", decidable=True, retryable=True),
    S.INTERRUPTED: Traits("stopped during its hook: the admin decides", final=True),
    S.CONFLICT: Traits("two host keys announce this id: the admin picks one", final=True),
    S.REGISTERED: Traits("done, exactly once", holds_slot=True, final=True),
}

_DECIDED: Final = frozenset({S.PENDING, S.WAITING, S.LOCKED, S.REFUSED, S.REJECTED, S.QUEUED})
#: Ingestion may find that a second host key announces a node's id: a conflict.
_CONTESTED: Final = frozenset({S.CONFLICT})

#: from → the states it may move to.  ``None`` is "no row yet".
TRANSITIONS: Final[Mapping[NodeState | None, frozenset[NodeState]]] = {
    None: frozenset({S.SEEN}),
    # decide() moves any decidable node; new data or an admin's retry starts it over;
    # a second key announcing the same id makes it a conflict.
    S.SEEN: _DECIDED | _CONTESTED,
    S.PENDING: _DECIDED | _CONTESTED | {S.SEEN},
    S.WAITING: _DECIDED | _CONTESTED | {S.SEEN},
    S.LOCKED: _DECIDED | _CONTESTED | {S.SEEN},
    S.REFUSED: _DECIDED | _CONTESTED | {S.SEEN},
    S.UNREACHABLE: _DECIDED | _CONTESTED | {S.SEEN},
    S.FAILED: _DECIDED | _CONTESTED | {S.SEEN},
    # A queued node takes its slot (registering) when the SSH pool gives it one, and is
    # decided again meanwhile; a node no path reaches is unreachable without a slot.
    S.QUEUED: _DECIDED | _CONTESTED | {S.SEEN, S.REGISTERING, S.UNREACHABLE},
    # Only new data (another key or address) or the admin's retry reopen these.
    S.REJECTED: _CONTESTED | {S.SEEN},
    S.INTERRUPTED: frozenset({S.SEEN}),
    # The admin picks the key (`autoreg forget`, which deletes the row, or an approval
    # that pins one key); the contender that is left starts over.
    S.CONFLICT: frozenset({S.SEEN}),
    # The registration's outcome; the same state again marks progress (hook started);
    # SEEN is recovery of a node whose hook never started.
    S.REGISTERING: frozenset(
        {S.REGISTERING, S.REGISTERED, S.REJECTED, S.UNREACHABLE, S.FAILED, S.INTERRUPTED, S.SEEN}
    ),
    # Registered is for good: only `autoreg forget` (which deletes the row) undoes it.
    S.REGISTERED: frozenset(),
}

#: Columns a state change may set besides ``state``/``reason`` (the announcement's own
#: columns belong to ingestion, never to a decision).
DECISION_FIELDS: Final = frozenset(
    {
        "attempts",
        "next_attempt",
        "path",
        "hook_started",
        "resumed",
        "registered_at",
        "approved_fp",
        "granted",
    }
)


class IllegalTransition(StateError):
    """A write that the state table does not allow (a bug in the writer, never input)."""


class LostRace(StateError):
    """The node changed (or vanished) since the writer read it: the write is dropped."""


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One compare-and-set step of one node, and the event that explains it.

    ``expect`` is the state the writer read and ``generation`` the row it read it
    from (a forgotten and re-announced node is a new row).  ``owner`` is the
    registrar that holds (or, moving into a claimed state, takes) the node's claim.
    ``exclusive`` (role, cluster-or-None) asks the store to check, in the same
    transaction, that no other node of that scope holds a slot.  ``grant`` is what
    admits a node that takes a slot (``token:<id>``, ``window:<id>``, ``approval``,
    ``open``, ``admin``): the store consumes a token's or a window's use in the same
    transaction, once per node.
    """

    expect: NodeState
    to: NodeState
    reason: str
    kind: str
    generation: str | None = None
    owner: str | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    exclusive: tuple[str, str | None] | None = None
    grant: str | None = None
    message: str | None = None

    def event_message(self, rec: NodeRecord) -> str:
        return self.message or f"{rec.label}: {self.to.value}: {self.reason}"


def apply_change(
    rec: NodeRecord | None, change: Change, *, now: float, lease: float, owner_alive: bool = True
) -> NodeRecord:
    """The record after ``change``, or :class:`LostRace` / :class:`IllegalTransition`.

    Pure: stores call it inside their transaction on the row they just read.
    ``lease`` is how long a claim taken or renewed here lasts; ``owner_alive`` is
    False when the store knows the current claim's owner is gone (sqlite: the
    daemon lock is ours, so every other owner died), so its claim may be taken over.
    """
    if rec is None:
        raise LostRace(f"no such node any more ({change.kind}: {change.reason})")
    if change.generation is not None and rec.generation != change.generation:
        raise LostRace(f"{rec.node_id} was forgotten and announced anew meanwhile")
    if rec.state is not change.expect:
        raise LostRace(f"{rec.node_id} is {rec.state.value}, not {change.expect.value} any more")
    if change.to not in TRANSITIONS[change.expect]:
        raise IllegalTransition(
            f"{rec.node_id}: {change.expect.value} → {change.to.value} is not an allowed transition"
        )
    unknown = set(change.fields) - DECISION_FIELDS
    if unknown:
        raise IllegalTransition(f"a state change may not set {', '.join(sorted(unknown))}")
    claim_owner, claim_expires = rec.claim_owner, rec.claim_expires
    held = claim_owner is not None and claim_expires is not None and claim_expires > now
    if change.expect.claimed and held and claim_owner != change.owner and owner_alive:
        raise LostRace(f"{rec.node_id} is claimed by {claim_owner}")
    if change.to.claimed:
        if change.owner is None:
            raise IllegalTransition(f"moving {rec.node_id} to {change.to.value} needs an owner")
        if held and claim_owner != change.owner and owner_alive:
            raise LostRace(f"{rec.node_id} is claimed by {claim_owner}")
        claim_owner, claim_expires = change.owner, now + lease
    else:
        claim_owner = claim_expires = None
    return dataclasses.replace(
        rec,
        state=change.to,
        reason=change.reason,
        updated=now,
        claim_owner=claim_owner,
        claim_expires=claim_expires,
        **change.fields,
    )


def is_settled(rec: NodeRecord) -> bool:
    """No further automatic progress: final, or a retryable state that gave up."""
    return rec.state.final or (rec.state.retryable and rec.next_attempt is None)


def mermaid_diagram() -> str:
    """The state diagram (Mermaid ``stateDiagram-v2``), generated from the table.

    Self-transitions (a new reason, or progress such as "hook started") are left out.
    """
    lines = ["stateDiagram-v2"]
    for source, targets in TRANSITIONS.items():
        start = "[*]" if source is None else source.value
        for target in sorted(targets, key=list(NodeState).index):
            if target is not source:
                lines.append(f"    {start} --> {target.value}")
    return "\n".join(lines) + "\n"
