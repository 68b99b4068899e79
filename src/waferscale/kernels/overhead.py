"""Per-instruction overheads of a PE's compute engine: the one table of their constants.

Why a table of its own: a kernel's time is not only its vector instructions at SIMD width.
Every task a wavelet or a finished instruction activates, and every vector instruction's
descriptor (DSD) that a task builds, takes issue cycles of its own; on a program with few,
long instructions they vanish, on one that splits its work into many short ones they rule.
No source publishes them (docs/validation.md, "Per-instruction overheads"), so each is an
assumption [A] with its reasoning, and the kernels that charge them count their tasks and
set-ups from the code they model rather than from a figure to match.

Where they apply (docs/validation.md says why): the SC22 stencil, whose task activations
and DSD set-ups per step are counted from the code SC22 ran (`stencil_schedule`). Not the
GEMM / GEMV: no code of WaferLLM's kernels is public to count them from, and its MeshGEMM
result bounds them (`gemm_step_budget`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from waferscale.errors import SpecError


@dataclass(frozen=True)
class Overheads:
    """Issue cycles of the fixed parts of a PE program.

    ``task_activation_cycles``: from a task's activation bit (set by a wavelet, a finished
    asynchronous instruction or another task) to its last scalar instruction: picking the
    task and a body of a few scalar instructions (a counter, a condition, a DSD offset) at
    one per cycle [A]. ``dsd_setup_cycles``: building one vector instruction's descriptors
    (offset and length for the chunk) and issuing it, about one cycle per field [A].
    """

    task_activation_cycles: float = 10.0
    dsd_setup_cycles: float = 4.0

    def __post_init__(self) -> None:
        for name in ("task_activation_cycles", "dsd_setup_cycles"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                    or not math.isfinite(value):
                raise SpecError(f"overhead {name} must be a finite number >= 0, got {value!r}")

    def cycles(self, tasks: float, dsds: float) -> float:
        """Issue cycles of ``tasks`` activations and ``dsds`` vector-instruction set-ups."""
        return tasks * self.task_activation_cycles + dsds * self.dsd_setup_cycles


#: The assumed values (docs/stencil.md, table "Assumptions", gives their reasoning).
OVERHEADS = Overheads()


def gemm_step_budget(compute_cycles: float, useful_fraction: float,
                     efficiency: float) -> float:
    """Most cycles per ring step that a GEMM reaching ``efficiency`` can spend beyond its
    tile product of ``compute_cycles`` (of which ``useful_fraction`` is unpadded work):
    efficiency = useful FMAC cycles / step cycles, so a step lasts at most
    ``useful_fraction * compute_cycles / efficiency``.

    WaferLLM's > 70 % for a 2K MeshGEMM at 720^2 (3x3x3 fp16 tiles, 14 cycles of FMACs,
    82 % of them useful) leaves 2.4 cycles per step for everything the step's tasks issue
    beside the product: a task activation and a few DSD set-ups at the assumed costs do not
    fit, so there they must overlap the product (docs/validation.md)."""
    if efficiency <= 0:
        raise ValueError(f"efficiency must be > 0, got {efficiency!r}")
    return max(0.0, useful_fraction * compute_cycles / efficiency - compute_cycles)


__all__ = ["OVERHEADS", "Overheads", "gemm_step_budget"]
