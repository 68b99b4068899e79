"""One time step of the SC22 stencil as its code runs it, from the mechanisms, per PE.

Sources (docs/stencil.md cites them): [R0] the Cerebras SDK examples, tag v0.4.0,
``examples/stencil/`` (the code closest to the paper); [P] Jacquelin, Araya-Polo, Meng,
"Massively scalable stencil algorithm", SC22 (arXiv 2204.03775); [D] the SDK documentation.

What one PE does per time step ([R0]):

1. zero the accumulator (one FMOV over its nz column);
2. cut the column into ``1 + nz // 401`` chunks; per chunk arm 4 asynchronous receives (one
   per direction) and start 4 asynchronous sends of its b values;
3. the radius-4 multicast of each direction is a ring of router switch positions: in each of
   5 *turns* one PE of every 5 is the root, sends its b values and gets a copy back, and the 4
   PEs downstream receive them; the root's send-completion tasks emit the control wavelets
   that turn the switches for the next turn. So every PE receives 5b values per direction
   (its own among them), 20b per chunk, each multiplied by its coefficient on the way into a
   buffer (an FMUL from the fabric), and sends 4b;
4. only when all 4 directions have arrived does the reduction run (a 4-D FADD of the 20
   slices into the accumulator), synchronously; then the next chunk is armed;
5. after the last chunk: 8 FMACs over nz for the z terms and one FSUB.

The receive phase is where neighbours meet. The model (`solve`) runs it on a torus of
(r + 1) x (r + 1) PEs, the period of the turn pattern, so it is an interior PE's steady state
exactly: streams flow at max-min fair rates under each PE's compute engine, which issues one
element per cycle for all its microthreads together (`Assumptions`), a root spends two
(its send and its own copy back); a turn starts when the previous one in its line is done and
its switch hand-off (`handoff_cycles`) has passed; a chunk's first turn starts when every PE
it reaches has armed its receive. What a PE does not spend computing in that phase is the
*fabric wait*: waiting for neighbours whose turns or reductions run late.

Everything else on a PE is serial (the task that runs the reduction runs it synchronously),
costed at the spec's SIMD widths and SRAM ports, plus SRAM bank conflicts (`bank_stall`,
the *memory stall*) and the fixed parts: task activations, DSD set-ups, switch hand-offs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from waferscale.errors import SpecError
from waferscale.fabric.timing import vector_cycles
from waferscale.hardware.spec import WaferSpec
from waferscale.kernels.overhead import OVERHEADS, Overheads

RADIUS = 4
DIRECTIONS = 4
#: [R0]: ``numChunks = 1 + nz // 401``: a chunk holds at most 401 cells.
CHUNK_LIMIT = 401
WORD = 4  # fp32 bytes
#: [R0] arrays besides the 20 receive slices: u, u_prev, acc (velocity and 2u folded into
#: the coefficients), 3 words per cell. 3 x 1000 x 4 B + 20 x 334 x 4 B = 38.7 KB (the
#: 38.8 KB the reference sheet reports for nz = 1000).
STATE_ARRAYS = 3


@dataclass(frozen=True)
class Assumptions:
    """The constants of the schedule that no source publishes (docs/stencil.md, table
    "Assumptions", gives the reasoning of each).

    ``task_activation_cycles``, ``dsd_setup_cycles``: the per-instruction overheads
    (`overhead.Overheads`, whose table they default to).
    ``turn_alignment``: which PEs are roots at the same turn. "aligned": every direction's
    ring is set from the PE's fabric coordinate (x mod 5 for east and west, y mod 5 for
    south and north), so a PE roots its east and west turns together; "mirrored": west and
    north count from the other end.
    ``single_issue``: the compute engine issues one instruction (one SIMD group) per cycle
    for all its threads together; ``False`` lets microthreads run beside each other, limited
    only by the ramp (one wavelet per cycle in and out).
    ``bank_conflicts``: charge SRAM bank conflicts (`bank_stall`).
    """

    task_activation_cycles: float = OVERHEADS.task_activation_cycles
    dsd_setup_cycles: float = OVERHEADS.dsd_setup_cycles
    turn_alignment: str = "aligned"
    single_issue: bool = True
    bank_conflicts: bool = True

    def __post_init__(self) -> None:
        for name in ("task_activation_cycles", "dsd_setup_cycles"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 \
                    or not math.isfinite(value):
                raise SpecError(f"stencil assumption {name} must be a finite number >= 0, "
                                f"got {value!r}")
        if self.turn_alignment not in ("aligned", "mirrored"):
            raise SpecError(f"stencil assumption turn_alignment {self.turn_alignment!r}: use "
                            f"'aligned' or 'mirrored'")


ASSUMED = Assumptions()

#: Counted from [R0] (inferred, stencil-sc22.md): per chunk 4 directions x (3 send-completion
#: tasks + 1 receive-completion task); per step one more (the send task re-activated). 17
#: activations per step at one chunk, 49 at three (nz = 1000).
TASKS_PER_CHUNK = DIRECTIONS * (3 + 1)
TASKS_PER_STEP = 1
#: 2 control wavelets per send (8 per chunk per PE), each a one-wavelet send from a task.
CONTROL_WAVELETS_PER_SEND = 2


def chunk_sizes(nz: int) -> list[int]:
    """[R0]'s z-chunks: ``1 + nz // 401`` of ``ceil(nz / chunks)`` cells (the last shorter)."""
    n = 1 + nz // CHUNK_LIMIT
    b = math.ceil(nz / n)
    return [b] * (n - 1) + [nz - b * (n - 1)]


def sram_bytes(nz: int) -> int:
    """SRAM of [R0]'s arrays: u, u_prev, acc over nz and 20 slices of the largest chunk."""
    return WORD * (STATE_ARRAYS * nz + DIRECTIONS * (RADIUS + 1) * max(chunk_sizes(nz)))


def max_nz(sram: int) -> int:
    """The deepest column whose arrays fit ``sram`` bytes (0 if none)."""
    lo, hi = 0, sram // (WORD * STATE_ARRAYS) + 1
    while lo < hi:                      # sram_bytes grows with nz: bisect
        mid = (lo + hi + 1) // 2
        if sram_bytes(mid) <= sram:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ------------------------------------------------------------------------ op costs ------
def element_cycles(spec: WaferSpec, op: str, reads: int, writes: int, fabric: bool) -> float:
    """CE cycles per element of an fp32 instruction: its SIMD width, the SRAM ports, and for a
    fabric operand the ramp (one wavelet per cycle)."""
    per = float(vector_cycles(spec, 1 << 20, "fp32", op, reads, writes, element_bytes=WORD))
    per /= 1 << 20
    if fabric:
        per = max(per, 1.0 / spec.ramp_wavelets_per_cycle)
    return per


def bank_stall(spec: WaferSpec, elements: float, op: str, reads: int, writes: int) -> float:
    """Expected cycles an instruction over ``elements`` waits on SRAM bank conflicts.

    The SRAM is ``spec.sram_banks`` banks [S]; we assume each serves one ``mem_word_bits``
    access per cycle, consecutive words in consecutive banks, and that where each array
    starts is unknown (uniform over the banks). An instruction's operand streams advance in
    lockstep, so two of them meet in one bank on a cycle with probability r_i * r_j / banks,
    r = words each touches per cycle, and such a cycle costs one more.
    """
    issue = float(vector_cycles(spec, elements, "fp32", op, reads, writes, element_bytes=WORD))
    if issue <= 0:
        return 0.0
    rate = elements / issue * WORD / (spec.mem_word_bits / 8)     # words per cycle per stream
    streams = reads + writes
    pairs = streams * (streams - 1) / 2
    return issue * pairs * rate * rate / spec.sram_banks


@dataclass(frozen=True)
class Op:
    """One vector instruction of the schedule: cycles per element, memory operands, FLOPs."""

    name: str
    op: str
    reads: int
    writes: int
    flops: int
    count: int
    fabric: bool = False


#: The instructions [R0] runs per cell and step (stencil-sc22.md): counts per cell.
OPS = (
    Op("zero the accumulator (FMOV)", "add", 0, 1, 0, 1),
    Op("send own value (FMOV to the fabric)", "add", 1, 0, 0, DIRECTIONS, fabric=True),
    Op("receive x coefficient (FMUL from the fabric)", "mul", 0, 1, 1,
       DIRECTIONS * (RADIUS + 1), fabric=True),
    Op("sum the 20 slices (4-D FADD)", "add", 2, 1, 1, DIRECTIONS * (RADIUS + 1)),
    Op("z terms (FMAC)", "fmac", 2, 1, 2, 2 * RADIUS),
    Op("update (FSUB)", "add", 2, 1, 1, 1),
)


def cell_counts() -> dict[str, float]:
    """Per cell-step: FLOPs executed, SRAM accesses (32-bit), wavelets received and sent."""
    flops = sum(o.flops * o.count for o in OPS)
    accesses = sum((o.reads + o.writes) * o.count for o in OPS)
    return {"flops": float(flops), "memory_accesses": float(accesses),
            "wavelets_received": float(DIRECTIONS * (RADIUS + 1)),
            "wavelets_sent": float(DIRECTIONS),
            "element_ops": float(sum(o.count for o in OPS))}


def _op(name: str) -> Op:
    return next(o for o in OPS if o.name.startswith(name))


# ------------------------------------------------------------------- the turn model -----
@dataclass(frozen=True)
class Schedule:
    """One steady-state time step of an interior PE, in cycles, and its parts."""

    nz: int
    chunks: tuple[int, ...]
    step_cycles: float
    phase_cycles: tuple[float, ...]   # per chunk: receive phase (max arm -> max done)
    serial_cycles: tuple[float, ...]  # per chunk: work after it (reduction, and at the end
    #                                   of the step the z terms, update, zeroing, arming)
    serial_stalls: tuple[float, ...]  # of which bank-conflict stalls
    phase_work: tuple[float, ...]     # CE cycles issued in each receive phase
    busy_cycles: float                # CE issuing: instructions, tasks, DSD set-ups
    memory_stall_cycles: float        # waiting on SRAM bank conflicts
    fabric_wait_cycles: float         # the rest: waiting on the fabric and on neighbours
    parts: dict[str, float]           # busy cycles by named part
    handoff_cycles: float
    task_activations: int
    dsd_setups: int
    assumptions: Assumptions

    @property
    def shares(self) -> dict[str, float]:
        return {"busy": self.busy_cycles / self.step_cycles,
                "memory_stall": self.memory_stall_cycles / self.step_cycles,
                "fabric_wait": self.fabric_wait_cycles / self.step_cycles}

    def as_dict(self) -> dict[str, Any]:
        return {"nz": self.nz, "chunks": list(self.chunks), "step_cycles": self.step_cycles,
                "cycles_per_cell": self.step_cycles / self.nz,
                "phase_cycles": list(self.phase_cycles),
                "serial_cycles": list(self.serial_cycles), "busy_cycles": self.busy_cycles,
                "memory_stall_cycles": self.memory_stall_cycles,
                "fabric_wait_cycles": self.fabric_wait_cycles, "shares": self.shares,
                "busy_parts": dict(self.parts), "handoff_cycles": self.handoff_cycles,
                "task_activations_per_step": self.task_activations,
                "dsd_setups_per_step": self.dsd_setups,
                "assumptions": {k: getattr(self.assumptions, k) for k in
                                ("task_activation_cycles", "dsd_setup_cycles",
                                 "turn_alignment", "single_issue", "bank_conflicts")}}


def handoff_cycles(spec: WaferSpec, a: Assumptions) -> float:
    """From a root's last data wavelet leaving its CE to the next root's first wavelet in a
    receiver's CE: the send-completion task starts, sets up and issues a one-wavelet send
    (the control wavelet), which goes up the ramp and one hop to the next router, whose switch
    turns; the next root's data, waiting on its ramp, then goes down a receiver's ramp."""
    return a.task_activation_cycles + a.dsd_setup_cycles + 1 + 2 * spec.ramp_cycles \
        + spec.hop_cycles


def _membership(period: int) -> tuple[np.ndarray, np.ndarray]:
    """[PE, stream] membership on the period x period torus, and each stream's PE order.

    Streams are (direction, line): east, west along rows (line = y), south, north along
    columns (line = x). ``order[s, k]`` is the PE at position k of stream s's line.
    """
    n_pe = period * period
    order = np.zeros((DIRECTIONS * period, period), dtype=int)
    for d in range(DIRECTIONS):
        for line in range(period):
            for k in range(period):
                order[d * period + line, k] = line * period + k if d < 2 else k * period + line
    member = np.zeros((n_pe, DIRECTIONS * period))
    for s in range(DIRECTIONS * period):
        member[order[s], s] = 1.0
    return member, order


def _root_position(direction: int, turn: int, period: int, alignment: str) -> int:
    if alignment == "mirrored" and direction in (1, 3):
        return (-turn) % period
    return turn % period


def _max_min_rates(coef: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Max-min fair rates of the active columns of ``coef`` [PE, job] under unit capacity
    per PE (progressive filling): every job's rate rises together until a PE is full; the
    jobs through it stop; the rest go on."""
    rate = np.zeros(coef.shape[1])
    free = active.copy()
    used = np.zeros(coef.shape[0])
    while free.any():
        load = coef[:, free].sum(axis=1)
        touched = load > 0
        if not touched.any():
            break
        inc = np.full(coef.shape[0], np.inf)
        inc[touched] = (1.0 - used[touched]) / load[touched]
        step = max(float(inc.min()), 0.0)
        rate[free] += step
        used = used + load * step
        full = touched & (inc <= step + 1e-12)
        free &= ~(coef[full] > 0).any(axis=0)
    return rate


@lru_cache(maxsize=128)
def _solve_torus(chunks: tuple[int, ...], recv: float, send: float, task_work: float,
                 handoff: float, serial: tuple[float, ...], alignment: str, radius: int,
                 steps: int = 3) -> tuple[tuple[float, ...], float]:
    """Receive phases of ``steps`` time steps on the (r+1) x (r+1) torus; returns the last
    step's per-chunk phase durations (max arm -> max done) and its period."""
    period = radius + 1
    n_pe = period * period
    member, order = _membership(period)
    n_streams = member.shape[1]
    # local jobs: each PE's task work in the phase (control wavelets, completion tasks)
    coef_local = np.eye(n_pe)
    arm = np.zeros(n_pe)
    starts: list[float] = []
    phases: list[list[float]] = []
    for _ in range(steps):
        step_phases = []
        starts.append(float(arm.max()))
        for c, b in enumerate(chunks):
            turn = np.zeros(n_streams, dtype=int)
            remaining = np.full(n_streams, float(b))
            begin = arm[order].max(axis=1)          # every PE of the line has armed
            done = np.full(n_streams, np.inf)
            local_left = np.full(n_pe, float(task_work))
            local_done = np.where(local_left > 0, np.inf, arm)
            t = float(min(begin.min(), arm.min()))
            while True:
                streaming = (turn < period) & (begin <= t + 1e-9)
                local = (local_left > 1e-9) & (arm <= t + 1e-9)
                coef = np.zeros((n_pe, n_streams + n_pe))
                coef[:, :n_streams] = member * recv
                for s in np.flatnonzero(streaming):
                    d = s // period
                    root = order[s, _root_position(d, int(turn[s]), period, alignment)]
                    coef[root, s] += send
                coef[:, n_streams:] = coef_local
                active = np.concatenate([streaming, local])
                coef[:, ~active] = 0.0
                rate = _max_min_rates(coef, active)
                left = np.concatenate([remaining, local_left])
                with np.errstate(divide="ignore", invalid="ignore"):
                    finish = np.where(active & (rate > 0), t + left / np.where(rate > 0, rate,
                                                                              1.0), np.inf)
                pending = np.concatenate([np.where((turn < period) & ~streaming, begin, np.inf),
                                          np.where((local_left > 1e-9) & ~local, arm, np.inf)])
                t_next = float(min(finish.min(), pending.min()))
                if not math.isfinite(t_next):
                    break
                moved = rate * (t_next - t)
                remaining -= np.where(streaming, moved[:n_streams], 0.0)
                local_left -= np.where(local, moved[n_streams:], 0.0)
                t = t_next
                for s in np.flatnonzero(streaming & (remaining <= 1e-6 * max(b, 1))):
                    turn[s] += 1
                    if turn[s] < period:
                        remaining[s] = float(b)
                        begin[s] = t + handoff
                    else:
                        remaining[s] = 0.0
                        done[s] = t
                finished_local = local & (local_left <= 1e-6 * max(task_work, 1.0))
                local_left[finished_local] = 0.0
                local_done[finished_local] = t
                if (turn >= period).all() and (local_left <= 0).all():
                    break
            # a PE is done when the 4 lines through it are done and its own tasks are
            pe_done = np.full(n_pe, -np.inf)
            for s in range(n_streams):
                pe_done[order[s]] = np.maximum(pe_done[order[s]], done[s])
            pe_done = np.maximum(pe_done, local_done)
            step_phases.append(float(pe_done.max() - arm.max()))
            arm = pe_done + serial[c]
        phases.append(step_phases)
    starts.append(float(arm.max()))
    return tuple(phases[-1]), starts[-1] - starts[-2]


def solve(spec: WaferSpec, nz: int, assumptions: Assumptions = ASSUMED) -> Schedule:
    """The steady-state time step of an interior PE for a column of ``nz`` cells."""
    a = assumptions
    chunks = tuple(chunk_sizes(nz))
    t_act, t_dsd = a.task_activation_cycles, a.dsd_setup_cycles
    recv_op, send_op = _op("receive"), _op("send")
    fadd, fmac, fsub, zero = _op("sum"), _op("z terms"), _op("update"), _op("zero")
    recv = element_cycles(spec, recv_op.op, recv_op.reads, recv_op.writes, True)
    send = element_cycles(spec, send_op.op, send_op.reads, send_op.writes, True)
    per_direction_recv = RADIUS + 1

    def cycles(o: Op, n: float) -> float:
        return float(vector_cycles(spec, n, "fp32", o.op, o.reads, o.writes,
                                   element_bytes=WORD))

    def stall(o: Op, n: float) -> float:
        return bank_stall(spec, n, o.op, o.reads, o.writes) if a.bank_conflicts else 0.0

    # tasks and DSDs during a receive phase: 3 tasks per send, 3 of the 4 receive
    # completions (the 4th runs the reduction), the control wavelets (set-up + one wavelet)
    control = DIRECTIONS * CONTROL_WAVELETS_PER_SEND
    phase_tasks = DIRECTIONS * 3 + (DIRECTIONS - 1)
    task_work = phase_tasks * t_act + control * (t_dsd + send)
    arm_work = 2 * DIRECTIONS * t_dsd                 # 4 receives + 4 sends set up
    end_work = (fmac.count * (t_dsd + cycles(fmac, nz)) + fsub.count * (t_dsd + cycles(fsub, nz))
                + TASKS_PER_STEP * t_act + t_dsd + cycles(zero, nz))
    end_stall = fmac.count * stall(fmac, nz) + fsub.count * stall(fsub, nz) + stall(zero, nz)
    serial, serial_stall = [], []
    for i, b in enumerate(chunks):
        # the 4th receive-completion task runs the 4-D FADD (one instruction, one set-up)
        s = t_act + t_dsd + cycles(fadd, fadd.count * b)
        st = stall(fadd, fadd.count * b)
        s += st + arm_work
        if i == len(chunks) - 1:
            s += end_work + end_stall
            st += end_stall
        serial.append(s)
        serial_stall.append(st)
    handoff = handoff_cycles(spec, a)
    if a.single_issue:
        phases, period = _solve_torus(chunks, recv, send, task_work, handoff, tuple(serial),
                                      a.turn_alignment, RADIUS)
    else:
        # the ramp is the only shared resource: 20b wavelets in, one per cycle
        phases = tuple(float(DIRECTIONS * per_direction_recv * b / spec.ramp_wavelets_per_cycle
                             + per_direction_recv * handoff) for b in chunks)
        period = sum(phases) + sum(serial)
    cells = float(nz)
    fixed = Overheads(t_act, t_dsd)
    tasks = TASKS_PER_CHUNK * len(chunks) + TASKS_PER_STEP
    dsds = len(chunks) * (2 * DIRECTIONS + control + 1) + fmac.count + fsub.count + 1
    busy_parts = {
        "receive FMULs": recv * recv_op.count * cells if a.single_issue else 0.0,
        "send FMOVs": send * send_op.count * cells if a.single_issue else 0.0,
        "reduction FADD": cycles(fadd, fadd.count * cells),
        "z FMACs": fmac.count * cycles(fmac, cells),
        "update FSUB": fsub.count * cycles(fsub, cells),
        "zeroing FMOV": cycles(zero, cells),
        "task activations": fixed.cycles(tasks, 0),
        "DSD set-ups": fixed.cycles(0, dsds),
        "control wavelets": len(chunks) * control * send,
    }
    busy = sum(busy_parts.values())
    memory = sum(serial_stall)
    work = tuple((recv * recv_op.count + send * send_op.count) * b + task_work
                 if a.single_issue else task_work for b in chunks)
    return Schedule(nz, chunks, period, phases, tuple(serial), tuple(serial_stall), work,
                    busy, memory,
                    max(0.0, period - busy - memory), busy_parts, handoff, tasks, dsds, a)


__all__ = ["ASSUMED", "Assumptions", "OPS", "Schedule", "bank_stall", "cell_counts",
           "chunk_sizes", "handoff_cycles", "max_nz", "solve", "sram_bytes"]
