"""Fixtures of the media tests (defined in :mod:`medialab`)."""

from __future__ import annotations

from medialab import _controller_keys, cloud_init, controller, genisoimage, isoinfo, xorriso

__all__ = ["_controller_keys", "cloud_init", "controller", "genisoimage", "isoinfo", "xorriso"]
