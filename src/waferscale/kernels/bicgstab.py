"""BiCGStab on the 7-point operator, the CS-1 workload of Rocki et al. (SC20), on the fabric.

Solves A x = b for `spmv7`'s operator with unpreconditioned BiCGStab (van der Vorst 1992),
x0 = 0 and the shadow residual r0^ = b. Mapping: `spmv7`'s (one PE per (x, y), the whole
z-column of the matrix and of the six vectors x, r (s is written over r), r0^, p, v, t in its
SRAM). Per iteration:

* two SpMVs (v = A p, t = A s), `spmv7.apply`;
* five dot products, (r0^, v); (t, s), (t, t); (r0^, r), (r, r): each a local fp16 x fp16
  -> fp32 FMAC over the column (the SIMD-2 mixed datapath, the SDK's ``fmachs``), then a
  wafer-wide allreduce of the per-PE partial sums, fused where the algorithm allows (three
  allreduces, of 1, 2 and 2 fp32 values); then a few fp32 scalar operations on every PE;
* six AXPY-type updates (s = r - a v; x += a p; x += w s; r = s - w t; p = p - w v;
  p = r + b p) in fp16 at the SIMD width (port-bound at 2 reads + 1 write per element).

The allreduce is the best of the project's models (`timing`: chain, binary tree, and
MeshGEMV's K-tree with K = 2, each reducing rows then columns and broadcasting back),
chosen per grid by its closed form; on wafer-sized grids that is the K-tree.

Precision (docs/bicgstab.md): matrix and vectors fp16; dot products accumulate in fp32;
the scalars (rho, alpha, omega, beta) are fp32, rounded to fp16 where an fp16 FMAC takes
them. `reference` is a plain NumPy BiCGStab with the same scheme.

`cost()` is the closed form (the busiest PE, each phase starting when its last PE may);
`run()` executes it on the fast fabric with real values: local work on every PE's CE, the
SpMV exchanges coupled to the neighbours, the allreduces by `fabric.movement.allreduce`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from waferscale.errors import GridError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.timing import (
    allreduce_cycles,
    multicast_cycles,
    reduce_cycles,
    vector_cycles,
)
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import spmv7
from waferscale.kernels.overhead import OVERHEADS, Overheads

#: z-columns of vectors each PE keeps: x, r (s over it), r0^, p, v, t.
VECTORS = 6
#: Dot products per iteration and the values each allreduce carries (fused).
DOTS = 5
ALLREDUCE_VALUES = (1, 2, 2)
#: AXPY-type updates per iteration.
AXPYS = 6
#: Scalar steps per iteration (alpha, omega, beta), each charged one task activation [A].
SCALAR_STEPS = 3
#: FLOPs per cell per iteration: 2 SpMVs x 13, 5 dots x 2 (multiply + add), 6 AXPYs x 2.
#: Every multiply and add executed on a vector element counts one (an FMAC two); the
#: allreduce adds and the scalar operations (about 10 per PE) are not counted.
FLOPS_PER_CELL = 2 * spmv7.FLOPS_PER_CELL + 2 * DOTS + 2 * AXPYS
ALGORITHMS = ("chain", "tree", "ktree")


# ------------------------------------------------------------------ closed form ------
def allreduce_2d_cycles(spec: WaferSpec, wavelets: float, x: int, y: int,
                        algorithm: str) -> float:
    """Every PE of an x by y rectangle gets the sum of ``wavelets`` fp32 partials:
    `movement.allreduce(..., "both", algorithm)` in closed form (chain / tree: reduce
    rows, reduce columns, flood down, flood across; K-tree: allreduce rows, then columns)."""
    if algorithm == "ktree":
        return allreduce_cycles(spec, wavelets, x, "ktree") \
            + allreduce_cycles(spec, wavelets, y, "ktree")
    return reduce_cycles(spec, wavelets, x, algorithm) \
        + reduce_cycles(spec, wavelets, y, algorithm) \
        + multicast_cycles(spec, wavelets, y) + multicast_cycles(spec, wavelets, x)


def best_allreduce(spec: WaferSpec | str | None, x: int, y: int) -> str:
    """The modelled algorithm with the fewest cycles for this grid's allreduces."""
    spec = get_spec(spec)
    return min(ALGORITHMS, key=lambda a: sum(allreduce_2d_cycles(spec, w, x, y, a)
                                             for w in ALLREDUCE_VALUES))


def dot_cycles(spec: WaferSpec, z: int, ov: Overheads = OVERHEADS) -> float:
    """One local dot over the column: fp16 x fp16 -> fp32 into a scalar (no per-element
    write), plus its DSD set-up."""
    return float(vector_cycles(spec, z, "fp16", "fmac", reads=2, writes=0,
                               accumulate="fp32", element_bytes=spmv7.VALUE_BYTES)) \
        + ov.cycles(0, 1)


def axpy_cycles(spec: WaferSpec, z: int, ov: Overheads = OVERHEADS) -> float:
    """y = y + a x over the column in fp16 (a scalar in a register), plus its set-up."""
    return float(vector_cycles(spec, z, "fp16", "fmac", reads=2, writes=1,
                               element_bytes=spmv7.VALUE_BYTES)) + ov.cycles(0, 1)


def copy_cycles(spec: WaferSpec, z: int, ov: Overheads = OVERHEADS) -> float:
    """A column copy or zeroing (FMOV) in fp16, plus its set-up."""
    return float(vector_cycles(spec, z, "fp16", "add", reads=1, writes=1,
                               element_bytes=spmv7.VALUE_BYTES)) + ov.cycles(0, 1)


def check(spec: WaferSpec, x: int, y: int, z: int) -> None:
    """Typed errors for a grid that does not fit (spmv7's, named for this solver)."""
    spmv7.check_grid(spec, x, y, z, "bicgstab")
    spmv7.chunk_sizes(spec, z, VECTORS, "bicgstab")


@dataclass(frozen=True)
class IterationCost:
    """Cycles of one iteration on the busiest PE, by part, and the figures they give."""

    spmv: float
    dots_allreduce: float
    updates: float
    allreduce: str
    flops: float
    clock_hz: float
    parts: dict[str, float] = field(default_factory=dict)

    @property
    def cycles(self) -> float:
        return self.spmv + self.dots_allreduce + self.updates

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def pflops(self) -> float:
        return self.flops / self.seconds / 1e15

    def as_dict(self) -> dict[str, object]:
        return {"cycles": self.cycles, "spmv": self.spmv,
                "dots_allreduce": self.dots_allreduce, "updates": self.updates,
                "allreduce_algorithm": self.allreduce, "flops": self.flops,
                "flops_per_cell": FLOPS_PER_CELL, "seconds": self.seconds,
                "pflop_per_s": self.pflops, "parts": dict(self.parts)}


def iteration(spec: WaferSpec | str | None, x: int, y: int, z: int,
              algorithm: str | None = None) -> IterationCost:
    """The closed form of one iteration on an x by y by z grid."""
    spec = get_spec(spec)
    check(spec, x, y, z)
    algorithm = algorithm or best_allreduce(spec, x, y)
    spmv = spmv7.cost(spec, x, y, z, vectors=VECTORS)
    dots = DOTS * dot_cycles(spec, z)
    reduce = sum(allreduce_2d_cycles(spec, w, x, y, algorithm) for w in ALLREDUCE_VALUES)
    scalar = OVERHEADS.cycles(SCALAR_STEPS, 0)
    updates = AXPYS * axpy_cycles(spec, z)
    return IterationCost(
        spmv=2 * spmv, dots_allreduce=dots + reduce + scalar, updates=updates,
        allreduce=algorithm, flops=float(FLOPS_PER_CELL) * x * y * z, clock_hz=spec.clock_hz,
        parts={"spmv_each": spmv, "local_dots": dots, "allreduces": reduce,
               "scalar_tasks": scalar})


def setup_cycles(spec: WaferSpec | str | None, x: int, y: int, z: int,
                 algorithm: str | None = None) -> float:
    """Before the first iteration: x = 0, r = r0^ = p = b (four FMOVs), (r0^, r) and
    (b, b) (two dots, one allreduce of 2 values)."""
    spec = get_spec(spec)
    check(spec, x, y, z)
    algorithm = algorithm or best_allreduce(spec, x, y)
    return 4 * copy_cycles(spec, z) + 2 * dot_cycles(spec, z) \
        + allreduce_2d_cycles(spec, 2, x, y, algorithm)


def cost(spec: WaferSpec | str | None, x: int, y: int, z: int, iters: int,
         algorithm: str | None = None) -> float:
    """Cycles of the set-up and ``iters`` iterations."""
    spec = get_spec(spec)
    return setup_cycles(spec, x, y, z, algorithm) \
        + iters * iteration(spec, x, y, z, algorithm).cycles


# ------------------------------------------------------------------- reference ------
@dataclass
class Solve:
    """A solve's iterates: x after each iteration, the relative residual ||r|| / ||b||
    before the first and after each iteration (from the fused (r, r) dot), why it stopped,
    and (from `run`) the cycles and the fabric."""

    x: np.ndarray
    residuals: list[float]
    iterates: list[np.ndarray]
    stop: str
    cycles: float = 0.0
    iteration_cycles: list[float] = field(default_factory=list)
    fabric: Fabric | None = None


def true_residual(diags: np.ndarray, b: np.ndarray, x: np.ndarray) -> float:
    """||b - A x|| / ||b|| in fp64 (the recurrence's residual drifts from it in fp16)."""
    b64 = np.asarray(b, np.float64)
    bn = float(np.linalg.norm(b64))
    ax = spmv7.reference(diags, x, np.float64)
    return float(np.linalg.norm(b64 - ax)) / bn if bn else 0.0


def _f16(a: float) -> np.float16:
    return np.float16(np.float32(a))


def reference(diags: np.ndarray, b: np.ndarray, iters: int, tol: float = 0.0) -> Solve:
    """Plain NumPy BiCGStab with the precision scheme of `run`: fp16 vectors and matrix
    (`spmv7.reference`), fp32 dots and scalars, fp16 updates with the scalar rounded to
    fp16. Stops after ``iters`` iterations, at ||r|| / ||b|| <= ``tol``, or on breakdown."""
    def dot(u: np.ndarray, w: np.ndarray) -> np.float32:
        return np.float32(np.dot(u.astype(np.float32).ravel(), w.astype(np.float32).ravel()))

    b = np.asarray(b, np.float16)
    x = np.zeros_like(b)
    r = b.copy()
    rh = b.copy()
    p = b.copy()
    rho = dot(rh, r)
    bnorm = float(np.sqrt(dot(b, b)))
    res = [1.0 if bnorm else 0.0]
    its: list[np.ndarray] = []
    stop = "iterations"
    for _ in range(iters):
        if bnorm == 0 or res[-1] <= tol:
            stop = "converged"
            break
        v = spmv7.reference(diags, p)
        rv = dot(rh, v)
        if rv == 0 or rho == 0:
            stop = "breakdown"
            break
        alpha = np.float32(rho / rv)
        s = r + _f16(-alpha) * v
        t = spmv7.reference(diags, s)
        ts, tt = dot(t, s), dot(t, t)
        if tt == 0:
            stop = "breakdown"
            break
        omega = np.float32(ts / tt)
        x = x + _f16(alpha) * p
        x = x + _f16(omega) * s
        r = s + _f16(-omega) * t
        rho_new, rr = dot(rh, r), dot(r, r)
        if omega == 0:
            stop = "breakdown"
            break
        beta = np.float32(np.float32(rho_new / rho) * np.float32(alpha / omega))
        p = p + _f16(-omega) * v
        p = r + _f16(beta) * p
        rho = rho_new
        res.append(float(np.sqrt(rr)) / bnorm)
        its.append(x.copy())
    else:
        if res[-1] <= tol:
            stop = "converged"
    return Solve(x, res, its, stop)


# -------------------------------------------------------------------------- run ------
class _Wafer:
    """The solver's state on the fabric: clocks, SRAM, and how local work is charged."""

    def __init__(self, fabric: Fabric, z: int, algorithm: str) -> None:
        self.fabric = fabric
        self.spec = fabric.spec
        self.rect = fabric.rect(0, 0)
        self.z = z
        self.algorithm = algorithm
        self.ready: np.ndarray = np.zeros(self.rect.shape)

    def local(self, cycles: float, flops: float, mem_bytes: float) -> None:
        self.ready = self.fabric.execute(self.rect, cycles, self.ready, flops=flops,
                                         mem_bytes=mem_bytes).copy()

    def dots(self, pairs: list[tuple[np.ndarray | None, np.ndarray | None]]
             ) -> list[np.float32]:
        """Local partial dots, then one allreduce of them; the sums (fp32) on every PE."""
        z = self.z
        partial = None
        if pairs[0][0] is not None:
            partial = np.stack([(u.astype(np.float32) * w.astype(np.float32))
                                .sum(axis=-1, dtype=np.float32) for u, w in pairs], axis=-1)
        for _ in pairs:
            self.local(dot_cycles(self.spec, z), 2.0 * z, 4.0 * z)
        t = MeshTensor(self.fabric, self.rect, (len(pairs),), "fp32", "partial", "partial",
                       partial, self.ready, self.fabric.fresh_name("dots"))
        out = mv.allreduce(t, "both", self.algorithm)
        t.free()
        self.ready = np.maximum(self.ready, out.ready)
        sums = [np.float32(0)] * len(pairs) if out.tiles is None \
            else [np.float32(v) for v in out.tiles[0, 0]]
        out.free()
        return sums

    def spmv(self, diags: np.ndarray | None, v: np.ndarray | None) -> np.ndarray | None:
        y, self.ready = spmv7.apply(self.fabric, self.rect, diags, v, self.ready, self.z,
                                    vectors=VECTORS)
        return y

    def axpy(self, y: np.ndarray | None, a: float, x: np.ndarray | None
             ) -> np.ndarray | None:
        self.local(axpy_cycles(self.spec, self.z), 2.0 * self.z, 6.0 * self.z)
        return None if y is None or x is None else y + _f16(a) * x


def run(fabric: Fabric, diags: np.ndarray | None, b: np.ndarray | None, iters: int,
        tol: float = 0.0, shape: tuple[int, int, int] | None = None,
        algorithm: str | None = None) -> Solve:
    """BiCGStab on the fabric (the whole fabric is the x by y grid), values and cycles.

    Arrays are [y, x, z] fp16 (diagonals [7, y, x, z] in `spmv7.DIAGONALS` order).
    Timing only: ``None`` arrays and ``shape``; then every iteration runs (no residuals).
    """
    spec = fabric.spec
    ny, nx, nz = shape if shape is not None else np.shape(b)
    if (fabric.rows, fabric.cols) != (ny, nx):
        raise GridError(f"bicgstab: the fabric ({fabric.rows}x{fabric.cols} PEs) must be the "
                        f"grid's {ny}x{nx} (one PE per (x, y))")
    check(spec, nx, ny, nz)
    algorithm = algorithm or best_allreduce(spec, nx, ny)
    w = _Wafer(fabric, nz, algorithm)
    columns = fabric.fresh_name("bicgstab columns")
    fabric.sram.alloc(columns, 0, 0,
                      spmv7.VALUE_BYTES * (len(spmv7.DIAGONALS) + VECTORS) * nz, w.rect.shape)
    timing = fabric.timing_only or b is None or diags is None
    d = None if timing else np.asarray(diags, np.float16)
    bb = None if timing else np.asarray(b, np.float16)
    x = None if timing else np.zeros_like(bb)
    r = rh = p = bb
    for _ in range(4):
        w.local(copy_cycles(spec, nz), 0.0, 4.0 * nz)
    rho, b2 = w.dots([(rh, r), (bb, bb)])
    bnorm = float(np.sqrt(b2))
    res = [1.0 if bnorm else 0.0]
    its: list[np.ndarray] = []
    per_iter: list[float] = []
    stop = "iterations"
    for _ in range(iters):
        if not timing and (bnorm == 0 or res[-1] <= tol):
            stop = "converged"
            break
        start = fabric.elapsed()
        v = w.spmv(d, p)
        (rv,) = w.dots([(rh, v)])
        if not timing and (rv == 0 or rho == 0):
            stop = "breakdown"
            break
        alpha = np.float32(rho / rv) if not timing else np.float32(0)
        w.local(OVERHEADS.cycles(1, 0), 0.0, 0.0)
        s = w.axpy(r, -alpha, v)
        t = w.spmv(d, s)
        ts, tt = w.dots([(t, s), (t, t)])
        if not timing and tt == 0:
            stop = "breakdown"
            break
        omega = np.float32(ts / tt) if not timing else np.float32(0)
        w.local(OVERHEADS.cycles(1, 0), 0.0, 0.0)
        x = w.axpy(x, alpha, p)
        x = w.axpy(x, omega, s)
        r = w.axpy(s, -omega, t)
        rho_new, rr = w.dots([(rh, r), (r, r)])
        if not timing and omega == 0:
            stop = "breakdown"
            break
        beta = np.float32(np.float32(rho_new / rho) * np.float32(alpha / omega)) \
            if not timing else np.float32(0)
        w.local(OVERHEADS.cycles(1, 0), 0.0, 0.0)
        p = w.axpy(p, -omega, v)
        p = w.axpy(r, beta, p)
        rho = rho_new
        per_iter.append(fabric.elapsed() - start)
        if not timing:
            res.append(float(np.sqrt(rr)) / bnorm)
            its.append(x.copy())
    else:
        if not timing and res[-1] <= tol:
            stop = "converged"
    fabric.sram.free(columns)
    return Solve(x, res, its, stop, fabric.elapsed(), per_iter, fabric)


__all__ = ["ALGORITHMS", "FLOPS_PER_CELL", "IterationCost", "Solve", "allreduce_2d_cycles",
           "best_allreduce", "cost", "iteration", "reference", "run", "setup_cycles"]
