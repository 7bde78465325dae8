"""When a fan-out is over (``registration._converge``), on a clock handed in by hand."""

from __future__ import annotations

import pytest

from registration._converge import Convergence, Outcome

DONE = Outcome("registered", settled=True, ok=True)


def test_everything_settled_ends_at_once() -> None:
    c: Convergence[str] = Convergence(30, 0.0, ["a", "b"])
    c.observe("a", DONE, 1.0)
    assert not c.finished(1.0)
    c.observe("b", Outcome("failed", settled=True), 2.0)
    assert c.finished(2.0) and c.remaining(2.0) == 0


def test_the_quiet_period_counts_from_the_last_change() -> None:
    c: Convergence[str] = Convergence(5, 0.0, ["a"])
    assert c.observe("a", Outcome("registering"), 3.0)
    assert not c.observe("a", Outcome("registering"), 6.0)  # the same: no change
    assert not c.finished(7.9) and c.remaining(7.9) == pytest.approx(0.1)
    assert c.finished(8.0)
    c.add("b", 8.5)  # a new target is a change
    assert not c.finished(9.0) and c.finished(13.5)


def test_a_negative_quiet_period_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Convergence(-1, 0.0)
