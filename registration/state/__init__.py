"""Persistent state behind one async contract: nodes, claims, presence, lockdown, events.

``StateStore`` (``_contract``) is what every layer uses; ``open_store`` picks the
implementation: sqlite, embedded, the default; or etcd, shared by several registrars
(``[autoreg] store = etcd``).  The node state machine
(``_machine``) and the ingestion rules (``_ingest``) are pure and shared by every
implementation.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from ._contract import GLOBAL_SCOPE, StateStore
from ._etcd import EtcdStore, etcd_overview
from ._etcd_base import FENCE_MARGIN
from ._etcd_io import EtcdUnavailable, LeaseLost
from ._etcd_migrate import Migrated, migrate_to_etcd
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
    Standing,
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
    "FENCE_MARGIN",
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
    "EtcdStore",
    "EtcdUnavailable",
    "Event",
    "IllegalTransition",
    "LeaseLost",
    "LostRace",
    "Migrated",
    "NodeRecord",
    "NodeState",
    "Note",
    "Source",
    "SqliteStore",
    "Standing",
    "StateStore",
    "Token",
    "Tunnel",
    "Window",
    "absorb",
    "apply_change",
    "cli_origin",
    "etcd_overview",
    "is_settled",
    "mermaid_diagram",
    "migrate_to_etcd",
    "open_store",
]


def cli_origin() -> str:
    """How events written by an admin's command name their writer."""
    return f"cli:{socket.gethostname()}:{os.getpid()}"


async def open_store(
    config: Config, *, readonly: bool = False, origin: str | None = None
) -> StateStore:
    """The configured state store, opened (and migrated or created, unless ``readonly``)."""
    if config.store == "etcd":
        return await EtcdStore.open(
            config.etcd, readonly=readonly, origin=origin or cli_origin(),
            lock_dir=config.state_dir,
        )  # fmt: skip
    return await SqliteStore.open(config.db_path, readonly=readonly, origin=origin or cli_origin())
