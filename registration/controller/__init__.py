"""The registrar side: rules, SSH verification, hooks, the daemon."""

from __future__ import annotations

from ._daemon import Daemon
from ._hooks import HookResult, find_hook, run_hook
from ._rules import Decision, Registrar, decide, owns

__all__ = [
    "Daemon",
    "Decision",
    "HookResult",
    "Registrar",
    "decide",
    "find_hook",
    "owns",
    "run_hook",
]
