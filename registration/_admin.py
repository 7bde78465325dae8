"""Administrative operations behind the CLI (lockdown, manual registration, …).

Each function takes a :class:`Config`, does one thing against the state store
or key files, and raises :class:`AutoregError` subclasses with a message meant
for the admin.  The running daemon notices store changes within
``STORE_POLL_INTERVAL`` and acts on them; no restart is needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

from ._config import Config
from ._exceptions import AutoregError, ConfigError, KeyMaterialError, NodeNotFound, StateError
from ._sshkeys import PublicKey, generate_ed25519, read_public_key
from .protocol import Announcement
from .state import GLOBAL_SCOPE, NodeRecord, NodeState, Store

__all__ = [
    "daemon_status",
    "forget_node",
    "keys_init",
    "keys_show",
    "manual_register",
    "medium_material",
    "open_store",
    "retry_node",
    "set_lockdown",
    "status_report",
    "wait_for_store",
    "wait_settled",
]


def open_store(config: Config, *, readonly: bool = False) -> Store:
    return Store(config.db_path, readonly=readonly)


def set_lockdown(config: Config, locked: bool, *, role: str | None, reason: str = "") -> str | None:
    """Flip a lockdown switch; returns a warning when it cannot matter here."""
    if role is not None and config.profile.role(role) is None:
        raise ConfigError(
            f"unknown role {role!r}; roles: {', '.join(sorted(config.profile.roles))}"
        )
    with open_store(config) as store:
        store.set_lockdown(role or GLOBAL_SCOPE, locked, reason=reason)
    mine = config.controller.role
    if role is not None and mine and role not in config.profile.roles_registered_by(mine):
        owners = config.profile.role(role)
        by = owners.registered_by if owners else None
        return (
            f"this host's registrar ({mine}) does not register {role}"
            + (f"; {by} does" if by else "")
            + ": the switch has no effect here"
        )
    return None


def manual_register(config: Config, ann: Announcement) -> NodeRecord:
    """Queue a node from another network for registration (no mDNS needed)."""
    if config.profile.role(ann.role) is None:
        raise ConfigError(
            f"unknown role {ann.role!r}; roles: {', '.join(sorted(config.profile.roles))}"
        )
    with open_store(config) as store:
        existing = store.get(ann.node_id)
        if existing is not None and existing.state in (NodeState.REGISTERED, NodeState.REGISTERING):
            raise AutoregError(
                f"node {ann.node_id} is already {existing.state.value}; "
                f"`autoreg forget {ann.node_id}` first to register it anew"
            )
        rec = NodeRecord.new(
            ann,
            source="manual",
            now=time.time(),
            reason="registered manually; waiting for the daemon",
        )
        return store.save(
            rec,
            kind="manual",
            message=f"manual registration of {ann.role} "
            f"{ann.display_name} at {ann.ip}:{ann.port} ({ann.fingerprint})",
            data={"announcement": dataclasses.asdict(ann)},
        )


def forget_node(config: Config, ref: str) -> NodeRecord:
    with open_store(config) as store:
        rec = store.find(ref)
        store.forget(rec.node_id, message=f"forgotten by admin (was {rec.state.value})")
        return rec


def retry_node(config: Config, ref: str) -> NodeRecord:
    """Make a failed, unreachable, rejected or interrupted node eligible again."""
    with open_store(config) as store:
        rec = store.find(ref)
        if rec.state in (NodeState.REGISTERED, NodeState.REGISTERING):
            raise AutoregError(f"node {rec.node_id} is {rec.state.value}; nothing to retry")
        resumed = rec.state is NodeState.INTERRUPTED or rec.resumed
        was = rec.state.value + (", hook will run resumed" if resumed else "")
        fresh = store.update(
            rec.node_id,
            {
                "state": NodeState.SEEN,
                "attempts": 0,
                "next_attempt": None,
                "hook_pid": None,
                "resumed": resumed,
                "updated": time.time(),
                "reason": "retry requested by admin",
            },
            kind="retry",
            message=f"retry requested by admin (was {was})",
        )
        if fresh is None:
            raise NodeNotFound(f"node {rec.node_id} was forgotten meanwhile")
        return fresh


#: Seconds between state-store reads while waiting for a node to settle.
WAIT_POLL_INTERVAL = 0.25


def is_settled(rec: NodeRecord) -> bool:
    """No further automatic progress: registered, rejected, interrupted, or given up."""
    gave_up = rec.state in (NodeState.FAILED, NodeState.UNREACHABLE) and rec.next_attempt is None
    return rec.state.is_final or gave_up


def wait_settled(config: Config, node_id: str, *, timeout: float) -> NodeRecord | None:
    """Wait (bounded) until the daemon has settled ``node_id``; its record, None if forgotten."""
    deadline = time.monotonic() + max(0.0, timeout)
    with open_store(config, readonly=True) as store:
        while True:
            current = store.get(node_id)
            if current is None or is_settled(current) or time.monotonic() >= deadline:
                return current
            time.sleep(WAIT_POLL_INTERVAL)


def wait_for_store(config: Config, *, deadline: float | None) -> None:
    """Wait until the state database exists (a daemon is starting), up to ``deadline``."""
    while not config.db_path.exists():
        if deadline is not None and time.monotonic() >= deadline:
            raise StateError(f"{config.db_path}: no state database (has the daemon run yet?)")
        time.sleep(WAIT_POLL_INTERVAL)


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


def status_report(config: Config) -> dict[str, Any]:
    report: dict[str, Any] = {
        "config": str(config.path) if config.path else None,
        "state_dir": str(config.state_dir),
        "profile": config.profile.name,
        "daemon": daemon_status(config),
    }
    try:
        with open_store(config, readonly=True) as store:
            counts: dict[str, int] = {}
            for rec in store.nodes():
                counts[rec.state.value] = counts.get(rec.state.value, 0) + 1
            report["nodes"] = counts
            report["lockdown"] = store.lockdown()
            report["schema_version"] = store.schema_version
    except StateError as exc:
        report["state_error"] = str(exc)
    key = config.controller_key.with_name(config.controller_key.name + ".pub")
    report["controller_key"] = read_public_key(key).fingerprint if key.exists() else None
    return report


def keys_init(config: Config) -> tuple[PublicKey, bool]:
    """Create CONTROLLER_KEY unless it exists (idempotent; never overwrites).

    Returns the public key and whether it was created now.
    """
    if config.controller_key.exists():
        return keys_show(config), False
    return generate_ed25519(config.controller_key, comment="autoreg-controller"), True


def keys_show(config: Config) -> PublicKey:
    pub = Path(f"{config.controller_key}.pub")
    if not pub.exists():
        raise KeyMaterialError(
            f"no controller key at {config.controller_key}; create it with `autoreg keys init`"
        )
    return read_public_key(pub)


def medium_material(config: Config) -> dict[str, Any]:
    """Everything an install medium takes from this controller, besides CONTROLLER_KEY.

    The controller's host-key pin is None (with ``pin_error`` saying why) when the
    sshd host key cannot be read: only media for nodes that call back need it.
    """
    from .controller._tunnels import controller_known_hosts_text

    ctl = config.controller
    pin: str | None = None
    pin_error: str | None = None
    try:
        pin = controller_known_hosts_text(config).strip()
    except KeyMaterialError as exc:
        pin_error = str(exc)
    return {
        "controller_user": ctl.ssh_user,
        "controller_pin": pin,
        "controller_pin_source": str(ctl.sshd_host_key),
        "controller_pin_error": pin_error,
        "callback_port": config.callback.port,
        "callback_user": ctl.callback_user,
        "controller_port_range": list(ctl.tunnel_ports),
        "controller_ports_per_node": ctl.tunnel_ports_per_node,
        "callback_key": "one per node: ed25519, OpenSSH format, 0600 on the node "
        "(autoreg media build --callback)",
    }
