"""A registrar's standing on a shared store (etcd): its lease, fencing, takeover.

Several registrars of one role share the store; each holds an etcd lease (TTL
``[autoreg] etcd_lease_ttl``) that its claims hang on.  :class:`LeaseKeeper` keeps
it alive (a keep-alive every ``(TTL - FENCE_MARGIN) / 3`` seconds) and knows, from
the send time of the last keep-alive that got through, until when the lease has
certainly not expired (``valid_until``).

**Fencing.**  ``FENCE_MARGIN`` seconds before ``valid_until`` without a keep-alive
getting through (etcd cut off, no quorum), the registrar is *fenced*: it takes no
claim and starts no hook (the store refuses both already, see
``state._etcd_base.lease_for``; etcd itself refuses a step under a lease that is
gone), its reconcile loop pauses, and its running hooks are terminated (SIGTERM,
SIGKILL ``KILL_GRACE`` later).  Another registrar can take a claim over only once
etcd has expired the lease, which is never before ``valid_until``: so no hook of
this registrar still runs when another one may start the same node's.  When
keep-alives get through again (or a new lease is granted, if the old one expired),
the registrar recovers its own claims that it left behind (the crash-recovery
policy), reloads the store and goes on: a follower, with no double work.

**Takeover.**  When etcd deletes another registrar's claims (its lease expired: it
died or was cut off), the store's claim watch says so, and every registrar applies
the crash-recovery policy (:func:`recovery_change`) to the nodes left behind; one
of them wins each node (compare-and-set).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from .._exceptions import AutoregError
from ..state import FENCE_MARGIN, Change, LeaseLost, NodeRecord, NodeState, StateStore

__all__ = ["LeaseKeeper", "recovery_change"]

log = logging.getLogger(__name__)

#: Seconds between attempts to get a new lease once the old one is gone, first, at most.
REGRANT_RETRY: Final = (0.5, 5.0)


def recovery_change(rec: NodeRecord, *, owner: str, resume: bool, why: str) -> Change:
    """What happens to a node left ``registering`` by a registrar that is gone (or was
    cut off): its hook never started: start over; it started: ``interrupted`` (the
    admin decides), or with ``resume_interrupted`` started again with
    ``AUTOREG_RESUMED=1``.  ``why`` says how the registrar went ("the daemon stopped")."""
    common: dict[str, Any] = {
        "expect": NodeState.REGISTERING,
        "generation": rec.generation,
        "owner": owner,
    }
    if not rec.hook_started:
        return Change(to=NodeState.SEEN, kind="recovered",
                      reason=f"{why} before the hook ran; starting over", **common)  # fmt: skip
    if resume:
        return Change(to=NodeState.SEEN, kind="interrupted",
                      reason=f"{why} while the hook ran; resuming (resume_interrupted = yes)",
                      fields={"resumed": True}, **common)  # fmt: skip
    return Change(
        to=NodeState.INTERRUPTED,
        kind="interrupted",
        reason=f"{why} while the hook was running, so it may or may not have registered the "
        f"node; check it, then `autoreg retry {rec.node_id}` (re-runs the hook with "
        f"AUTOREG_RESUMED=1) or `autoreg forget {rec.node_id}`",
        **common,
    )


class LeaseKeeper:
    """Keeps a registrar's lease alive; fences it when it cannot; reports takeovers.

    ``fence(reason)`` is called once when the registrar must stop acting;
    ``restore()`` once it may act again; ``take_over()`` when another registrar's
    claims ended.  Only for a store that is ``shared``.
    """

    def __init__(
        self,
        store: StateStore,
        owner: str,
        *,
        ttl: float,
        fence: Callable[[str], Awaitable[None]],
        restore: Callable[[], Awaitable[None]],
        take_over: Callable[[], Awaitable[None]],
    ) -> None:
        self._store = store
        self._owner = owner
        self.ttl = ttl
        self._fence_cb = fence
        self._restore_cb = restore
        self._take_over_cb = take_over
        self.interval = max(0.5, (ttl - FENCE_MARGIN) / 3)
        # lock_registrar granted the lease a moment ago; the first keep-alive, at once,
        # says exactly how long it holds
        self.valid_until = time.monotonic() + ttl - 0.5
        self.lease: str | None = None
        self.fenced: str | None = None
        self.fenced_since: float | None = None
        self._why: str | None = None
        self._regrant = REGRANT_RETRY[0]

    def status(self) -> dict[str, Any]:
        """For daemon.json and `autoreg status`."""
        return {
            "lease": self.lease,
            "ttl": self.ttl,
            "valid_for": round(self.valid_until - time.monotonic(), 1),
            "fenced": self.fenced,
            "fenced_since": self.fenced_since,
        }

    async def run(self) -> None:
        claims = asyncio.ensure_future(self._watch_claims())
        try:
            await self._keep()
        finally:
            claims.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await claims

    async def _keep(self) -> None:
        while True:
            fence_at = self.valid_until - FENCE_MARGIN
            if self.fenced is None and time.monotonic() >= fence_at:
                await self._fence(self._why or "no keep-alive of its etcd lease got through")
            budget = None if self.fenced else max(0.05, fence_at - time.monotonic())
            try:
                standing = await asyncio.wait_for(
                    self._store.keep_registrar(self._owner), timeout=budget
                )
            except TimeoutError:
                self._why = "etcd did not answer a keep-alive of its lease in time"
                continue
            except LeaseLost as exc:
                self._why = str(exc)
                if self.fenced is None:
                    await self._fence(str(exc))
                await self._new_lease()
                continue  # the next keep-alive says how long the new lease holds
            except AutoregError as exc:
                self._why = f"etcd does not answer: {exc}"
                left = self.valid_until - FENCE_MARGIN - time.monotonic()
                await asyncio.sleep(min(self.interval, 1.0, left) if left > 0 else 1.0)
                continue
            if standing.valid_until is not None:
                self.valid_until = standing.valid_until
            self.lease = standing.lease
            self._why = None
            if self.fenced is not None and self.valid_until - time.monotonic() > FENCE_MARGIN:
                await self._restore()
            await asyncio.sleep(self.interval)

    async def _new_lease(self) -> bool:
        try:
            await self._store.lock_registrar(self._owner)
        except AutoregError as exc:
            log.warning("cannot get a new etcd lease yet: %s; again in %.1fs", exc, self._regrant)
            await asyncio.sleep(self._regrant)
            self._regrant = min(REGRANT_RETRY[1], self._regrant * 2)
            return False
        self._regrant = REGRANT_RETRY[0]
        log.info("registrar %s has a new etcd lease", self._owner)
        return True

    async def _fence(self, reason: str) -> None:
        self.fenced = reason
        self.fenced_since = time.time()
        log.warning(
            "fenced: %s; this registrar takes no claim and starts no hook until etcd answers "
            "again, and its running hooks are terminated (another registrar may take its "
            "claims over once its lease has expired)",
            reason,
        )
        await self._fence_cb(reason)

    async def _restore(self) -> None:
        was = self.fenced
        self.fenced = self.fenced_since = None
        log.warning("etcd answers again (was: %s): this registrar acts again", was)
        await self._restore_cb()

    async def _watch_claims(self) -> None:
        failures = 0
        while True:
            try:
                async for _ in self._store.watch_claims():
                    failures = 0
                    if self.fenced is None:
                        await self._take_over_cb()
            except AutoregError as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2 ** (failures - 1))
                log.warning("watching claims failed: %s; again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
