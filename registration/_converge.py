"""When a fan-out is over: every target settled, or nothing changed for a while.

``autoreg bootstrap`` and ``autoreg exec --follow`` watch many targets whose
outcome arrives over time (a node registers, a command ends, a new node turns
up).  Both stop by the same rule, mgmt's ``--converged-timeout``:

- every target has settled (ended well or badly): return at once;
- otherwise, once nothing has changed for ``quiet`` seconds: the fan-out has
  converged as far as it will by itself; the targets still open are reported as
  such (and make the exit status non-zero).

The tracker is pure: the caller hands it the time (``time.monotonic()``, or a
fake clock in tests) and what it observed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["Convergence", "Outcome"]

K = TypeVar("K", bound=Hashable)


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """What is known of one target now: a state word, and whether it is settled."""

    state: str
    settled: bool = False
    ok: bool = False
    detail: str = ""


class Convergence(Generic[K]):
    """Targets, their latest outcome, and the time anything last changed."""

    def __init__(self, quiet: float, now: float, targets: Iterable[K] = ()) -> None:
        if quiet < 0:
            raise ValueError("the converged timeout cannot be negative")
        self.quiet = quiet
        self.last_change = now
        self._outcomes: dict[K, Outcome] = {t: Outcome("waiting") for t in targets}

    def add(self, target: K, now: float, outcome: Outcome | None = None) -> None:
        """A new target (``exec --follow``: a node that registered meanwhile)."""
        if target not in self._outcomes:
            self._outcomes[target] = outcome or Outcome("waiting")
            self.last_change = now

    def observe(self, target: K, outcome: Outcome, now: float) -> bool:
        """Record ``outcome``; whether it is a change (a change restarts the quiet period)."""
        if self._outcomes.get(target) == outcome:
            return False
        self._outcomes[target] = outcome
        self.last_change = now
        return True

    @property
    def outcomes(self) -> dict[K, Outcome]:
        return dict(self._outcomes)

    @property
    def settled(self) -> bool:
        return all(o.settled for o in self._outcomes.values())

    def quiet_for(self, now: float) -> float:
        return max(0.0, now - self.last_change)

    def finished(self, now: float) -> bool:
        """Every target settled, or nothing changed for ``quiet`` seconds."""
        return self.settled or self.quiet_for(now) >= self.quiet

    def remaining(self, now: float) -> float:
        """Seconds until :meth:`finished` turns true without any change (0: now)."""
        return 0.0 if self.finished(now) else self.quiet - self.quiet_for(now)
