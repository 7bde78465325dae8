"""CLI commands for install media: media build, script, inspect."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .. import _admin, media
from .._exceptions import AutoregError
from .._files import write_atomic
from . import _Ctx, _errors, cli, duration, pass_ctx, run
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
            "--interface",
            help="Interface to configure for DHCP (default: the primary one: cloud-init's "
            "fallback on a seed, systemd-networkd matching e* in the script).",
        ),
        click.option(
            "--package",
            "packages",
            multiple=True,
            help="Debian package cloud-init installs first (e.g. autoreg-node).",
        ),
        click.option(
            "--token/--no-token",
            "with_token",
            default=True,
            show_default=True,
            help="Put a single-use join token for the node's role and cluster on the "
            "medium: the node registers with no human step under trust = token.",
        ),
        click.option(
            "--registrar",
            metavar="https://HOST:PORT",
            help="The registrar's HTTPS endpoint ([controller] listen): the node posts its "
            "signed announcement there too, for networks mDNS does not reach.",
        ),
        click.option(
            "--registrar-fingerprint",
            metavar="SHA256:…",
            help="That registrar's certificate, pinned by the node (default: this host's "
            "own, as `autoreg keys show` prints it).",
        ),
        click.option(
            "--token-ttl",
            default="24h",
            show_default=True,
            callback=duration,
            help="How long that token is valid (30m, 24h, 7d): until the node boots.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _build(obj: _Ctx, spec: dict[str, Any], write: Callable[[media.Medium], None]) -> media.Medium:
    """Validate, allocate, write: what was allocated for it is released if writing fails."""
    config = obj.config()
    request = media.check_request(config, **spec)

    async def build() -> media.Medium:
        async with _admin.store_for(config) as store:
            return await _admin.build_medium(config, store, request, write)

    medium = run(build())
    if medium.replaced_callback_key:
        click.echo(
            f"warning: node {medium.node.node_id} had a tunnel: its callback key is replaced, "
            "so media written for it earlier no longer call back",
            err=True,
        )
    return medium


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
def media_build(obj: _Ctx, /, output: Path, **spec: Any) -> None:
    """Write a cloud-init NoCloud seed ISO (label cidata) for one node.

    The image is written with mode 0600: it holds the node's join token, and with
    --callback the node's callback key.
    """
    with _errors():
        medium = _build(
            obj, spec, write=lambda m: media.write_seed_iso(media.render_seed(m), output)
        )
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
def media_script(obj: _Ctx, /, output: Path | None, **spec: Any) -> None:
    """The same content as an AFTER_INSTALL script (preseed late_command, autoinstall)."""

    def write(m: media.Medium) -> None:
        if output is not None:
            _write_private(output, media.render_script(m).encode(), 0o700)

    with _errors():
        medium = _build(obj, spec, write=write)
        if output is None:
            click.echo(media.render_script(medium), nl=False)
            return
        click.echo(
            f"wrote {output} (node {medium.node.node_id}); secrets: {medium.secrets_summary}",
            err=True,
        )


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically with ``mode`` from its first byte (never an old file's mode)."""
    try:
        write_atomic(path.absolute(), data, mode=mode)
    except OSError as exc:
        raise media.MediumError(f"{path}: cannot write: {exc.strerror}") from exc


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
                f"{report.instance_id or '-'}, host {report.hostname or '-'}"
            )
            where = f" of cluster {report.autoreg_cluster}" if report.autoreg_cluster else ""
            click.echo(
                f"  node {report.node_id or '-'}: role {report.autoreg_role or '-'}{where}, "
                + ("calls back" if report.calls_back else "reached directly")
            )
            click.echo(f"  secrets: {', '.join(report.secrets) or 'none'}")
            for name, size in report.files.items():
                click.echo(f"  {name:<16} {size:>7} bytes")
            if report.files and "network-config" not in report.files:
                click.echo("  (no network-config: cloud-init's fallback, DHCP on the primary NIC)")
            for problem in report.problems:
                click.echo(f"  problem: {problem}")
            click.echo("valid NoCloud seed" if report.ok else "NOT a usable seed")
        if not report.ok:
            raise AutoregError(f"{len(report.problems)} problem(s) with {image}")
