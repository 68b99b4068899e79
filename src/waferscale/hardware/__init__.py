"""Hardware: specs, presets, defects and yield. Pure data and math, no simulation."""

from waferscale.hardware.defects import DefectMap, Remap, generate_defects, physical_shape
from waferscale.hardware.spec import (
    PRESETS,
    SimdWidths,
    WaferSpec,
    custom_spec,
    get_spec,
    spec_from_toml,
)
from waferscale.hardware.yield_model import (
    monolithic_yield,
    plot_yield,
    redundant_yield,
    yield_table,
)

__all__ = [
    "PRESETS", "DefectMap", "Remap", "SimdWidths", "WaferSpec", "custom_spec",
    "generate_defects", "get_spec", "monolithic_yield", "physical_shape", "plot_yield",
    "redundant_yield", "spec_from_toml", "yield_table",
]
