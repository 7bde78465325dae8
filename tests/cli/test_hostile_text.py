"""Text from outside is rendered escaped (registration/_text.py and cli/_output.py).

Names, reasons, event messages and hook output are stored as received; every
way the CLI shows them (tables, ``show``, ``events``, ``--json``) must escape
whatever could steer the admin's terminal: ESC sequences (CSI, OSC title and
clipboard), C1 controls, bidi overrides, and the like.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registration._text import escape_controls
from registration.cli._output import (
    _ts,
    emit_json,
    format_event,
    format_node_detail,
    format_table,
    json_line,
    node_rows,
)
from registration.controller._hooks import sanitize_output
from registration.protocol import Announcement
from registration.state import Event, NodeRecord, NodeState, Source
from support.records import write_raw
from support.sync_store import SyncStore
from support.terminal import run_on_a_terminal, run_piped

REPO = Path(__file__).resolve().parents[2]
FP = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"

CSI_CLEAR = "\x1b[2J"
OSC_TITLE = "\x1b]0;title\x07"
OSC_CLIPBOARD = "\x1b]52;c;BASE64\x07"
C1_CSI = "\x9b"
C1_OSC = "\x9d"
RLO = "\u202e"
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
HOSTILE = (
    f"ok{CSI_CLEAR}{OSC_TITLE}{OSC_CLIPBOARD}{C1_CSI}31m{C1_OSC}0;t\x9c"
    f"{RLO}gnp.exe{BIDI}\r\x7f\x00\u2028\u2029\ufeff\x1b"
)
HOSTILE_BLOCK = f"line one {CSI_CLEAR}\n\tline two {RLO}evil\r\nline three {OSC_CLIPBOARD}\n"
ESCAPED_CATEGORIES = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}


def raw_controls(text: str, *, allowed: str = "") -> list[str]:
    """The characters in ``text`` a terminal could act on (beyond ``allowed``)."""
    return [
        ch for ch in text if ch not in allowed and unicodedata.category(ch) in ESCAPED_CATEGORIES
    ]


# -- escape_controls -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("\x1b", "\\x1b"),
        (CSI_CLEAR, "\\x1b[2J"),
        (OSC_TITLE, "\\x1b]0;title\\x07"),
        (OSC_CLIPBOARD, "\\x1b]52;c;BASE64\\x07"),
        (C1_CSI + "2J", "\\x9b2J"),
        (C1_OSC + "0;t\x9c", "\\x9d0;t\\x9c"),
        ("abc" + RLO + "fdp.exe", "abc\\u202efdp.exe"),
        ("\x7f", "\\x7f"),
        ("\x00\x08", "\\x00\\x08"),
        ("a\rb", "a\\x0db"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\ufeffbom\u200bzw", "\\ufeffbom\\u200bzw"),
        ("\ud800lone", "\\ud800lone"),
        ("tag\U000e0001", "tag\\U000e0001"),
        ("a\nb\tc", "a\\x0ab\\x09c"),
    ],
)
def test_escape_controls(text: str, escaped: str) -> None:
    assert escape_controls(text) == escaped


@pytest.mark.parametrize("ch", list(BIDI))
def test_every_bidi_control_is_escaped(ch: str) -> None:
    assert escape_controls(f"x{ch}y") == f"x\\u{ord(ch):04x}y"
    assert escape_controls(f"x{ch}y", multiline=True) == f"x\\u{ord(ch):04x}y"


@pytest.mark.parametrize("code", [*range(0x20), 0x7F, *range(0x80, 0xA0)])
def test_every_c0_c1_control_and_del_is_escaped(code: int) -> None:
    assert escape_controls(chr(code)) == f"\\x{code:02x}"
    kept = chr(code) in "\n\t"
    assert (escape_controls(chr(code), multiline=True) == chr(code)) is kept


def test_multiline_keeps_only_newline_and_tab() -> None:
    assert escape_controls(HOSTILE_BLOCK, multiline=True) == (
        "line one \\x1b[2J\n\tline two \\u202eevil\\x0d\nline three \\x1b]52;c;BASE64\\x07\n"
    )
    assert "\n" not in escape_controls(HOSTILE_BLOCK)
    assert "\t" not in escape_controls(HOSTILE_BLOCK)


@pytest.mark.parametrize(
    "text", ["plain", "café ✓ 日本語 עברית العربية", "a b\u00a0c", "C:\\temp\\x1b", ""]
)
def test_printable_text_and_backslashes_are_left_alone(text: str) -> None:
    assert escape_controls(text) == text
    assert escape_controls(text, multiline=True) == text


def test_sanitize_output_is_the_same_rule() -> None:
    data = HOSTILE_BLOCK.encode() + b"\xff"
    assert sanitize_output(data) == escape_controls(HOSTILE_BLOCK, multiline=True) + "\ufffd"


_any_text = st.text(st.characters(exclude_categories=()), max_size=60)


@settings(max_examples=300, deadline=None, database=None)
@given(_any_text, st.booleans())
def test_escaped_text_is_terminal_safe_and_stable(text: str, multiline: bool) -> None:
    once = escape_controls(text, multiline=multiline)
    assert not raw_controls(once, allowed="\n\t" if multiline else "")
    assert escape_controls(once, multiline=multiline) == once  # idempotent
    if not raw_controls(text):
        assert once == text


# -- the CLI's renderers -----------------------------------------------------------------


def hostile_record(**changes: Any) -> NodeRecord:
    ann = Announcement(node_id="n1abc", role="nc", ip="198.18.0.5", port=22, fingerprint=FP)
    rec = NodeRecord.new(ann, source=Source.MDNS, reason="seen", now=1_700_000_000.0)
    fields: dict[str, Any] = {
        "name": f"node{HOSTILE}",
        "cluster": f"foo{OSC_TITLE}",
        "reason": f"SSH banner SSH-2.0-{CSI_CLEAR}{RLO}x\nforged line",
        "path": f"direct{C1_CSI}",
        "state": NodeState.UNREACHABLE,
        **changes,
    }
    return dataclasses.replace(rec, **fields)


def hostile_events() -> list[Event]:
    return [
        Event(
            seq=1,
            ts=1_700_000_000.0,
            node_id="n1abc",
            kind=f"rejected{RLO}",
            state=None,
            message=f"instance nc-{HOSTILE} rejected: name: {OSC_CLIPBOARD}\nsecond line",
            data={"instance": HOSTILE, f"key{CSI_CLEAR}": [HOSTILE, {"deep": OSC_TITLE}]},
        ),
        Event(
            seq=2,
            ts=1_700_000_001.0,
            node_id="n1abc",
            kind="failed",
            state="failed",
            message=f"hook failed {C1_OSC}",
            data={"stdout": HOSTILE_BLOCK, "stderr": f"{HOSTILE}\nmore\r\n"},
        ),
    ]


def test_format_table_escapes_every_cell() -> None:
    headers, rows = node_rows([hostile_record(), hostile_record(node_id="n2abc")])
    text = format_table(headers, rows)
    assert not raw_controls(text, allowed="\n")
    assert len(text.split("\n")) == 3  # a header and one line per node: nothing injected
    assert "\\x1b[2J" in text and "\\u202e" in text and "\\x9b" in text
    hostile_header = format_table([f"H{RLO}", "X\n"], [[f"a\tb{C1_OSC}", f"c{OSC_TITLE}"]])
    assert not raw_controls(hostile_header, allowed="\n")
    assert len(hostile_header.split("\n")) == 2


def test_format_event_is_one_escaped_line() -> None:
    for event in hostile_events():
        line = format_event(event)
        assert not raw_controls(line)
        assert "\n" not in line
    assert "rejected\\u202e" in format_event(hostile_events()[0])


def test_format_node_detail_escapes_fields_events_and_hook_output() -> None:
    text = format_node_detail(hostile_record(), hostile_events())
    assert not raw_controls(text, allowed="\n\t")
    lines = text.split("\n")
    (reason,) = [line for line in lines if line.lstrip().startswith("reason: ")]
    assert reason.endswith("\\x1b[2J\\u202ex\\x0aforged line")
    # hook output keeps its lines (and tabs), each one escaped
    assert "      | line one \\x1b[2J" in lines
    assert "      | \tline two \\u202eevil\\x0d" in lines
    assert "      | more\\x0d" in lines
    assert not any(line.startswith("forged line") for line in lines)


def test_emit_json_escapes_keys_and_values_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    value = {
        "node": hostile_record().to_json(),
        "events": [e.to_json() for e in hostile_events()],
        f"k{OSC_TITLE}": (HOSTILE, Path(f"/tmp/{RLO}x")),
    }
    emit_json(value)
    out = capsys.readouterr().out
    assert not raw_controls(out, allowed="\n")
    assert out.isascii()
    decoded = json.loads(out)

    def walk(item: Any) -> None:  # decoded (as `jq -r` would print it), still nothing raw
        if isinstance(item, str):
            assert not raw_controls(item, allowed="\n\t"), item
        elif isinstance(item, dict):
            for key, inner in item.items():
                assert not raw_controls(key), key
                walk(inner)
        elif isinstance(item, list):
            for inner in item:
                walk(inner)

    walk(decoded)
    assert decoded["node"]["name"] == "node" + escape_controls(HOSTILE)
    assert "k\\x1b]0;title\\x07" in decoded
    assert decoded["k\\x1b]0;title\\x07"][1] == "/tmp/\\u202ex"  # via default=str, escaped
    assert decoded["events"][1]["data"]["stdout"] == escape_controls(HOSTILE_BLOCK, multiline=True)
    line = json_line(hostile_events()[0].to_json())
    assert "\n" not in line
    assert not raw_controls(line)
    walk(json.loads(line))


def test_escaped_json_of_clean_data_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    value = {"a": [1, 2.5, None, True, "x\ny"], "b": {"c": "café"}}
    emit_json(value)
    assert json.loads(capsys.readouterr().out) == value


# -- the real commands, on a terminal and through a pipe ----------------------------------


@pytest.fixture
def hostile_store(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "autoreg.conf"
    config.write_text(f"[autoreg]\nkeys_dir = {tmp_path / 'keys'}\n")
    state = tmp_path / "state"
    with SyncStore(state / "autoreg.db") as store:
        rec = hostile_record()
        store.add_event(rec.node_id, "unreachable", rec.reason, {"error": HOSTILE})
        for event in hostile_events():
            store.add_event(event.node_id, event.kind, event.message, event.data)
    write_raw(state / "autoreg.db", rec)  # hostile text in columns stored as received
    return config, state


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOREG_")}
    env.update(PYTHONPATH=str(REPO), PYTHONIOENCODING="utf-8", COLUMNS="200")
    return env


def _run_piped(argv: list[str]) -> bytes:
    return run_piped(argv, _env())


def _run_on_a_terminal(argv: list[str]) -> bytes:
    return run_on_a_terminal(argv, _env())


_C1_UTF8 = [bytes([0xC2, code]) for code in range(0x80, 0xA0)]
_BIDI_UTF8 = [ch.encode() for ch in BIDI]


@pytest.mark.parametrize("on_a_terminal", [True, False], ids=["pty", "pipe"])
@pytest.mark.parametrize(
    "command",
    [["list"], ["show", "n1abc"], ["events"], ["list", "--json"], ["show", "n1abc", "--json"],
     ["events", "--json"]],
    ids=" ".join,
)  # fmt: skip
def test_commands_never_write_raw_control_bytes(
    hostile_store: tuple[Path, Path], command: list[str], on_a_terminal: bool
) -> None:
    config, state = hostile_store
    argv = [sys.executable, "-m", "registration", "-c", str(config), "--state-dir", str(state)]
    output = (_run_on_a_terminal if on_a_terminal else _run_piped)([*argv, *command])
    assert b"SSH banner SSH-2.0-" in output  # the command did show the hostile text
    assert b"\x1b" not in output
    assert b"\r" not in output
    assert not [c for c in _C1_UTF8 if c in output]
    assert not [b for b in _BIDI_UTF8 if b in output]
    text = output.decode("utf-8")
    assert not raw_controls(text, allowed="\n\t")
    if command[0] == "events" and "--json" not in command:
        # one line per event: an embedded newline did not start a forged one
        assert all(line[:2] == "20" for line in text.splitlines())


def test_error_messages_are_escaped(tmp_path: Path) -> None:
    """An error may quote outside text (here a path); `autoreg: error:` escapes it."""
    from click.testing import CliRunner

    from registration.cli import cli

    missing = tmp_path / f"conf{CSI_CLEAR}{RLO}"
    result = CliRunner().invoke(cli, ["-c", str(missing), "status"])
    assert result.exit_code == 78
    assert "autoreg: error: " in result.stderr
    assert "conf\\x1b[2J\\u202e" in result.stderr
    assert not raw_controls(result.stderr, allowed="\n")


def test_a_repeated_event_says_how_often_and_since_when() -> None:
    event = Event(seq=9, ts=2_000_000_100.0, node_id="nc000001", kind="receipt", state=None,
                  message="receipt not delivered: timed out", data={}, repeats=4,
                  first_ts=2_000_000_000.0)  # fmt: skip
    line = format_event(event)
    assert line.endswith(f"(4 times since {_ts(2_000_000_000.0)})")
    assert "times" not in format_event(dataclasses.replace(event, repeats=1, first_ts=None))
