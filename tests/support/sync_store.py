"""A synchronous facade over the async state store, for test code that is not async.

Each call runs the store's coroutine to completion on a fresh event loop; the
store's own executor outlives the loops.  Only tests use this: the library
awaits the store.
"""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

from registration.state import SqliteStore

__all__ = ["SyncStore"]


class SyncStore:
    def __init__(self, path: Path, *, readonly: bool = False, origin: str = "test") -> None:
        self.store = asyncio.run(SqliteStore.open(path, readonly=readonly, origin=origin))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(attr(*args, **kwargs))

        return call

    def close(self) -> None:
        asyncio.run(self.store.close())

    def __enter__(self) -> SyncStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
