"""Announcement protocol v1 (see docs/protocol.md)."""

from __future__ import annotations

from ._txt import (
    CONTROLLER_SERVICE_TYPE,
    NODE_SERVICE_TYPE,
    PROTOCOL_VERSION,
    Announcement,
    RegistrarAnnouncement,
    RegistrarState,
    decode_node,
    decode_registrar,
    encode_node,
    encode_registrar,
    instance_name,
)

__all__ = [
    "CONTROLLER_SERVICE_TYPE",
    "NODE_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "Announcement",
    "RegistrarAnnouncement",
    "RegistrarState",
    "decode_node",
    "decode_registrar",
    "encode_node",
    "encode_registrar",
    "instance_name",
]

