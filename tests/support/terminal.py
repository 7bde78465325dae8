"""Running a command as an admin would see it: on a terminal (a pty), or piped.

What a terminal would interpret (ESC, CSI, OSC, C1 controls, bidi overrides) must
never be written raw, whichever way the output goes: these helpers return the
exact bytes, and :func:`raw_control_bytes` lists what should not be there.
"""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import tty
from collections.abc import Mapping, Sequence

__all__ = ["BIDI", "raw_control_bytes", "run_on_a_terminal", "run_piped"]

BIDI = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)]
_C1_UTF8 = [bytes([0xC2, code]) for code in range(0x80, 0xA0)]


def run_piped(argv: Sequence[str], env: Mapping[str, str] | None = None) -> bytes:
    result = subprocess.run(
        list(argv), capture_output=True, env=dict(env) if env else None, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def run_on_a_terminal(
    argv: Sequence[str], env: Mapping[str, str] | None = None, *, returncode: int = 0
) -> bytes:
    """stdout and stderr on a pty (raw, so that the bytes arrive as written).

    The command must exit with ``returncode``.
    """
    master, slave = pty.openpty()
    tty.setraw(slave)
    try:
        proc = subprocess.Popen(
            list(argv), stdout=slave, stderr=slave, env=dict(env) if env else None
        )
    finally:
        os.close(slave)
    out = io.BytesIO()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out.write(chunk)
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == returncode, out.getvalue()
    return out.getvalue()


def raw_control_bytes(output: bytes) -> list[bytes]:
    """The terminal-interpreted bytes in ``output`` (ESC, CR, C1 controls, bidi marks)."""
    found = [b for b in (b"\x1b", b"\r", b"\x07", b"\x9b", b"\x9d") if b in output]
    found += [c for c in _C1_UTF8 if c in output]
    found += [b.encode() for b in BIDI if b.encode() in output]
    return found
