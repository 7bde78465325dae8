"""What the trust commands do: join tokens, the approval queue, install windows.

Library front, like ``_admin``: each function does one thing against the state
store and raises :class:`AutoregError` subclasses with a message for the admin.
The running daemon learns of each change through the store's change feed.  No
function here returns or logs a token's secret except :func:`create_token`,
whose caller prints it once.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Final

from ._config import Config
from ._exceptions import AutoregError, ConfigError, NodeNotFound
from ._units import parse_duration
from .protocol import JoinToken, new_token, token_key
from .state import (
    GLOBAL_SCOPE,
    Change,
    LostRace,
    NodeRecord,
    NodeState,
    StateStore,
    Token,
    Window,
)

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "DEFAULT_WINDOW",
    "approve",
    "close_window",
    "create_token",
    "deny",
    "open_window",
    "parse_duration",
    "pending",
    "revoke_token",
    "trust_report",
    "window_status",
]

#: A token lives a day unless told otherwise (kubeadm's bootstrap tokens do too).
DEFAULT_TOKEN_TTL: Final = 24 * 3600.0
#: An install window stays open an hour unless told otherwise.
DEFAULT_WINDOW: Final = 3600.0


def _check_scope(config: Config, roles: Sequence[str], cluster: str | None) -> None:
    for role in roles:
        spec = config.profile.role(role)
        if spec is None:
            raise ConfigError(
                f"unknown role {role!r}; roles: {', '.join(sorted(config.profile.roles))}"
            )
        if cluster is not None and not spec.has_cluster:
            raise ConfigError(f"role {role} has no cluster: drop --cluster {cluster}")


async def create_token(
    config: Config,
    store: StateStore,
    *,
    roles: Sequence[str] = (),
    cluster: str | None = None,
    uses: int = 1,
    ttl: float = DEFAULT_TOKEN_TTL,
    description: str = "",
) -> tuple[JoinToken, Token]:
    """A new token; the store keeps its HMAC key, the caller gets the secret once."""
    _check_scope(config, roles, cluster)
    if uses < 1:
        raise ConfigError("--uses must be at least 1")
    joined = new_token()
    now = time.time()
    record = Token(
        token_id=joined.token_id,
        key=token_key(joined.token_id, joined.secret),
        roles=tuple(roles),
        cluster=cluster,
        uses=uses,
        expires=now + ttl,
        created=now,
        description=description,
    )
    return joined, await store.create_token(record)


async def revoke_token(store: StateStore, token_id: str) -> Token:
    token = await store.revoke_token(token_id)
    if token is None:
        raise NodeNotFound(f"no token {token_id!r} (see `autoreg token list`)")
    return token


async def pending(store: StateStore) -> list[NodeRecord]:
    """The approval queue, oldest first."""
    queue = [r for r in await store.nodes() if r.state in (NodeState.PENDING, NodeState.CONFLICT)]
    return sorted(queue, key=lambda r: r.first_seen)


async def approve(store: StateStore, ref: str, *, fingerprint: str | None = None) -> NodeRecord:
    """Approve a pending (or denied, or conflicting) node with the key it announces.

    The approval pins that key: if the node announces another key before it is
    registered, the approval no longer applies.  For a conflict ``fingerprint``
    picks which of the two keys is the node.
    """
    rec = await store.find(ref)
    if rec.state in (NodeState.REGISTERED, NodeState.REGISTERING):
        raise AutoregError(f"node {rec.node_id} is {rec.state.value}: nothing to approve")
    if rec.state is NodeState.CONFLICT and fingerprint is None:
        raise AutoregError(
            f"node {rec.node_id} is a conflict between two host keys: name the one to "
            f"approve with --fingerprint (see `autoreg show {rec.node_id}`)"
        )
    try:
        return await store.approve(
            rec.node_id, fingerprint=fingerprint or rec.fingerprint, generation=rec.generation
        )
    except LostRace as exc:
        raise AutoregError(f"not approved: {exc}") from exc


async def deny(store: StateStore, ref: str, *, reason: str = "") -> NodeRecord:
    """Refuse the node's host key now and whenever it announces again, under any id."""
    rec = await store.find(ref)
    if rec.state in (NodeState.REGISTERED, NodeState.REGISTERING):
        raise AutoregError(
            f"node {rec.node_id} is {rec.state.value}: `autoreg forget {rec.node_id}` first"
        )
    await store.deny(rec.node_id, rec.fingerprint, reason=reason)
    if rec.state.decidable or rec.state is NodeState.CONFLICT:
        try:
            return await store.change(
                rec.node_id,
                Change(
                    expect=rec.state,
                    to=NodeState.REJECTED,
                    reason=f"denied by admin{f': {reason}' if reason else ''}; its host key "
                    f"{rec.fingerprint} is refused whenever it announces",
                    kind="deny",
                    generation=rec.generation,
                ),
            )
        except LostRace:
            pass  # it changed meanwhile; the daemon applies the denial when it decides
    return await store.find(rec.node_id)


async def open_window(
    config: Config,
    store: StateStore,
    *,
    role: str | None,
    duration: float = DEFAULT_WINDOW,
    max_uses: int | None = None,
) -> Window:
    if role is not None:
        _check_scope(config, [role], None)
    if max_uses is not None and max_uses < 1:
        raise ConfigError("--max must be at least 1")
    now = time.time()
    window = Window(
        window_id=secrets.token_hex(4),
        scope=role or GLOBAL_SCOPE,
        opened=now,
        expires=now + duration,
        max_uses=max_uses,
    )
    return await store.open_window(window)


async def close_window(store: StateStore, *, role: str | None) -> list[Window]:
    closed = await store.close_windows(role, reason="closed by admin")
    if not closed:
        what = f"for role {role}" if role else ""
        raise AutoregError(f"no install window is open {what}".rstrip())
    return closed


async def window_status(store: StateStore) -> list[Window]:
    """Every window still open (time left), then the last ten closed ones."""
    now = time.time()
    windows = await store.windows()
    live = [w for w in windows if w.is_open(now)]
    done = [w for w in windows if not w.is_open(now)][-10:]
    return live + done


async def trust_report(config: Config, store: StateStore) -> dict[str, Any]:
    """The trust policy in force and where it comes from, for `autoreg status`."""
    default = await store.setting("trust_default")
    if config.controller.trust:
        policy, source = config.controller.trust, "configuration ([controller] trust)"
    elif default == "open":
        policy, source = "open", "kept from a version without trust (set [controller] trust)"
    else:
        policy, source = default or "token", "default"
    per_role = {r.name: r.trust for r in config.profile.roles.values() if r.trust}
    now = time.time()
    return {
        "policy": policy,
        "source": source,
        "per_role": per_role,
        "pending": await store.count(NodeState.PENDING),
        "windows": [w.to_json() for w in await store.windows() if w.is_open(now)],
        "tokens_valid": sum(
            1 for t in await store.tokens() if t.revoked is None and t.expires > now and t.uses_left
        ),
    }
