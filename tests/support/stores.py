"""Store backends for the contract tests: each opens stores on one shared state."""

from __future__ import annotations

from pathlib import Path

from registration.state import SqliteStore, StateStore

__all__ = ["Backend"]


class Backend:
    """Opens stores of one backend on one shared state (a directory, a cluster…)."""

    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "state" / "autoreg.db"

    async def open(self, *, origin: str = "test", readonly: bool = False) -> StateStore:
        return await SqliteStore.open(self.db, origin=origin, readonly=readonly)
