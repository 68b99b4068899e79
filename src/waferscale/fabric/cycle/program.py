"""The SPMD program: memory, registers and tasks, built per PE and compiled to tables.

Building checks what can be checked without running: a task bound twice, a colour bound to
two tasks, references to unknown tasks, registers or arrays, and memory a PE reads but never
allocated. Compiling turns per-PE instruction masks into successor tables so a PE's program
counter jumps over instructions it does not have in the same cycle, as if each PE had been
given only its own code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.errors import ProgramError, SramOverflowError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.grid import Where, pe_name, per_pe, select
from waferscale.hardware.spec import WaferSpec


@dataclass
class ArrayDef:
    name: str
    length: int
    where: np.ndarray           # [P] bool: PEs that allocated it
    init: np.ndarray | None     # [P, length] float32


@dataclass
class TaskDef:
    name: str
    body: list[isa.Instr]
    where: np.ndarray           # [P] bool
    entry: np.ndarray           # [P] bool: activated at cycle 0
    blocked: np.ndarray         # [P] bool: blocked at cycle 0
    bind: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # colour/PE


class Program:
    """Memory, registers and tasks of every PE, with the static checks applied as they come."""

    def __init__(self, spec: WaferSpec, rows: int, cols: int) -> None:
        self.spec, self.rows, self.cols, self.pes = spec, rows, cols, rows * cols
        self.arrays: dict[str, ArrayDef] = {}
        self.regs: dict[str, np.ndarray] = {}
        self.tasks: list[TaskDef] = []
        self.task_index: dict[str, int] = {}
        # colour -> [P] task id bound to it (-1 none)
        self.bound: dict[int, np.ndarray] = {}

    def _mask(self, where: Where, what: str) -> np.ndarray:
        return select(where, self.rows, self.cols, what).reshape(-1)

    # -- memory and registers ------------------------------------------------------------
    def alloc(self, name: str, length: int, where: Where = None, init: Any = None) -> str:
        if name in self.arrays:
            raise ProgramError(f"array {name!r} allocated twice; give it another name")
        if not isinstance(length, int) or length < 1:
            raise ProgramError(f"array {name!r}: length must be a positive int, got {length!r}")
        mask = self._mask(where, f"array {name!r}")
        data = None
        if init is not None:
            arr = np.asarray(init, dtype=np.float32)
            if arr.ndim == 0:
                arr = np.full((self.pes, length), arr, dtype=np.float32)
            elif arr.shape == (self.rows, self.cols, length):
                arr = arr.reshape(self.pes, length).copy()
            elif arr.shape == (length,):
                arr = np.broadcast_to(arr, (self.pes, length)).copy()
            else:
                raise ProgramError(f"array {name!r}: init shape {arr.shape} must be "
                                   f"({length},) or ({self.rows}, {self.cols}, {length})")
            data = arr
        self.arrays[name] = ArrayDef(name, length, mask, data)
        used = np.zeros(self.pes, dtype=np.int64)
        for a in self.arrays.values():
            used += a.where * a.length * 4
        if used.max() > self.spec.sram_bytes:
            pe = int(used.argmax())
            raise SramOverflowError(
                f"PE {pe_name(pe, self.cols)}: arrays need {int(used[pe])} bytes, more than "
                f"its {self.spec.sram_bytes} bytes of SRAM; shrink {name!r} or spread the "
                f"data over more PEs")
        return name

    def reg(self, name: str, init: Any = 0) -> isa.Reg:
        if name in self.regs:
            raise ProgramError(f"register {name!r} declared twice")
        self.regs[name] = per_pe(init, self.rows, self.cols, np.int64, f"register {name!r}")
        return isa.Reg(name)

    # -- tasks -----------------------------------------------------------------------------
    def task(self, name: str, body: list[isa.Instr], *, bind: int | None = None,
             where: Where = None, entry: Where | bool = False,
             blocked: Where | bool = False) -> str:
        if name in self.task_index:
            raise ProgramError(f"task {name!r} defined twice; task names are per program")
        for i, ins in enumerate(body):
            if not isinstance(ins, isa.Instr):
                raise ProgramError(f"task {name!r} instruction {i}: {ins!r} is not an "
                                   f"instruction (use the constructors in cycle.isa)")
        mask = self._mask(where, f"task {name!r}")
        entry_m = self._flag(entry, f"task {name!r} entry") & mask
        blocked_m = self._flag(blocked, f"task {name!r} blocked") & mask
        self.task_index[name] = len(self.tasks)
        self.tasks.append(TaskDef(name, list(body), mask, entry_m, blocked_m,
                                  np.full(self.pes, -1, dtype=np.int64)))
        if bind is not None:
            self.bind(name, bind, where)
        return name

    def _flag(self, value: Where | bool, what: str) -> np.ndarray:
        if value is True:
            return np.ones(self.pes, dtype=bool)
        if value is False:
            return np.zeros(self.pes, dtype=bool)
        return self._mask(value, what)

    def bind(self, task: str, color: int, where: Where = None) -> None:
        """Bind ``task`` to ``color`` on the PEs ``where``: each wavelet arriving on the colour
        activates the task once and is its `isa.Arg`."""
        if task not in self.task_index:
            raise ProgramError(f"bind: unknown task {task!r}")
        tid = self.task_index[task]
        mask = self._mask(where, f"binding of {task!r}") & self.tasks[tid].where
        if not isinstance(color, (int, np.integer)) or not 0 <= color < self.spec.colors:
            raise ProgramError(f"bind {task!r}: colour {color!r} is not a colour of the spec "
                               f"(0..{self.spec.colors - 1})")
        tdef = self.tasks[tid]
        twice = mask & (tdef.bind >= 0)
        if twice.any():
            pe = int(np.flatnonzero(twice)[0])
            raise ProgramError(f"PE {pe_name(pe, self.cols)} colour {color}: task {task!r} is "
                               f"already bound to colour {int(tdef.bind[pe])}; a task is bound "
                               f"once")
        owner = self.bound.setdefault(int(color), np.full(self.pes, -1, dtype=np.int64))
        taken = mask & (owner >= 0)
        if taken.any():
            pe = int(np.flatnonzero(taken)[0])
            raise ProgramError(f"PE {pe_name(pe, self.cols)} colour {color}: already bound to "
                               f"task {self.tasks[int(owner[pe])].name!r}; cannot bind "
                               f"{task!r} too (one task per colour)")
        owner[mask] = tid
        tdef.bind[mask] = int(color)


@dataclass
class Compiled:
    """Flat instruction list with per-PE control flow tables."""

    instrs: list[isa.Instr]
    task_of: list[int]
    first: np.ndarray          # [tasks, P] first enabled gid (-1: none)
    succ: np.ndarray           # [gids, P] next enabled gid in the task (-1: end)
    enabled: np.ndarray        # [gids, P]
    ops: list[int]             # gid of every vector op, op id = position
    op_of: dict[int, int]      # gid -> op id


def compile_program(prog: Program) -> Compiled:
    """Flatten tasks, resolve names and check every reference on the PEs that execute it."""
    instrs: list[isa.Instr] = []
    task_of: list[int] = []
    enabled: list[np.ndarray] = []
    for tid, t in enumerate(prog.tasks):
        for ins in t.body:
            instrs.append(ins)
            task_of.append(tid)
            en = t.where.copy()
            if ins.mask is not None:
                en &= prog._mask(ins.mask, f"task {t.name!r} instruction mask")
            enabled.append(en)
    g = len(instrs)
    en_arr = np.array(enabled, dtype=bool).reshape(g, prog.pes)
    succ = np.full((g, prog.pes), -1, dtype=np.int64)
    first = np.full((len(prog.tasks), prog.pes), -1, dtype=np.int64)
    nxt = np.full(prog.pes, -1, dtype=np.int64)
    for gid in range(g - 1, -1, -1):
        if gid == g - 1 or task_of[gid + 1] != task_of[gid]:
            nxt = np.full(prog.pes, -1, dtype=np.int64)
        succ[gid] = nxt
        nxt = np.where(en_arr[gid], gid, nxt)
        if gid == 0 or task_of[gid - 1] != task_of[gid]:
            first[task_of[gid]] = nxt
    ops = [gid for gid, ins in enumerate(instrs) if isinstance(ins, isa.Vec)]
    compiled = Compiled(instrs, task_of, first, succ, en_arr, ops,
                        {gid: i for i, gid in enumerate(ops)})
    for gid, ins in enumerate(instrs):
        _check_refs(prog, ins, task_of[gid], en_arr[gid])
    return compiled


def _where_text(prog: Program, tid: int, pe: int) -> str:
    t = prog.tasks[tid]
    color = int(t.bind[pe])
    via = f"colour {color}" if color >= 0 else "no colour (local task)"
    return f"PE {pe_name(pe, prog.cols)} task {t.name!r} ({via})"


def _check_refs(prog: Program, ins: isa.Instr, tid: int, en: np.ndarray) -> None:
    if not en.any():
        return
    pe = int(np.flatnonzero(en)[0])
    for name in _task_refs(ins):
        if name not in prog.task_index:
            raise ProgramError(f"{_where_text(prog, tid, pe)}: refers to unknown task {name!r}")
    for reg in _reg_refs(ins):
        if reg not in prog.regs:
            raise ProgramError(f"{_where_text(prog, tid, pe)}: uses undeclared register "
                               f"{reg!r}; declare it with sim.reg({reg!r})")
    if isinstance(ins, isa.Vec):
        for operand in (ins.dst, *ins.srcs):
            if not isinstance(operand, isa.Mem):
                continue
            arr = prog.arrays.get(operand.array)
            missing = en if arr is None else en & ~arr.where
            if missing.any():
                pe = int(np.flatnonzero(missing)[0])
                color = _op_color(ins)
                raise ProgramError(
                    f"{_where_text(prog, tid, pe)}: {ins.op} {color}uses array "
                    f"{operand.array!r}, which this PE never allocated; alloc it there or mask "
                    f"the instruction")


def _op_color(ins: isa.Vec) -> str:
    for operand in (ins.dst, *ins.srcs):
        if isinstance(operand, (isa.FabIn, isa.FabOut)) and np.ndim(operand.color) == 0:
            return f"on colour {int(operand.color)} "
    return ""


def _task_refs(ins: isa.Instr) -> list[str]:
    if isinstance(ins, (isa.Activate, isa.Block, isa.Unblock)):
        return [ins.task]
    if isinstance(ins, isa.Vec) and ins.then is not None:
        return _task_refs(ins.then)
    return []


def _reg_refs(ins: isa.Instr) -> list[str]:
    out: list[str] = []
    if isinstance(ins, (isa.SetReg, isa.AddReg)):
        out.append(ins.reg)
        if isinstance(ins.value, isa.Reg):
            out.append(ins.value.name)
    if isinstance(ins, (isa.Activate, isa.Block, isa.Unblock)) and ins.when is not None:
        out.append(ins.when.reg)
    if isinstance(ins, isa.Vec):
        if isinstance(ins.n, isa.Reg):
            out.append(ins.n.name)
        for operand in (ins.dst, *ins.srcs):
            if isinstance(operand, isa.Mem) and isinstance(operand.offset, isa.Reg):
                out.append(operand.offset.name)
        if ins.then is not None:
            out += _reg_refs(ins.then)
    return out
