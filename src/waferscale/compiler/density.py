"""Nonzero fractions a user states for an estimate, written onto the graph.

An estimate has no values (weights on the meta device, no activations), so nothing can be
counted: a pruned network's zero weights and a ReLU's zero activations would be priced as
dense, or at the fixed `kernels.gemm.RELU_DENSITY`. `Density` states them instead; the pass
`annotate` writes them as ``meta[STATED_DENSITY]`` on the nodes the GEMM stage reads when it
sizes itself (weight constants, ReLU outputs), so the plan prices the sparse kernels
(zeros never sent nor multiplied) at the stated density, uniform over every block.
The functional modes count nonzeros from the values instead, so a stated density is an
estimate-mode input only (`check_mode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from waferscale.compiler.errors import CompileError
from waferscale.ir import Graph
from waferscale.kernels.gemm import STATED_DENSITY, is_relu


@dataclass(frozen=True)
class Density:
    """``weights``: nonzero fraction of every weight matrix (constants of 2 or more
    dimensions: what GEMMs read as their weight operand), replacing what their values
    would count; ``activations``: nonzero fraction of every ReLU output feeding a GEMM,
    replacing `RELU_DENSITY`. None leaves that operand as without a stated density."""

    weights: float | None = None
    activations: float | None = None

    def __post_init__(self) -> None:
        for name, v in (("weights", self.weights), ("activations", self.activations)):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0.0 < v <= 1.0:
                raise CompileError(f"density {name}={v!r}: give the fraction of nonzeros, a "
                                   f"number in (0, 1] (e.g. 0.1 for 90 % zeros)")

    @classmethod
    def of(cls, value: Density | dict[str, float] | None) -> Density | None:
        """A `Density` from itself, a ``{"weights": .., "activations": ..}`` dict or None."""
        if value is None or isinstance(value, Density):
            return value
        if not isinstance(value, dict) or set(value) - {"weights", "activations"}:
            raise CompileError(f"density {value!r}: give Density(weights=..., activations=...)"
                               f" or a dict with the keys 'weights' and/or 'activations'")
        return cls(**value)


def check_mode(density: Density | None, mode: str) -> None:
    """A stated density with a mode that runs values is a contradiction: say so."""
    if density is not None and mode != "estimate":
        raise CompileError(f"a stated density is for estimates (mode='estimate'); mode="
                           f"{mode!r} counts nonzeros from the weights' and activations' "
                           f"values (prune or zero the weights instead, or pass "
                           f"mode='estimate')")


def annotate(g: Graph, density: Density | None) -> str:
    """Write the stated densities onto ``g``'s weight constants and ReLU outputs; the
    report note that says what was assumed ('' when nothing was stated)."""
    if density is None:
        return ""
    parts = []
    if density.weights is not None:
        weights = [n for n in g.nodes.values() if n.op == "const"
                   and len(n.meta.get("shape", ())) >= 2]
        for n in weights:
            n.meta[STATED_DENSITY] = density.weights
        parts.append(f"weights {density.weights:g} ({len(weights)} weight tensors)")
    if density.activations is not None:
        relus = [n for n in g.calls() if is_relu(n)]
        for n in relus:
            n.meta[STATED_DENSITY] = density.activations
        parts.append(f"ReLU outputs {density.activations:g} ({len(relus)} ReLUs)")
    return ("estimate at stated nonzero fractions, uniform over every block: "
            + "; ".join(parts))
