"""``autoreg bootstrap``: machines with only sshd and python3 join the cluster.

See docs/admin.md, "Machines with nothing installed".
"""

from __future__ import annotations

from ._remote_host import REMOTE_CACHE
from ._run import (
    DEFAULT_CONVERGED_TIMEOUT,
    DEFAULT_TOKEN_TTL,
    BootstrapOptions,
    BootstrapReport,
    TargetResult,
    bootstrap,
)
from ._targets import Target, parse_target, read_hosts_file
from ._via import bootstrap_via

__all__ = [
    "DEFAULT_CONVERGED_TIMEOUT",
    "DEFAULT_TOKEN_TTL",
    "REMOTE_CACHE",
    "BootstrapOptions",
    "BootstrapReport",
    "Target",
    "TargetResult",
    "bootstrap",
    "bootstrap_via",
    "parse_target",
    "read_hosts_file",
]
