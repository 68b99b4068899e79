"""The instruction set PE programs are written in.

It mirrors the compute engine's: vector instructions whose operands are data structure
descriptors (DSDs) over memory or fabric queues, running synchronously or on a microthread
(``async_=True``); task control (activate, block, unblock); and a few integer registers for
the offsets and counts a task keeps between activations. Programs are SPMD: every PE runs
the same task list, and ``mask``/``where`` plus per-PE operand values make PEs differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from waferscale.errors import ProgramError


@dataclass(frozen=True)
class Reg:
    """An integer register, per PE. ``Reg("k") * 8 + 2`` scales and offsets its value."""

    name: str
    scale: int = 1
    bias: int = 0

    def __mul__(self, k: int) -> Reg:
        return Reg(self.name, self.scale * k, self.bias * k)

    def __add__(self, k: int) -> Reg:
        return Reg(self.name, self.scale, self.bias + k)


@dataclass(frozen=True, eq=False)
class Mem:
    """A memory DSD: ``array[offset + i*stride]`` for i < n."""

    array: str
    offset: Any = 0
    stride: int = 1


@dataclass(frozen=True, eq=False)
class FabIn:
    """Wavelets of ``color`` from the CE input queue, one per element (per-PE colours ok)."""

    color: Any


@dataclass(frozen=True, eq=False)
class FabOut:
    """Elements sent up the ramp on ``color`` (a destination only)."""

    color: Any


@dataclass(frozen=True, eq=False)
class Scalar:
    """A value broadcast to every element: a number or a per-PE [rows, cols] array."""

    value: Any


@dataclass(frozen=True)
class Arg:
    """The wavelet that activated the current data task, captured when the op is issued."""


Operand = Mem | FabIn | FabOut | Scalar | Arg

#: element-wise meaning of each vector op; fmac is a + b * c
VEC_OPS = {"mov": 1, "add": 2, "sub": 2, "mul": 2, "fmac": 3, "max": 2}
#: which SIMD width of the spec each op runs at
SIMD_OP = {"mov": "add", "add": "add", "sub": "add", "max": "add", "mul": "mul", "fmac": "fmac"}


@dataclass(frozen=True)
class Cond:
    """``reg <cmp> value`` evaluated per PE when a control instruction executes."""

    reg: str
    cmp: str
    value: Any

    def __post_init__(self) -> None:
        if self.cmp not in ("==", "!=", "<", "<=", ">", ">="):
            raise ProgramError(f"condition on register {self.reg!r}: comparison {self.cmp!r} "
                               f"is not one of == != < <= > >=")


@dataclass(eq=False)
class Instr:
    """Base of all instructions: ``mask`` limits it to some PEs (others skip it, 0 cycles)."""

    mask: Any = field(default=None, kw_only=True)
    label: str = field(default="", kw_only=True)


@dataclass(eq=False)
class Vec(Instr):
    """A vector instruction ``dst = op(srcs)`` over ``n`` elements (int, per-PE or Reg)."""

    op: str = "mov"
    dst: Operand = field(default_factory=lambda: Mem(""))
    srcs: tuple[Operand, ...] = ()
    n: Any = 1
    async_: bool = False
    then: Instr | None = None

    def __post_init__(self) -> None:
        if self.op not in VEC_OPS:
            raise ProgramError(f"vector op {self.op!r} is not one of {', '.join(VEC_OPS)}")
        if len(self.srcs) != VEC_OPS[self.op]:
            raise ProgramError(f"vector op {self.op!r} takes {VEC_OPS[self.op]} source "
                               f"operand(s), got {len(self.srcs)}")
        if not isinstance(self.dst, (Mem, FabOut)):
            raise ProgramError(f"vector op {self.op!r}: destination must be Mem or FabOut, "
                               f"got {type(self.dst).__name__}")
        for s in self.srcs:
            if not isinstance(s, (Mem, FabIn, Scalar, Arg)):
                raise ProgramError(f"vector op {self.op!r}: a source must be Mem, FabIn, "
                                   f"Scalar or Arg, got {type(s).__name__}")
        if self.then is not None and not isinstance(self.then, (Activate, Unblock)):
            raise ProgramError("a vector op's 'then' must be Activate(...) or Unblock(...)")
        if self.then is not None and not self.async_:
            raise ProgramError("'then' needs async_=True: a synchronous op simply continues "
                               "with the next instruction")


@dataclass(eq=False)
class Activate(Instr):
    """Mark a task runnable on this PE; it runs when the CE is free and it is unblocked."""

    task: str = ""
    when: Cond | None = None


@dataclass(eq=False)
class Block(Instr):
    """Keep a task from running (it stays activated) until `Unblock`."""

    task: str = ""
    when: Cond | None = None


@dataclass(eq=False)
class Unblock(Instr):
    task: str = ""
    when: Cond | None = None


@dataclass(eq=False)
class SetReg(Instr):
    reg: str = ""
    value: Any = 0


@dataclass(eq=False)
class AddReg(Instr):
    reg: str = ""
    value: Any = 1


# -- constructors that read like the SDK's builtins ------------------------------------
def mov(dst: Operand, src: Operand, n: Any, **kw: Any) -> Vec:
    return Vec(op="mov", dst=dst, srcs=(src,), n=n, **kw)


def add(dst: Operand, a: Operand, b: Operand, n: Any, **kw: Any) -> Vec:
    return Vec(op="add", dst=dst, srcs=(a, b), n=n, **kw)


def sub(dst: Operand, a: Operand, b: Operand, n: Any, **kw: Any) -> Vec:
    return Vec(op="sub", dst=dst, srcs=(a, b), n=n, **kw)


def mul(dst: Operand, a: Operand, b: Operand, n: Any, **kw: Any) -> Vec:
    return Vec(op="mul", dst=dst, srcs=(a, b), n=n, **kw)


def fmac(dst: Operand, a: Operand, b: Operand, c: Operand, n: Any, **kw: Any) -> Vec:
    """``dst = a + b * c`` elementwise (the SDK's fmacs)."""
    return Vec(op="fmac", dst=dst, srcs=(a, b, c), n=n, **kw)
