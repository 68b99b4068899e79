"""GEMV ``y = x @ W`` (x: [M, K] with M small, often 1) on a rows x cols rectangle.

Why a separate kernel: with one token there is almost no compute per PE, so the time is
the latency of getting partial sums together (WaferLLM, OSDI'25: communication can be 90%
of GEMV time). The layout is the one that makes that the only communication:

* W [K, N] is blocked over the rectangle (K over mesh rows, N over mesh columns) and stays
  where it is (weights are stationary);
* x's K-block i is replicated along mesh row i. That is exactly the layout the previous
  GEMV's allreduce leaves behind (with W stored transposed every other layer), so the
  input broadcast is not part of this kernel;
* every PE multiplies its blocks locally (`compute.local_matmul`), leaving partial sums of
  y's N-block j along mesh column j, and an allreduce along each column sums them and
  leaves y replicated down the column, ready for the next layer.

Two allreduces:

* ``chain``: the SDK's pipelined chain reduce to the top PE, then a flood back down
  (`movement.allreduce`): B + (2*T_R + 2)(P - 1) + B + P + 2*T_R cycles for P rows;
* ``ktree``: MeshGEMV's K-tree (K = 2 by default): groups of ceil(P**(1/K)) PEs reduce
  into their middle PE from both sides, the group leaders do the same, and the result is
  flooded from the central root both ways, so the critical path is about K * P**(1/K) / 2
  chain stages plus P / 2 hops instead of P stages.

Sparsity: zero weights are skipped where they sit (``skip='b'``: one AXPY per nonzero
weight, so each PE's compute follows its own nonzeros and the reduce starts from the
slowest PE of each chain); zero activations with ``skip='a'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.errors import KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.compute import local_matmul
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import allreduce_cycles, multicast_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels._common import (
    blocks,
    check_chain,
    check_datapath,
    check_nnz,
    check_skip,
    fabric_accumulate,
    fmac_cycles,
    fmacs_per_cycle,
    mask_blocks,
    skip_with_mask,
)
from waferscale.kernels._lines import ktree_reduce, ktree_reduce_cycles

ALGORITHMS = ("chain", "ktree")
KERNEL = "gemv"


@dataclass(frozen=True)
class GemvProblem:
    """A validated GEMV problem on a rows x cols grid."""

    m: int
    k: int
    n: int
    rows: int
    cols: int
    dtype: str
    accumulate: str
    skip: str | None
    levels: int

    @property
    def tiles(self) -> tuple[int, int]:
        """(kb, nb): the padded W block each PE holds."""
        return blocks(self.k, self.rows), blocks(self.n, self.cols)


def sram_bytes(m: int, k: int, n: int, rows: int, cols: int, dtype: str,
               accumulate: str) -> int:
    """SRAM per PE: the W block, the x block, and the partial and final y blocks."""
    kb, nb = blocks(k, rows), blocks(n, cols)
    return (kb * nb + m * kb) * BYTES[dtype] + 2 * m * nb * BYTES[accumulate]


def check_problem(m: int, k: int, n: int, grid: tuple[int, int], spec: WaferSpec,
                  dtype: str, accumulate: str | None, skip: str | None, algorithm: str,
                  levels: int = 2, rect: tuple[int, int] | None = None) -> GemvProblem:
    """Reject problems the rectangle or the SRAM cannot hold, naming what would fit."""
    if algorithm not in ALGORITHMS:
        raise KernelShapeError(f"{KERNEL}: algorithm {algorithm!r}; use one of "
                               f"{', '.join(ALGORITHMS)}")
    acc = check_datapath(KERNEL, dtype, accumulate)
    check_skip(KERNEL, skip)
    if not isinstance(levels, int) or levels < 1:
        raise KernelShapeError(f"{KERNEL}: the K-tree needs levels >= 1, got {levels!r}")
    try:
        rows, cols = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise KernelShapeError(f"{KERNEL}: grid must be (rows, cols), got {grid!r}") from None
    for name, value in (("m", m), ("k", k), ("n", n), ("grid rows", rows), ("grid cols", cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} must be a positive integer, got {value!r}")
    r_max, c_max = rect or (spec.rows, spec.cols)
    if rows > r_max or cols > c_max:
        raise KernelFitError(f"{KERNEL} [{m},{k}]x[{k},{n}]: a {rows}x{cols} grid does not fit "
                             f"the {r_max}x{c_max} rectangle; use at most {r_max}x{c_max}")
    if rows > k or cols > n:
        raise KernelFitError(f"{KERNEL} [{m},{k}]x[{k},{n}]: a {rows}x{cols} grid leaves PEs "
                             f"without a block (K over rows, N over columns); use at most "
                             f"{min(rows, k)}x{min(cols, n)}")
    need = sram_bytes(m, k, n, rows, cols, dtype, acc)
    if need > spec.sram_bytes:
        raise KernelFitError(
            f"{KERNEL} [{m},{k}]x[{k},{n}] {dtype}: blocks on a {rows}x{cols} grid need {need} "
            f"B per PE, over the {spec.sram_bytes} B SRAM; use more PEs (W alone needs at "
            f"least {int(np.ceil(k * n * BYTES[dtype] / spec.sram_bytes))} PEs)")
    return GemvProblem(int(m), int(k), int(n), rows, cols, dtype, acc, skip, levels)


@dataclass
class GemvResult:
    """What `run` returns: y (None in timing-only mode) and the fabric's count."""

    algorithm: str
    grid: tuple[int, int]
    value: np.ndarray | None
    cycles: float
    seconds: float
    compute_cycles: float     # the slowest PE's local product
    stats: dict[str, float]
    fabric: Fabric = field(repr=False)

    @property
    def communication_fraction(self) -> float:
        return 1.0 - self.compute_cycles / self.cycles if self.cycles else 0.0


@dataclass(frozen=True)
class GemvCost:
    """What `cost` returns: closed-form cycles and their parts."""

    algorithm: str
    grid: tuple[int, int]
    m: int
    k: int
    n: int
    dtype: str
    accumulate: str
    cycles: float
    seconds: float
    compute_cycles: float
    reduce_cycles: float
    broadcast_cycles: float
    root: int
    sram_bytes: int
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def communication_fraction(self) -> float:
        return 1.0 - self.compute_cycles / self.cycles if self.cycles else 0.0


def _as_operand(x: Any, what: str, ndim: tuple[int, ...]) -> tuple[tuple[int, ...],
                                                                  np.ndarray | None]:
    if isinstance(x, tuple):
        if len(x) not in ndim:
            raise KernelShapeError(f"{KERNEL}: {what} shape {x} must have {ndim} dimensions")
        return tuple(int(v) for v in x), None
    arr = np.asarray(x)
    if arr.ndim not in ndim:
        raise KernelShapeError(f"{KERNEL}: {what} must have {' or '.join(map(str, ndim))} "
                               f"dimensions, got shape {arr.shape}")
    return arr.shape, arr


def run(x: np.ndarray | tuple[int, ...], w: np.ndarray | tuple[int, int], *,
        algorithm: str = "ktree", grid: tuple[int, int],
        spec: WaferSpec | str | None = None, dtype: str = "fp32",
        accumulate: str | None = "fp32", skip: str | None = None, levels: int = 2,
        x_nnz: np.ndarray | None = None, w_nnz: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        fabric: Fabric | None = None, origin: tuple[int, int] = (0, 0)) -> GemvResult:
    """``y = x @ w`` on the fabric: real values for arrays, clocks only for shapes.

    ``x`` is [K] or [M, K]; ``w`` is [K, N]. For a timing-only run pass shape tuples, and
    optionally ``w_nnz`` ([rows, cols]: nonzeros of each W block) and ``x_nnz`` ([rows]:
    nonzeros of each x block). ``grid`` is (rows, cols): ``choose_gemv(...).grid`` picks one.
    ``mask`` is an unstructured weight mask ([K, N], True = kept): masked weights are zeroed
    and skipped; in a timing-only run each block's nonzeros are counted from it.
    """
    spec = fabric.spec if fabric is not None else get_spec(spec)
    x_shape, x_val = _as_operand(x, "x", (1, 2))
    (k2, n), w_val = _as_operand(w, "W", (2,))
    vector = len(x_shape) == 1
    m, k = (1, x_shape[0]) if vector else x_shape
    timing_only = check_chain(KERNEL, "x", "W", m, k, k2, n, x_val, w_val)
    rect_shape = None if fabric is None else (fabric.rows - origin[0], fabric.cols - origin[1])
    prob = check_problem(m, k, n, grid, spec, dtype, accumulate, skip, algorithm, levels,
                         rect_shape)
    rows, cols = prob.rows, prob.cols
    kb, nb = prob.tiles
    if not timing_only and (x_nnz is not None or w_nnz is not None):
        raise KernelShapeError(f"{KERNEL}: x_nnz/w_nnz are for timing-only runs; with real "
                               f"operands the nonzeros are counted from the values")
    if mask is not None:
        if w_nnz is not None:
            raise KernelShapeError(f"{KERNEL}: give a weight mask or w_nnz, not both")
        mask_nnz = mask_blocks(KERNEL, mask, (k, n), (rows, cols), (kb, nb))
        skip = skip_with_mask(skip)
        if w_val is not None:
            w_val = np.where(np.asarray(mask, dtype=bool), w_val, 0)
        else:
            w_nnz = mask_nnz
    w_nnz = check_nnz(KERNEL, "w_nnz", w_nnz, (rows, cols), kb * nb)
    if x_nnz is not None:
        x_nnz = np.asarray(x_nnz, dtype=float)
        if x_nnz.shape != (rows,):
            raise KernelShapeError(f"{KERNEL}: x_nnz must give one nonzero count per x block, "
                                   f"shape ({rows},), got {x_nnz.shape}")
        x_nnz = check_nnz(KERNEL, "x_nnz", x_nnz[:, None], (rows, 1), m * kb)
    if fabric is None:
        fabric = Fabric(spec, rows, cols, timing_only=timing_only)
    elif fabric.timing_only != timing_only:
        raise KernelShapeError(f"{KERNEL}: operands and fabric disagree about timing-only mode")
    rect = fabric.rect(origin[0], origin[1], rows, cols)

    xt_tiles = wt_tiles = None
    if not timing_only:
        xm = np.zeros((m, rows * kb), dtype=np.float32)
        xm[:, :k] = np.asarray(x_val, dtype=np.float32).reshape(m, k)
        wm = np.zeros((rows * kb, cols * nb), dtype=np.float32)
        wm[:k, :n] = w_val
        xb = to_storage(xm, dtype).reshape(m, rows, kb).transpose(1, 0, 2)   # [rows, m, kb]
        xt_tiles = np.ascontiguousarray(np.broadcast_to(xb[:, None], (rows, cols, m, kb)))
        wt_tiles = np.ascontiguousarray(
            to_storage(wm, dtype).reshape(rows, kb, cols, nb).transpose(0, 2, 1, 3))
    x_pe = None if x_nnz is None else np.broadcast_to(x_nnz, (rows, cols)).copy()
    xt = MeshTensor(fabric, rect, (m, rows * kb), dtype, 1, None, xt_tiles, 0.0, "x", x_pe)
    wt = MeshTensor(fabric, rect, (rows * kb, cols * nb), dtype, 0, 1, wt_tiles, 0.0, "w",
                    w_nnz)
    partial = local_matmul(xt, wt, (m, cols * nb), "partial", 1,
                           accumulate=fabric_accumulate(prob.accumulate), skip=skip,
                           name=fabric.fresh_name("y_partial"))
    compute = float(partial.ready.max())
    if algorithm == "chain":
        y = mv.allreduce(partial, "col", "chain")
    else:
        summed, _ = ktree_reduce(partial, "col", levels)
        y = mv.multicast(summed, rect, "col")
        summed.free()
    partial.free()
    value = None
    if y.tiles is not None:
        value = y.to_numpy()[:, :n]
        value = value[0] if vector else value
    cycles = float(y.ready.max())
    return GemvResult(algorithm, (rows, cols), value, cycles, spec.seconds(cycles), compute,
                      fabric.stats(), fabric)


def cost(m: int, k: int, n: int, *, algorithm: str = "ktree", grid: tuple[int, int],
         spec: WaferSpec | str | None = None, dtype: str = "fp32",
         accumulate: str | None = "fp32", skip: str | None = None, levels: int = 2,
         x_density: float = 1.0, w_density: float = 1.0) -> GemvCost:
    """Closed-form cycles of `run`: local product, then the allreduce along the columns.

    ``compute`` is `vector_cycles` of the block's FMACs (dense, or the expected nonzeros
    for uniform densities); the chain allreduce is `timing.allreduce_cycles`; the K-tree
    is `_lines.ktree_reduce_cycles` followed by `timing.multicast_cycles` from its root to
    the farther end of the column.
    """
    spec = get_spec(spec)
    prob = check_problem(m, k, n, grid, spec, dtype, accumulate, skip, algorithm, levels)
    for name, dens in (("x_density", x_density), ("w_density", w_density)):
        if not 0.0 <= dens <= 1.0:
            raise KernelShapeError(f"{KERNEL}: {name} must lie in [0, 1], got {dens!r}")
    kb, nb = prob.tiles
    rows = prob.rows
    fmacs = m * kb * nb * {None: 1.0, "a": x_density, "b": w_density,
                           "both": x_density * w_density}[skip]
    comp = float(fmac_cycles(spec, fmacs, dtype, prob.accumulate))
    wav = float(m * nb)
    if algorithm == "chain":
        total = comp + allreduce_cycles(spec, wav, rows, "chain")
        bcast = multicast_cycles(spec, wav, rows)
        root = 0
    else:
        reduced, root = ktree_reduce_cycles(spec, wav, rows, levels, ready=comp)
        bcast = multicast_cycles(spec, wav, max(root, rows - 1 - root) + 1)
        total = reduced + bcast
    reduce = total - comp - bcast
    return GemvCost(
        algorithm, (prob.rows, prob.cols), m, k, n, dtype, prob.accumulate, total,
        spec.seconds(total), comp, reduce, bcast, root,
        sram_bytes(m, k, n, prob.rows, prob.cols, dtype, prob.accumulate),
        {"spec": spec.name, "clock_hz": spec.clock_hz, "levels": levels, "skip": skip,
         "x_density": x_density, "w_density": w_density,
         "input": "x already replicated along mesh rows (previous layer's allreduce)"})


def ideal_cycles(spec: WaferSpec, m: int, k: int, n: int, rows: int, cols: int,
                 dtype: str, accumulate: str) -> float:
    """Cycles if the PEs did only the useful FMACs at peak rate and nothing else."""
    return m * k * n / (rows * cols * fmacs_per_cycle(spec, dtype, accumulate))


__all__ = ["ALGORITHMS", "GemvCost", "GemvResult", "cost", "ideal_cycles", "run",
           "sram_bytes"]
