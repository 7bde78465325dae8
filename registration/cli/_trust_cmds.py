"""CLI commands for trust: token, pending, approve, deny, window."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from .. import _trust
from .._exceptions import AutoregError
from ..state import NodeRecord, StateStore
from . import _Ctx, _errors, cli, duration, pass_ctx, with_store
from ._output import emit_json, format_table

__all__: list[str] = []

T = TypeVar("T")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


# -- tokens ------------------------------------------------------------------------------


@cli.group()
def token() -> None:
    """Join tokens: what lets a node register with no human step.

    A node that holds a token signs its announcements with it ([node] token, or
    token_file, or AUTOREG_TOKEN); the registrar checks the signature and the
    token's scope, expiry and uses before it spends a single SSH connection.
    """


@token.command("create")
@click.option("--role", "roles", multiple=True, help="Only nodes of this role (repeatable).")
@click.option("--cluster", help="Only nodes of this cluster.")
@click.option("--uses", default=1, show_default=True, help="How many nodes may register with it.")
@click.option(
    "--ttl",
    default="24h",
    show_default=True,
    callback=duration,
    help="How long it is valid (90s, 30m, 24h, 7d).",
)
@click.option("--description", default="", help="What it is for (shown by `token list`).")
@pass_ctx
def token_create(
    obj: _Ctx,
    roles: tuple[str, ...],
    cluster: str | None,
    uses: int,
    ttl: float,
    description: str,
) -> None:
    """Create a token; print it (ID.SECRET) on the last line, once.

    \b
      autoreg token create --role nc --cluster foo --uses 20 --ttl 2h
    """
    with _errors():
        config = obj.config()
        joined, record = with_store(
            obj,
            lambda store: _trust.create_token(
                config,
                store,
                roles=roles,
                cluster=cluster,
                uses=uses,
                ttl=ttl,
                description=description,
            ),
        )
        scope = "/".join(record.roles) or "any role"
        where = f" of cluster {record.cluster}" if record.cluster else ""
        click.echo(
            f"# token {record.token_id}: {scope}{where}, {record.uses} use(s), valid until "
            f"{_when(record.expires)}; the secret is shown only now",
            err=True,
        )
        click.echo(str(joined))


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def token_list(obj: _Ctx, as_json: bool) -> None:
    """Tokens: scope, uses left, expiry, and which nodes used them (never a secret)."""
    with _errors():
        tokens = with_store(obj, lambda store: store.tokens(), readonly=True)
        if as_json:
            emit_json([t.to_json() for t in tokens])
            return
        now = time.time()
        rows = []
        for t in tokens:
            status = (
                "revoked" if t.revoked else "expired" if t.expires <= now
                else "used up" if not t.uses_left else "valid"
            )  # fmt: skip
            used = ", ".join(f"{n} ({f})" for n, f, _ in t.used_by) or "-"
            rows.append(
                [
                    t.token_id,
                    "/".join(t.roles) or "*",
                    t.cluster or "*",
                    f"{t.uses_left}/{t.uses}",
                    _when(t.expires),
                    status,
                    t.description or "-",
                    used,
                ]
            )
        header = ["ID", "ROLES", "CLUSTER", "LEFT", "EXPIRES", "STATUS", "DESCRIPTION", "USED BY"]
        click.echo(format_table(header, rows) if rows else "no tokens", err=not rows)


@token.command("revoke")
@click.argument("token_id")
@pass_ctx
def token_revoke(obj: _Ctx, token_id: str) -> None:
    """Revoke a token now: announcements signed with it are no longer trusted."""
    with _errors():
        revoked = with_store(obj, lambda store: _trust.revoke_token(store, token_id))
        click.echo(f"token {revoked.token_id} revoked ({revoked.used} use(s) spent)")


# -- the approval queue --------------------------------------------------------------------


def _queue_rows(nodes: list[NodeRecord]) -> list[list[str]]:
    return [
        [
            r.node_id,
            r.display_name,
            r.role,
            r.cluster or "-",
            f"{r.ip}:{r.port}",
            r.fingerprint,
            _when(r.first_seen),
            r.state.value,
            r.reason,
        ]
        for r in nodes
    ]


@cli.command("pending")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def pending_cmd(obj: _Ctx, as_json: bool) -> None:
    """Nodes waiting for trust: approve them, deny them, or give them a token.

    Pending nodes cost no SSH connection.  A conflict (two host keys for one id)
    is listed too: approve one key with --fingerprint.
    """
    with _errors():
        queue = with_store(obj, _trust.pending, readonly=True)
        if as_json:
            emit_json([r.to_json() for r in queue])
            return
        if not queue:
            click.echo("no node is waiting for approval", err=True)
            return
        header = ["ID", "NAME", "ROLE", "CLUSTER", "ADDRESS", "FINGERPRINT", "FIRST SEEN",
                  "STATE", "REASON"]  # fmt: skip
        click.echo(format_table(header, _queue_rows(queue)))


def _approver(ref: str, fingerprint: str | None) -> Callable[[StateStore], Awaitable[NodeRecord]]:
    return lambda store: _trust.approve(store, ref, fingerprint=fingerprint)


def _denier(ref: str, reason: str) -> Callable[[StateStore], Awaitable[NodeRecord]]:
    return lambda store: _trust.deny(store, ref, reason=reason)


def _each(
    obj: _Ctx,
    nodes: tuple[str, ...],
    action: Callable[[str], Callable[[StateStore], Awaitable[NodeRecord]]],
    done: str,
    key: str,
) -> None:
    """``action`` on each node in turn; one line per node, the failures at the end."""
    failed = 0
    for ref in nodes:
        try:
            rec = with_store(obj, action(ref))
        except AutoregError as exc:
            failed += 1
            click.echo(f"autoreg: error: {ref}: {exc}", err=True)
            continue
        click.echo(f"{done} {rec.role} {rec.display_name} ({rec.node_id}) {getattr(rec, key)}")
    if failed:
        raise AutoregError(f"{failed} of {len(nodes)} not {done}")


@cli.command()
@click.argument("nodes", nargs=-1, required=True)
@click.option(
    "--fingerprint",
    help="For a conflict: the host key that is the node (SHA256:…, see `autoreg show`).",
)
@pass_ctx
def approve(obj: _Ctx, nodes: tuple[str, ...], fingerprint: str | None) -> None:
    """Approve NODE(s) with the host key each announces now (the approval pins it)."""
    with _errors():
        _each(obj, nodes, lambda ref: _approver(ref, fingerprint), "approved", "approved_fp")


@cli.command()
@click.argument("nodes", nargs=-1, required=True)
@click.option("--reason", default="", help="Why (kept in the event log).")
@pass_ctx
def deny(obj: _Ctx, nodes: tuple[str, ...], reason: str) -> None:
    """Deny NODE(s): their host keys are refused now and whenever they announce again."""
    with _errors():
        _each(obj, nodes, lambda ref: _denier(ref, reason), "denied", "fingerprint")


# -- install windows -----------------------------------------------------------------------


@cli.group()
def window() -> None:
    """Install windows: admit unsigned nodes for a while, as if trust were open.

    The window seals itself when its time runs out or after --max registrations;
    live, no restart.  The registrar's own announcement says a window is open.
    """


def _window_rows(windows: list[Any]) -> list[list[str]]:
    now = time.time()
    return [
        [
            w.window_id,
            "all roles" if w.scope == "*" else w.scope,
            "open" if w.is_open(now) else f"closed: {w.closed_reason or 'its time ran out'}",
            _when(w.opened),
            _when(w.expires),
            f"{w.used}/{w.max_uses}" if w.max_uses is not None else f"{w.used}",
        ]
        for w in windows
    ]


@window.command("open")
@click.option("--role", help="Only this role (default: every role).")
@click.option(
    "--for",
    "duration",
    default="1h",
    show_default=True,
    callback=duration,
    help="How long (90s, 30m, 2h).",
)
@click.option("--max", "max_uses", type=int, help="Seal after this many registrations.")
@pass_ctx
def window_open(obj: _Ctx, role: str | None, duration: float, max_uses: int | None) -> None:
    """Open an install window."""
    with _errors():
        config = obj.config()
        opened = with_store(
            obj,
            lambda store: _trust.open_window(
                config, store, role=role, duration=duration, max_uses=max_uses
            ),
        )
        limit = f", at most {max_uses} registration(s)" if max_uses else ""
        click.echo(
            f"install window {opened.window_id} open for {role or 'every role'} until "
            f"{_when(opened.expires)}{limit}"
        )


@window.command("close")
@click.option("--role", help="Only this role's window (default: every open one).")
@pass_ctx
def window_close(obj: _Ctx, role: str | None) -> None:
    """Close install windows now."""
    with _errors():
        closed = with_store(obj, lambda store: _trust.close_window(store, role=role))
        for w in closed:
            click.echo(f"closed install window {w.window_id} ({w.used} registration(s))")


@window.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def window_status(obj: _Ctx, as_json: bool) -> None:
    """Open install windows, and the last ones closed."""
    with _errors():
        windows = with_store(obj, _trust.window_status, readonly=True)
        if as_json:
            now = time.time()
            emit_json([{**w.to_json(), "open": w.is_open(now)} for w in windows])
            return
        if not windows:
            click.echo("no install window has been opened", err=True)
            return
        header = ["ID", "SCOPE", "STATE", "OPENED", "UNTIL", "USED"]
        click.echo(format_table(header, _window_rows(windows)))
