"""Install media: a node's whole configuration on a cloud-init NoCloud seed or a script."""

from __future__ import annotations

from ._iso import SEED_LABEL, MediumError, SeedReport, inspect_seed, write_seed_iso
from ._medium import (
    CallbackMaterial,
    Medium,
    MediumRequest,
    NodeSpec,
    assemble,
    callback_material,
    check_request,
    render_script,
    render_seed,
)

__all__ = [
    "SEED_LABEL",
    "CallbackMaterial",
    "Medium",
    "MediumError",
    "MediumRequest",
    "NodeSpec",
    "SeedReport",
    "assemble",
    "callback_material",
    "check_request",
    "inspect_seed",
    "render_script",
    "render_seed",
    "write_seed_iso",
]
