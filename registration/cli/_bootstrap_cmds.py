"""CLI command ``bootstrap``: machines with only sshd and python3 join the cluster."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import click

from .. import bootstrap as boot
from .._endpoints import parse_pin, parse_registrar_url
from .._exceptions import AutoregError, ConfigError
from .._text import escape_controls
from . import _Ctx, _errors, _quiet_libraries, duration, pass_ctx, with_store
from . import cli as root
from ._output import emit_json, format_table

__all__: list[str] = []


@root.command(context_settings={"max_content_width": 100})
@click.argument("targets", nargs=-1)
@click.option("--role", help="Role of every TARGET (a hosts file line may name its own).")
@click.option("--cluster", help="Cluster, for roles that belong to one.")
@click.option(
    "--hosts",
    "hosts_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Targets from a file: one `TARGET [ROLE [CLUSTER]]` per line, # comments.",
)
@click.option("-p", "--parallel", default=10, show_default=True, help="Machines at a time.")
@click.option("--no-cache", is_flag=True, help="Copy the agent even where the cache has it.")
@click.option(
    "--token-ttl",
    default="1h",
    show_default=True,
    callback=duration,
    help="Lifetime of each machine's single-use join token (30m, 2h, 1d).",
)
@click.option(
    "--accept-new",
    is_flag=True,
    help="Trust a host key seen for the first time (recorded; a changed key is always refused).",
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Host keys to verify against [default STATE_DIR/bootstrap_known_hosts].",
)
@click.option(
    "--identity",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key to log in with [default: the controller key].",
)
@click.option("--user", help="User to log in as [default: [controller] ssh_user].")
@click.option(
    "--remote-python",
    default="python3",
    show_default=True,
    help="The machines' Python 3.11+ (a command line).",
)
@click.option(
    "--remote-cache",
    default=boot.REMOTE_CACHE,
    show_default=True,
    help="Directory on the machines that keeps the agent.",
)
@click.option("--persist", is_flag=True, help="An enabled systemd unit instead of a transient one.")
@click.option(
    "--converged-timeout",
    default=boot.DEFAULT_CONVERGED_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Return when every machine has settled, or nothing changed for this many seconds.",
)
@click.option("--registrar", help="HTTPS endpoint the machines dial [default: this registrar's].")
@click.option("--registrar-fingerprint", help="Its certificate pin (with --registrar).")
@click.option("--via", help="Run the bootstrap from this registered node (one level).")
@click.option(
    "--remote-autoreg",
    default="autoreg",
    show_default=True,
    help="The autoreg command on the --via node.",
)
@click.option("--json", "as_json", is_flag=True, help="Summary as JSON.")
@pass_ctx
def bootstrap(obj: _Ctx, /, targets: tuple[str, ...], hosts_file: Path | None, **opts: Any) -> None:
    """Bring machines that have only sshd and python3 into the cluster.

    For each TARGET ([user@]host[:port]): verify its host key, copy the agent
    (once per version: the remote cache is keyed by content hash), write the
    node's configuration with a fresh single-use join token, and start the
    agent.  The node then registers through the normal path; when it cannot
    reach this registrar, through the SSH connection bootstrap holds open.
    Returns when every machine is registered or failed, or nothing changed for
    --converged-timeout seconds; exits 1 unless every machine registered.

    \b
      autoreg bootstrap --role nc --cluster c1 --accept-new root@198.18.0.21 198.18.0.22
      autoreg bootstrap --hosts machines.txt --parallel 20
      autoreg bootstrap --via cc1 --role nc --cluster c1 10.1.0.5 10.1.0.6
    """
    as_json = opts.pop("as_json")
    via = opts.pop("via")
    remote_autoreg = opts.pop("remote_autoreg")
    _quiet_libraries(obj.verbose)
    with _errors():
        config = obj.config()
        if via is not None:
            report = _via(obj, via, targets, hosts_file, remote_autoreg, opts)
        else:
            chosen = [boot.parse_target(t) for t in targets]
            if hosts_file is not None:
                chosen += boot.read_hosts_file(hosts_file)
            options = _options(opts)

            def shown(state: str, result: boot.TargetResult) -> None:
                click.echo(_progress_line(state, result), err=True)  # stdout: the summary

            report = with_store(
                obj, lambda store: boot.bootstrap(config, store, chosen, options, progress=shown)
            )
        _summary(report, as_json=as_json)
        failed = [r for r in report.results if not r.ok]
        if failed:
            raise AutoregError(
                f"{len(failed)} of {len(report.results)} machine(s) did not register"
            )


def _options(opts: dict[str, Any]) -> boot.BootstrapOptions:
    registrar = None
    url, pin = opts["registrar"], opts["registrar_fingerprint"]
    if (url is None) != (pin is None):
        raise ConfigError("--registrar and --registrar-fingerprint go together")
    if url is not None and pin is not None:
        try:
            registrar = (parse_registrar_url(url), parse_pin(pin))
        except ValueError as exc:
            raise ConfigError(f"--registrar: {exc}") from exc
    python = tuple(shlex.split(opts["remote_python"]))
    if not python:
        raise ConfigError("--remote-python: empty")
    return boot.BootstrapOptions(
        role=opts["role"],
        cluster=opts["cluster"],
        parallel=opts["parallel"],
        cache=not opts["no_cache"],
        token_ttl=opts["token_ttl"],
        accept_new=opts["accept_new"],
        known_hosts=opts["known_hosts"],
        identity=opts["identity"],
        user=opts["user"],
        python=python,
        remote_cache=opts["remote_cache"],
        persist=opts["persist"],
        converged_timeout=opts["converged_timeout"],
        registrar=registrar,
    )


def _via(
    obj: _Ctx,
    via: str,
    targets: tuple[str, ...],
    hosts_file: Path | None,
    remote_autoreg: str,
    opts: dict[str, Any],
) -> boot.BootstrapReport:
    """The second tier: these options, forwarded to ``autoreg bootstrap`` on ``via``."""
    for local in ("known_hosts", "identity"):
        if opts[local] is not None:
            flag = "--" + local.replace("_", "-")
            raise ConfigError(f"{flag} names a file here: with --via, {via}'s own is used")
    for target in targets:
        boot.parse_target(target)  # validated here too, sent as given
    flags = {
        "role": "--role",
        "cluster": "--cluster",
        "parallel": "--parallel",
        "user": "--user",
        "remote_python": "--remote-python",
        "remote_cache": "--remote-cache",
        "converged_timeout": "--converged-timeout",
        "registrar": "--registrar",
        "registrar_fingerprint": "--registrar-fingerprint",
    }
    options: list[str] = []
    for key, flag in flags.items():
        if opts[key] is not None:
            options += [flag, str(opts[key])]
    options += ["--token-ttl", f"{opts['token_ttl']:g}s"]
    for key in ("no_cache", "accept_new", "persist"):
        if opts[key]:
            options.append("--" + key.replace("_", "-"))
    hosts = None
    if hosts_file is not None:
        boot.read_hosts_file(hosts_file)  # the same checks here as there
        hosts = hosts_file.read_bytes()
    config = obj.config()
    timeout = opts["converged_timeout"] + 3600.0
    return with_store(
        obj,
        lambda store: boot.bootstrap_via(
            config,
            store,
            via,
            [*options, "--", *targets],
            remote_autoreg=remote_autoreg,
            hosts_file=hosts,
            timeout=timeout,
            emit=lambda line: click.echo(line, err=True),
        ),
    )


def _progress_line(state: str, result: boot.TargetResult) -> str:
    detail = f": {escape_controls(result.detail)}" if result.detail else ""
    return f"{escape_controls(result.target)}: {state}{detail}"


def _summary(report: boot.BootstrapReport, *, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_json())
        return
    rows = [
        [
            r.target,
            r.name or "-",
            r.state,
            "yes" if r.copied else "no",
            r.route,
            r.detail or r.agent,
        ]
        for r in report.results
    ]
    click.echo(format_table(["TARGET", "NODE", "STATE", "COPIED", "ROUTE", "DETAIL"], rows))
    done = sum(r.ok for r in report.results)
    click.echo(
        f"{done} of {len(report.results)} registered in {report.elapsed:.1f} s; "
        f"agent {report.bundle} copied to {sum(r.copied for r in report.results)}"
    )
