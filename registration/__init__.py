"""autoreg: zero-touch registration of cluster and private-cloud nodes.

Nodes announce themselves over mDNS/DNS-SD; a registration daemon on each
registrar decides who registers whom, verifies each node over SSH against its
announced host-key fingerprint, runs the admin's per-role hook exactly once and
records everything in its state store (sqlite, embedded).

The names below are imported when first used (PEP 562): a node that only
announces never loads the registrar's libraries (paramiko, the stores), which is
what lets ``autoreg bootstrap`` ship the node side alone (``registration._bundle``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from ._config import Config, ControllerConfig, NodeConfig, load_config
    from ._exceptions import (
        AnnouncementError,
        AutoregError,
        ConfigError,
        FingerprintMismatch,
        HookError,
        KeyMaterialError,
        NodeNotFound,
        NodeUnreachable,
        SSHError,
        StateError,
        TransportError,
    )
    from ._profile import Profile, RoleSpec, load_profile
    from .controller import Daemon
    from .node import Announcer
    from .protocol import Announcement, decode_node, encode_node
    from .state import NodeRecord, NodeState, Source, StateStore, open_store

#: Public name -> the module that defines it.
_WHERE = {
    **dict.fromkeys(("Config", "ControllerConfig", "NodeConfig", "load_config"), "._config"),
    **dict.fromkeys(
        (
            "AnnouncementError",
            "AutoregError",
            "ConfigError",
            "FingerprintMismatch",
            "HookError",
            "KeyMaterialError",
            "NodeNotFound",
            "NodeUnreachable",
            "SSHError",
            "StateError",
            "TransportError",
        ),
        "._exceptions",
    ),
    **dict.fromkeys(("Profile", "RoleSpec", "load_profile"), "._profile"),
    "Daemon": ".controller",
    "Announcer": ".node",
    **dict.fromkeys(("Announcement", "decode_node", "encode_node"), ".protocol"),
    **dict.fromkeys(("NodeRecord", "NodeState", "Source", "StateStore", "open_store"), ".state"),
}

__all__ = [
    "Announcement",
    "AnnouncementError",
    "Announcer",
    "AutoregError",
    "Config",
    "ConfigError",
    "ControllerConfig",
    "Daemon",
    "FingerprintMismatch",
    "HookError",
    "KeyMaterialError",
    "NodeConfig",
    "NodeNotFound",
    "NodeRecord",
    "NodeState",
    "NodeUnreachable",
    "Profile",
    "RoleSpec",
    "SSHError",
    "Source",
    "StateError",
    "StateStore",
    "TransportError",
    "__version__",
    "decode_node",
    "encode_node",
    "load_config",
    "load_profile",
    "open_store",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
