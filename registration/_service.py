"""Running a long-lived service (daemon, announcer, callback) in the foreground.

Shared by the CLI and by the node agent that ``autoreg bootstrap`` ships
(``registration._agent``), which must not load the CLI's libraries.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["Service", "run_service", "setup_logging"]


class Service(Protocol):
    def run(self) -> Awaitable[int | None]: ...

    def stop(self) -> None: ...


def setup_logging(level: str, verbose: int) -> None:
    chosen = logging.DEBUG if verbose else getattr(logging, level.upper())
    logging.basicConfig(
        level=chosen, stream=sys.stderr, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if not verbose:
        logging.getLogger("zeroconf").setLevel(logging.WARNING)
        logging.getLogger("paramiko").setLevel(logging.WARNING)


def run_service(make: Callable[[], Service], level: str, verbose: int) -> None:
    """Run a long-running service until SIGTERM/SIGINT; exit with the status it returns."""
    setup_logging(level, verbose)
    service = make()

    async def main() -> int | None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        return await service.run()

    code = asyncio.run(main())
    if code:
        sys.exit(code)
