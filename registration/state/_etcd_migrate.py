"""``autoreg store migrate --to etcd``: a sqlite store copied into etcd, as it is.

Everything is copied as the sqlite store holds it, so nothing is registered again:
nodes with their state, reasons, attempts and generation (a registered node stays
registered), presence, the event log with its sequence numbers, join tokens and
their uses, install windows, denied keys, settings (``trust_default`` too),
lockdown switches and tunnel ports.  Claims are not: a node the stopped daemon left
``registering`` is recovered by the first etcd registrar, under the crash-recovery
policy.

Safe to run again after a failure: the layout key (``meta/schema``) is written
last, in a transaction that requires it to be absent, so a prefix that holds a
complete store is refused, and what an interrupted run left is deleted first.
The daemon must be stopped: the sqlite registrar lock is taken for the copy.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from .._config import EtcdConfig
from .._exceptions import StateError
from ._etcd import EtcdStore
from ._etcd_io import b64, prefix_end
from ._etcd_keys import (
    LAYOUT_VERSION,
    Keys,
    dump,
    event_value,
    presence_value,
    token_value,
    tunnel_value,
    window_value,
)
from ._etcd_txn import Txn
from ._records import Event, NodeRecord, Source, Token, Tunnel, Window
from ._sqlite import SqliteStore

__all__ = ["Migrated", "migrate_to_etcd"]


@dataclasses.dataclass(frozen=True)
class Migrated:
    """What was copied."""

    nodes: int
    events: int
    tokens: int
    windows: int
    denied: int
    settings: int
    lockdown: int
    tunnels: int
    presence: int
    target: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Contents:
    """Everything of a sqlite store that is copied."""

    nodes: list[NodeRecord]
    events: list[Event]
    tokens: list[Token]
    windows: list[Window]
    denied: dict[str, str]
    settings: dict[str, str]
    lockdown: dict[str, bool]
    tunnels: list[Tunnel]
    presence: list[tuple[str, str, str, str, float | None]]


async def migrate_to_etcd(source: SqliteStore, target: EtcdConfig, *, origin: str) -> Migrated:
    """Copy ``source`` (its daemon stopped) into the empty prefix of ``target``."""
    await source.lock_registrar(f"migrate:{origin}")  # AlreadyRunning: the daemon runs
    got = _Contents(
        nodes=await source.nodes(),
        events=await source.events(after=0, limit=10**9),
        tokens=await source.tokens(),
        windows=await source.windows(),
        denied=await source.denied(),
        settings=await source.settings(),
        lockdown=await source.lockdown(),
        tunnels=await source.tunnels(),
        presence=await source.presence(),
    )
    store = await EtcdStore.open(target, origin=origin, create=False)
    try:
        db = store.database
        keys = db.keys

        def check(tx: Txn) -> None:
            if tx.get(keys.schema, compare=False) is not None:
                raise StateError(
                    f"etcd {db.location} already holds an autoreg store: nothing copied "
                    "(choose another [autoreg] etcd_prefix, or delete that one first)"
                )

        await store._run(db._read, check)
        # What an interrupted run may have left: gone (the layout key is not among it).
        await store._run(db.io.call, "/kv/deleterange",
                         {"key": b64(keys.prefix), "range_end": b64(prefix_end(keys.prefix))},
                         what=f"clearing {target.prefix}", write=True)  # fmt: skip

        def copy(tx: Txn, item: NodeRecord | tuple[bytes, bytes]) -> None:
            if isinstance(item, NodeRecord):
                db.put_node(tx, None, item)
            else:
                tx.put(*item)

        items: list[NodeRecord | tuple[bytes, bytes]] = [*got.nodes, *_puts(keys, got)]
        await store._run(db.write_many, items, copy, what="copying the sqlite store")
        copied = Migrated(
            nodes=len(got.nodes), events=len(got.events), tokens=len(got.tokens),
            windows=len(got.windows), denied=len(got.denied), settings=len(got.settings),
            lockdown=len(got.lockdown), tunnels=len(got.tunnels), presence=len(got.presence),
            target=db.location,
        )  # fmt: skip

        def finish(tx: Txn) -> None:
            if tx.get(keys.schema) is not None:
                raise StateError(f"etcd {db.location}: another process created a store there "
                                 "while this one was being copied")  # fmt: skip
            tx.put(keys.schema, dump(LAYOUT_VERSION))
            db.event(tx, None, "schema", None,
                     f"store migrated from sqlite {source.location}: {copied.nodes} nodes, "
                     f"{copied.events} events, {copied.tokens} tokens, {copied.windows} "
                     f"install windows, {copied.tunnels} tunnels", copied.to_json())  # fmt: skip

        await store._run(db.write, finish, what="finishing the copy")
        return copied
    finally:
        await store.close()


def _puts(keys: Keys, got: _Contents) -> list[tuple[bytes, bytes]]:
    """The keys and values of everything but the nodes."""
    now = time.time()
    last_seq = max((e.seq for e in got.events), default=0)
    puts: list[tuple[bytes, bytes]] = [
        (keys.seq, json.dumps({"seq": last_seq, "txn": "migrated"}).encode()),
    ]  # events go on from the last sequence number copied
    for node_id, src, instance, observer, expires in got.presence:
        where = (src, observer, instance)
        puts.append((keys.presence(node_id, where),
                     presence_value(Source(src), observer, instance, expires)))  # fmt: skip
        puts.append((keys.instance(*where), node_id.encode()))
    for event in got.events:
        puts.append((keys.event(event.seq, event.node_id), event_value(event)))
        puts.append((keys.evnode(event.node_id, event.seq), b""))
    puts += [(keys.token(t.token_id), token_value(t)) for t in got.tokens]
    puts += [(keys.window(w.window_id), window_value(w)) for w in got.windows]
    puts += [(keys.denied(fp), dump({"node_id": None, "at": now, "reason": why}))
             for fp, why in got.denied.items()]  # fmt: skip
    puts += [(keys.setting(name), value.encode()) for name, value in got.settings.items()]
    puts += [(keys.lockdown(scope), dump({"locked": on, "changed": now, "reason": "migrated"}))
             for scope, on in got.lockdown.items()]  # fmt: skip
    for tunnel in got.tunnels:
        puts.append((keys.tunnel(tunnel.node_id), tunnel_value(tunnel)))
        puts += [(keys.port(port), tunnel.node_id.encode()) for port in tunnel.ports]
    return puts
