"""Who this host is: node id, name, preferred address, host-key fingerprint, standing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
from pathlib import Path
from typing import Final

from .._config import Config, NodeConfig
from .._exceptions import ConfigError
from .._netif import default_interface, interface_address
from .._sshkeys import read_public_key
from ..protocol import Announcement

__all__ = ["NodeIdentity", "derive_node_id", "self_registration_state"]

MACHINE_ID_PATHS: Final = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def derive_node_id(paths: tuple[Path, ...] | None = None) -> str:
    """A stable id from the machine id (hashed: the machine id itself stays private)."""
    for path in MACHINE_ID_PATHS if paths is None else paths:
        try:
            machine_id = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if machine_id:
            return hashlib.sha256(b"autoreg:" + machine_id.encode()).hexdigest()[:16]
    raise ConfigError("no machine id (/etc/machine-id) to derive the node id from: set [node] id")


def preferred_address(node: NodeConfig, interfaces: tuple[str, ...] = ()) -> str:
    """The address to announce: explicit, else the chosen interface's, else the default."""
    if node.address:
        return node.address
    name = node.interface or (interfaces[0] if interfaces else None)
    if name:
        address = interface_address(name)
        if address is None:
            raise ConfigError(f"interface {name!r} has no IPv4 address", source="[node] interface")
        return address
    return default_interface()[1]


@dataclasses.dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    name: str
    address: str
    ssh_port: int
    fingerprint: str | None
    key_type: str | None

    @classmethod
    def from_config(cls, config: Config, *, need_host_key: bool = True) -> NodeIdentity:
        node = config.node
        fingerprint = key_type = None
        if need_host_key or node.host_key.exists():
            key = read_public_key(node.host_key)
            fingerprint, key_type = key.fingerprint, key.key_type
        name = node.name or socket.gethostname().split(".")[0]
        return cls(
            node_id=node.node_id or derive_node_id(),
            name=name,
            address=preferred_address(node, config.interfaces),
            ssh_port=node.ssh_port,
            fingerprint=fingerprint,
            key_type=key_type,
        )

    def announcement(self, config: NodeConfig, *, registered: bool) -> Announcement:
        if not config.role:
            raise ConfigError("set [node] role (or --role) to announce")
        if self.fingerprint is None or self.key_type is None:
            raise ConfigError(f"no host key at {config.host_key}")
        return Announcement(
            node_id=self.node_id,
            role=config.role,
            ip=self.address,
            port=self.ssh_port,
            fingerprint=self.fingerprint,
            key_type=self.key_type,
            cluster=config.cluster,
            name=self.name,
            state="registered" if registered else "ready",
        )


def self_registration_state(node: NodeConfig) -> str | None:
    """Why this host counts as registered (receipt or ``registered_when``), else None."""
    if node.registered_when is not None and node.registered_when.exists():
        return f"{node.registered_when} exists"
    try:
        receipt = json.loads(node.receipt_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(receipt, dict):
        return None
    try:
        mine = node.node_id or derive_node_id()
    except ConfigError:
        return None  # no id to compare with: no receipt can be ours
    if receipt.get("node_id") != mine:
        return None  # another node's receipt (a copied disk image, a relabelling) never counts
    return f"receipt from {receipt.get('registrar_role', '?')} at {node.receipt_path}"
