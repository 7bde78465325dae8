"""Persistent state: nodes, lockdown switches, the event log (sqlite, WAL)."""

from __future__ import annotations

from ._records import Event, NodeRecord, NodeState, Tunnel
from ._schema import SCHEMA_VERSION
from ._store import GLOBAL_SCOPE, Store

__all__ = ["GLOBAL_SCOPE", "SCHEMA_VERSION", "Event", "NodeRecord", "NodeState", "Store", "Tunnel"]
