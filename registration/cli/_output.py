"""Rendering for the CLI: tables, event lines, JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ..state import Event, NodeRecord

__all__ = ["emit_json", "format_event", "format_node_detail", "format_table", "node_rows"]


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _ts(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(widths[i]) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def node_rows(nodes: Iterable[NodeRecord]) -> tuple[list[str], list[list[str]]]:
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
    return f"{_ts(event.ts)}  {event.kind:<14} {event.message}"


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
    width = max(len(k) for k, _ in fields)
    out = [f"{k.rjust(width)}: {v}" for k, v in fields]
    if events:
        out.append("")
        out.append("events:")
        for event in events:
            out.append("  " + format_event(event))
            for stream in ("stdout", "stderr"):
                text = event.data.get(stream)
                if isinstance(text, str) and text.strip():
                    out.append(f"    {stream}:")
                    out.extend(f"      | {line}" for line in text.rstrip().splitlines()[-20:])
    return "\n".join(out)
