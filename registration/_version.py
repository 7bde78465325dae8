"""The package version (single source for setup.cfg and the CLI)."""

from __future__ import annotations

__version__ = "0.2.0"
