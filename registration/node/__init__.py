"""The node side: identity and the announcer."""

from __future__ import annotations

from ._announcer import Announcer
from ._callback import CallbackService
from ._discover import browse_report, discover_registrars
from ._identity import NodeIdentity, derive_node_id, self_registration_state

__all__ = [
    "Announcer",
    "CallbackService",
    "NodeIdentity",
    "browse_report",
    "derive_node_id",
    "discover_registrars",
    "self_registration_state",
]
