"""In-flight vector instructions: one state block per instruction, all PEs at once.

A vector instruction runs until its n elements are done. Each cycle every PE running it
advances by as many elements as its SIMD width, its share of the memory bandwidth (the
spec's reads and writes per cycle times the word size: 16 B read and 8 B written per cycle
on a WSE-2, as SC22 states it), and its fabric operands allow: one wavelet per cycle in
from a CE queue that has one, one out to the ramp when the router queue behind it has
credit. Several instructions on a PE (the main thread plus microthreads) share its ports in
instruction order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from waferscale.errors import ProgramError, RouteError
from waferscale.fabric.cycle import isa

if TYPE_CHECKING:
    from waferscale.fabric.cycle.program import Program
    from waferscale.fabric.cycle.queues import Queues
    from waferscale.fabric.cycle.router import Router
    from waferscale.fabric.cycle.routing import Channels, RouteTable
    from waferscale.hardware.spec import WaferSpec


class Engines(Protocol):
    """What an in-flight instruction reads and spends of the compute engines' state.

    `ComputeEngines` (ce.py) is the one implementation; ops and fused take this protocol so
    that they need not import ce, which imports them.
    """

    spec: WaferSpec
    pes: int
    prog: Program
    routes: RouteTable
    ch: Channels
    q: Queues
    router: Router
    arg: np.ndarray
    inflight: np.ndarray
    words: int
    offset: dict[str, int]
    sram_flat: np.ndarray
    rd_left: np.ndarray
    wr_left: np.ndarray
    ramp_left: np.ndarray
    flag: np.ndarray
    elements: int
    events: list[tuple[Any, ...]] | None
    t: int

    def resolve(self, source: tuple[str, Any], sel: np.ndarray) -> np.ndarray: ...

    def where_text(self, tid: int, pe: int) -> str: ...


_COMPUTE = {
    "mov": lambda v: v[0],
    "add": lambda v: v[0] + v[1],
    "sub": lambda v: v[0] - v[1],
    "mul": lambda v: v[0] * v[1],
    "max": lambda v: np.maximum(v[0], v[1]),
    "fmac": lambda v: v[0] + v[1] * v[2],
}


_EMPTY = np.zeros(0, dtype=np.int64)


def _int_source(value: Any, pes: int, what: str) -> tuple[str, Any]:
    """Normalise an int / per-PE array / Reg parameter once, at program load."""
    if isinstance(value, isa.Reg):
        return ("reg", value)
    arr = np.asarray(value)
    if arr.ndim == 0:
        return ("const", int(arr))
    flat = arr.reshape(-1)
    if flat.size != pes:
        raise ProgramError(f"{what}: per-PE values must have one entry per PE ({pes}), got "
                           f"shape {arr.shape}")
    return ("arr", flat.astype(np.int64))


class OpState:
    """State of one vector instruction across the grid (who runs it, how far, operands)."""

    def __init__(self, oid: int, gid: int, ins: isa.Vec, engines: Engines) -> None:
        spec, pes = engines.spec, engines.pes
        self.oid, self.gid, self.ins = oid, gid, ins
        self.compute = _COMPUTE[ins.op]
        self.width = spec.simd.width("fp32", isa.SIMD_OP[ins.op])
        self.operands: list[isa.Operand] = [ins.dst, *ins.srcs]
        self.running = np.zeros(pes, dtype=bool)
        self.prog = np.zeros(pes, dtype=np.int64)
        self.n = np.zeros(pes, dtype=np.int64)
        self.count = 0
        # operands of the running PEs, gathered when the set changes (see `_sync`)
        self._dirty = True
        self.group: Any = None      # the fused group that steps this op, if any
        self._idx: np.ndarray | None = None
        self._n = self._prog = np.zeros(0, dtype=np.int64)
        self._addr: dict[int, np.ndarray] = {}
        self._q: dict[int, np.ndarray] = {}
        self._sval: dict[int, np.ndarray] = {}
        self.n_src = _int_source(ins.n, pes, f"op {ins.op} length")
        self.base: dict[int, np.ndarray] = {}
        self.base_src: dict[int, tuple[str, Any]] = {}
        self.queue: dict[int, np.ndarray] = {}
        self.color_src: dict[int, tuple[str, Any]] = {}
        self.sval: dict[int, np.ndarray] = {}
        for i, operand in enumerate(self.operands):
            if isinstance(operand, isa.Mem):
                self.base[i] = np.zeros(pes, dtype=np.int64)
                self.base_src[i] = _int_source(operand.offset, pes, f"{operand.array} offset")
            elif isinstance(operand, (isa.FabIn, isa.FabOut)):
                self.queue[i] = np.zeros(pes, dtype=np.int64)
                self.color_src[i] = _int_source(operand.color, pes, "fabric colour")
            else:
                self.sval[i] = np.zeros(pes, dtype=np.float32)
        # memory is bandwidth: bytes per element against the spec's bytes per cycle
        self.reads = 4 * sum(isinstance(s, isa.Mem) for s in ins.srcs)
        self.writes = 4 * int(isinstance(ins.dst, isa.Mem))
        read_bw = spec.mem_reads_per_cycle * spec.mem_word_bits // 8
        write_bw = spec.mem_writes_per_cycle * spec.mem_word_bits // 8
        if self.reads > read_bw or self.writes > write_bw:
            raise ProgramError(
                f"{ins.op} {ins.label!r}: needs {self.reads} bytes read and {self.writes} "
                f"written per element, but a PE moves {read_bw} / {write_bw} bytes per "
                f"cycle; pass an operand as a Scalar")
        self.fab_in = [i for i, o in enumerate(self.operands) if isinstance(o, isa.FabIn)]
        self.fab_out = isinstance(ins.dst, isa.FabOut)
        # at most one element per cycle: fabric ops, or a SIMD width of one
        self.narrow = self.width == 1 or bool(self.fab_in) or self.fab_out

    # -- issue -----------------------------------------------------------------------------
    def launch(self, ce: Engines, sel: np.ndarray, tid: int) -> None:
        """Start the instruction on PEs ``sel``: resolve operands and check them there."""
        if self.group is not None:
            self.group.writeback()
        self._writeback()
        n = ce.resolve(self.n_src, sel)
        if (n < 0).any():
            pe = int(sel[np.argmax(n < 0)])
            raise ProgramError(f"{ce.where_text(tid, pe)}: {self.ins.op} length "
                               f"{int(n[np.argmax(n < 0)])} is negative")
        for i, operand in enumerate(self.operands):
            if isinstance(operand, isa.Mem):
                base = ce.resolve(self.base_src[i], sel)
                length = ce.prog.arrays[operand.array].length
                last = base + np.maximum(n - 1, 0) * operand.stride
                bad = (base < 0) | (last >= length) | (last < 0)
                if bad.any():
                    j = int(np.argmax(bad))
                    raise ProgramError(
                        f"{ce.where_text(tid, int(sel[j]))}: {self.ins.op} reads/writes "
                        f"{operand.array}[{int(base[j])}:{int(last[j]) + 1}:{operand.stride}] "
                        f"outside its {length} elements")
                self.base[i][sel] = base
            elif isinstance(operand, (isa.FabIn, isa.FabOut)):
                color = ce.resolve(self.color_src[i], sel)
                ce.routes.check_color(int(color.max()))
                ce.routes.check_color(int(color.min()))
                table = ce.ch.cq_of if isinstance(operand, isa.FabIn) else ce.ch.up_of
                q = table[color, sel]
                if (q < 0).any():
                    j = int(np.argmax(q < 0))
                    need = ("deliver it to the CE (tx lacks R)"
                            if isinstance(operand, isa.FabIn) else
                            "accept it from the ramp (rx lacks R)")
                    verb = "reads" if isinstance(operand, isa.FabIn) else "sends"
                    raise RouteError(f"{ce.where_text(tid, int(sel[j]))}: {self.ins.op} {verb} "
                                     f"colour {int(color[j])}, but the PE's route for colour "
                                     f"{int(color[j])} does not {need}")
                self.queue[i][sel] = q
            elif isinstance(operand, isa.Scalar):
                value = np.asarray(operand.value, dtype=np.float32)
                self.sval[i][sel] = value if value.ndim == 0 else value.reshape(-1)[sel]
            else:
                self.sval[i][sel] = ce.arg[sel]
        self.prog[sel] = 0
        self.n[sel] = n
        self.running[sel] = True
        self.count += sel.size
        ce.inflight[sel] += 1
        self._dirty = True
        if self.group is not None:
            self.group.append(self, ce, sel)

    # -- one cycle -------------------------------------------------------------------------
    def address(self, ce: Engines, i: int, idx: np.ndarray) -> np.ndarray:
        """Flat SRAM index of element 0 of memory operand ``i`` on PEs ``idx``."""
        operand = self.operands[i]
        assert isinstance(operand, isa.Mem)
        return idx * ce.words + ce.offset[operand.array] + self.base[i][idx]

    def _writeback(self) -> None:
        """Store the short progress array back into the per-PE one and drop the cache."""
        if self._idx is not None and self._idx.size:
            self.prog[self._idx] = self._prog
        self._idx = None
        self._dirty = True

    def _sync(self, ce: Engines) -> None:
        """Gather the running PEs' operands once; steps then work on these short arrays."""
        self._writeback()
        idx = self._idx = np.flatnonzero(self.running)
        self._n = self.n[idx]
        self._prog = self.prog[idx]
        self._addr = {i: self.address(ce, i, idx) for i in self.base}
        self._q = {i: q[idx] for i, q in self.queue.items()}
        self._sval = {i: v[idx] for i, v in self.sval.items()}
        self._dirty = False

    def step(self, ce: Engines, t: int) -> np.ndarray:
        """Advance every running instance; return the PEs that finished this cycle."""
        if self._dirty:
            self._sync(ce)
        idx, prog, q = self._idx, self._prog, ce.q
        assert idx is not None
        rem = self._n - prog
        k = np.minimum(rem, self.width)
        if self.reads:
            k = np.minimum(k, ce.rd_left[idx] // self.reads)
        if self.writes:
            k = np.minimum(k, ce.wr_left[idx] // self.writes)
        for i in self.fab_in:
            k = np.where(q.hrdy[self._q[i]] <= t, np.minimum(k, 1), 0)
        if self.fab_out:
            qo = self._q[0]
            k = np.where((q.cnt[qo] < q.cap[qo]) & (ce.ramp_left[idx] > 0), np.minimum(k, 1), 0)
        moving = k > 0
        nmov = int(np.count_nonzero(moving))
        if nmov:
            ce.flag[idx[moving]] |= 1
        if self.narrow:
            kmax = 1 if nmov else 0
        else:
            kmax = int(k.max()) if nmov else 0
        for lane in range(kmax):
            if lane == 0 and kmax == 1 and nmov == moving.size:
                sel = None
                pos = prog
            else:
                sel = np.flatnonzero(k > lane)
                pos = prog[sel] + lane
            values = [self._read(ce, i, sel, pos) for i in range(1, len(self.operands))]
            result = self.compute(values).astype(np.float32, copy=False)
            self._write(ce, sel, pos, result, t)
        if kmax:
            prog += k
            if self.reads:
                ce.rd_left[idx] -= k * self.reads
            if self.writes:
                ce.wr_left[idx] -= k * self.writes
            if self.fab_out:
                ce.ramp_left[idx] -= k
            ce.elements += nmov if kmax == 1 else int(k.sum())
        done = rem == k
        if not np.count_nonzero(done):
            return _EMPTY
        fin = idx[done]
        self.running[fin] = False
        self.count -= fin.size
        self._dirty = True
        return fin

    def _read(self, ce: Engines, i: int, sel: np.ndarray | None,
              pos: np.ndarray) -> np.ndarray:
        operand = self.operands[i]
        if isinstance(operand, isa.Mem):
            addr = self._addr[i] if sel is None else self._addr[i][sel]
            return ce.sram_flat[addr + pos * operand.stride]
        if isinstance(operand, isa.FabIn):
            qi = self._q[i] if sel is None else self._q[i][sel]
            values = ce.q.pop(qi)
            if ce.events is not None:
                pes = self._idx if sel is None else self._idx[sel]  # type: ignore[index]
                ce.events.append((ce.t, "recv", pes.copy(), ce.ch.cq_color[qi - ce.ch.nch],
                                  values.copy()))
            return values
        return self._sval[i] if sel is None else self._sval[i][sel]

    def _write(self, ce: Engines, sel: np.ndarray | None, pos: np.ndarray,
               values: np.ndarray, t: int) -> None:
        operand = self.operands[0]
        if isinstance(operand, isa.Mem):
            addr = self._addr[0] if sel is None else self._addr[0][sel]
            ce.sram_flat[addr + pos * operand.stride] = values
            return
        qo = self._q[0] if sel is None else self._q[0][sel]
        ce.q.push(qo, values, t + ce.q.lat[qo])
        ce.router.occupancy += qo.size
        if ce.events is not None:
            pes = self._idx if sel is None else self._idx[sel]  # type: ignore[index]
            ce.events.append((t, "send", pes.copy(), ce.ch.ch_color[qo], values.copy()))

    def describe_stall(self, ce: Engines, pe: int, t: int) -> str:
        """Why the instance on ``pe`` is not moving, for deadlock reports."""
        if self.group is not None:
            self.group.writeback()
        self._writeback()
        text = f"op {self.ins.label or self.ins.op!r} at element {int(self.prog[pe])}/" \
               f"{int(self.n[pe])}"
        for i in self.fab_in:
            qi = int(self.queue[i][pe])
            if not ce.q.ready(np.array([qi]), t)[0]:
                color = int(ce.ch.cq_color[qi - ce.ch.nch])
                text += f", waiting for a wavelet on colour {color} (CE queue empty)"
        if self.fab_out:
            qo = int(self.queue[0][pe])
            if ce.q.cnt[qo] >= ce.q.cap[qo]:
                text += (f", cannot send on colour {int(ce.ch.ch_color[qo])}: router queue "
                         f"full ({int(ce.q.cnt[qo])}/{int(ce.q.cap[qo])})")
        return text

