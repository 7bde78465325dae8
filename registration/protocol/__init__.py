"""Announcement protocol v1 (see docs/protocol.md)."""

from __future__ import annotations

from ._address import address_problem
from ._txt import (
    CONTROLLER_SERVICE_TYPE,
    KEY_TYPES,
    NODE_SERVICE_TYPE,
    PROTOCOL_VERSION,
    Announcement,
    RegistrarAnnouncement,
    RegistrarState,
    check_cluster,
    check_fingerprint,
    check_ip,
    check_key_type,
    check_name,
    check_node_id,
    check_port,
    check_role,
    decode_node,
    decode_registrar,
    encode_node,
    encode_registrar,
    instance_name,
)

__all__ = [
    "CONTROLLER_SERVICE_TYPE",
    "KEY_TYPES",
    "NODE_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "Announcement",
    "RegistrarAnnouncement",
    "RegistrarState",
    "address_problem",
    "check_cluster",
    "check_fingerprint",
    "check_ip",
    "check_key_type",
    "check_name",
    "check_node_id",
    "check_port",
    "check_role",
    "decode_node",
    "decode_registrar",
    "encode_node",
    "encode_registrar",
    "instance_name",
]

