"""waferscale: a wafer-scale AI engine in software.

Layers, lowest first (a layer never imports a higher one):
hardware <- fabric <- kernels <- compiler <- runtime <- report/cli.
"""

from typing import Any

from waferscale.errors import WaferscaleError
from waferscale.hardware import WaferSpec, get_spec


def compile(model: Any, example_inputs: Any = None, **kwargs: Any) -> Any:  # noqa: A001
    """``waferscale.compile(model, example_inputs, spec="wse2", mode="auto")``: see
    :func:`waferscale.api.compile` (imported lazily: torch loads on first use)."""
    from waferscale.api import compile as _compile

    return _compile(model, example_inputs, **kwargs)


def compile_lm(model: Any, **kwargs: Any) -> Any:
    """``waferscale.compile_lm(model, spec="wse2", grid=None)``: a transformers causal LM
    whose ``generate(input_ids, max_new_tokens=...)`` runs on the wafer; see
    :func:`waferscale.generate.compile_lm`."""
    from waferscale.generate import compile_lm as _compile_lm

    return _compile_lm(model, **kwargs)


def __getattr__(name: str) -> Any:
    """``waferscale.Density`` (stated nonzero fractions for estimates,
    `waferscale.compiler.density`), imported on first use like `compile`."""
    if name == "Density":
        from waferscale.compiler.density import Density

        return Density
    raise AttributeError(f"module 'waferscale' has no attribute {name!r}")


__all__ = ["Density", "WaferSpec", "WaferscaleError", "compile", "compile_lm", "get_spec"]
__version__ = "0.1.0"
