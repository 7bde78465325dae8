"""What the admin's commands do: steer a registrar through its state store.

Each function does one thing against the store (or key files) and raises
:class:`AutoregError` subclasses with a message meant for the admin.  The
running daemon learns of every change through the store's change feed and acts
on it at once; no restart is needed.  The CLI opens the store with
:func:`store_for` and awaits these.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ._config import Config
from ._exceptions import AutoregError, ConfigError, KeyMaterialError, NodeNotFound, StateError
from ._keyfiles import controller_known_hosts_text, keys_show
from ._netif import local_addresses
from ._sshkeys import read_public_key
from ._trust import create_token, trust_report
from .controller import AddressPolicy, Registrar, add_tunnel, ingest, remove_tunnel
from .media import Medium, MediumRequest, assemble, callback_material
from .node import read_node_status
from .protocol import Announcement
from .state import (
    GLOBAL_SCOPE,
    WATCH_INTERVAL,
    Change,
    LostRace,
    Migrated,
    NodeRecord,
    NodeState,
    Source,
    SqliteStore,
    StateStore,
    cli_origin,
    etcd_overview,
    is_settled,
    migrate_to_etcd,
    open_store,
)

__all__ = [
    "build_medium",
    "check_role",
    "daemon_status",
    "forget_node",
    "manual_register",
    "migrate_store",
    "retry_node",
    "set_lockdown",
    "status_report",
    "store_for",
    "wait_for_store",
    "wait_settled",
]


@contextlib.asynccontextmanager
async def store_for(config: Config, *, readonly: bool = False) -> AsyncIterator[StateStore]:
    """The configured store, open for the duration of one command."""
    store = await open_store(config, readonly=readonly)
    try:
        yield store
    finally:
        await store.close()


async def set_lockdown(
    config: Config, store: StateStore, locked: bool, *, role: str | None, reason: str = ""
) -> str | None:
    """Flip a lockdown switch; returns a warning when it cannot matter here."""
    check_role(config, role)
    await store.set_lockdown(role or GLOBAL_SCOPE, locked, reason=reason)
    mine = _registrar_role(config)
    if role is not None and mine and role not in config.profile.roles_registered_by(mine):
        owners = config.profile.role(role)
        by = owners.registered_by if owners else None
        return (
            f"this host's registrar ({mine}) does not register {role}"
            + (f"; {by} does" if by else "")
            + ": the switch has no effect here"
        )
    return None


def check_role(config: Config, role: str | None) -> None:
    """A role the profile knows (None: every role), or a ConfigError listing them."""
    if role is not None and config.profile.role(role) is None:
        raise ConfigError(
            f"unknown role {role!r}; roles: {', '.join(sorted(config.profile.roles))}"
        )


def _registrar_role(config: Config) -> str | None:
    """This host's registrar role: configured, else what the running daemon says."""
    if config.controller.role:
        return config.controller.role
    status = daemon_status(config)
    return str(status["role"]) if status and status.get("role") else None


def _registrar(config: Config) -> Registrar | None:
    role = _registrar_role(config)
    if role is None:
        return None
    cluster = config.controller.cluster or config.node.cluster
    if cluster is None and config.controller.role is None:
        status = daemon_status(config) or {}
        cluster = status.get("cluster")
    return Registrar(role, cluster, config.profile)


async def manual_register(config: Config, store: StateStore, ann: Announcement) -> NodeRecord:
    """Queue a node from another network for registration: the one way in, source manual."""
    check_role(config, ann.role)
    existing = await store.get(ann.node_id)
    if existing is not None and existing.state in (NodeState.REGISTERED, NodeState.REGISTERING):
        raise AutoregError(
            f"node {ann.node_id} is already {existing.state.value}; "
            f"`autoreg forget {ann.node_id}` first to register it anew"
        )
    policy = AddressPolicy(allow=config.controller.allow_addresses, own=local_addresses())
    result = await ingest(
        store,
        _registrar(config),
        ann,
        source=Source.MANUAL,
        instance=ann.node_id,
        policy=policy,
        auth="admin",  # typed in by the admin: trusted like an approval
    )
    if result.not_mine:
        raise AutoregError(f"this registrar does not register it: {result.not_mine}")
    if result.refused:
        raise AutoregError(
            f"{result.refused} (`[controller] allow_addresses` admits such networks)"
        )
    assert result.absorbed is not None
    return result.absorbed.record


async def forget_node(store: StateStore, ref: str) -> NodeRecord:
    rec = await store.find(ref)
    gone = await store.forget(rec.node_id, message=f"forgotten by admin (was {rec.state.value})")
    if gone is None:
        raise NodeNotFound(f"node {rec.node_id} was forgotten meanwhile")
    return gone


async def retry_node(store: StateStore, ref: str) -> NodeRecord:
    """Make a failed, unreachable, rejected, refused or interrupted node eligible again."""
    rec = await store.find(ref)
    if rec.state in (NodeState.REGISTERED, NodeState.REGISTERING, NodeState.SEEN):
        raise AutoregError(f"node {rec.node_id} is {rec.state.value}; nothing to retry")
    resumed = rec.state is NodeState.INTERRUPTED or rec.resumed
    was = rec.state.value + (", hook will run resumed" if resumed else "")
    try:
        return await store.change(
            rec.node_id,
            Change(
                expect=rec.state,
                to=NodeState.SEEN,
                reason="retry requested by admin",
                kind="retry",
                generation=rec.generation,
                fields={
                    "attempts": 0,
                    "next_attempt": None,
                    "hook_started": False,
                    "resumed": resumed,
                },
                message=f"retry requested by admin (was {was})",
            ),
        )
    except LostRace as exc:
        raise AutoregError(f"node {rec.node_id} changed meanwhile ({exc}); try again") from exc


async def wait_settled(store: StateStore, node_id: str, *, timeout: float) -> NodeRecord | None:
    """Wait (bounded) until the daemon has settled ``node_id``; its record, None if forgotten."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        current = await store.get(node_id)
        if current is None or is_settled(current) or time.monotonic() >= deadline:
            return current
        await asyncio.sleep(WATCH_INTERVAL)


async def wait_for_store(config: Config, *, deadline: float | None) -> None:
    """Wait until the state database exists (a daemon is starting), up to ``deadline``."""
    while config.store == "sqlite" and not config.db_path.exists():
        if deadline is not None and time.monotonic() >= deadline:
            raise StateError(f"{config.db_path}: no state database (has the daemon run yet?)")
        await asyncio.sleep(WATCH_INTERVAL)


def daemon_status(config: Config) -> dict[str, Any] | None:
    """The running daemon's status file, None when no daemon runs."""
    path = config.state_dir / "daemon.json"
    try:
        status: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        os.kill(int(status["pid"]), 0)
    except (OSError, KeyError, ValueError, TypeError):
        return None  # stale file of a daemon that died
    return status


async def status_report(config: Config) -> dict[str, Any]:
    report: dict[str, Any] = {
        "config": str(config.path) if config.path else None,
        "state_dir": str(config.state_dir),
        "profile": config.profile.name,
        "daemon": daemon_status(config),
        "node": read_node_status(config),  # the announcer's line: why not registered yet
    }
    try:
        async with store_for(config, readonly=True) as store:
            counts: dict[str, int] = {}
            for rec in await store.nodes():
                counts[rec.state.value] = counts.get(rec.state.value, 0) + 1
            report["nodes"] = counts
            report["lockdown"] = await store.lockdown()
            report["schema_version"] = await store.schema_version()
            report["store"] = {"location": store.location, **await store.info()}
            report["registrars"] = await store.registrars()
            report["trust"] = await trust_report(config, store)
    except StateError as exc:
        report["state_error"] = str(exc)
        if config.store == "etcd":  # what each member says, even without a quorum
            report["store"] = await etcd_overview(config.etcd)
    key = config.controller_key.with_name(config.controller_key.name + ".pub")
    report["controller_key"] = read_public_key(key).fingerprint if key.exists() else None
    return report


async def migrate_store(config: Config) -> Migrated:
    """``store migrate --to etcd``: this host's sqlite store copied into the etcd cluster
    of the [autoreg] etcd_* settings (its daemon must be stopped)."""
    if not config.etcd.endpoints:
        raise ConfigError(
            "no etcd cluster to copy to: set [autoreg] etcd_endpoints (and etcd_ca, "
            "etcd_cert, etcd_key for TLS), or give --endpoints"
        )
    if not config.db_path.exists():
        raise StateError(f"{config.db_path}: no sqlite store to copy")
    source = await SqliteStore.open(config.db_path, origin=cli_origin())
    try:
        return await migrate_to_etcd(source, config.etcd, origin=cli_origin())
    finally:
        await source.close()


async def build_medium(
    config: Config,
    store: StateStore,
    request: MediumRequest,
    write: Callable[[Medium], None],
) -> Medium:
    """Allocate what ``request`` needs (a tunnel for a node that calls back), assemble the
    medium and ``write`` it; a tunnel allocated here is released again if that fails."""
    controller_key = keys_show(config)  # raises with "autoreg keys init" when missing
    material = None
    replaced = False
    node_id = request.node.node_id
    token: tuple[str, str] | None = None
    if request.callback:
        # The pin first: a controller without an sshd host key allocates nothing.
        try:
            known_hosts = controller_known_hosts_text(config)
        except KeyMaterialError as exc:
            raise KeyMaterialError(
                f"a node that calls back pins the controller's sshd host key "
                f"([controller] sshd_host_key): {exc}"
            ) from exc
        replaced = await store.tunnel(node_id) is not None
        with tempfile.TemporaryDirectory(prefix="autoreg-media-") as tmp:
            tunnel, private = await add_tunnel(
                config, store, node_id, public_key=None, generate_into=Path(tmp)
            )
            assert private is not None
            material = callback_material(
                request,
                private_key=private.read_text(encoding="ascii"),
                known_hosts=known_hosts,
                ports=tunnel.ports,
            )
    if request.with_token:
        # Zero-touch under the default policy: one registration of this role.
        joined, _ = await create_token(
            config,
            store,
            roles=[request.node.role],
            cluster=request.node.cluster,
            uses=1,
            ttl=request.token_ttl,
            description=f"install medium of {request.node.hostname} ({node_id})",
        )
        token = (joined.token_id, str(joined))
    medium = assemble(
        config,
        request,
        controller_key=controller_key,
        callback=material,
        replaced_callback_key=replaced,
        join_token=token,
    )
    try:
        await asyncio.to_thread(write, medium)
    except BaseException:
        if material is not None and not replaced:
            await remove_tunnel(config, store, node_id)
        if token is not None:
            await store.revoke_token(token[0])
        raise
    return medium
