"""Rendering for the CLI: tables, event lines, JSON.

Every string shown here may have come from outside (a node's announcement, an
SSH banner in a reason, a hook's output), so every one of them goes through
:func:`~registration._text.escape_controls` on its way out, JSON included.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from .._text import escape_controls
from ..controller._hooks import OUTPUT_LIMIT
from ..state import Event, NodeRecord

__all__ = [
    "SHOWN_OUTPUT_LINES",
    "emit_json",
    "format_event",
    "format_node_detail",
    "format_table",
    "json_line",
    "node_rows",
    "terminal_safe",
]


def terminal_safe(value: Any) -> Any:
    """``value`` for JSON with every string in it, keys too, control-escaped.

    ``json.dumps`` already writes ESC as ``\\u001b``, but a consumer that prints a
    decoded value (``jq -r``) would emit it raw: the escaping must be in the text.
    Values keep newlines and tabs (hook output stays readable once decoded, and
    JSON encodes them anyway); keys are escaped as one line.
    """
    if isinstance(value, str):
        return escape_controls(value, multiline=True)
    if isinstance(value, Mapping):
        return {
            escape_controls(k) if isinstance(k, str) else k: terminal_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [terminal_safe(v) for v in value]
    return value


def _json_default(value: object) -> str:
    return escape_controls(str(value), multiline=True)


def emit_json(value: Any) -> None:
    json.dump(terminal_safe(value), sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def json_line(value: Any) -> str:
    """``value`` as one line of JSON (``events --json``), escaped like :func:`emit_json`."""
    return json.dumps(terminal_safe(value), default=_json_default)


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = [escape_controls(str(h)) for h in headers]
    body = [[escape_controls(str(c)) for c in r] for r in rows]
    widths = [len(h) for h in head]
    for row in body:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [head, *body]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def node_rows(nodes: Iterable[NodeRecord]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of ``autoreg list`` (as stored: :func:`format_table` escapes them)."""
    headers = ["ID", "NAME", "ROLE", "CLUSTER", "ADDRESS", "STATE", "PATH", "REASON"]
    rows = [
        [
            rec.node_id,
            rec.display_name,
            rec.role,
            rec.cluster or "-",
            f"{rec.ip}:{rec.port}" + ("" if rec.present or rec.source == "manual" else " (gone)"),
            rec.state.value,
            rec.path or "-",
            rec.reason,
        ]
        for rec in nodes
    ]
    return headers, rows


#: Lines of each output stream ``autoreg show`` prints per hook run (``--full``: all kept).
SHOWN_OUTPUT_LINES: Final = 20


def _hook_run(event: Event) -> tuple[str, int] | None:
    """How a hook run recorded in ``event`` ended, and how many lines it printed."""
    status = event.data.get("status")
    if not isinstance(status, str) or "hook" not in event.data:
        return None
    printed = 0
    for stream in ("stdout", "stderr"):
        text = event.data.get(stream)
        total = event.data.get(f"{stream}_lines")
        if isinstance(total, int) and not isinstance(total, bool):
            printed += total
        elif isinstance(text, str):  # recorded before the counts were
            printed += len(text.splitlines())
    return status, printed


def format_event(event: Event, *, node: bool = False) -> str:
    """One event as one line; ``node`` adds the node's id (listings of many nodes)."""
    kind = escape_controls(event.kind)
    who = f"{escape_controls(event.node_id or '-'):<16} " if node else ""
    line = f"{_ts(event.ts)}  {kind:<14} {who}{escape_controls(event.message)}"
    run = _hook_run(event)
    if run is not None:
        status, printed = run
        output = ""
        if printed and event.node_id:
            ref = escape_controls(event.node_id)
            output = f"; {printed} line(s) of output: `autoreg show {ref}`"
        line += f" [hook: {escape_controls(status)}{output}]"
    if event.repeats > 1:
        since = f" since {_ts(event.first_ts)}" if event.first_ts is not None else ""
        line += f" ({event.repeats} times{since})"
    return line


def _output_lines(event: Event, stream: str, node_id: str, *, full: bool) -> list[str]:
    """The lines ``show`` prints for one stream of a hook run, saying what was left out."""
    text = event.data.get(stream)
    if not isinstance(text, str) or not text.strip():
        return []
    # escaped first, so that only a real newline splits lines
    kept = escape_controls(text, multiline=True).rstrip().split("\n")
    total = event.data.get(f"{stream}_lines")
    if not isinstance(total, int) or isinstance(total, bool) or total < len(kept):
        total = len(kept)
    shown = kept if full else kept[-SHOWN_OUTPUT_LINES:]
    note = ""
    if len(shown) < len(kept):
        note = (
            f" (output cut: last {len(shown)} of {total} lines shown; "
            f"`autoreg show {escape_controls(node_id)} --full`)"
        )
    elif len(kept) < total:
        note = (
            f" (output cut: last {len(kept)} of {total} lines shown: the daemon keeps "
            f"the last {OUTPUT_LIMIT // 1024} KiB of each stream)"
        )
    return [f"    {stream}:{note}", *(f"      | {line}" for line in shown)]


def _contender(raw: str) -> str:
    """The other announcement of a node in conflict, in one line."""
    try:
        other = json.loads(raw)
        return (
            f"{other['fingerprint']} at {other['ip']}:{other['port']} "
            f"({other['source']} {other['instance']})"
        )
    except (ValueError, KeyError, TypeError):
        return raw


def format_node_detail(rec: NodeRecord, events: Sequence[Event], *, full: bool = False) -> str:
    """``autoreg show``: the node, its events, and its hooks' output (``full``: all kept)."""
    fields = [
        ("id", rec.node_id),
        ("name", rec.display_name),
        ("role", rec.role),
        ("cluster", rec.cluster or "-"),
        ("address", f"{rec.ip}:{rec.port}"),
        ("fingerprint", f"{rec.fingerprint} ({rec.key_type})"),
        ("state", rec.state.value),
        ("reason", rec.reason),
        ("announced", f"{rec.announced_state}" + ("" if rec.present else " (not announced now)")),
        ("source", rec.source),
        ("path", rec.path or "-"),
        ("attempts", str(rec.attempts)),
        ("next attempt", _ts(rec.next_attempt)),
        ("first seen", _ts(rec.first_seen)),
        ("last seen", _ts(rec.last_seen)),
        ("registered at", _ts(rec.registered_at)),
    ]
    if rec.moved is not None:
        ip, port, name = rec.moved
        fields.insert(5, ("announces now", f"{ip}:{port}" + (f" as {name}" if name else "")
                          + " (not verified yet: the address above is used)"))  # fmt: skip
    if rec.contender:
        fields.insert(6, ("contender", _contender(rec.contender)))
    width = max(len(k) for k, _ in fields)
    out = [f"{k.rjust(width)}: {escape_controls(v)}" for k, v in fields]
    if events:
        out.append("")
        out.append("events:")
        for event in events:
            out.append("  " + format_event(event))
            for stream in ("stdout", "stderr"):
                out.extend(_output_lines(event, stream, rec.node_id, full=full))
    return "\n".join(out)
