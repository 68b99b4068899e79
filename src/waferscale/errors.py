"""Typed errors for user mistakes.

Every error a user can cause derives from :class:`WaferscaleError` and carries a one-line
message that names what was wrong and what to change. The CLI prints that line instead of a
traceback; library users can catch the specific class.
"""

from __future__ import annotations


class WaferscaleError(ValueError):
    """Base class: a user-facing mistake with a one-line explanation."""


class SpecError(WaferscaleError):
    """A hardware spec field is missing, malformed or out of range."""


class GridError(WaferscaleError):
    """A rectangle or grid does not fit the fabric, or a shape does not tile it."""


class SramOverflowError(WaferscaleError):
    """A tensor does not fit the 48 KB (spec-dependent) SRAM of a processing element."""


class DtypeError(WaferscaleError):
    """A dtype the hardware model cannot store or compute with."""


class ShapeError(WaferscaleError):
    """Operand shapes or layouts do not agree."""


class DefectError(WaferscaleError):
    """A defect-model parameter is out of range (negative density, unknown model, ...)."""


class DefectMapError(DefectError):
    """A defect-map file is unreadable, has the wrong shape, or belongs to another spec."""


class SparesExhaustedError(DefectError):
    """A row has more defects than its spare cores can hide.

    Carries ``row`` (logical = physical row index), ``defects`` (physical columns of the
    defective cores in that row) and ``spares`` (spare cores the row has), so a caller can
    report or retry with another map.
    """

    def __init__(self, message: str, *, row: int, defects: list[int], spares: int) -> None:
        super().__init__(message)
        self.row = row
        self.defects = defects
        self.spares = spares


class RouteError(WaferscaleError):
    """A fabric route is malformed: it loops, leaves the grid, drops wavelets or exceeds the
    colour budget. The message names the PE and the colour."""


class ColorBudgetError(RouteError):
    """A program uses a colour id the spec does not give to programs (``spec.routable_colors``)."""


class ProgramError(WaferscaleError):
    """A PE program is malformed: a task bound twice, memory never allocated or out of
    bounds, a reference to an unknown task, register or array. Names the PE and the task."""


class SimulationError(WaferscaleError):
    """A cycle-simulated program could not finish. Carries ``cycle`` and ``details`` (a list of
    lines naming the PEs, colours and queues involved)."""

    def __init__(self, message: str, *, cycle: int = 0, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.cycle = cycle
        self.details = list(details or [])


class DeadlockError(SimulationError):
    """Nothing can move and nothing is in flight, yet the program has not finished."""


class LivelockError(SimulationError):
    """PEs keep executing instructions but no data moves and no vector work is done."""


class CycleLimitError(SimulationError):
    """The run reached its cycle limit before finishing (a runaway program)."""


class KernelError(WaferscaleError):
    """A kernel cannot run as asked. The message names the kernel, the shapes involved and
    what would fit (a smaller problem, a larger rectangle, another dtype)."""


class KernelShapeError(KernelError, ShapeError):
    """Kernel operands disagree: inner dimensions, a sparsity mask or nnz map of the wrong
    shape."""


class KernelFitError(KernelError, GridError):
    """A kernel's problem does not fit the rectangle it was given, or its tiles do not fit a
    PE's SRAM."""


class KernelDtypeError(KernelError, DtypeError):
    """A dtype or accumulate combination the hardware's datapaths cannot run."""


class WorkloadError(WaferscaleError):
    """A workload cannot be built as asked: an unknown model name, a sequence longer than the
    model's positions, a batch or length that is not positive."""


class FastaError(WorkloadError):
    """A FASTA file is missing, empty or malformed. The message names the record and the
    position (base offset, line and column) of the first bad character."""
