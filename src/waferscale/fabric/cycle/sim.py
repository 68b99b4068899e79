"""`CycleSim`: build a program (routes, memory, tasks), run it wavelet by wavelet.

The run loop steps every compute engine, then every router, once per cycle, with all PEs
in a handful of NumPy operations. A cycle in which nothing moves and nothing is issued is
not stepped again: the loop jumps to the next cycle at which a queued wavelet arrives (the
only event that can restart a quiet machine). If there is none and the program has not
finished, it is a deadlock, reported with the PEs, colours and queues involved.

On grids of `CycleSim.compiled_from_pes` PEs or more (and no trace) the same loop runs
compiled (`cejit.run_cycles`), all cycles in one call; the NumPy loop is its reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.errors import CycleLimitError, DeadlockError, GridError, LivelockError, SpecError
from waferscale.fabric.cycle.ce import BUSY, FABRIC_STALL, IDLE, MEMORY_STALL, ComputeEngines
from waferscale.fabric.cycle.config import CycleConfig
from waferscale.fabric.cycle.diagnose import involved, queue_lines
from waferscale.fabric.cycle.grid import Where, pe_name
from waferscale.fabric.cycle.isa import Reg
from waferscale.fabric.cycle.program import Program, compile_program
from waferscale.fabric.cycle.queues import Queues
from waferscale.fabric.cycle.router import Router
from waferscale.fabric.cycle.routing import Channels, RouteTable
from waferscale.fabric.cycle.trace import Trace, build_trace, summary_table
from waferscale.hardware.spec import WaferSpec, custom_spec, get_spec


@dataclass
class RunResult:
    """Cycle count, per-PE state counters, where the wall time went, and the trace."""

    cycles: int
    rows: int
    cols: int
    wall_s: float
    profile: dict[str, float]
    stats: dict[str, np.ndarray]
    link_transfers: int
    elements: int
    trace: Trace | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0

    @property
    def pe_cycles_per_cpu_s(self) -> float:
        """The rate on this process's CPU time: steadier than wall time on a busy machine."""
        return self.pe_cycles / max(self.cpu_s, 1e-9)

    @property
    def pe_cycles(self) -> int:
        return self.cycles * self.rows * self.cols

    @property
    def pe_cycles_per_s(self) -> float:
        return self.pe_cycles / max(self.wall_s, 1e-9)

    def summary(self) -> str:
        return summary_table(self.stats, self.cycles)

    def profile_lines(self) -> list[str]:
        total = max(sum(self.profile.values()), 1e-12)
        return [f"{k:10s} {v * 1e3:9.1f} ms  {100 * v / total:5.1f}%"
                for k, v in sorted(self.profile.items(), key=lambda kv: -kv[1])]


class CycleSim:
    """A rows x cols fabric of ``spec``'s PEs, programmed SPMD style, simulated per cycle."""

    #: run the whole loop compiled (`cejit.run_cycles`) on grids of at least this many PEs,
    #: unless a trace is recorded; smaller ones (most tests, the CLI's checks) skip numba's
    #: import and cache load. None: always the NumPy reference. Tests set it to compare.
    compiled_from_pes: int | None = 1024

    def __init__(self, spec: WaferSpec | str | None = None, rows: int | None = None,
                 cols: int | None = None, config: CycleConfig | None = None) -> None:
        if spec is None:
            spec = custom_spec(rows=rows or 4, cols=cols or 4)
        self.spec = get_spec(spec)
        self.rows = self.spec.rows if rows is None else rows
        self.cols = self.spec.cols if cols is None else cols
        for name, value, limit in (("rows", self.rows, self.spec.rows),
                                   ("cols", self.cols, self.spec.cols)):
            if not isinstance(value, int) or not 1 <= value <= limit:
                raise GridError(f"cycle simulator {name} must be an int in 1..{limit} "
                                f"({self.spec.name}), got {value!r}")
        if self.rows * self.cols > 1 << 16:
            raise GridError(f"{self.rows}x{self.cols} PEs is too many for the cycle simulator "
                            f"(at most 65536 PEs); use the fast model for larger grids")
        if self.spec.ramp_wavelets_per_cycle != 1:
            raise SpecError("the cycle simulator models a ramp of one wavelet per cycle; spec "
                            f"{self.spec.name!r} has ramp_wavelets_per_cycle="
                            f"{self.spec.ramp_wavelets_per_cycle}")
        self.config = config or CycleConfig()
        self.routes = RouteTable(self.spec, self.rows, self.cols)
        self.program = Program(self.spec, self.rows, self.cols)
        self.ce: ComputeEngines | None = None

    # -- building ----------------------------------------------------------------------------
    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) index grids, for writing masks: ``r, c = sim.coords; c % 2 == 0``."""
        r, c = np.indices((self.rows, self.cols))
        return r, c

    def route(self, color: int, rx: Any, tx: Any, where: Where = None,
              replace: bool = False) -> None:
        self.routes.set(color, rx, tx, where, replace)

    def alloc(self, name: str, length: int, where: Where = None, init: Any = None) -> str:
        return self.program.alloc(name, length, where, init)

    def reg(self, name: str, init: Any = 0) -> Reg:
        return self.program.reg(name, init)

    def task(self, name: str, body: list[Any], **kw: Any) -> str:
        return self.program.task(name, body, **kw)

    def bind(self, task: str, color: int, where: Where = None) -> None:
        self.program.bind(task, color, where)

    # -- running -----------------------------------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        """An array's values on every PE as [rows, cols, length] (zeros where unallocated)."""
        source = self.ce.mem if self.ce is not None else None
        if source is None or name not in source:
            a = self.program.arrays.get(name)
            if a is None:
                raise KeyError(f"no array {name!r}")
            data = a.init if a.init is not None else np.zeros((self.rows * self.cols, a.length))
            return np.asarray(data, dtype=np.float32).reshape(self.rows, self.cols, a.length)
        return source[name].reshape(self.rows, self.cols, -1)

    def register(self, name: str) -> np.ndarray:
        assert self.ce is not None, "run() first"
        return self.ce.regs[name].reshape(self.rows, self.cols)

    def run(self, max_cycles: int = 1_000_000, trace: bool = False) -> RunResult:
        """Simulate until every PE is idle with empty queues; return counts and stats."""
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if self.ce is not None:
            raise RuntimeError("a CycleSim runs once; build a new one to run again")
        self.routes.validate()
        code = compile_program(self.program)
        ch = Channels(self.routes)
        q = Queues(ch, self.spec, self.config, wide=max_cycles >= 1 << 30)
        router = Router(ch, q)
        ce = self.ce = ComputeEngines(self.spec, self.config, self.program, code, self.routes,
                                      ch, q, router)
        if trace:
            router.trace = []
            ce.events = []
        prof = {"setup": time.perf_counter() - wall0, "ce": 0.0, "router": 0.0, "control": 0.0}
        fast = None
        if not trace and self.compiled_from_pes is not None \
                and self.rows * self.cols >= self.compiled_from_pes:
            from waferscale.fabric.cycle import cejit

            try:
                fast = cejit.CompiledRun(ce, router)
            except cejit.Unsupported:
                fast = None
            prof["setup"] = time.perf_counter() - wall0
        if fast is not None:
            last_active = self._loop_compiled(fast, ce, code, max_cycles, prof)
        else:
            last_active = self._loop_numpy(ce, router, q, max_cycles, prof)
        cycles = last_active + 1
        stats = {name: ce.stats[code_].reshape(self.rows, self.cols).copy()
                 for name, code_ in (("busy", BUSY), ("fabric_stall", FABRIC_STALL),
                                     ("memory_stall", MEMORY_STALL), ("idle", IDLE))}
        # cycles after a PE's last activity up to the end of the run count as idle
        stats["idle"] += cycles - sum(stats[k] for k in ("busy", "fabric_stall",
                                                         "memory_stall", "idle"))
        tr = None
        if trace:
            tr = build_trace(router.trace or [], ce.events or [], self.cols,
                             [op.ins.label or op.ins.op for op in ce.ops],
                             [t_.name for t_ in self.program.tasks], self.config.trace_limit)
        wall = time.perf_counter() - wall0
        return RunResult(cycles, self.rows, self.cols, wall, prof, stats, router.moved,
                         ce.elements, tr, cpu_s=time.process_time() - cpu0)

    def _loop_numpy(self, ce: ComputeEngines, router: Router, q: Queues, max_cycles: int,
                    prof: dict[str, float]) -> int:
        """The reference loop: NumPy steps over all PEs, one Python iteration a cycle."""
        window = self.config.livelock_window
        t, last_active, last_useful, progress = 0, -1, 0, 0
        clock = time.perf_counter
        while True:
            if t >= max_cycles:
                raise CycleLimitError(
                    f"run reached its cycle limit of {max_cycles} without finishing; raise "
                    f"max_cycles or look for a runaway task", cycle=t,
                    details=ce.stuck_lines(t) + queue_lines(ce))
            c0 = clock()
            did = ce.step(t)
            c1 = clock()
            moved = router.step(t)
            c2 = clock()
            prof["ce"] += c1 - c0
            prof["router"] += c2 - c1
            if did or moved:
                ce.account(1)
                last_active = t
                now = ce.elements + router.moved
                if now != progress:
                    progress, last_useful = now, t
                elif t - last_useful > window:
                    self._livelock(ce, t)
                t += 1
                prof["control"] += clock() - c2
                continue
            nxt = q.next_ready(t)
            if nxt is None:
                if self._finished(ce):
                    break
                self._deadlock(ce, t)
            ce.account(nxt - t)
            t = nxt
            prof["control"] += clock() - c2
        return last_active

    def _loop_compiled(self, fast: Any, ce: ComputeEngines, code: Any, max_cycles: int,
                       prof: dict[str, float]) -> int:
        """The compiled loop (`cejit.run_cycles`): same steps, all cycles in one call."""
        from waferscale.fabric.cycle import cejit

        c0 = time.perf_counter()
        outcome = fast.run(0, max_cycles, self.config.livelock_window)
        # the compute engines, routers and counters share one compiled loop: one figure
        prof["compiled"] = time.perf_counter() - c0
        del prof["ce"], prof["router"], prof["control"]
        t = int(fast.ctr[cejit.T])
        if outcome == cejit.CYCLE_LIMIT:
            raise CycleLimitError(
                f"run reached its cycle limit of {max_cycles} without finishing; raise "
                f"max_cycles or look for a runaway task", cycle=t,
                details=ce.stuck_lines(t) + queue_lines(ce))
        if outcome == cejit.LIVELOCK:
            self._livelock(ce, t)
        if outcome in (cejit.ERR_LAUNCH, cejit.ERR_CONTROL):
            # replay the offending instruction through the reference, which raises
            k, sel = int(fast.ctr[cejit.ERR_ID]), fast.selection()
            ngid = len(code.instrs)
            if outcome == cejit.ERR_LAUNCH:
                ce.ops[code.op_of[k]].launch(ce, sel, code.task_of[k])
            elif k < ngid:
                ce._control(code.instrs[k], sel, code.task_of[k])
            else:
                op = ce.ops[k - ngid]
                ce._control(op.ins.then, sel, code.task_of[op.gid])
            raise RuntimeError(f"compiled cycle loop stopped on instruction {k} at cycle {t}, "
                               f"but the reference step accepts it")
        if outcome == cejit.QUIET and not self._finished(ce):
            self._deadlock(ce, t)
        return int(fast.ctr[cejit.LAST_ACTIVE])

    @staticmethod
    def _finished(ce: ComputeEngines) -> bool:
        return (not ce.busy_anywhere() and int(ce.q.cnt.sum()) == 0
                and not any(ce.act_count))

    def _deadlock(self, ce: ComputeEngines, t: int) -> None:
        details = ce.stuck_lines(t) + queue_lines(ce)
        pes, colors = involved(ce)
        head = details[0] if details else "no PE reports a reason"
        err = DeadlockError(
            f"deadlock at cycle {t}: nothing can move and nothing is in flight, but "
            f"{len(pes)} PE(s) still hold work or wavelets on colour(s) {colors}; first: {head}",
            cycle=t, details=details)
        err.pes, err.colors = pes, colors  # type: ignore[attr-defined]
        raise err

    def _livelock(self, ce: ComputeEngines, t: int) -> None:
        """Name the PEs that keep running or re-activating tasks."""
        spinning = (ce.cur >= 0) | ce.activated.any(axis=0)
        lines = []
        for p in np.flatnonzero(spinning)[:12]:
            tid = int(ce.cur[p]) if ce.cur[p] >= 0 else int(np.argmax(ce.activated[:, p]))
            lines.append(f"PE {pe_name(int(p), self.cols)}: running task "
                         f"{self.program.tasks[tid].name!r}")
        raise LivelockError(
            f"livelock at cycle {t}: {int(spinning.sum())} PE(s) kept issuing instructions for "
            f"{self.config.livelock_window} cycles without moving a wavelet or processing a "
            f"vector element; first: {lines[0] if lines else '?'}", cycle=t, details=lines)
