"""The decision loop: re-decide the nodes a change affects, queue SSH work, arm timers.

Every input (an announcement, a goodbye, a finished registration, a retry timer,
a change another process committed, this registrar's own registration) updates
the in-memory index and marks the nodes it can affect *dirty*; one pass then
calls the pure ``decide()`` for each of them and applies the results by
compare-and-set, all of a pass's changes in one commit.  Decisions are taken
from state, never from the order of events, so a node that must wait ("SC waits
for its CC") is registered as soon as its requirement is met, whatever order
things happened in.

A node decided for registration is ``queued``: the SSH pool (``_pool``) dials
it, and only once its address answered and a slot is free is it decided again
and, still clear, moved to ``registering`` (the claim, with the uniqueness check
and the trust grant, in one compare-and-set).  So a node is ``registering`` only
while it holds a slot, and the time it stays there is bounded by the configured
timeouts (connect, hook), whatever the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._clock import Clock, TimerHandle
from .._config import ControllerConfig
from .._exceptions import AutoregError
from ..state import Change, LostRace, NodeRecord, NodeState, Source, StateStore
from ._dial import Dialed
from ._index import NodeIndex
from ._pool import Job, SSHPool, Tier
from ._registration import Registrations, retry_change
from ._rules import Registrar, decide

__all__ = ["RECEIPT_RESEND_INTERVAL", "RECEIPT_RESEND_MAX", "Reconciler"]

log = logging.getLogger(__name__)

#: Seconds before a registered node that still announces ``ready`` gets its
#: receipt again (it may have missed it, or been reinstalled with the same key);
#: the interval doubles per delivery up to RECEIPT_RESEND_MAX.
RECEIPT_RESEND_INTERVAL: Final = 30.0
RECEIPT_RESEND_MAX: Final = 3600.0
#: Seconds between checks of an address a registered node moved to, when it did not
#: answer; after MOVE_ATTEMPTS such checks the move is refused.
MOVE_RETRY_INTERVAL: Final = 30.0
MOVE_ATTEMPTS: Final = 5
#: State changes committed in one transaction at most (a pass commits in chunks).
PASS_COMMIT_MAX: Final = 500
#: Backoff after a pass that failed (the store is unreachable, say): first, cap.
PASS_RETRY_INITIAL: Final = 0.5
PASS_RETRY_MAX: Final = 30.0
_WARN_STATES: Final = frozenset({NodeState.REJECTED, NodeState.FAILED, NodeState.UNREACHABLE})


class Reconciler:
    """The index, the dirty set, the timers and the SSH pool."""

    def __init__(
        self,
        store: StateStore,
        *,
        registrar: Callable[[], Registrar],
        owner: str,
        clock: Clock,
        controller: ControllerConfig,
        probes: int | None = None,
        after_pass: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._registrar = registrar
        self._owner = owner
        self._clock = clock
        self._ctl = controller
        self._after_pass = after_pass
        self.index = NodeIndex(registrar().profile)
        self.registrations: Registrations | None = None
        #: One bounded pool for all SSH work: registrations, receipts, move checks.
        self.pool = SSHPool(
            slots=controller.max_parallel,
            probes=probes or controller.max_probes,
            dial=self._dial,
            work=self._work,
            silent=self._silent,
        )
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._timers: dict[str, tuple[float, TimerHandle]] = {}
        self._receipts: dict[str, tuple[float, float]] = {}  # last sent, interval
        self._interrupted: set[str] = set()  # hooks a stop cut short (for the exit status)
        self._move_checks: dict[str, tuple[int, float]] = {}  # checks so far, next due
        self._failures = 0
        self._trust_spent = False  # a registration spent a token's or a window's use
        self._no_answer: dict[str, str] = {}  # queued nodes whose dial failed, and why

    # -- inputs ------------------------------------------------------------------------

    def apply(self, rec: NodeRecord) -> None:
        """A record as the store now has it: index it, mark whom it affects."""
        self._mark(self.index.put(rec))

    def remove(self, node_id: str) -> None:
        self._mark(self.index.remove(node_id))
        self._cancel_timer(node_id)
        self.pool.cancel(node_id)
        self._no_answer.pop(node_id, None)
        self._receipts.pop(node_id, None)
        self._move_checks.pop(node_id, None)

    def set_lockdown(self, switches: dict[str, bool]) -> None:
        self._mark(self.index.set_lockdown(switches))

    async def load_trust(self) -> None:
        """Tokens, install windows and denied keys, as the store has them now."""
        self._mark(self.index.set_tokens(await self._store.tokens()))
        self._mark(self.index.set_windows(await self._store.windows()))
        self._mark(self.index.set_denied(await self._store.denied()))

    def mark_all(self) -> None:
        self._mark(self.index.ids())

    def _mark(self, ids: set[str]) -> None:
        if ids:
            self._dirty |= ids
            self._wake.set()

    async def reload(self, node_id: str, *, unless_same: bool = False) -> None:
        """Re-read one node from the store (another process changed it).

        ``unless_same``: a record exactly as indexed marks nothing dirty (after a lost
        race: deciding it again at once could only lose again).
        """
        rec = await self._store.get(node_id)
        if rec is None:
            self.remove(node_id)
        elif not (unless_same and rec == self.index.get(node_id)):
            self.apply(rec)

    async def load(self) -> None:
        """Rebuild the index from the store (at start)."""
        self._mark(self.index.replace_all(await self._store.nodes()))
        self.set_lockdown(await self._store.lockdown())
        await self.load_trust()

    # -- state changes -----------------------------------------------------------------

    async def change(self, rec: NodeRecord, change: Change) -> NodeRecord | None:
        """Apply one compare-and-set change; a lost race is logged and dropped."""
        try:
            fresh = await self._store.change(rec.node_id, change)
        except LostRace as exc:
            await self._lost(rec, change, exc)
            return None
        self._applied(rec, change, fresh)
        return fresh

    async def change_many(
        self, changes: list[tuple[NodeRecord, Change]]
    ) -> list[NodeRecord | None]:
        """Many changes in one commit; each lost race is logged and dropped alone."""
        if not changes:
            return []
        results = await self._store.change_many([(r.node_id, c) for r, c in changes])
        out: list[NodeRecord | None] = []
        for (rec, change), result in zip(changes, results, strict=True):
            if isinstance(result, LostRace):
                await self._lost(rec, change, result)
                out.append(None)
            else:
                self._applied(rec, change, result)
                out.append(result)
        return out

    def _applied(self, rec: NodeRecord, change: Change, fresh: NodeRecord) -> None:
        level = logging.WARNING if change.to in _WARN_STATES else logging.INFO
        log.log(level, "%s", change.event_message(rec))
        if change.grant is not None and change.grant.startswith(("token:", "window:")):
            self._trust_spent = True  # a use spent: the index's copy is stale
        self.apply(fresh)

    async def _lost(self, rec: NodeRecord, change: Change, exc: LostRace) -> None:
        log.info("%s: not applied (%s): %s", rec.node_id, change.to.value, exc)
        if change.grant is not None:
            await self.load_trust()  # a token or window changed under us: see it now
        await self.reload(rec.node_id, unless_same=True)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        pool = asyncio.ensure_future(self.pool.run())
        try:
            await self._loop()
        finally:
            pool.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pool

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            try:
                await self._pass(batch)
            except Exception as exc:  # the daemon keeps serving whatever one pass hits
                self._dirty |= batch
                self._failures += 1
                delay = min(PASS_RETRY_MAX, PASS_RETRY_INITIAL * 2 ** (self._failures - 1))
                if self._failures == 1:
                    log.exception("reconcile pass failed; retrying in %.1fs", delay)
                else:
                    log.warning(
                        "reconcile pass failed again (%d in a row): %s; retrying in %.1fs",
                        self._failures,
                        exc,
                        delay,
                    )
                self._clock.call_later(delay, self._wake.set)
            else:
                if self._failures:
                    log.info("reconcile pass succeeded again after %d failures", self._failures)
                self._failures = 0

    async def _pass(self, batch: set[str]) -> None:
        me = self._registrar()
        now = self._clock.time()
        changes: list[tuple[NodeRecord, Change]] = []
        for node_id in sorted(batch):
            rec = self.index.get(node_id)
            if rec is None:
                self.pool.cancel(node_id)
                continue
            if self.pool.working(node_id):
                continue  # its work marks it dirty again when it ends
            if rec.state is NodeState.REGISTERED:
                self._upkeep(rec, now)
                continue
            error = self._no_answer.pop(node_id, None)
            if error is not None and rec.state is NodeState.QUEUED:
                changes.append((rec, self._unreachable(rec, error, now)))
                continue
            if rec.state is NodeState.QUEUED and not rec.present:
                self.pool.cancel(node_id)
                changes.append((rec, self._step(rec, NodeState.SEEN, "withdrew before its turn")))
                continue
            if not rec.state.decidable or not rec.present:
                continue
            if rec.state.retryable:
                if rec.next_attempt is None:
                    continue  # gave up: waits for new data or `autoreg retry`
                if rec.next_attempt > now:
                    self._arm(node_id, rec.next_attempt)
                    continue
            decision = decide(rec, me, self.index)
            if decision.state is NodeState.QUEUED:
                if rec.state is NodeState.QUEUED:
                    self._enqueue(rec)
                else:
                    changes.append((rec, self._step(rec, NodeState.QUEUED, decision.reason)))
                continue
            if rec.state is NodeState.QUEUED:
                self.pool.cancel(node_id)
            if decision.state is not None and (decision.state, decision.reason) != (
                rec.state,
                rec.reason,
            ):
                changes.append((rec, self._step(rec, decision.state, decision.reason)))
        # In commits of PASS_COMMIT_MAX, each chunk's queued nodes handed to the pool at
        # once: a flood's pass does not hold back the first nodes it decided.
        for start in range(0, len(changes), PASS_COMMIT_MAX):
            for fresh in await self.change_many(changes[start : start + PASS_COMMIT_MAX]):
                if fresh is not None and fresh.state is NodeState.QUEUED:
                    self._enqueue(fresh)
        if self._trust_spent:
            self._trust_spent = False
            await self.load_trust()  # uses spent, windows sealed: decide on what is left
        if self._after_pass is not None:
            await self._after_pass()

    def _unreachable(self, rec: NodeRecord, error: str, now: float) -> Change:
        return retry_change(
            self._ctl,
            rec,
            expect=NodeState.QUEUED,
            to=NodeState.UNREACHABLE,
            error=error,
            attempt=rec.attempts + 1,
            kind="ssh",
            now=now,
        )

    @staticmethod
    def _step(rec: NodeRecord, to: NodeState, reason: str) -> Change:
        return Change(
            expect=rec.state, to=to, reason=reason, kind=to.value, generation=rec.generation
        )

    def _enqueue(self, rec: NodeRecord) -> None:
        tier = Tier.FRESH if rec.attempts == 0 else Tier.RETRY
        self.pool.submit(rec.node_id, "register", tier, attempts=rec.attempts)

    # -- SSH work (the pool calls these) ---------------------------------------------------

    async def _dial(self, job: Job) -> Dialed:
        rec = self.index.get(job.node_id)
        assert self.registrations is not None
        if rec is None:
            return Dialed(error="forgotten", reachable=False)
        moved = rec.moved
        address = (moved[0], moved[1]) if job.kind == "move" and moved is not None else None
        return await self.registrations.dial(rec, address=address)

    async def _work(self, job: Job) -> None:
        try:
            rec = self.index.get(job.node_id)
            if rec is None:
                return
            if job.kind == "register":
                await self._register(rec, job.dialed)
            elif job.kind == "receipt":
                await self._resend_receipt(rec, job.dialed)
            elif job.kind == "move":
                await self._check_move(rec, job.dialed)
        finally:
            self._mark({job.node_id})

    async def _silent(self, job: Job, error: str) -> None:
        """Dialling found no path to the node: nothing took an SSH slot.  A queued node's
        failed attempt is recorded by the next pass, with the pass's other changes."""
        try:
            rec = self.index.get(job.node_id)
            if rec is None:
                return
            if job.kind == "register" and rec.state is NodeState.QUEUED:
                self._no_answer[job.node_id] = error
            elif job.kind == "receipt":
                log.info("%s: registered but announces ready: receipt not delivered (%s)",
                         rec.node_id, error)  # fmt: skip
            elif job.kind == "move":
                await self._moved(rec, None)
        finally:
            self._mark({job.node_id})

    async def _register(self, rec: NodeRecord, dialed: Dialed | None) -> None:
        """A slot is ours: decide again (things change while a node waits), claim, go."""
        assert self.registrations is not None
        if rec.state is not NodeState.QUEUED:
            return
        decision = decide(rec, self._registrar(), self.index)
        if decision.state is not NodeState.QUEUED:
            if decision.state is not None:
                await self.change(rec, self._step(rec, decision.state, decision.reason))
            return
        fresh = await self.change(
            rec,
            Change(
                expect=NodeState.QUEUED,
                to=NodeState.REGISTERING,
                reason="verifying over SSH",
                kind="registering",
                generation=rec.generation,
                owner=self._owner,
                exclusive=decision.exclusive,
                grant=decision.grant,
                fields={"hook_started": False},
            ),
        )
        if fresh is None:
            return
        try:
            done = await self.registrations.register(fresh, dialed)
            if done is not None and done.state is NodeState.INTERRUPTED:
                self._interrupted.add(rec.node_id)  # the stop cut its hook short
            if done is not None and done.state is NodeState.REGISTERED:
                # The receipt just went out; give the node time to re-announce.
                self._receipts[rec.node_id] = (self._clock.time(), RECEIPT_RESEND_INTERVAL)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("registration of %s crashed", rec.node_id)
            current = self.index.get(rec.node_id) or fresh
            if current.state is NodeState.REGISTERING:
                await self.change(
                    current,
                    Change(
                        expect=NodeState.REGISTERING,
                        to=NodeState.FAILED,
                        reason=f"internal error: {exc!r}; `autoreg retry {rec.node_id}`",
                        kind="error",
                        generation=current.generation,
                        owner=self._owner,
                        fields={"next_attempt": None},
                    ),
                )

    # -- registered nodes: receipts again, moves ----------------------------------------------

    def _upkeep(self, rec: NodeRecord, now: float) -> None:
        if rec.moved is not None:
            due = self._move_checks.get(rec.node_id, (0, 0.0))[1]
            if now < due:
                self._arm(rec.node_id, due)
            else:
                self.pool.submit(rec.node_id, "move", Tier.UPKEEP)
            return
        if not rec.present or rec.source is Source.MANUAL or rec.announced_state != "ready":
            self._receipts.pop(rec.node_id, None)  # it holds its receipt (or is gone)
            return
        sent, interval = self._receipts.get(rec.node_id, (0.0, RECEIPT_RESEND_INTERVAL))
        if now < sent + interval:
            self._arm(rec.node_id, sent + interval)
            return
        self._receipts[rec.node_id] = (now, min(RECEIPT_RESEND_MAX, interval * 2))
        self.pool.submit(rec.node_id, "receipt", Tier.UPKEEP)

    async def _resend_receipt(self, rec: NodeRecord, dialed: Dialed | None) -> None:
        assert self.registrations is not None
        if rec.state is not NodeState.REGISTERED:
            return
        error = await self.registrations.redeliver_receipt(rec, dialed)
        log.info(
            "%s: registered but announces ready: receipt %s",
            rec.node_id,
            f"not delivered ({error})" if error else "delivered again",
        )

    async def _check_move(self, rec: NodeRecord, dialed: Dialed | None) -> None:
        """A registered node announces another address: adopt it once it presents the
        registered key; until then the old path stays (docs/security.md)."""
        assert self.registrations is not None
        if rec.state is not NodeState.REGISTERED or rec.moved is None:
            return
        await self._moved(rec, await self.registrations.verify_move(rec, dialed))

    async def _moved(self, rec: NodeRecord, verdict: bool | None) -> None:
        moved = rec.moved
        if moved is None:
            return
        checks = self._move_checks.get(rec.node_id, (0, 0.0))[0]
        ip, port, name = moved
        where = f"{ip}:{port}"
        if verdict is None and checks + 1 < MOVE_ATTEMPTS:
            self._move_checks[rec.node_id] = (checks + 1, self._clock.time() + MOVE_RETRY_INTERVAL)
            return
        if verdict is None:
            message = (
                f"{rec.label} did not answer at {where} after {checks + 1} checks: "
                f"not adopted; it stays at {rec.ip}:{rec.port}"
            )
        elif verdict:
            message = (
                f"{rec.label} moved to {where}"
                + (f" as {name}" if name != rec.name else "")
                + f": it presents the registered key {rec.fingerprint} there"
            )
        else:
            message = (
                f"{rec.label}: {where} does not present the registered key "
                f"{rec.fingerprint}: not adopted (possible spoofing); it stays at "
                f"{rec.ip}:{rec.port}"
            )
        self._move_checks.pop(rec.node_id, None)
        log.log(logging.INFO if verdict else logging.WARNING, "%s", message)
        fresh = await self._store.settle_move(
            rec.node_id,
            generation=rec.generation,
            moved=moved,
            adopt=bool(verdict),
            message=message,
        )
        if fresh is not None:
            self.apply(fresh)

    @property
    def in_flight(self) -> int:
        return self.pool.in_flight

    # -- timers --------------------------------------------------------------------------

    def _arm(self, node_id: str, at: float) -> None:
        """Re-decide ``node_id`` at ``at`` (an earlier timer already armed is kept)."""
        current = self._timers.get(node_id)
        if current is not None and current[0] <= at:
            return
        self._cancel_timer(node_id)

        def fire() -> None:
            self._timers.pop(node_id, None)
            self._mark({node_id})

        self._timers[node_id] = (at, self._clock.call_later(at - self._clock.time(), fire))

    def _cancel_timer(self, node_id: str) -> None:
        old = self._timers.pop(node_id, None)
        if old is not None:
            old[1].cancel()

    # -- stopping ------------------------------------------------------------------------

    async def drain(self, grace: float) -> list[NodeRecord]:
        """Stop: interrupt hooks, wait ``grace`` for registrations to record their outcome,
        cancel the rest.  Returns the nodes whose hook was interrupted."""
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        # The stop interrupts hooks at once (Daemon.stop): some registrations may
        # already have recorded it before the drain began.
        working = self.pool.working_ids() | self._interrupted
        await self.pool.drain(
            grace, interrupt=self.registrations.interrupt if self.registrations else None
        )
        interrupted = []
        for node_id in sorted(working):
            rec = self.index.get(node_id)
            if rec is None:
                continue
            if rec.state is NodeState.REGISTERING and rec.claim_owner == self._owner:
                # Its registration may have recorded the outcome itself (the hook was
                # interrupted) after the index last heard of it: the store says.
                rec = await self._stopped(rec) or await self._stored(node_id) or rec
            if rec.state is NodeState.INTERRUPTED:
                interrupted.append(rec)
        return interrupted

    async def _stored(self, node_id: str) -> NodeRecord | None:
        with contextlib.suppress(AutoregError):
            return await self._store.get(node_id)
        return None

    async def _stopped(self, rec: NodeRecord) -> NodeRecord | None:
        """A registration cut short by the stop: before its hook it starts over next
        time; during its hook it is interrupted (the admin decides)."""
        if rec.hook_started:
            to, kind = NodeState.INTERRUPTED, "interrupted"
            reason = (
                "the daemon stopped while the hook ran, so it may or may not have "
                f"registered the node; check it, then `autoreg retry {rec.node_id}` "
                f"(re-runs the hook with AUTOREG_RESUMED=1) or `autoreg forget {rec.node_id}`"
            )
        else:
            to, kind = NodeState.SEEN, "recovered"
            reason = "the daemon stopped before the hook ran; starting over"
        with contextlib.suppress(AutoregError):
            return await self.change(
                rec,
                Change(
                    expect=NodeState.REGISTERING,
                    to=to,
                    reason=reason,
                    kind=kind,
                    generation=rec.generation,
                    owner=self._owner,
                ),
            )
        return None

    def timers_armed(self) -> dict[str, float]:
        """When each armed timer fires (for status and tests)."""
        return {node_id: at for node_id, (at, _) in self._timers.items()}

    def debug_state(self) -> dict[str, Any]:
        return {
            "dirty": sorted(self._dirty),
            "pool": self.pool.stats(),
            "timers": self.timers_armed(),
        }
