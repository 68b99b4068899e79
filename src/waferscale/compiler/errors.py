"""Typed errors of the compiler: what a user did that cannot be compiled, and what to change."""

from __future__ import annotations

from waferscale.errors import DtypeError, WaferscaleError


class CompileError(WaferscaleError):
    """A model cannot be compiled as given."""


class CaptureError(CompileError):
    """torch.export could not capture the model; the message says what to change."""


class MissingInputsError(CompileError):
    """No (or unusable) example inputs were given: shapes are needed to capture."""


class UnsupportedDtypeError(CompileError, DtypeError):
    """A tensor's dtype has no datapath on the PEs (fp32, fp16, bf16 only)."""


class FallbackError(CompileError):
    """Strict (fullgraph) mode found ops that would run on the host; lists them with source."""


class FitError(CompileError):
    """The planned program does not fit the wafer in the requested mode."""


__all__ = ["CaptureError", "CompileError", "FallbackError", "FitError", "MissingInputsError",
           "UnsupportedDtypeError"]
