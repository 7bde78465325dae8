"""The ``autoreg`` command line: parses, calls the library, maps errors to exit codes.

Exit codes: 0 success; 1 operation failed; 2 usage error; 66 no such node;
69 transport unavailable; 73 key material problem; 74 state store problem;
78 configuration error; 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import _admin
from .._config import Config, load_config
from .._exceptions import AutoregError, ConfigError
from .._service import run_service as _run_service
from .._service import setup_logging as _setup_logging
from .._text import escape_controls
from .._version import __version__
from ..controller._hooks import OUTPUT_LIMIT
from ..state import NodeState, StateStore
from ._output import (
    SHOWN_OUTPUT_LINES,
    emit_json,
    format_event,
    format_node_detail,
    format_table,
    json_line,
    node_rows,
)

__all__ = ["main"]

log = logging.getLogger("registration")

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one library coroutine to completion (each command has its own event loop)."""
    return asyncio.run(coro)


#: The flag behind each configuration override the commands pass (``section.key``).
_FLAG_OF: dict[str, str] = {
    "autoreg.state_dir": "--state-dir",
    "autoreg.interfaces": "--interface",
    "autoreg.etcd_endpoints": "--endpoints",
    "controller.role": "--role",
    "controller.cluster": "--cluster",
    "controller.hooks_dir": "--hooks-dir",
    "node.role": "--role",
    "node.cluster": "--cluster",
    "node.interface": "--interface",
    "node.address": "--address",
    "node.id": "--id",
    "node.name": "--name",
    "node.ssh_port": "--port",
    "node.host_key": "--host-key",
    "node.receipt_path": "--receipt",
    "node.probe": "--probe",
}


@dataclasses.dataclass
class _Ctx:
    config_path: Path | None
    overrides: dict[str, str | None]
    verbose: int

    def config(self, **more: str | None) -> Config:
        """The configuration with this command's flags; a bad flag is a usage error naming it."""
        try:
            return load_config(self.config_path, overrides={**self.overrides, **more})
        except ConfigError as exc:
            source = exc.source or ""
            flag = _FLAG_OF.get(source.removeprefix("option for "))
            if not source.startswith("option for ") or flag is None:
                raise
            message = escape_controls(str(exc).removeprefix(f"{source}: "))
            raise click.UsageError(
                f"{flag}: {message}", ctx=click.get_current_context(silent=True)
            ) from exc


pass_ctx = click.make_pass_decorator(_Ctx)


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """Click callback: a duration option (``90s``, ``30m``, ``2h``, ``1d``) in seconds."""
    from .._trust import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def with_store(
    obj: _Ctx, action: Callable[[StateStore], Awaitable[T]], *, readonly: bool = False
) -> T:
    """Run ``action`` on the configured store, opened for it and closed after."""

    async def go() -> T:
        async with _admin.store_for(obj.config(), readonly=readonly) as store:
            return await action(store)

    return run(go())


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except AutoregError as exc:
        # an error may quote what a peer sent (an SSH banner, a TXT value)
        click.echo(f"autoreg: error: {escape_controls(str(exc), multiline=True)}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


def _quiet_libraries(verbose: int) -> None:
    """Commands that dial out: library log records (paramiko's tracebacks) stay out of sight.

    Their errors reach the admin as autoreg's own one-line reasons; ``-v`` shows them all.
    """
    if verbose:
        _setup_logging("debug", verbose)
        return
    for name in ("paramiko", "zeroconf"):
        library = logging.getLogger(name)
        library.addHandler(logging.NullHandler())
        library.propagate = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="autoreg")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration file [env AUTOREG_CONFIG; default /etc/autoreg/autoreg.conf].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="State directory [env AUTOREG_STATE_DIR; default /var/lib/autoreg].",
)
@click.option("-v", "--verbose", count=True, help="Debug logging (daemon, announce).")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, state_dir: str | None, verbose: int) -> None:
    """Zero-touch registration of cluster and private-cloud nodes.

    Nodes run `autoreg announce`; each registrar runs `autoreg daemon`, which
    registers the nodes its role owns by running the hook in
    /etc/autoreg/hooks.d/<role>, exactly once, in dependency order.  The other
    commands inspect and steer a registrar through its state store.

    \b
    A 2-minute tour:
      autoreg keys init                # the controller key nodes must trust
      autoreg daemon --role clc        # register walrus, cc, sc
      autoreg list                     # who is where, and why
      autoreg events --follow          # watch registrations happen
      autoreg lockdown on --role cc    # stop registering new CCs, live
    """
    ctx.obj = _Ctx(config_path, {"autoreg.state_dir": state_dir}, verbose)


# -- the two long-running services ------------------------------------------------------


@cli.command()
@click.option("--role", help="Registrar role of this host, e.g. clc or cc [controller.role].")
@click.option("--cluster", help="Cluster of a cluster registrar such as a CC.")
@click.option("--hooks-dir", type=click.Path(file_okay=False), help="Directory of role hooks.")
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    help="Browse on this interface (repeatable; default all).",
)
@pass_ctx
def daemon(
    obj: _Ctx,
    role: str | None,
    cluster: str | None,
    hooks_dir: str | None,
    interfaces: tuple[str, ...],
) -> None:
    """Run the registration daemon: browse, decide, verify, run hooks, record."""
    from ..controller import Daemon

    with _errors():
        config = obj.config(
            **{
                "controller.role": role,
                "controller.cluster": cluster,
                "controller.hooks_dir": hooks_dir,
                "autoreg.interfaces": ",".join(interfaces) or None,
            }
        )
        _run_service(lambda: Daemon(config), config.log_level, obj.verbose)


@cli.command()
@click.option("--role", help="This node's role, e.g. nc [node.role].")
@click.option("--cluster", help="Cluster this node belongs to [node.cluster].")
@click.option("--interface", help="Announce this interface's address [node.interface].")
@click.option("--address", help="Announce this address [node.address].")
@click.option("--id", "node_id", help="Stable node id (default: from /etc/machine-id).")
@click.option("--name", help="Host name to announce (default: the host name).")
@click.option("--port", help="sshd port [node.ssh_port; default 22].")
@click.option(
    "--host-key",
    type=click.Path(dir_okay=False),
    help="sshd public host key [default /etc/ssh/ssh_host_ed25519_key.pub].",
)
@click.option(
    "--receipt",
    type=click.Path(dir_okay=False),
    help="Where the controller leaves the registration receipt.",
)
@click.option(
    "--probe/--no-probe",
    default=None,
    help="Probe for name conflicts first (RFC 6762 §8.1) [node.probe].",
)
@pass_ctx
def announce(
    obj: _Ctx,
    role: str | None,
    cluster: str | None,
    interface: str | None,
    address: str | None,
    node_id: str | None,
    name: str | None,
    port: str | None,
    host_key: str | None,
    receipt: str | None,
    probe: bool | None,
) -> None:
    """Announce this node over mDNS until stopped (goodbye on SIGTERM/SIGINT).

    With [node] registrar it also posts its signed record to that registrar's HTTPS
    endpoint and follows its state; either way it logs, in one line, why the node is
    not registered yet (`autoreg status` shows it too).
    """
    from ..node import Announcer

    with _errors():
        config = obj.config(
            **{
                "node.role": role,
                "node.cluster": cluster,
                "node.interface": interface,
                "node.address": address,
                "node.id": node_id,
                "node.name": name,
                "node.ssh_port": port,
                "node.host_key": host_key,
                "node.receipt_path": receipt,
                "node.probe": None if probe is None else ("yes" if probe else "no"),
            }
        )
        _run_service(lambda: Announcer(config), config.log_level, obj.verbose)


@cli.command()
@click.option("--timeout", default=3.0, show_default=True, help="Seconds to listen.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def discover(obj: _Ctx, timeout: float, as_json: bool) -> None:
    """List the registrars announcing themselves on this network.

    When none answers, says where it looked (interfaces, addresses) and what
    looks wrong there (an interface down, none at all).
    """
    from ..node import browse_report, discover_registrars

    _quiet_libraries(obj.verbose)
    with _errors():
        config = obj.config()
        found = asyncio.run(discover_registrars(config, timeout=timeout))
        if as_json:
            emit_json([dataclasses.asdict(r) for r in found])
        elif found:
            rows = [
                [r.role, r.cluster or "-", r.name or "-", f"{r.ip}:{r.port}", r.state, r.node_id]
                for r in found
            ]
            click.echo(format_table(["ROLE", "CLUSTER", "NAME", "ADDRESS", "STATE", "ID"], rows))
        else:
            tried, problems = browse_report(config)
            line = f"no registrar answered within {timeout:g} s: {tried}"
            click.echo(f"autoreg: error: {'; '.join([line, *problems])}", err=True)
            sys.exit(1)


# -- inspecting ------------------------------------------------------------------------------


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in NodeState]),
    help="Only nodes in this state (repeatable).",
)
@click.option("--role", help="Only nodes of this role.")
@pass_ctx
def list_(obj: _Ctx, as_json: bool, states: tuple[str, ...], role: str | None) -> None:
    """List known nodes with their state and the reason for it."""

    async def listing() -> list[Any]:
        async with _admin.store_for(obj.config(), readonly=True) as store:
            return await store.nodes()

    with _errors():
        nodes = [
            n
            for n in run(listing())
            if (not states or n.state.value in states) and (role is None or n.role == role)
        ]
        if as_json:
            emit_json([n.to_json() for n in nodes])
        elif nodes:
            click.echo(format_table(*node_rows(nodes)))
        else:
            click.echo("no nodes known yet", err=True)


@cli.command()
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "-n",
    "--events",
    "count",
    default=20,
    show_default=True,
    type=click.IntRange(min=0),
    help="How many of the node's latest events to show.",
)
@click.option(
    "--full",
    is_flag=True,
    help=f"All the hook output kept (the last {OUTPUT_LIMIT // 1024} KiB of each stream), "
    f"not only its last {SHOWN_OUTPUT_LINES} lines.",
)
@pass_ctx
def show(obj: _Ctx, node: str, as_json: bool, count: int, full: bool) -> None:
    """Show one node (by id, id prefix, name or address) and its recent events.

    Each hook run shows how it ended and the last lines of its output, saying
    when lines were left out; --full shows all that was kept.
    """

    async def detail() -> tuple[Any, list[Any]]:
        async with _admin.store_for(obj.config(), readonly=True) as store:
            rec = await store.find(node)
            return rec, await store.last_events(count, node_id=rec.node_id)

    with _errors():
        rec, events = run(detail())
        if as_json:
            emit_json({"node": rec.to_json(), "events": [e.to_json() for e in events]})
        else:
            click.echo(format_node_detail(rec, events, full=full))


@cli.command()
@click.argument("node_ref", metavar="[NODE]", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--node", help="Only events of this node (the same as the NODE argument).")
@click.option(
    "-n",
    "--last",
    "count",
    default=50,
    show_default=True,
    type=click.IntRange(min=0),
    help="Start with this many past events (0: only new ones, with --follow).",
)
@click.option("--timeout", type=float, help="With --follow: stop after this many seconds.")
@pass_ctx
def events(
    obj: _Ctx,
    node_ref: str | None,
    follow: bool,
    as_json: bool,
    node: str | None,
    count: int,
    timeout: float | None,
) -> None:
    """Print the event log (every decision, with its reason), of one NODE or of all.

    A hook run's line ends with how the hook ended; `autoreg show NODE` prints
    its output.
    """
    if node_ref is not None and node is not None and node_ref != node:
        raise click.UsageError(f"two nodes given: {node_ref} and --node {node}; give one")
    node = node or node_ref

    def out(event: Any) -> None:
        if as_json:
            click.echo(json_line(event.to_json()))
        else:
            click.echo(format_event(event, node=node is None))

    async def follow_events(config: Config) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if follow:  # the daemon may not have created its store yet: wait for it
            await _admin.wait_for_store(config, deadline=deadline)
        async with _admin.store_for(config, readonly=True) as store:
            node_id = (await store.find(node)).node_id if node else None
            last = 0
            for event in await store.last_events(count, node_id=node_id):
                out(event)
                last = event.seq
            if not follow:
                return
            if not last:
                last = max((e.seq for e in await store.last_events(1)), default=0)
            left = None if deadline is None else deadline - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    async for batch in store.watch(after=last):
                        for event in batch:
                            if node_id is None or event.node_id == node_id:
                                out(event)

    with _errors():
        run(follow_events(obj.config()))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(obj: _Ctx, as_json: bool) -> None:
    """Is the daemon running, with which role and transport; node counts; lockdown.

    On a node: why it is not registered yet, as the announcer last said.
    """
    with _errors():
        report = run(_admin.status_report(obj.config()))
        if as_json:
            emit_json(report)
            return
        daemon_ = report["daemon"]
        if daemon_:
            where = f" of cluster {daemon_['cluster']}" if daemon_.get("cluster") else ""
            click.echo(
                f"daemon: running (pid {daemon_['pid']}), registrar {daemon_['role']}"
                f"{where}, {daemon_['registrar_state']}, transport "
                f"{daemon_['transport']}"
                + (f", HTTPS endpoint {daemon_['api']}" if daemon_.get("api") else "")
            )
        else:
            click.echo("daemon: not running")
        node = report.get("node")
        if node:
            running = "running" if node["running"] else "not running"
            click.echo(f"node: {escape_controls(str(node.get('line')))} (announcer {running})")
        for line in _store_lines(report):
            click.echo(line)
        nodes = report.get("nodes") or {}
        click.echo("nodes: " + (", ".join(f"{v} {k}" for k, v in sorted(nodes.items())) or "none"))
        locks = [s for s, on in (report.get("lockdown") or {}).items() if on]
        click.echo("lockdown: " + (", ".join("all" if s == "*" else s for s in locks) or "off"))
        trust = report.get("trust")
        if trust:
            roles = "".join(f", {r}: {p}" for r, p in sorted(trust["per_role"].items()))
            click.echo(
                f"trust: {trust['policy']} ({trust['source']}){roles}; "
                f"{trust['pending']} pending, {trust['tokens_valid']} valid token(s), "
                f"{len(trust['windows'])} install window(s) open"
            )
            if trust["policy"] == "open":
                click.echo(
                    "  warning: every well-formed announcement of a free role is registered; "
                    "set [controller] trust = token or approve",
                    err=True,
                )
        click.echo(f"controller key: {report['controller_key'] or 'none (autoreg keys init)'}")


def _store_lines(report: dict[str, Any]) -> list[str]:
    """``status``: the store, this registrar's lease and the other registrars (etcd)."""
    info = report.get("store") or {}
    schema = report.get("schema_version", "?")
    if info.get("backend") != "etcd":
        lines = [f"state: {report['state_dir']} (sqlite, schema {schema})"]
        if "state_error" in report:
            lines.append(f"  {report['state_error']}")
        return lines
    lines = [f"state: etcd {' '.join(info['endpoints'])} prefix {info['prefix']} "
             f"(layout {schema}); files in {report['state_dir']}"]  # fmt: skip
    for member in info.get("members", []):
        if "error" in member:
            what = f"unreachable ({member['error']})"
        elif not member.get("has_leader"):
            what = f"up, no leader: no quorum here{_errors_text(member)}"
        else:
            role = "leader" if member.get("leader") else "follower"
            size = member.get("db_size")
            what = (
                f"{role}, etcd {member.get('version')}"
                + (f", db {size / 1048576:.1f} MiB" if isinstance(size, int) else "")
                + _errors_text(member)
            )
        lines.append(f"  member {member['endpoint']}: {what}")
    if "state_error" in report:
        lines.append(f"  {report['state_error']}")
    daemon_ = report.get("daemon") or {}
    lease = daemon_.get("lease")
    if lease:
        state = f"FENCED: {lease['fenced']}" if lease.get("fenced") else "held"
        lines.append(
            f"this registrar's lease: {lease.get('lease') or '?'} (TTL {lease['ttl']:g} s), "
            f"{state}, valid for {lease['valid_for']:g} s when written"
        )
    owner = daemon_.get("owner")
    others = [r for r in report.get("registrars", []) if r.get("owner") != owner]
    lines.append(f"other registrars: {len(others) or 'none seen'}")
    for reg in others:
        left = reg.get("ttl_left")
        lines.append(
            f"  {reg.get('owner')} on {reg.get('host', '?')} (pid {reg.get('pid', '?')}), "
            f"lease {reg.get('lease', '?')}" + (f", {left} s left" if isinstance(left, int) else "")
        )
    return lines


def _errors_text(member: dict[str, Any]) -> str:
    errors = member.get("errors") or []
    return f"; alarms: {', '.join(errors)}" if errors else ""


from . import (  # noqa: E402,F401  - they register on ``cli``
    _bootstrap_cmds,
    _media_cmds,
    _reach_cmds,
    _steer,
    _store_cmds,
    _trust_cmds,
)


def main() -> None:
    cli(prog_name="autoreg")
