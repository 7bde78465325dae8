"""Persistent state behind one async contract: nodes, claims, presence, lockdown, events.

``StateStore`` (``_contract``) is what every layer uses; ``open_store`` picks the
implementation (sqlite, embedded, is the default).  The node state machine
(``_machine``) and the ingestion rules (``_ingest``) are pure and shared by every
implementation.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from ._contract import GLOBAL_SCOPE, StateStore
from ._ingest import PINNED, Absorbed, absorb
from ._machine import (
    TRAITS,
    TRANSITIONS,
    Change,
    IllegalTransition,
    LostRace,
    NodeState,
    apply_change,
    is_settled,
    mermaid_diagram,
)
from ._records import (
    Arrival,
    Departure,
    Event,
    NodeRecord,
    Note,
    Source,
    Token,
    Tunnel,
    Window,
)
from ._schema import SCHEMA_VERSION
from ._sqlite import CLAIM_LEASE, WATCH_INTERVAL, SqliteStore

if TYPE_CHECKING:
    from .._config import Config

__all__ = [
    "CLAIM_LEASE",
    "GLOBAL_SCOPE",
    "PINNED",
    "SCHEMA_VERSION",
    "TRAITS",
    "TRANSITIONS",
    "WATCH_INTERVAL",
    "Absorbed",
    "Arrival",
    "Change",
    "Departure",
    "Event",
    "IllegalTransition",
    "LostRace",
    "NodeRecord",
    "NodeState",
    "Note",
    "Source",
    "SqliteStore",
    "StateStore",
    "Token",
    "Tunnel",
    "Window",
    "absorb",
    "apply_change",
    "cli_origin",
    "is_settled",
    "mermaid_diagram",
    "open_store",
]


def cli_origin() -> str:
    """How events written by an admin's command name their writer."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"


async def open_store(
    config: Config, *, readonly: bool = False, origin: str | None = None
) -> StateStore:
    """The configured state store, opened (and migrated, unless ``readonly``)."""
    return await SqliteStore.open(config.db_path, readonly=readonly, origin=origin or cli_origin())
