"""Install media: a node's whole configuration on a cloud-init NoCloud seed or a script."""

from __future__ import annotations

from ._iso import SEED_LABEL, MediumError, SeedReport, inspect_seed, write_seed_iso
from ._medium import Medium, NodeSpec, prepare_medium, render_script, render_seed

__all__ = [
    "SEED_LABEL",
    "Medium",
    "MediumError",
    "NodeSpec",
    "SeedReport",
    "inspect_seed",
    "prepare_medium",
    "render_script",
    "render_seed",
    "write_seed_iso",
]
