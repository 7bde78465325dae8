"""Prerequisites of tests: skipped on a developer's machine, a failure under ``CI=true``.

A missing tool must never make CI green by skipping what it should test, so every
prerequisite goes through :func:`unavailable` (inside a test or fixture) or the
``prerequisite(ok, reason=...)`` marker (checked in ``conftest.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

__all__ = ["have_tools", "prerequisite", "unavailable"]


def unavailable(reason: str) -> None:
    """Skip outside CI; with CI set the tests must run, so fail."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)


def have_tools(*tools: str) -> bool:
    """Every tool is a program on PATH, or (an absolute path) an existing file."""
    return all(Path(t).exists() if t.startswith("/") else shutil.which(t) for t in tools)


def prerequisite(*tools: str, reason: str) -> pytest.MarkDecorator:
    """A marker: the test needs ``tools`` (see :func:`unavailable` for what happens)."""
    return pytest.mark.prerequisite(have_tools(*tools), reason=reason)
