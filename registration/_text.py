"""Rendering text that came from outside: one rule, control characters escaped.

Text a peer or a program chose (an SSH banner inside an error, a TXT value or
an mDNS instance name in an event, a hook's output, the reason built from any
of these) is stored as it was received.  Whoever shows it to a person — a
table, ``autoreg show``, the event log, ``--json`` — passes it through
:func:`escape_controls` first, so that nothing received can move the cursor,
clear the screen, set the window title or the clipboard (OSC 52), or reorder
what the admin reads (bidi overrides).  See docs/security.md, "Text from the
network is rendered escaped".
"""

from __future__ import annotations

import unicodedata
from typing import Final

__all__ = ["escape_controls"]

#: Unicode general categories escaped: controls (C0, DEL, C1), format characters
#: (bidi embeddings, overrides, isolates and marks, zero-width characters, the
#: BOM, ...), surrogates (only lone ones can occur in a str), unassigned code
#: points (they may be any of these in a later Unicode), line and paragraph
#: separators.
_ESCAPED_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"})
_KEPT_WHEN_MULTILINE: Final = frozenset("\n\t")


def escape_controls(text: str, *, multiline: bool = False) -> str:
    r"""``text`` with every character that could steer a terminal written as an escape.

    Escaped: the C0 controls (ESC included), DEL, the C1 controls
    (U+0080..U+009F), format characters (Unicode category Cf: the bidi
    embeddings, overrides and isolates U+202A..U+202E and U+2066..U+2069, the
    marks U+200E, U+200F and U+061C, zero-width characters, ...), the line and
    paragraph separators U+2028 and U+2029, lone surrogates, and unassigned
    code points.  With ``multiline`` a newline and a tab are kept (hook output
    shown as a block); without it (a table cell, a one-line event, a field)
    they are escaped too.  Carriage return is always escaped: it would let a
    line overwrite what came before it.

    The escape is Python's: ``\xHH`` below U+0100, ``\uHHHH`` in the BMP,
    ``\UHHHHHHHH`` above (ESC is ``\x1b``, RIGHT-TO-LEFT OVERRIDE ``\u202e``).
    Everything else, any printable character of any script, is left alone.

    A backslash is *not* escaped, on purpose: the function is idempotent
    (``escape_controls(escape_controls(t)) == escape_controls(t)``).  Hook
    output is escaped when it is captured (it also goes to the logs) and again
    when it is shown, and records written by earlier versions already hold
    escaped text; escaping the backslash would show every such escape, and
    every backslash a hook prints, doubled.  The price: text that literally
    contains the four characters ``\x1b`` is shown the same as an escaped ESC.
    Either way nothing raw reaches the terminal, which is what this function
    guarantees; the text is for reading, not for reversing.
    """
    if text.isprintable():  # no character of the escaped categories: the common case
        return text
    kept = _KEPT_WHEN_MULTILINE if multiline else frozenset()
    return "".join(
        _escape(ch) if ch not in kept and unicodedata.category(ch) in _ESCAPED_CATEGORIES else ch
        for ch in text
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
