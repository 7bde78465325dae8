"""The node agent: what ``autoreg bootstrap`` copies to a machine with nothing installed.

``python3 autoreg-VERSION-HASH.pyz announce`` runs the same announcer as
``autoreg announce``; the zipapp (``registration._bundle``) holds the node side of
autoreg and the pure-Python libraries it needs, and nothing of the registrar's.
The standard library's ``argparse`` parses, so the agent needs no CLI library.

``check`` prints, as JSON, the version and where every library came from: the
bootstrap test runs it with ``python3 -I -S`` (no site-packages at all) to prove
the bundle is self-contained.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._version import __version__

__all__ = ["main"]

#: What the node side imports, and must therefore find in the bundle.
NODE_MODULES = (
    "registration.node",
    "registration.transport._zeroconf",
    "zeroconf.asyncio",
    "aiohttp.client",
    "aiohttp.connector",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoreg-agent", description="autoreg's node side, as installed by autoreg bootstrap."
    )
    parser.add_argument("-c", "--config", type=Path, help="configuration file")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("announce", help="announce this node until stopped (SIGTERM)")
    commands.add_parser("version", help="print the version")
    commands.add_parser("check", help="import the node side; print where it came from (JSON)")
    return parser


def import_node_side() -> dict[str, str]:
    """Import what the node side runs on; module -> the file it came from."""
    found: dict[str, str] = {}
    for name in NODE_MODULES:
        module = importlib.import_module(name)
        found[name] = str(getattr(module, "__file__", "?"))
    return found


def _check() -> dict[str, object]:
    modules = import_node_side()
    return {"version": __version__, "python": sys.version.split()[0], "modules": modules}


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return
    if args.command == "check":
        print(json.dumps(_check(), sort_keys=True))
        return
    from ._config import load_config
    from ._exceptions import AutoregError
    from ._service import run_service
    from .node import Announcer

    try:
        config = load_config(args.config)
    except AutoregError as exc:
        print(f"autoreg-agent: {exc}", file=sys.stderr)
        sys.exit(2)
    run_service(lambda: Announcer(config), config.log_level, args.verbose)
