"""CLI commands for reaching nodes: callback, tunnel, ssh, exec."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from .. import _admin, _follow, _keyfiles, _remote, controller
from .._exceptions import AnnouncementError, AutoregError
from .._service import run_service
from ..protocol import check_node_id
from . import _Ctx, _errors, _quiet_libraries, cli, pass_ctx, run
from ._exec_display import ExecDisplay, exec_summary, follow_summary
from ._output import emit_json, format_table

__all__: list[str] = []


@cli.command()
@pass_ctx
def callback(obj: _Ctx) -> None:
    """Keep this node's reverse tunnel to the controller up (run at boot).

    Reads the [callback] section that `autoreg tunnel add` printed on the
    controller.  Reconnects by itself; SIGTERM/SIGINT stop it.
    """
    from ..node import CallbackService

    with _errors():
        config = obj.config()
        run_service(lambda: CallbackService(obj.config), config.log_level, obj.verbose)


@cli.group()
def tunnel() -> None:
    """Reverse tunnels from nodes the controller cannot reach (controller side)."""


def _node_id_argument(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """NODE_ID as the protocol defines it: it names files and goes into authorized_keys."""
    try:
        return check_node_id(value)
    except AnnouncementError as exc:
        raise click.BadParameter(exc.reason, ctx=ctx, param=param) from exc


@tunnel.command("add")
@click.argument("node_id", callback=_node_id_argument)
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(dir_okay=False, exists=True),
    help="The node's callback public key (.pub).",
)
@click.option(
    "--generate",
    "generate_into",
    type=click.Path(file_okay=False, path_type=Path),
    help="Create the node's key pair in this directory instead (for its medium).",
)
@click.option(
    "--controller",
    "controller_address",
    default="auto",
    show_default=True,
    help="Address nodes dial (or `auto`: the controller's own announcement).",
)
@pass_ctx
def tunnel_add(
    obj: _Ctx,
    node_id: str,
    public_key_file: str | None,
    generate_into: Path | None,
    controller_address: str,
) -> None:
    """Authorise NODE_ID's callback key and allocate its controller ports.

    Prints the node's [callback] section.  Idempotent: a node keeps its ports.
    """

    async def add() -> tuple[Any, Path | None]:
        async with _admin.store_for(config) as store:
            return await controller.add_tunnel(
                config, store, node_id, public_key=public_key, generate_into=generate_into
            )

    with _errors():
        config = obj.config()
        public_key = Path(public_key_file).read_text() if public_key_file else None
        allocation, private = run(add())
        click.echo(
            f"# node {node_id}: controller ports {', '.join(map(str, allocation.ports))}", err=True
        )
        if private is not None:
            click.echo(f"# new callback key for the node: {private}", err=True)
        click.echo(
            controller.callback_config_text(
                config,
                allocation,
                controller=controller_address,
                key_path=str(config.callback.key),
                known_hosts_path=str(config.callback.known_hosts),
            )
        )


@tunnel.command("remove")
@click.argument("node_id")
@pass_ctx
def tunnel_remove(obj: _Ctx, node_id: str) -> None:
    """Revoke NODE_ID's callback key and free its ports."""

    async def remove() -> bool:
        async with _admin.store_for(config) as store:
            return await controller.remove_tunnel(config, store, node_id)

    with _errors():
        config = obj.config()
        if not run(remove()):
            raise AutoregError(f"no tunnel allocated for {node_id}")
        click.echo(f"removed the tunnel of {node_id}")


@tunnel.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Check each port for the node's sshd banner.",
)
@pass_ctx
def tunnel_list(obj: _Ctx, as_json: bool, probe: bool) -> None:
    """Allocated tunnels and whether each port leads to a live sshd now."""

    async def allocations() -> list[Any]:
        async with _admin.store_for(obj.config(), readonly=True) as store:
            return await store.tunnels()

    with _errors():
        rows = []
        for alloc in run(allocations()):
            live = {p: controller.probe_tunnel_port(p) if probe else None for p in alloc.ports}
            rows.append({**alloc.to_json(), "live": {str(p): b for p, b in live.items()}})
        if as_json:
            emit_json(rows)
            return
        table = [
            [
                r["node_id"],
                ", ".join(f"{p}{'*' if b else ''}" for p, b in r["live"].items()),
                "up" if any(r["live"].values()) else ("-" if not probe else "down"),
            ]
            for r in rows
        ]
        click.echo(format_table(["NODE", "PORTS (* = live)", "TUNNEL"], table))


@tunnel.command("sshd-config")
@pass_ctx
def tunnel_sshd_config(obj: _Ctx) -> None:
    """Print the sshd_config Match block for the callback user.

    \b
    A drop-in of its own (a Match block holds every line after it):
      autoreg tunnel sshd-config > /etc/ssh/sshd_config.d/autoreg-callback.conf
    Global settings such as Port go in another file (docs/admin.md).
    """
    with _errors():
        click.echo(controller.sshd_match_block(obj.config()))


@tunnel.command("known-hosts")
@pass_ctx
def tunnel_known_hosts(obj: _Ctx) -> None:
    """Print the pin of the controller's sshd host key, for nodes' known_hosts."""
    with _errors():
        click.echo(_keyfiles.controller_known_hosts_text(obj.config()), nl=False)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def ssh(obj: _Ctx, node: str, command: tuple[str, ...]) -> None:
    """Open a shell, or run COMMAND, on NODE over its path (verified first).

    \b
      autoreg ssh nc1                 # interactive shell
      autoreg ssh nc1 -- uptime       # one command
    """

    async def access() -> Any:
        async with _admin.store_for(config) as store:
            files, _ = await _remote.prepare_access(config, store, await store.find(node))
            return files

    _quiet_libraries(obj.verbose)
    with _errors():
        config = obj.config()
        files = run(access())
        argv = _remote.ssh_argv(files, command, tty=not command and sys.stdin.isatty())
    os.execvp(argv[0], argv)  # noqa: S606 - hand the terminal to OpenSSH, no shell involved


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--role", help="Only registered nodes of this role.")
@click.option("--cluster", help="Only registered nodes of this cluster.")
@click.option("--node", "refs", multiple=True, help="This node (repeatable) instead of filters.")
@click.option(
    "-p",
    "--parallel",
    default=8,
    show_default=True,
    help="At most this many connections at a time.",
)
@click.option(
    "--timeout",
    default=_remote.DEFAULT_EXEC_TIMEOUT,
    show_default=True,
    help="Seconds the command may run on each node.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Also run it on each matching node that registers meanwhile (not with --node).",
)
@click.option(
    "--converged-timeout",
    "quiet",
    type=click.FloatRange(min=0),
    metavar="S",
    help=(
        "With --follow: return once nothing runs and nothing has changed (no new node, "
        f"no command ended) for S seconds.  [default: {_follow.DEFAULT_CONVERGED_TIMEOUT:g}]"
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON (output still streams).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_ctx
def exec_(
    obj: _Ctx,
    role: str | None,
    cluster: str | None,
    refs: tuple[str, ...],
    parallel: int,
    timeout: float,
    follow: bool,
    quiet: float | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND on many registered nodes at once, each over its own path.

    Output lines are prefixed with the node's name; a summary with each
    node's exit status follows.  Exits 1 if any node failed.  On a terminal
    a progress line shows how many nodes are done, failed, running.

    With --follow it keeps watching: each matching node that registers
    while it runs gets the command too (once).  It returns when no command
    runs and nothing has changed for --converged-timeout seconds.

    \b
      autoreg exec --role nc --parallel 20 -- systemctl restart eucalyptus-nc
      autoreg exec --follow --converged-timeout 60 --role nc -- cat /etc/machine-id
    """
    if follow and refs:
        raise click.UsageError("--follow watches for nodes by --role/--cluster, not --node")
    if quiet is not None and not follow:
        raise click.UsageError("--converged-timeout only applies with --follow")
    display = ExecDisplay.for_terminal(sys.stdout, sys.stderr)

    async def fan_out() -> list[_remote.ExecResult]:
        async with _admin.store_for(config) as store:
            nodes = await _remote.select_nodes(store, role=role, cluster=cluster, refs=refs)
            if not nodes:
                raise AutoregError("no registered node matches")
            return await _remote.run_on_nodes(
                config,
                store,
                nodes,
                command,
                parallel=parallel,
                timeout=timeout,
                emit=display.line,
                progress=display.progress,
            )

    async def follow_on() -> _follow.FollowResult:
        async with _admin.store_for(config) as store:
            return await _follow.follow_nodes(
                config,
                store,
                command,
                role=role,
                cluster=cluster,
                parallel=parallel,
                timeout=timeout,
                quiet=_follow.DEFAULT_CONVERGED_TIMEOUT if quiet is None else quiet,
                emit=display.line,
                progress=display.progress,
            )

    _quiet_libraries(obj.verbose)
    with _errors():
        config = obj.config()
        followed: _follow.FollowResult | None = None
        try:
            if follow:
                followed = run(follow_on())
                results = list(followed.results)
            else:
                results = run(fan_out())
        finally:
            display.close()
        if followed is None:
            exec_summary(results, as_json=as_json)
        elif not results:
            raise AutoregError(
                f"no registered node matched in {followed.converged_after:.0f}s of following"
            )
        else:
            follow_summary(followed, as_json=as_json)
        failed = [r for r in results if not r.ok]
        if failed:
            raise AutoregError(f"{len(failed)} of {len(results)} node(s) failed")
