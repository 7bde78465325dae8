"""Handing blocking work (sqlite, paramiko, pycdlib) to threads, with a capacity limit.

There is one event loop; anything that blocks runs through a :class:`ThreadLimiter`,
which bounds how many threads a kind of work may occupy at once.

Cancellation: cancelling a coroutine that awaits :meth:`ThreadLimiter.run` stops
the wait at once, but a call already running in a thread runs to its end (Python
cannot interrupt a thread); its result is discarded.  A call still queued behind
the capacity limit is dropped.  :meth:`ThreadLimiter.aclose` drops everything
queued and waits, off the loop, for the calls still running.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

__all__ = ["ThreadLimiter"]

P = ParamSpec("P")
T = TypeVar("T")


class ThreadLimiter:
    """A named pool of at most ``capacity`` worker threads."""

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        self._pool = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in a worker thread (context variables carried along) and await it."""
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    async def aclose(self) -> None:
        """Drop queued calls and wait for running ones without blocking the loop."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    def shutdown(self) -> None:
        """Blocking shutdown, for code that runs outside an event loop."""
        self._pool.shutdown(wait=True, cancel_futures=True)
