"""CLI commands for install media: media build, script, inspect."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import click

from .. import _admin, media
from .._exceptions import AutoregError
from . import _Ctx, _errors, cli, pass_ctx
from ._output import emit_json

__all__: list[str] = []


@cli.group("media")
def media_group() -> None:
    """Install media: a node's configuration, keys and services on first boot."""


def _medium_options(fn: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--role", required=True, help="The node's role."),
        click.option("--cluster", help="The node's cluster, for roles that have one."),
        click.option("--hostname", help="Host name (default: ROLE-<id>)."),
        click.option("--node-id", help="Node id (default: a new random one)."),
        click.option(
            "--controller",
            default="auto",
            show_default=True,
            help="Controller address the node dials back to (`auto`: find it by "
            "its announcement; a callback node needs an address).",
        ),
        click.option(
            "--callback/--no-callback",
            default=False,
            show_default=True,
            help="The node calls back: allocate its tunnel, put its key on the medium.",
        ),
        click.option(
            "--package",
            "packages",
            multiple=True,
            help="Debian package cloud-init installs first (e.g. autoreg-node).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _prepare(
    obj: _Ctx,
    role: str,
    cluster: str | None,
    hostname: str | None,
    node_id: str | None,
    controller: str,
    callback: bool,
    packages: tuple[str, ...],
) -> media.Medium:
    config = obj.config()
    with _admin.open_store(config) as store:
        return media.prepare_medium(
            config,
            store,
            role=role,
            cluster=cluster,
            hostname=hostname,
            node_id=node_id,
            controller=controller,
            callback=callback,
            packages=packages,
        )


@media_group.command("build")
@_medium_options
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the ISO image.",
)
@pass_ctx
def media_build(
    obj: _Ctx,
    role: str,
    cluster: str | None,
    hostname: str | None,
    node_id: str | None,
    controller: str,
    callback: bool,
    packages: tuple[str, ...],
    output: Path,
) -> None:
    """Write a cloud-init NoCloud seed ISO (label cidata) for one node."""
    with _errors():
        medium = _prepare(obj, role, cluster, hostname, node_id, controller, callback, packages)
        media.write_seed_iso(media.render_seed(medium), output)
        click.echo(
            f"wrote {output}: {medium.node.role} {medium.node.hostname} "
            f"(node {medium.node.node_id}); secrets: {medium.secrets_summary}"
        )


@media_group.command("script")
@_medium_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here (mode 0700) instead of standard output.",
)
@pass_ctx
def media_script(
    obj: _Ctx,
    role: str,
    cluster: str | None,
    hostname: str | None,
    node_id: str | None,
    controller: str,
    callback: bool,
    packages: tuple[str, ...],
    output: Path | None,
) -> None:
    """The same content as an AFTER_INSTALL script (preseed late_command, autoinstall)."""
    with _errors():
        medium = _prepare(obj, role, cluster, hostname, node_id, controller, callback, packages)
        text = media.render_script(medium)
        if output is None:
            click.echo(text, nl=False)
            return
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {output} (node {medium.node.node_id})", err=True)


@media_group.command("inspect")
@click.argument("image", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def media_inspect(obj: _Ctx, image: Path, as_json: bool) -> None:
    """List and validate a medium: label, required files, parsable user-data."""
    with _errors():
        report = media.inspect_seed(image)
        if as_json:
            emit_json({**dataclasses.asdict(report), "ok": report.ok})
        else:
            click.echo(
                f"{report.path}: label {report.label!r}, instance "
                f"{report.instance_id or '-'}, host {report.hostname or '-'}, role "
                f"{report.autoreg_role or '-'}"
            )
            for name, size in report.files.items():
                click.echo(f"  {name:<16} {size:>7} bytes")
            for problem in report.problems:
                click.echo(f"  problem: {problem}")
            click.echo("valid NoCloud seed" if report.ok else "NOT a usable seed")
        if not report.ok:
            raise AutoregError(f"{len(report.problems)} problem(s) with {image}")
