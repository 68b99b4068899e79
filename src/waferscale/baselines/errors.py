"""Typed errors of the baselines. All derive from `waferscale.errors.WaferscaleError`, so the
CLI prints them as one line and exits with status 2."""

from __future__ import annotations

from waferscale.errors import WaferscaleError


class BaselineError(WaferscaleError):
    """A comparison cannot be made as asked (unknown model, stack or option value)."""


class GpuConfigError(BaselineError):
    """A GPU, node, cluster, parallel layout or software stack is malformed or inconsistent:
    a non-positive count, a degree that does not divide the GPUs or the layers, an unknown
    preset. The message names the field and what would fit."""


class PriceError(BaselineError):
    """The price/power TOML is unreadable, misses a field or holds a non-positive value."""
