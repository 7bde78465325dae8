"""``python -m registration`` runs the autoreg CLI."""

from __future__ import annotations

from .cli import main

main()
