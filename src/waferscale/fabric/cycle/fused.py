"""Vector instructions of the same shape stepped together.

A PE program has many instructions of the same form, the stencil's twelve "memory to
fabric" and "fabric to memory" moves for instance. Their running instances, across all
PEs and all such instructions, are concatenated into one batch per shape, so a cycle costs
a few NumPy calls per shape instead of per instruction. Instructions that run at most one
element per cycle (fabric operands or a SIMD width of one) are batched; the few wider ones
keep their own state (`Single`).

Ports stay a per-PE budget spent in launch order: when several instances on one PE are
ready, they are granted one per round, earliest launched first, while the PE's bandwidth
lasts.
"""

from __future__ import annotations

import numpy as np

from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.ops import Engines, OpState

Finished = list[tuple[OpState, np.ndarray]]
_BIG = np.int64(1 << 40)


class Single:
    """A wide instruction stepped on its own."""

    #: stepped on its own, not as a batch of narrow instances (`OpGroup`)
    fused = False

    def __init__(self, op: OpState) -> None:
        self.op = op
        self.members = [op]

    @property
    def count(self) -> int:
        return self.op.count

    def step(self, ce: Engines, t: int) -> Finished:
        fin = self.op.step(ce, t)
        return [(self.op, fin)] if fin.size else []


class OpGroup:
    """Narrow instructions with the same operation and operand kinds.

    Instances live in flat arrays in launch order; a launch appends, a finish removes, so
    nothing is rebuilt while the batch runs.
    """

    fused = True

    def __init__(self, members: list[OpState], pes: int) -> None:
        self.members = members
        self.pes = pes
        first = members[0]
        self.operands = first.operands
        self.compute = first.compute
        self.reads, self.writes = first.reads, first.writes
        self.fab_in, self.fab_out = first.fab_in, first.fab_out
        self.count = 0
        self.index = {id(m): j for j, m in enumerate(members)}
        self.mem_ops = [i for i, o in enumerate(self.operands) if isinstance(o, isa.Mem)]
        self.fab_ops = [i for i, o in enumerate(self.operands)
                        if isinstance(o, (isa.FabIn, isa.FabOut))]
        self.val_ops = [i for i, o in enumerate(self.operands)
                        if isinstance(o, (isa.Scalar, isa.Arg))]
        empty_i = np.zeros(0, dtype=np.int64)
        self.pe, self.member, self.n, self.prog = empty_i, empty_i, empty_i, empty_i
        self.addr = {i: empty_i for i in self.mem_ops}
        self.stride = {i: empty_i for i in self.mem_ops}
        self.queue = {i: empty_i for i in self.fab_ops}
        self.sval = {i: np.zeros(0, dtype=np.float32) for i in self.val_ops}
        self.unit_stride = True
        self.mark = np.zeros(pes, dtype=np.int64)
        # instances per PE: sharing logic is needed only while some PE has two
        self.per_pe = np.zeros(pes, dtype=np.int64)
        self.multi = False
        self.zero_len = False
        for m in members:
            m.group = self

    def writeback(self) -> None:
        """Progress lives here while instances run; members read it back for reports."""
        for j, m in enumerate(self.members):
            sel = self.member == j
            if np.count_nonzero(sel):
                m.prog[self.pe[sel]] = self.prog[sel]

    def append(self, m: OpState, ce: Engines, sel: np.ndarray) -> None:
        """Add the instances ``m`` just launched on PEs ``sel``."""
        size = sel.size
        self.pe = np.concatenate([self.pe, sel])
        self.member = np.concatenate([self.member, np.full(size, self.index[id(m)])])
        self.n = np.concatenate([self.n, m.n[sel]])
        self.prog = np.concatenate([self.prog, np.zeros(size, dtype=np.int64)])
        for i in self.mem_ops:
            self.addr[i] = np.concatenate([self.addr[i], m.address(ce, i, sel)])
            stride = m.operands[i].stride  # type: ignore[union-attr]
            self.unit_stride &= stride == 1
            self.stride[i] = np.concatenate([self.stride[i], np.full(size, stride)])
        for i in self.fab_ops:
            self.queue[i] = np.concatenate([self.queue[i], m.queue[i][sel]])
        for i in self.val_ops:
            self.sval[i] = np.concatenate([self.sval[i], m.sval[i][sel]])
        self.count += size
        self.per_pe[sel] += 1
        self.multi = self.multi or bool(np.count_nonzero(self.per_pe[sel] > 1))
        self.zero_len = self.zero_len or bool(np.count_nonzero(m.n[sel] == 0))

    # -- one cycle -------------------------------------------------------------------------
    def _ports(self, ce: Engines, pes: np.ndarray) -> np.ndarray:
        """Elements the ports each PE has left allow this group this cycle."""
        allowed = np.full(pes.size, _BIG)
        if self.reads:
            allowed = np.minimum(allowed, ce.rd_left[pes] // self.reads)
        if self.writes:
            allowed = np.minimum(allowed, ce.wr_left[pes] // self.writes)
        if self.fab_out:
            allowed = np.minimum(allowed, ce.ramp_left[pes])
        return allowed

    def _spend(self, ce: Engines, pes: np.ndarray) -> None:
        """Charge one element's ports to each PE in ``pes`` (distinct)."""
        if self.reads:
            ce.rd_left[pes] -= self.reads
        if self.writes:
            ce.wr_left[pes] -= self.writes
        if self.fab_out:
            ce.ramp_left[pes] -= 1

    def _grant(self, ce: Engines, cand: np.ndarray) -> np.ndarray:
        """Which candidates move: per PE, in launch order, while its ports last."""
        if not self.multi:      # one instance per PE: nothing to share within the group
            go = cand[self._ports(ce, self.pe[cand]) > 0]
            self._spend(ce, self.pe[go])
            return go
        # rounds over positions in ``cand`` (sorted), each granting the first remaining
        # candidate of every PE; a mask keeps the grants in launch order without a sort
        pe_of = self.pe[cand]
        granted = np.zeros(cand.size, dtype=bool)
        rest = np.arange(cand.size)
        while rest.size:
            pes = pe_of[rest]
            order = np.arange(rest.size)
            self.mark[pes[::-1]] = order[::-1]
            first = self.mark[pes] == order
            head_pes = pes[first]
            ok = self._ports(ce, head_pes) > 0
            if not np.count_nonzero(ok):
                break
            self._spend(ce, head_pes[ok])
            granted[rest[first][ok]] = True
            rest = rest[~first]
        return cand[granted]

    def step(self, ce: Engines, t: int) -> Finished:
        q, pe, prog = ce.q, self.pe, self.prog
        rem = self.n - prog
        fab_ok = rem > 0
        for i in self.fab_in:
            fab_ok = fab_ok & (q.hrdy[self.queue[i]] <= t)
        if self.fab_out:
            qo = self.queue[0]
            fab_ok = fab_ok & (q.cnt[qo] < q.cap[qo])
        sel = self._grant(ce, np.flatnonzero(fab_ok))
        moved = sel.size
        done = sel[:0]
        if moved:
            pos = prog[sel]
            values = [self._read(ce, i, sel, pos) for i in range(1, len(self.operands))]
            result = self.compute(values).astype(np.float32, copy=False)
            self._write(ce, sel, pos, result, t)
            pos += 1
            prog[sel] = pos
            ce.flag[pe[sel]] |= 1
            ce.elements += moved
            done = sel[pos == self.n[sel]]
        if self.zero_len:
            done = np.union1d(done, np.flatnonzero(rem == 0))
        if not done.size:
            return []
        return self._finish(done)

    def _finish(self, done_idx: np.ndarray) -> Finished:
        out: Finished = []
        done = np.zeros(self.pe.size, dtype=bool)
        done[done_idx] = True
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
        self.per_pe[fin_pe] -= 1
        if self.multi:
            self.multi = bool(np.count_nonzero(self.per_pe > 1))
        if self.zero_len:
            self.zero_len = bool(np.count_nonzero(self.n[~done] == 0))
        keep = ~done
        self.pe, self.member, self.n = self.pe[keep], self.member[keep], self.n[keep]
        self.prog = self.prog[keep]
        self.addr = {i: v[keep] for i, v in self.addr.items()}
        self.stride = {i: v[keep] for i, v in self.stride.items()}
        self.queue = {i: v[keep] for i, v in self.queue.items()}
        self.sval = {i: v[keep] for i, v in self.sval.items()}
        return out

    def _read(self, ce: Engines, i: int, sel: np.ndarray, pos: np.ndarray
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

    def _write(self, ce: Engines, sel: np.ndarray, pos: np.ndarray,
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
