"""waferscale: a wafer-scale AI engine in software.

Layers, lowest first (a layer never imports a higher one):
hardware <- fabric <- kernels <- compiler <- runtime <- report/cli.
"""

from waferscale.errors import WaferscaleError
from waferscale.hardware import WaferSpec, get_spec

__all__ = ["WaferSpec", "WaferscaleError", "get_spec"]
__version__ = "0.1.0"
