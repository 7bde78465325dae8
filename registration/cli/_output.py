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
from typing import Any

from .._text import escape_controls
from ..state import Event, NodeRecord

__all__ = [
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


def format_event(event: Event) -> str:
    kind = escape_controls(event.kind)
    return f"{_ts(event.ts)}  {kind:<14} {escape_controls(event.message)}"


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


def format_node_detail(rec: NodeRecord, events: Sequence[Event]) -> str:
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
                text = event.data.get(stream)
                if isinstance(text, str) and text.strip():
                    # escaped first, so that only a real newline splits lines
                    lines = escape_controls(text, multiline=True).rstrip().split("\n")
                    out.append(f"    {stream}:")
                    out.extend(f"      | {line}" for line in lines[-20:])
    return "\n".join(out)
