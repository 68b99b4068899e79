"""Vector instructions of the same shape stepped together.

A PE program has many instructions of the same form, the stencil's twelve "memory to
fabric" and "fabric to memory" moves for instance. Their running instances, across all
PEs and all such instructions, are concatenated into one batch per shape, so a cycle costs
a few NumPy calls per shape instead of per instruction. Instructions that run at most one
element per cycle (fabric operands or a SIMD width of one) are batched; the few wider ones
keep their own state (`Single`).

Ports stay a per-PE budget spent in instruction order: instances are sorted by PE and,
within a PE, by instruction, and an instance gets its element only if the instances ahead
of it on the same PE left enough bandwidth (a segmented running count).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.ops import OpState

if TYPE_CHECKING:
    from waferscale.fabric.cycle.ce import ComputeEngines

Finished = list[tuple[OpState, np.ndarray]]
_BIG = np.int64(1 << 40)


class Single:
    """A wide instruction stepped on its own."""

    def __init__(self, op: OpState) -> None:
        self.op = op

    @property
    def count(self) -> int:
        return self.op.count

    def step(self, ce: ComputeEngines, t: int) -> Finished:
        fin = self.op.step(ce, t)
        return [(self.op, fin)] if fin.size else []


class OpGroup:
    """Narrow instructions with the same operation and operand kinds."""

    def __init__(self, members: list[OpState], pes: int) -> None:
        self.members = members
        self.pes = pes
        first = members[0]
        self.operands = first.operands
        self.compute = first.compute
        self.reads, self.writes = first.reads, first.writes
        self.fab_in, self.fab_out = first.fab_in, first.fab_out
        self.count = 0
        self.dirty = True
        self.synced = False
        for m in members:
            m.group = self

    # -- batch (re)construction ------------------------------------------------------------
    def writeback(self) -> None:
        """Return progress to the member instructions (before their running sets change)."""
        if not self.synced:
            return
        for j, m in enumerate(self.members):
            sel = self.member == j
            if np.count_nonzero(sel):
                m.prog[self.pe[sel]] = self.prog[sel]
        self.synced = False
        self.dirty = True

    def _sync(self, ce: ComputeEngines) -> None:
        self.writeback()
        pe, member, n, prog = [], [], [], []
        addr: dict[int, list[np.ndarray]] = {i: [] for i, o in enumerate(self.operands)
                                             if isinstance(o, isa.Mem)}
        stride: dict[int, list[np.ndarray]] = {i: [] for i in addr}
        queue: dict[int, list[np.ndarray]] = {i: [] for i, o in enumerate(self.operands)
                                              if isinstance(o, (isa.FabIn, isa.FabOut))}
        sval: dict[int, list[np.ndarray]] = {i: [] for i, o in enumerate(self.operands)
                                             if isinstance(o, (isa.Scalar, isa.Arg))}
        for j, m in enumerate(self.members):
            idx = np.flatnonzero(m.running)
            if idx.size == 0:
                continue
            pe.append(idx)
            member.append(np.full(idx.size, j))
            n.append(m.n[idx])
            prog.append(m.prog[idx])
            for i in addr:
                addr[i].append(m.address(ce, i, idx))
                stride[i].append(np.full(idx.size, m.operands[i].stride))  # type: ignore
            for i in queue:
                queue[i].append(m.queue[i][idx])
            for i in sval:
                sval[i].append(m.sval[i][idx])
        pe_all = cat(pe)
        order = np.argsort(pe_all, kind="stable")  # by PE, then by instruction order
        self.pe = pe_all[order]
        self.member = cat(member)[order]
        self.n = cat(n)[order]
        self.prog = cat(prog)[order]
        self.addr = {i: cat(v)[order] for i, v in addr.items()}
        self.stride = {i: cat(v)[order] for i, v in stride.items()}
        self.unit_stride = all(not np.count_nonzero(s != 1) for s in self.stride.values())
        self.queue = {i: cat(v)[order] for i, v in queue.items()}
        self.sval = {i: np.concatenate(v)[order].astype(np.float32) if v else
                     np.zeros(0, dtype=np.float32) for i, v in sval.items()}
        # segments of instances on the same PE, for sharing its ports in order
        size = self.pe.size
        self.shared = size > 1 and bool(np.count_nonzero(self.pe[1:] == self.pe[:-1]))
        if self.shared:
            start = np.ones(size, dtype=bool)
            start[1:] = self.pe[1:] != self.pe[:-1]
            self.seg_first = np.flatnonzero(start)
            self.seg_of = np.cumsum(start) - 1
        self.dirty = False
        self.synced = True

    # -- one cycle -------------------------------------------------------------------------
    def step(self, ce: ComputeEngines, t: int) -> Finished:
        if self.dirty:
            self._sync(ce)
        q, pe, prog = ce.q, self.pe, self.prog
        rem = self.n - prog
        active = rem > 0
        fab_ok = active
        for i in self.fab_in:
            fab_ok = fab_ok & (q.hrdy[self.queue[i]] <= t)
        if self.fab_out:
            qo = self.queue[0]
            fab_ok = fab_ok & (q.cnt[qo] < q.cap[qo])
        # how many elements each PE's remaining ports allow this cycle
        allowed = _BIG
        if self.reads:
            allowed = np.minimum(allowed, ce.rd_left[pe] // self.reads)
        if self.writes:
            allowed = np.minimum(allowed, ce.wr_left[pe] // self.writes)
        if self.fab_out:
            allowed = np.minimum(allowed, ce.ramp_left[pe])
        if self.shared:
            csum = np.cumsum(fab_ok)
            before = (csum - fab_ok)[self.seg_first][self.seg_of]
            rank = csum - fab_ok - before
            go = fab_ok & (rank < allowed)
        else:
            go = fab_ok & (allowed > 0)
        sel = np.flatnonzero(go)
        moved = sel.size
        if moved:
            pos = prog[sel]
            values = [self._read(ce, i, sel, pos) for i in range(1, len(self.operands))]
            result = self.compute(values).astype(np.float32, copy=False)
            self._write(ce, sel, pos, result, t)
            prog[sel] = pos + 1
            pes = pe[sel]
            if self.shared:
                used = np.bincount(pes, minlength=self.pes)
                if self.reads:
                    ce.rd_left -= used * self.reads
                if self.writes:
                    ce.wr_left -= used * self.writes
                if self.fab_out:
                    ce.ramp_left -= used
            else:
                if self.reads:
                    ce.rd_left[pes] -= self.reads
                if self.writes:
                    ce.wr_left[pes] -= self.writes
                if self.fab_out:
                    ce.ramp_left[pes] -= 1
            ce.flag[pes] |= 1
            ce.elements += moved
        if moved < pe.size:
            waiting = active & ~go
            if np.count_nonzero(waiting):
                ce.flag[pe[waiting & ~fab_ok]] |= 2
                ce.flag[pe[waiting & fab_ok]] |= 4
        done = rem == go
        if not np.count_nonzero(done):
            return []
        return self._finish(done)

    def _finish(self, done: np.ndarray) -> Finished:
        out: Finished = []
        fin_member = self.member[done]
        fin_pe = self.pe[done]
        for j in np.unique(fin_member):
            m = self.members[int(j)]
            pes = fin_pe[fin_member == j]
            m.prog[pes] = m.n[pes]
            m.running[pes] = False
            m.count -= pes.size
            out.append((m, pes))
        self.count -= int(fin_pe.size)
        keep = ~done
        # drop finished instances in place: cheaper than a full re-sync
        self.pe, self.member, self.n = self.pe[keep], self.member[keep], self.n[keep]
        self.prog = self.prog[keep]
        self.addr = {i: v[keep] for i, v in self.addr.items()}
        self.stride = {i: v[keep] for i, v in self.stride.items()}
        self.queue = {i: v[keep] for i, v in self.queue.items()}
        self.sval = {i: v[keep] for i, v in self.sval.items()}
        if self.shared:
            size = self.pe.size
            self.shared = size > 1 and bool(np.count_nonzero(self.pe[1:] == self.pe[:-1]))
            if self.shared:
                start = np.ones(size, dtype=bool)
                start[1:] = self.pe[1:] != self.pe[:-1]
                self.seg_first = np.flatnonzero(start)
                self.seg_of = np.cumsum(start) - 1
        return out

    def _read(self, ce: ComputeEngines, i: int, sel: np.ndarray, pos: np.ndarray
              ) -> np.ndarray:
        operand = self.operands[i]
        if isinstance(operand, isa.Mem):
            step = pos if self.unit_stride else pos * self.stride[i][sel]
            return ce.sram_flat[self.addr[i][sel] + step]
        if isinstance(operand, isa.FabIn):
            qi = self.queue[i][sel]
            values = ce.q.pop(qi)
            if ce.events is not None:
                ce.events.append((ce.t, "recv", self.pe[sel].copy(),
                                  ce.ch.cq_color[qi - ce.ch.nch], values.copy()))
            return values
        return self.sval[i][sel]

    def _write(self, ce: ComputeEngines, sel: np.ndarray, pos: np.ndarray,
               values: np.ndarray, t: int) -> None:
        if isinstance(self.operands[0], isa.Mem):
            step = pos if self.unit_stride else pos * self.stride[0][sel]
            ce.sram_flat[self.addr[0][sel] + step] = values
            return
        qo = self.queue[0][sel]
        ce.q.push(qo, values, t + ce.q.lat[qo])
        ce.router.occupancy += qo.size
        if ce.events is not None:
            ce.events.append((t, "send", self.pe[sel].copy(), ce.ch.ch_color[qo],
                              values.copy()))


def cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _shape(op: OpState) -> tuple[str, ...]:
    return (op.ins.op, *(type(o).__name__ for o in op.operands))


def make_groups(ops: list[OpState], pes: int) -> list[OpGroup | Single]:
    """Batch the narrow instructions by shape, in first-instruction order."""
    units: list[OpGroup | Single] = []
    shapes: dict[tuple[str, ...], list[OpState]] = {}
    for op in ops:
        if op.narrow:
            if _shape(op) not in shapes:
                shapes[_shape(op)] = []
                units.append(_Pending(_shape(op)))  # type: ignore[arg-type]
            shapes[_shape(op)].append(op)
        else:
            units.append(Single(op))
    return [OpGroup(shapes[u.shape], pes) if isinstance(u, _Pending) else u for u in units]


class _Pending:
    def __init__(self, shape: tuple[str, ...]) -> None:
        self.shape = shape
