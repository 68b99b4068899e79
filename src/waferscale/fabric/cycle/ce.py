"""The compute engines of all PEs: task scheduling, instruction issue, vector work.

Each PE has one main thread that runs a task's instructions in order and microthreads that
run asynchronous vector instructions. When the main thread is free it picks the first task
(in declaration order) that is activated and not blocked, or a data task whose colour has a
wavelet waiting; picking costs no cycle of its own. A control instruction takes one cycle;
a synchronous vector instruction holds the main thread until its last element; an
asynchronous one holds a microthread and lets the task go on next cycle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from waferscale.errors import ProgramError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.config import CycleConfig
from waferscale.fabric.cycle.fused import make_groups
from waferscale.fabric.cycle.grid import pe_name
from waferscale.fabric.cycle.ops import OpState
from waferscale.fabric.cycle.program import Compiled, Program
from waferscale.fabric.cycle.queues import Queues
from waferscale.fabric.cycle.router import Router
from waferscale.fabric.cycle.routing import Channels, RouteTable
from waferscale.hardware.spec import WaferSpec

_CMP = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
        ">": np.greater, ">=": np.greater_equal}

#: per-PE state codes of the summary
IDLE, BUSY, FABRIC_STALL, MEMORY_STALL = range(4)


class ComputeEngines:
    """SPMD execution state of every PE's compute engine."""

    def __init__(self, spec: WaferSpec, config: CycleConfig, prog: Program, code: Compiled,
                 routes: RouteTable, ch: Channels, queues: Queues, router: Router) -> None:
        self.spec, self.config, self.prog, self.code = spec, config, prog, code
        self.routes, self.ch, self.q, self.router = routes, ch, queues, router
        pes = self.pes = prog.pes
        self.cols = prog.cols
        ntask = len(prog.tasks)
        self.cur = np.full(pes, -1, dtype=np.int64)
        self.pc = np.full(pes, -1, dtype=np.int64)
        self.wait = np.full(pes, -1, dtype=np.int64)
        self.activated = np.array([t.entry for t in prog.tasks], dtype=bool).reshape(ntask, pes)
        self.blocked = np.array([t.blocked for t in prog.tasks], dtype=bool).reshape(ntask, pes)
        self.act_count = [int(a.sum()) for a in self.activated]
        self.arg = np.zeros(pes, dtype=np.float32)
        self.n_async = np.zeros(pes, dtype=np.int64)
        # registers in one [regs, PEs] array (the compiled loop indexes it), named by views
        names = list(prog.regs)
        self.regs_arr = np.zeros((max(len(names), 1), pes), dtype=np.int64)
        for i, k in enumerate(names):
            self.regs_arr[i] = prog.regs[k]
        self.regs = {k: self.regs_arr[i] for i, k in enumerate(names)}
        # one SRAM image per PE, arrays at fixed offsets: every memory operand is then an
        # index into one flat buffer, whichever array it names
        self.offset: dict[str, int] = {}
        total = 0
        for name, a in prog.arrays.items():
            self.offset[name] = total
            total += a.length
        self.words = max(total, 1)
        self.sram = np.zeros((pes, self.words), dtype=np.float32)
        self.sram_flat = self.sram.reshape(-1)
        self.mem: dict[str, np.ndarray] = {}
        for name, a in prog.arrays.items():
            view = self.sram[:, self.offset[name]:self.offset[name] + a.length]
            if a.init is not None:
                view[...] = a.init
            self.mem[name] = view
        self.ops = [OpState(oid, gid, code.instrs[gid], self) for oid, gid in enumerate(code.ops)]
        self.groups = make_groups(self.ops, pes)
        self.bound = [t.bind for t in prog.tasks]
        # data tasks: CE queue of the bound colour on each PE (-1 where not bound)
        self.task_cq: list[np.ndarray | None] = []
        for tid, t in enumerate(prog.tasks):
            if not (t.bind >= 0).any():
                self.task_cq.append(None)
                continue
            pe_idx = np.flatnonzero(t.bind >= 0)
            cq = np.full(pes, -1, dtype=np.int64)
            cq[pe_idx] = ch.cq_of[t.bind[pe_idx], pe_idx]
            missing = pe_idx[cq[pe_idx] < 0]
            if missing.size:
                pe = int(missing[0])
                raise ProgramError(
                    f"{self.where_text(tid, pe)}: bound to colour {int(t.bind[pe])}, but the "
                    f"PE's route never delivers that colour to its CE (add R to tx)")
            self.task_cq.append(cq)
        self.data_queues = [None if c is None else c[c >= 0] for c in self.task_cq]
        word = spec.mem_word_bits // 8
        self.port_caps = (spec.mem_reads_per_cycle * word, spec.mem_writes_per_cycle * word,
                          spec.ramp_wavelets_per_cycle)
        self.rd_left = np.zeros(pes, dtype=np.int64)
        self.wr_left = np.zeros(pes, dtype=np.int64)
        self.ramp_left = np.zeros(pes, dtype=np.int64)
        self.flag = np.zeros(pes, dtype=np.uint8)
        # vector instructions in flight per PE: a PE with some and no progress is stalled
        self.inflight = np.zeros(pes, dtype=np.int64)
        self.stats = np.zeros((4, pes), dtype=np.int64)
        self.stats_flat = self.stats.reshape(-1)
        # flag bits (1 busy, 2 waiting on in-flight work) -> state row, busy first. Memory
        # ports are bandwidth spent in order, so a PE denied memory has used it (busy):
        # the memory-stall row stays for a finer memory model
        codes = [BUSY if f & 1 else FABRIC_STALL if f & 2 else MEMORY_STALL if f & 4 else IDLE
                 for f in range(8)]
        self.code_base = np.array(codes, dtype=np.int64) * pes
        self.elements = 0           # vector elements processed so far (progress measure)
        self.issued = 0             # instructions issued so far
        self.events: list[tuple[Any, ...]] | None = None
        self.t = 0
        self.ar = np.arange(pes)

    # -- helpers ---------------------------------------------------------------------------
    def where_text(self, tid: int, pe: int) -> str:
        t = self.prog.tasks[tid]
        color = int(t.bind[pe])
        via = f"colour {color}" if color >= 0 else "no colour (local task)"
        return f"PE {pe_name(pe, self.cols)} task {t.name!r} ({via})"

    def resolve(self, source: tuple[str, Any], sel: np.ndarray) -> np.ndarray:
        kind, value = source
        if kind == "const":
            return np.full(sel.size, value, dtype=np.int64)
        if kind == "arr":
            return value[sel]
        return self.regs[value.name][sel] * value.scale + value.bias

    def _value(self, value: Any, sel: np.ndarray, dtype: Any) -> np.ndarray:
        if isinstance(value, isa.Reg):
            return self.regs[value.name][sel] * value.scale + value.bias
        arr = np.asarray(value, dtype=dtype)
        return np.full(sel.size, arr, dtype=dtype) if arr.ndim == 0 else arr.reshape(-1)[sel]

    def busy_anywhere(self) -> bool:
        return bool(np.count_nonzero(self.cur >= 0)) or any(op.count for op in self.ops)

    # -- one cycle -------------------------------------------------------------------------
    def step(self, t: int) -> bool:
        """Run cycle ``t`` on every CE; return whether anything happened."""
        self.t = t
        did = self._schedule(t)
        did |= self._issue(t)
        running = [u for u in self.groups if u.count]
        if running:
            r, w, ramp = self.port_caps
            self.rd_left.fill(r)
            self.wr_left.fill(w)
            self.ramp_left.fill(ramp)
            before = self.elements
            for unit in running:
                for op, fin in unit.step(self, t):
                    did = True
                    self._finish(op, fin)
            did |= self.elements != before
        return did

    def account(self, cycles: int = 1) -> None:
        """Fold this cycle's flags into the per-PE state counters (``cycles`` times)."""
        self.flag |= (self.inflight > 0).view(np.uint8) << 1
        self.stats_flat[self.code_base[self.flag] + self.ar] += cycles
        self.flag.fill(0)

    def _schedule(self, t: int) -> bool:
        idle = np.flatnonzero(self.cur < 0)
        if idle.size == 0:
            return False
        did = False
        for tid in range(len(self.prog.tasks)):
            local = self.act_count[tid] > 0
            dq = self.data_queues[tid]
            data = dq is not None and dq.size and np.count_nonzero(self.q.cnt[dq]) > 0
            if not (local or data) or idle.size == 0:
                continue
            cand = np.zeros(idle.size, dtype=bool)
            if local:
                cand |= self.activated[tid, idle] & ~self.blocked[tid, idle]
            if data:
                cq = self.task_cq[tid][idle]
                has = cq >= 0
                ok = np.zeros(idle.size, dtype=bool)
                ok[has] = self.q.ready(cq[has], t)
                cand |= ok & ~self.blocked[tid, idle]
            if not np.count_nonzero(cand):
                continue
            picked = idle[cand]
            idle = idle[~cand]
            did = True
            was_local = self.activated[tid, picked]
            self.activated[tid, picked] = False
            self.act_count[tid] -= int(was_local.sum())
            if data:
                cq = self.task_cq[tid][picked]
                via = cq >= 0
                if np.count_nonzero(via):
                    pes = picked[via]
                    self.arg[pes] = self.q.pop(cq[via])
                    if self.events is not None:
                        self.events.append((t, "recv", pes.copy(),
                                            self.ch.cq_color[cq[via] - self.ch.nch],
                                            self.arg[pes].copy()))
            self.cur[picked] = tid
            self.pc[picked] = self.code.first[tid, picked]
            self.flag[picked] |= 1
            if self.events is not None:
                self.events.append((t, "task", picked.copy(), tid, None))
            ended = picked[self.pc[picked] < 0]
            self.cur[ended] = -1
        return did

    def _issue(self, t: int) -> bool:
        act = np.flatnonzero((self.pc >= 0) & (self.wait < 0))
        if act.size == 0:
            return False
        gids = self.pc[act]
        present = np.flatnonzero(np.bincount(gids, minlength=len(self.code.instrs)))
        did = False
        for gid in present:
            sel = act[gids == gid]
            did |= self._execute(int(gid), sel, t)
        return did

    def _execute(self, gid: int, sel: np.ndarray, t: int) -> bool:
        ins = self.code.instrs[gid]
        tid = self.code.task_of[gid]
        if isinstance(ins, isa.Vec):
            op = self.ops[self.code.op_of[gid]]
            if ins.async_:
                free = ~op.running[sel] & (self.n_async[sel] < self.config.microthreads)
                sel = sel[free]
                if sel.size == 0:
                    return False
                op.launch(self, sel, tid)
                self.n_async[sel] += 1
                self._advance(gid, sel)
            else:
                op.launch(self, sel, tid)
                self.wait[sel] = op.oid
            if self.events is not None:
                self.events.append((t, "start", sel.copy(), op.oid, None))
        else:
            self._control(ins, sel, tid)
            self._advance(gid, sel)
        self.flag[sel] |= 1
        self.issued += sel.size
        return True

    def _advance(self, gid: int, sel: np.ndarray) -> None:
        nxt = self.code.succ[gid, sel]
        self.pc[sel] = nxt
        self.cur[sel[nxt < 0]] = -1

    def _control(self, ins: isa.Instr, sel: np.ndarray, tid: int) -> None:
        if isinstance(ins, (isa.SetReg, isa.AddReg)):
            value = self._value(ins.value, sel, np.int64)
            reg = self.regs[ins.reg]
            reg[sel] = value if isinstance(ins, isa.SetReg) else reg[sel] + value
            return
        when = getattr(ins, "when", None)
        if when is not None:
            ok = _CMP[when.cmp](self.regs[when.reg][sel], self._value(when.value, sel, np.int64))
            sel = sel[ok]
        target = self.prog.task_index[ins.task]  # type: ignore[attr-defined]
        if isinstance(ins, isa.Activate):
            data = self.bound[target][sel] >= 0
            if data.any():
                pe = int(sel[np.argmax(data)])
                raise ProgramError(
                    f"{self.where_text(tid, pe)}: activates task {ins.task!r}, which is a data "
                    f"task on this PE (bound to colour {int(self.bound[target][pe])}); it runs "
                    f"when wavelets arrive, not on Activate")
            new = ~self.activated[target, sel]
            self.activated[target, sel] = True
            self.act_count[target] += int(new.sum())
        elif isinstance(ins, isa.Block):
            self.blocked[target, sel] = True
        else:
            self.blocked[target, sel] = False

    def _finish(self, op: OpState, fin: np.ndarray) -> None:
        self.inflight[fin] -= 1
        if self.events is not None:
            self.events.append((self.t, "end", fin.copy(), op.oid, None))
        if op.ins.async_:
            self.n_async[fin] -= 1
            if op.ins.then is not None:
                self._control(op.ins.then, fin, self.code.task_of[op.gid])
            return
        self.wait[fin] = -1
        self._advance(op.gid, fin)

    # -- diagnostics -----------------------------------------------------------------------
    def stuck_lines(self, t: int, limit: int = 12) -> list[str]:
        """One line per PE that still has work, saying what it waits for."""
        lines: list[str] = []
        for op in self.ops:
            for pe in np.flatnonzero(op.running)[:limit]:
                tid = self.code.task_of[op.gid]
                lines.append(f"{self.where_text(tid, int(pe))}: {op.describe_stall(self, pe, t)}")
        for tid, t_def in enumerate(self.prog.tasks):
            pending = np.flatnonzero(self.activated[tid] & self.blocked[tid])
            for pe in pending[:limit]:
                lines.append(f"PE {pe_name(int(pe), self.cols)}: task {t_def.name!r} is "
                             f"activated but blocked and nothing will unblock it")
            dq = self.task_cq[tid]
            if dq is not None:
                waiting = np.flatnonzero((dq >= 0) & self.blocked[tid])
                waiting = waiting[self.q.cnt[dq[waiting]] > 0]
                for pe in waiting[:limit]:
                    lines.append(f"PE {pe_name(int(pe), self.cols)}: data task {t_def.name!r} "
                                 f"(colour {int(t_def.bind[pe])}) is blocked with "
                                 f"{int(self.q.cnt[dq[pe]])} wavelet(s) queued")
        return lines
