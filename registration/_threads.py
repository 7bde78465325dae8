"""Handing blocking work (sqlite, paramiko, pycdlib) to threads, with a capacity limit.

There is one event loop; anything that blocks runs through a :class:`ThreadLimiter`,
which bounds how many threads a kind of work may occupy at once.
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

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
