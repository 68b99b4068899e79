"""Baselines the wafer is compared with: today a GPU-cluster model (`waferscale.baselines.gpu`)
and the side-by-side comparison and quote built on it (`waferscale.baselines.compare`).

Per the design, nothing here imports the wafer's internals (kernels, fabric, compiler,
runtime): the GPU model reads model shapes from the workload's published configs only, and
the comparison gets the wafer's figures through the public report API in one adapter
function, so the two sides share no code that could make them agree by construction.
"""

from waferscale.baselines.errors import BaselineError, GpuConfigError, PriceError

__all__ = ["BaselineError", "GpuConfigError", "PriceError"]
