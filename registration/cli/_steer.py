"""CLI commands that change state: lockdown, register, forget, retry, keys."""

from __future__ import annotations

import click

from .. import _admin, _keyfiles
from .._exceptions import AnnouncementError, AutoregError
from .._text import escape_controls
from ..protocol import Announcement
from ..state import GLOBAL_SCOPE, NodeRecord, NodeState
from . import _Ctx, _errors, cli, pass_ctx, run, with_store
from ._output import emit_json

__all__: list[str] = []


@cli.command()
@click.argument("switch", type=click.Choice(["on", "off", "status"]))
@click.option("--role", help="Only this role's registration (default: all of it).")
@click.option("--reason", default="", help="Why (kept in the event log).")
@click.option("--json", "as_json", is_flag=True, help="With status: machine-readable.")
@pass_ctx
def lockdown(obj: _Ctx, switch: str, role: str | None, reason: str, as_json: bool) -> None:
    """Stop (on) or resume (off) auto-registration, live, globally or per role.

    Nodes announced while locked are kept as `locked`, not registered and not
    forgotten; turning lockdown off processes them.  The running daemon picks
    the change up within a fraction of a second.
    """

    async def status() -> dict[str, bool]:
        async with _admin.store_for(config, readonly=True) as store:
            return await store.lockdown()

    async def flip() -> str | None:
        _admin.check_role(config, role)  # before the store is created
        async with _admin.store_for(config) as store:
            return await _admin.set_lockdown(
                config, store, switch == "on", role=role, reason=reason
            )

    with _errors():
        config = obj.config()
        if switch == "status":
            switches = run(status())
            if as_json:
                emit_json(switches)
            else:
                for line in _lockdown_lines(switches):
                    click.echo(line)
            return
        warning = run(flip())
        if warning:
            click.echo(f"autoreg: warning: {warning}", err=True)
        if switch == "off" and role is not None and run(status()).get(GLOBAL_SCOPE):
            click.echo(
                f"autoreg: warning: lockdown is on for all roles, and that wins: {role} stays "
                "locked until `autoreg lockdown off` (without --role)",
                err=True,
            )
        click.echo(f"lockdown {switch} for {role or 'all roles'}")


def _lockdown_lines(switches: dict[str, bool]) -> list[str]:
    """``lockdown status``: each switch, and what it means when the global one is on.

    A role is locked when its own switch or the one for all roles is on: the
    global switch wins over a role's ``off``.
    """
    everything = switches.get(GLOBAL_SCOPE, False)
    lines = [f"all roles: {'on' if everything else 'off'}"]
    for scope, on in sorted(switches.items()):
        if scope == GLOBAL_SCOPE:
            continue
        line = f"{escape_controls(scope)}: {'on' if on else 'off'}"
        if everything and not on:
            line += " (locked all the same: the switch for all roles is on, and it wins)"
        lines.append(line)
    return lines


@cli.command()
@click.option("--role", required=True, help="The node's role.")
@click.option("--cluster", help="The node's cluster, for roles that have one.")
@click.option("--ip", required=True, help="Address the controller reaches the node's sshd at.")
@click.option("--port", default=22, show_default=True, help="The node's sshd port.")
@click.option(
    "--fingerprint",
    required=True,
    help="The node's host key, as `ssh-keygen -lf` prints it (SHA256:…).",
)
@click.option("--key-type", default="ssh-ed25519", show_default=True, help="Host key type.")
@click.option("--id", "node_id", help="Node id (default: derived from the address).")
@click.option("--name", help="Display name.")
@click.option(
    "--wait",
    type=float,
    metavar="SECONDS",
    help="Wait up to SECONDS for the daemon to settle the node; exit 1 unless registered.",
)
@pass_ctx
def register(
    obj: _Ctx,
    role: str,
    cluster: str | None,
    ip: str,
    port: int,
    fingerprint: str,
    key_type: str,
    node_id: str | None,
    name: str | None,
    wait: float | None,
) -> None:
    """Register a node that cannot announce itself here (another network).

    The node goes through the same rules, verification and hook as an
    announced one; the daemon picks it up at once.  Run on the node
    `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` to get the fingerprint.
    """
    with _errors():
        try:
            ann = Announcement(
                node_id=node_id or "m-" + ip.replace(".", "-").replace(":", "-"),
                role=role,
                ip=ip,
                port=port,
                fingerprint=fingerprint,
                key_type=key_type,
                cluster=cluster,
                name=name,
            )
        except AnnouncementError as exc:
            raise click.BadParameter(str(exc)) from exc
        config = obj.config()
        _admin.check_role(config, role)

        async def queue() -> tuple[NodeRecord, NodeRecord | None]:
            async with _admin.store_for(config) as store:
                rec = await _admin.manual_register(config, store, ann)
                click.echo(f"queued {rec.role} {rec.display_name} ({rec.node_id}) for registration")
                if wait is None:
                    return rec, rec
                return rec, await _admin.wait_settled(store, rec.node_id, timeout=wait)

        rec, current = run(queue())
        if wait is None:
            return
        state = current.state.value if current else "forgotten"
        reason = current.reason if current else ""
        click.echo(f"{rec.node_id}: {state}: {escape_controls(reason)}")
        if current is None or current.state is not NodeState.REGISTERED:
            raise AutoregError(f"{rec.node_id} is not registered ({state})")


@cli.command()
@click.argument("node")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def forget(obj: _Ctx, node: str, yes: bool) -> None:
    """Forget a node: it will be decided anew when it next announces."""
    with _errors():
        if not yes and not click.confirm(f"forget {node}?", default=False, err=True):
            raise click.Abort
        rec = with_store(obj, lambda store: _admin.forget_node(store, node))
        click.echo(f"forgot {rec.role} {rec.display_name} ({rec.node_id}), was {rec.state.value}")


@cli.command()
@click.argument("node")
@pass_ctx
def retry(obj: _Ctx, node: str) -> None:
    """Try a failed, unreachable, rejected or interrupted node again now."""
    with _errors():
        rec = with_store(obj, lambda store: _admin.retry_node(store, node))
        click.echo(
            f"{rec.node_id}: will be retried"
            + (" (hook runs with AUTOREG_RESUMED=1)" if rec.resumed else "")
        )


@cli.group()
def keys() -> None:
    """The controller's SSH key (CONTROLLER_KEY) that nodes authorise, and the HTTPS
    certificate nodes pin."""


@keys.command("init")
@pass_ctx
def keys_init(obj: _Ctx) -> None:
    """Create the controller key (ed25519) and the HTTPS key pair unless they exist.

    Never overwrites: the HTTPS certificate (self-signed, for [controller] listen) is
    what nodes pin, `autoreg keys show` prints its fingerprint.
    """
    with _errors():
        config = obj.config()
        key, created = _keyfiles.keys_init(config)
        word = "created" if created else "kept existing"
        click.echo(f"{word} {config.controller_key} ({key.fingerprint})", err=True)
        api, api_created = _keyfiles.api_keys_init(config)
        word = "created" if api_created else "kept existing"
        click.echo(f"{word} {api.cert_path} (HTTPS; nodes pin {api.fingerprint})", err=True)
        material = _keyfiles.medium_material(config)
        if material["controller_pin"] is None:
            click.echo(
                "note: media for nodes that call back (--callback) also need the "
                f"controller's sshd host key: {material['controller_pin_error']}",
                err=True,
            )
        click.echo(key.openssh)


@keys.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def keys_show(obj: _Ctx, as_json: bool) -> None:
    """Print the controller's public key and what install media carry besides it.

    That is: the controller's host-key pin (what nodes that call back trust),
    CALLBACK_PORT and CALLBACK_USER, the CONTROLLER_PORT range tunnels take
    their ports from, and the SHA-256 fingerprint of the HTTPS certificate that
    nodes posting to [controller] listen pin (--json: api_fingerprint).  The last
    line is the authorized_keys line for nodes.
    """
    with _errors():
        config = obj.config()
        key = _keyfiles.keys_show(config)
        material = _keyfiles.medium_material(config)
        api, api_error = _keyfiles.api_fingerprint(config)
        if as_json:
            emit_json(
                {
                    "path": str(config.controller_key),
                    "type": key.key_type,
                    "fingerprint": key.fingerprint,
                    "public_key": key.openssh,
                    **material,
                    "api_fingerprint": api,
                }
            )
            return
        first, last = material["controller_port_range"]
        pin = material["controller_pin"] or f"none: {material['controller_pin_error']}"
        click.echo(f"# CONTROLLER_KEY {config.controller_key} {key.fingerprint}")
        click.echo("# what install media carry besides (autoreg media build|script):")
        click.echo(f"#   CONTROLLER_USER  {material['controller_user']}")
        click.echo(f"#   controller pin   {pin}")
        click.echo(
            f"#   CALLBACK_PORT    {material['callback_port']} "
            f"(CALLBACK_USER {material['callback_user']})"
        )
        click.echo(
            f"#   CONTROLLER_PORT  {first}-{last}, {material['controller_ports_per_node']} per node"
        )
        click.echo(f"#   CALLBACK_KEY     {material['callback_key']}")
        pin = api or f"none: {api_error}"
        click.echo(f"#   HTTPS pin        {pin} ([node] registrar_fingerprint)")
        click.echo(
            f"# append to ~{material['controller_user']}/.ssh/authorized_keys on every node:"
        )
        click.echo(key.openssh)
