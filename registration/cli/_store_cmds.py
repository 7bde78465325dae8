"""CLI commands on the state store itself: store migrate."""

from __future__ import annotations

import click

from .. import _admin
from . import _Ctx, _errors, cli, pass_ctx, run
from ._output import emit_json

__all__: list[str] = []


@cli.group()
def store() -> None:
    """The state store itself (sqlite, or etcd shared by several registrars)."""


@store.command("migrate")
@click.option(
    "--to",
    "target",
    type=click.Choice(["etcd"]),
    required=True,
    help="Where to copy the store (the [autoreg] etcd_* settings say which cluster).",
)
@click.option(
    "--endpoints",
    help="etcd client URLs, comma-separated [autoreg.etcd_endpoints].",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def store_migrate(obj: _Ctx, target: str, endpoints: str | None, as_json: bool) -> None:
    """Copy this host's sqlite store into etcd: nodes, events, tokens, switches, all.

    Nothing is registered again: every node keeps its state.  Stop the daemon
    first; afterwards set `store = etcd` in [autoreg] on every registrar.  The
    sqlite file is left as it was.
    """
    with _errors():
        config = obj.config(**{"autoreg.etcd_endpoints": endpoints})
        copied = run(_admin.migrate_store(config))
        if as_json:
            emit_json(copied.to_json())
            return
        click.echo(
            f"copied {copied.nodes} node(s), {copied.events} event(s), {copied.tokens} "
            f"token(s), {copied.windows} install window(s), {copied.denied} denied key(s), "
            f"{copied.settings} setting(s), {copied.lockdown} lockdown switch(es) and "
            f"{copied.tunnels} tunnel(s) into etcd {copied.target}"
        )
        click.echo(
            "next: set `store = etcd` in [autoreg] on every registrar of this store "
            "(with the same etcd_* settings), then start their daemons"
        )
