"""GEMV y = A x as a wavelet program: the SDK's classic first kernel.

A (M x N) is blocked over the grid, PE (i, j) holding block A_ij column-major; x_j starts
on PE (0, j). Row 0 multicasts x_j down its column (and back into itself through its own
ramp, so every PE sees x the same way). Each arriving wavelet x[k] activates a data task
that does y += A_ij[:, k] * x[k]; after the last one the task activates the row's chain
reduce, which sums the partial y vectors into column 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import ShapeError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.collectives import chain_reduce_phase
from waferscale.fabric.cycle.lines import ColorPool
from waferscale.fabric.cycle.sim import CycleSim, RunResult


@dataclass
class KernelRun:
    """A kernel's result, the NumPy reference, and the simulation behind them."""

    name: str
    output: np.ndarray
    expected: np.ndarray
    result: RunResult

    @property
    def cycles(self) -> int:
        return self.result.cycles

    def max_error(self) -> float:
        scale = max(float(np.abs(self.expected).max()), 1e-30)
        return float(np.abs(self.output - self.expected).max()) / scale


def build_gemv(sim: CycleSim, a: np.ndarray, x: np.ndarray) -> ColorPool:
    """Load A and x onto ``sim`` and write the program; returns the colours it used."""
    rows, cols = sim.rows, sim.cols
    big_m, big_n = a.shape
    if big_m % rows or big_n % cols or x.shape != (big_n,):
        raise ShapeError(f"gemv: A {a.shape} must tile {rows}x{cols} PEs evenly and x must "
                         f"have {big_n} elements, got {x.shape}")
    m, n = big_m // rows, big_n // cols
    blocks = a.astype(np.float32).reshape(rows, m, cols, n).transpose(0, 2, 3, 1)
    sim.alloc("A", m * n, init=blocks.reshape(rows, cols, m * n))   # column-major blocks
    xs = np.zeros((rows, cols, n), dtype=np.float32)
    xs[0] = x.astype(np.float32).reshape(cols, n)
    r, _ = sim.coords
    sim.alloc("x", n, where=r == 0, init=xs)
    sim.alloc("y", m)
    sim.reg("k", 0)
    pool = ColorPool(sim.spec.routable_colors)
    (cx,) = pool.take(1, "gemv x broadcast")
    if rows == 1:
        sim.route(cx, "R", "R")
    else:
        sim.route(cx, "R", "SR", r == 0)
        sim.route(cx, "N", "SR", (r > 0) & (r < rows - 1))
        sim.route(cx, "N", "R", r == rows - 1)
    sim.task("send_x", [isa.mov(isa.FabOut(cx), isa.Mem("x"), n, async_=True,
                                label="x down column")], where=r == 0, entry=True)
    sim.task("x_k", [
        isa.fmac(isa.Mem("y"), isa.Mem("y"), isa.Mem("A", offset=isa.Reg("k") * m),
                 isa.Arg(), m, label="y += A[:,k] x[k]"),
        isa.AddReg(reg="k", value=1),
        isa.Activate(task="reduce", when=isa.Cond("k", "==", n)),
    ], bind=cx)
    sim.task("reduce", chain_reduce_phase(sim, pool, "y", m, "row", "first"))
    return pool


def run_gemv(spec: object, rows: int, cols: int, m: int, n: int, seed: int = 0,
             max_cycles: int = 2_000_000) -> KernelRun:
    """GEMV of a (rows*m) x (cols*n) random matrix; output is y on column 0."""
    sim = CycleSim(spec, rows, cols)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows * m, cols * n)).astype(np.float32)
    x = rng.standard_normal(cols * n).astype(np.float32)
    build_gemv(sim, a, x)
    result = sim.run(max_cycles=max_cycles)
    y = sim.read("y")[:, 0, :].reshape(-1)
    expected = (a.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
    return KernelRun("gemv", y, expected, result)
