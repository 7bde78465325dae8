"""The node side: identity and the announcer."""

from __future__ import annotations

from ._announcer import Announcer
from ._callback import CallbackService
from ._discover import browse_report, discover_registrars
from ._identity import NodeIdentity, derive_node_id, self_registration_state
from ._registrar_client import RegistrarClient
from ._report import NodeReport, read_node_status

__all__ = [
    "Announcer",
    "CallbackService",
    "NodeIdentity",
    "NodeReport",
    "RegistrarClient",
    "browse_report",
    "derive_node_id",
    "discover_registrars",
    "read_node_status",
    "self_registration_state",
]
