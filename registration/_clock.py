"""Time, as the daemon sees it: wall-clock timestamps and timers on the event loop.

The daemon never calls ``time.time()`` or ``loop.call_later`` itself: it asks its
:class:`Clock`, so tests can run retry timers and re-delivery intervals without
waiting (a fake clock that is advanced by hand).  ``call_*`` run on the loop only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["Clock", "SystemClock", "TimerHandle", "wait_event"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (what timestamps in the store are)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop after ``delay`` seconds of this clock."""
        ...


class SystemClock:
    """The real clock: ``time.time()`` and the running loop's timers."""

    def time(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; whether it is set.

    ``asyncio.timeout``, not ``asyncio.wait_for``: on Python 3.11, a task cancelled at
    the moment ``wait_for``'s timeout fires can lose the cancellation and wait forever
    (seen as an announcer that ignored SIGTERM).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
