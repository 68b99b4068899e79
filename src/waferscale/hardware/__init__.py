"""Hardware: specs, presets, defects and yield. Pure data and math, no simulation."""

from waferscale.hardware.presets import PRESETS
from waferscale.hardware.spec import SimdWidths, WaferSpec, custom_spec, get_spec, spec_from_toml

__all__ = ["PRESETS", "SimdWidths", "WaferSpec", "custom_spec", "get_spec", "spec_from_toml"]
