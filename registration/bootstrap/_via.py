"""``bootstrap --via NODE``: the second tier runs on a registered node (a CC, say).

The operator's machine makes one connection, to NODE, over NODE's own verified
path (its host key must be the one it registered with), and runs NODE's own
``autoreg bootstrap --json`` there.  NODE then connects to its targets with its
own key, verifies their host keys against its own known_hosts, mints their
tokens in its own registrar's store and waits for them to register with it.
The trust chain (docs/security.md): operator → NODE's registered host key →
NODE's registrar key and known_hosts → each target.

What NODE sends back is hostile until checked: its summary is bounded, parsed
as JSON and rebuilt field by field; its progress lines are shown escaped.
"""

from __future__ import annotations

import json
import secrets
import shlex
from collections.abc import Callable, Sequence
from typing import Any, Final

import paramiko

from .._config import Config
from .._exceptions import AutoregError
from .._text import escape_controls
from .._threads import ThreadLimiter
from ..controller import Reach, load_private_key
from ..controller._ssh import VerifiedSession
from ..state import NodeState, StateStore
from ._run import BootstrapReport, TargetResult

__all__ = ["bootstrap_via"]

#: Bytes of the second tier's JSON summary read at most.
SUMMARY_LIMIT: Final = 8 * 1024 * 1024
#: Bytes of one progress line shown at most.
LINE_LIMIT: Final = 4096


async def bootstrap_via(
    config: Config,
    store: StateStore,
    via: str,
    args: Sequence[str],
    *,
    remote_autoreg: str,
    hosts_file: bytes | None,
    timeout: float,
    emit: Callable[[str], None],
) -> BootstrapReport:
    """Run ``remote_autoreg bootstrap --json ARGS`` on node ``via``; its report."""
    rec = await store.find(via)
    if rec.state is not NodeState.REGISTERED:
        raise AutoregError(f"--via {via}: the node is {rec.state.value}, not registered")
    threads = ThreadLimiter("autoreg-via", 1)
    try:
        key = await threads.run(load_private_key, config.controller_key)
        tunnel = await store.tunnel(rec.node_id)
        session = await threads.run(Reach(config).connect, rec, key, tunnel.ports if tunnel else ())
        try:
            return await threads.run(
                _second_tier, session, rec.display_name, args, remote_autoreg, hosts_file,
                timeout, emit,
            )  # fmt: skip
        finally:
            session.close()
    finally:
        await threads.aclose()


def _second_tier(
    session: VerifiedSession,
    name: str,
    args: Sequence[str],
    remote_autoreg: str,
    hosts_file: bytes | None,
    timeout: float,
    emit: Callable[[str], None],
) -> BootstrapReport:
    argv = list(args)
    hosts_path = None
    if hosts_file is not None:
        hosts_path = f"/tmp/autoreg-bootstrap-hosts-{secrets.token_hex(6)}"  # noqa: S108 - on NODE, random, removed after
        session.write_file(hosts_path, hosts_file, mode=0o600)
        argv[:0] = ["--hosts", hosts_path]  # an option: before the "--" ending them
    command = f"{remote_autoreg} bootstrap --json {shlex.join(argv)}"
    if hosts_path is not None:
        command = f"{command}; status=$?; rm -f {hosts_path}; exit $status"
    out = bytearray()
    pending = bytearray()

    def output(stream: str, data: bytes) -> None:
        if stream == "out":
            if len(out) < SUMMARY_LIMIT:
                out.extend(data[: SUMMARY_LIMIT - len(out)])
            return
        pending.extend(data)
        *lines, rest = bytes(pending).split(b"\n")
        pending[:] = rest[-LINE_LIMIT:]
        for line in lines:
            text = escape_controls(line[:LINE_LIMIT].decode("utf-8", "replace"))
            emit(f"{name}: {text}")

    try:
        code = session.run_command(command, timeout=timeout, output=output)
    except paramiko.SSHException as exc:  # pragma: no cover - run_command maps its own
        raise AutoregError(f"--via {name}: {exc}") from exc
    if code not in (0, 1):
        why = (
            "autoreg is not installed there: see --remote-autoreg"
            if code == 127
            else f"what {name} said is above, prefixed with its name"
        )
        raise AutoregError(
            f"--via {name}: `{command}` ended with exit status {code} and no summary ({why})"
        )
    return _report(name, bytes(out))


def _report(name: str, data: bytes) -> BootstrapReport:
    try:
        raw: Any = json.loads(data.decode("utf-8"))
        targets = raw["targets"]
        if not isinstance(targets, list):
            raise TypeError("targets is not a list")
        results = [_result(name, t) for t in targets]
        return BootstrapReport(
            results=results,
            bundle=str(raw["bundle"])[:200],
            elapsed=float(raw["elapsed"]),
            copied_bytes=int(raw["copied_bytes"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise AutoregError(
            f"--via {name}: its summary is not what bootstrap prints ({exc})"
        ) from exc


def _result(via: str, raw: Any) -> TargetResult:
    if not isinstance(raw, dict):
        raise TypeError("a target is not an object")

    def text(key: str) -> str:
        value = raw.get(key)
        return escape_controls(str(value))[:1000] if value is not None else ""

    def optional(key: str) -> str | None:
        return text(key) if raw.get(key) is not None else None

    return TargetResult(
        target=text("target"),
        state=text("state"),
        ok=raw.get("ok") is True,
        node_id=optional("node_id"),
        name=optional("name"),
        fingerprint=optional("fingerprint"),
        copied=raw.get("copied") is True,
        route=f"via {via}: {text('route')}",
        agent=text("agent"),
        detail=text("detail"),
    )
