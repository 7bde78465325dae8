"""Nodes in a given state, for tests: reached by legal steps through the store contract.

The contract has no raw writes, so a test that needs a node in ``failed`` walks it
there (``seen → registering → failed``) exactly as the daemon would.
:func:`write_raw` is the exception: it writes a row as an older or foreign writer
might have left it (hostile text in columns the codec never lets through today).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from registration.protocol import Announcement
from registration.state import Change, NodeRecord, NodeState, Source, StateStore
from registration.state._sqlite import _Database

__all__ = ["FP", "OWNER", "ann", "fp_for", "put", "put_sync", "write_raw"]

FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
OWNER = "clc:test:1"
S = NodeState

_PATHS: dict[NodeState, list[NodeState]] = {
    S.SEEN: [],
    S.PENDING: [S.PENDING],
    S.CONFLICT: [S.CONFLICT],
    S.WAITING: [S.WAITING],
    S.LOCKED: [S.LOCKED],
    S.REFUSED: [S.REFUSED],
    S.REJECTED: [S.REJECTED],
    S.QUEUED: [S.QUEUED],
    S.REGISTERING: [S.QUEUED, S.REGISTERING],
    S.REGISTERED: [S.QUEUED, S.REGISTERING, S.REGISTERED],
    S.FAILED: [S.QUEUED, S.REGISTERING, S.FAILED],
    S.UNREACHABLE: [S.QUEUED, S.REGISTERING, S.UNREACHABLE],
    S.INTERRUPTED: [S.QUEUED, S.REGISTERING, S.INTERRUPTED],
}


def fp_for(node_id: str) -> str:
    """A host-key fingerprint of its own for each node id (one host key is one node)."""
    digest = hashlib.sha256(node_id.encode()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def ann(node_id: str, **changes: Any) -> Announcement:
    base: dict[str, Any] = {
        "node_id": node_id,
        "role": "nc",
        "cluster": "foo",
        "ip": "198.18.0.5",
        "port": 22,
        "fingerprint": fp_for(node_id),
    }
    base.update(changes)
    return Announcement(**base)


async def put(
    store: StateStore,
    node_id: str,
    state: NodeState = S.SEEN,
    *,
    source: Source = Source.MDNS,
    reason: str | None = None,
    fields: dict[str, Any] | None = None,
    **announced: Any,
) -> NodeRecord:
    """Announce ``node_id`` and walk it to ``state``; ``fields`` go with the last step."""
    instance = node_id if source is Source.MANUAL else f"{announced.get('role', 'nc')}-{node_id}"
    await store.ingest(ann(node_id, **announced), source=source, instance=instance)
    rec = await store.get(node_id)
    assert rec is not None
    steps = _PATHS[state]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        rec = await store.change(
            node_id,
            Change(
                expect=rec.state,
                to=step,
                reason=(reason if last and reason is not None else f"to {step}"),
                kind=step.value,
                owner=OWNER,
                fields=(fields or {}) if last else {},
            ),
        )
    return rec


def put_sync(db: Path, node_id: str, state: NodeState = S.SEEN, **kwargs: Any) -> NodeRecord:
    """:func:`put` on the sqlite store at ``db``, from synchronous test code."""
    from registration.state import SqliteStore

    async def go() -> NodeRecord:
        store = await SqliteStore.open(db, origin="test")
        try:
            return await put(store, node_id, state, **kwargs)
        finally:
            await store.close()

    return asyncio.run(go())


def write_raw(db: Path, rec: NodeRecord) -> None:
    """Write ``rec`` as it is into the sqlite store (bypassing the contract)."""
    with sqlite3.connect(db) as conn:
        _Database._put(conn, rec)
