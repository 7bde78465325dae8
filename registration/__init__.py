"""autoreg: zero-touch registration of cluster and private-cloud nodes.

Nodes announce themselves over mDNS/DNS-SD; a registration daemon on each
registrar decides who registers whom, verifies each node over SSH against its
announced host-key fingerprint, runs the admin's per-role hook exactly once and
records everything in its state store (sqlite, embedded).
"""

from __future__ import annotations

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
from ._version import __version__
from .controller import Daemon
from .node import Announcer
from .protocol import Announcement, decode_node, encode_node
from .state import NodeRecord, NodeState, Source, StateStore, open_store

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
