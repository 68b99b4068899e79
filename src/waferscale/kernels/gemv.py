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

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.compute import local_matmul
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import allreduce_cycles, multicast_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node, Ref
from waferscale.kernels._common import (
    blocks,
    check_chain,
    check_datapath,
    check_nnz,
    check_skip,
    distinct_parts,
    fabric_accumulate,
    fmac_cycles,
    fmacs_per_cycle,
    mask_blocks,
    skip_with_mask,
)
from waferscale.kernels._lines import ktree_reduce, ktree_reduce_cycles
from waferscale.kernels.elementwise import local_pass, op_cycles
from waferscale.kernels.family import (
    TORCH_TO_FABRIC,
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    done,
    shape_of,
    to_np,
    to_torch,
)

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




# ================================================================== the stage family ======
# A matmul with few rows (a decode step's tokens: batch x 1) against a resident weight is a
# GEMV, not a GEMM: a GEMM's square grid is at most min(m, k, n) wide, so a [1, 4096] x
# [4096, 4096] product would sit on one PE (the weights alone are 32 MB); the GEMV spreads
# W over a rows x cols rectangle (K over rows, N over columns) and pays only the reduction.
# `fuse_gemv` retargets such an mm/addmm to ``GEMV`` before lowering, so the GEMM family
# keeps every other matmul; `Gemv` sizes, costs and runs it with `choose_gemv`, `cost` and
# `run` above.

#: The target of the node `fuse_gemv` writes.
GEMV = "waferscale.gemv"
#: Most rows (tokens) an mm/addmm may have and still run as a GEMV. A decode step of a
#: batch of up to this many sequences qualifies; the chooser's grids are the same.
GEMV_MAX_ROWS = 8


def gemv_op(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None
            ) -> torch.Tensor:
    """What the rewritten op computed (host fallback and eager references)."""
    return torch.mm(x, w) if bias is None else torch.addmm(bias, x, w)


def _const_shape(g: Graph, x: Any) -> list[int] | None:
    node = g.nodes.get(x.name) if isinstance(x, Ref) else None
    if node is None or node.op != "const":
        return None
    shape = node.meta.get("shape")
    return list(shape) if isinstance(shape, list) and all(isinstance(d, int) for d in shape) \
        else None


def fuse_gemv(g: Graph) -> int:
    """Retarget every mm / addmm whose activation has at most `GEMV_MAX_ROWS` rows and whose
    weight is a constant [K, N] (an addmm's bias a constant [N], alpha = beta = 1) to one
    ``GEMV(x, w, bias)`` node; returns how many. Anything else stays a GEMM."""
    found = 0
    for node in g.calls():
        if node.target not in ("aten.mm.default", "aten.addmm.default"):
            continue
        addmm = node.target == "aten.addmm.default"
        if any(node.kwargs.get(k, 1) != 1 for k in ("alpha", "beta")) \
                or set(node.kwargs) - {"alpha", "beta"}:
            continue
        args = node.args[1:3] if addmm else node.args[:2]
        if len(args) != 2 or len(node.args) != (3 if addmm else 2):
            continue
        a, w = args
        a_shape, w_shape = shape_of(g, a), _const_shape(g, w)
        dtype = node.meta.get("dtype")
        if len(a_shape) != 2 or w_shape is None or len(w_shape) != 2 \
                or a_shape[1] != w_shape[0] or a_shape[0] > GEMV_MAX_ROWS \
                or dtype not in TORCH_TO_FABRIC \
                or g.nodes[a.name].meta.get("dtype") != dtype:
            continue
        bias = node.args[0] if addmm else None
        if bias is not None and _const_shape(g, bias) != [w_shape[1]]:
            continue
        node.target, node.fn = GEMV, gemv_op
        node.args, node.kwargs = (a, w, bias), {}
        found += 1
    return found


@dataclass(frozen=True)
class GemvParams(StageParams):
    """``[m, k] x [k, n]`` (+ a bias of n) with m at most `GEMV_MAX_ROWS`."""

    m: int
    k: int
    n: int
    bias: bool = False

    def __post_init__(self) -> None:
        if min(self.m, self.k, self.n) < 1:
            raise KernelShapeError(f"{KERNEL} stage [{self.m}, {self.k}] x [{self.k}, "
                                   f"{self.n}]: sizes must be >= 1")


def input_broadcast_cycles(spec: WaferSpec, p: GemvParams, grid: tuple[int, int]) -> float:
    """A stage's input arrives once per mesh row; replicating x's K-block along the row is
    a flood of ``m * kb`` wavelets across the grid's columns (`timing.multicast_cycles`).
    Inside a chain of GEMVs laid out alternately (the inference plan) the previous
    allreduce leaves x replicated and this is not paid; a pipelined stage pays it."""
    return multicast_cycles(spec, p.m * blocks(p.k, grid[0]), grid[1])


def bias_cycles(spec: WaferSpec, p: GemvParams, grid: tuple[int, int]) -> float:
    """Adding the bias to the replicated output block (fp32, before the rounding)."""
    if not p.bias:
        return 0.0
    return float(op_cycles(spec, p.m * blocks(p.n, grid[1]), "fp32", "add", reads=2))


def stage_cycles(spec: WaferSpec, p: GemvParams, dtype: str, grid: tuple[int, int]) -> float:
    """A GEMV stage's closed form: input broadcast + `cost` (K-tree) + bias."""
    return (input_broadcast_cycles(spec, p, grid) + _cost_cycles(spec, p.m, p.k, p.n, grid,
                                                                 dtype)
            + bias_cycles(spec, p, grid))


@functools.lru_cache(maxsize=1 << 14)
def _cost_cycles(spec: WaferSpec, m: int, k: int, n: int, grid: tuple[int, int],
                 dtype: str) -> float:
    return cost(m, k, n, algorithm="ktree", grid=grid, spec=spec, dtype=dtype,
                accumulate="fp32").cycles


def fastest_grid(spec: WaferSpec, m: int, k: int, n: int, *, rect: tuple[int, int],
                 dtype: str, accumulate: str | None, algorithms: tuple[str, ...] = ALGORITHMS,
                 skip: str | None = None, levels: int = 2, x_density: float = 1.0,
                 w_density: float = 1.0) -> tuple[GemvCost, int]:
    """The fastest (algorithm, rows x cols) for ``[m,k] x [k,n]`` within ``rect`` and how
    many were priced. Columns are independent lines (the reduction runs down each column),
    so more columns never cost latency: as many as N and the rectangle allow; the row count
    trades local FMACs against the reduction's length. A typed error when none fits."""
    r_max, c_max = rect
    cols = min(c_max, n)
    best: GemvCost | None = None
    considered = 0
    for algorithm in algorithms:
        for rows in distinct_parts(k, r_max):
            if sram_bytes(m, k, n, rows, cols, dtype, accumulate or "fp32") > spec.sram_bytes:
                continue
            c = cost(m, k, n, algorithm=algorithm, grid=(rows, cols), spec=spec, dtype=dtype,
                     accumulate=accumulate, skip=skip, levels=levels, x_density=x_density,
                     w_density=w_density)
            considered += 1
            if best is None or (c.cycles, c.grid) < (best.cycles, best.grid):
                best = c
    if best is None:
        raise KernelFitError(
            f"gemv [{m},{k}]x[{k},{n}] {dtype}: no grid within the {r_max}x{c_max} rectangle "
            f"fits the {spec.sram_bytes} B SRAM; use a larger rectangle or split W")
    return best, considered


@functools.lru_cache(maxsize=1 << 14)
def _choose(spec: WaferSpec, m: int, k: int, n: int, dtype: str, rows: int, cols: int
            ) -> tuple[int, int]:
    best, _ = fastest_grid(spec, m, k, n, rect=(rows, cols), dtype=dtype, accumulate="fp32",
                           algorithms=("ktree",))
    return tuple(best.grid)


class Gemv(KernelFamily):
    """The node `fuse_gemv` writes: MeshGEMV (K-tree allreduce, K = 2, fp32 accumulate) on
    the grid `fastest_grid` picks (all the columns N and the rectangle allow; the row count
    that balances local FMACs against the reduction)."""

    kind = "gemv"
    targets = frozenset({GEMV})

    def match(self, g: Graph) -> int:
        return fuse_gemv(g)

    def describe(self, g: Graph, nodes: list[Node], dtype: str) -> tuple[GemvParams, float]:
        node = nodes[0]
        (m, k), n = shape_of(g, node.args[0]), shape_of(g, node.args[1])[1]
        return GemvParams(m, k, n, bias=node.args[2] is not None), 2.0 * m * k * n

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[GemvParams, Sizing]:
        p: GemvParams = st.params  # type: ignore[assignment]
        dt = st.dtype
        full = (min(p.k, side_cap, spec.rows), min(p.n, side_cap, spec.cols))
        if bounds is not None:
            rect = (min(p.k, bounds[0]), min(p.n, bounds[1]))
            tries = [rect]
        else:
            cols = max(1, min(full[1], int(math.sqrt(max(area, 1)))))
            rect = (max(1, min(full[0], int(max(area, 1) // cols))), cols)
            tries = [rect, full]
        grid = None
        for r in tries:
            try:
                grid = _choose(spec, p.m, p.k, p.n, dt, *r)
                break
            except KernelError:
                continue
        if grid is None:
            raise KernelFitError(
                f"{KERNEL} [{p.m},{p.k}]x[{p.k},{p.n}] {dt}: no grid within "
                f"{tries[-1][0]}x{tries[-1][1]} PEs fits the {spec.sram_bytes} B SRAM (W "
                f"alone needs {math.ceil(p.k * p.n * BYTES[dt] / spec.sram_bytes)} PEs)")
        sram = sram_bytes(p.m, p.k, p.n, *grid, dt, "fp32") \
            + (blocks(p.n, grid[1]) * BYTES[dt] if p.bias else 0)
        return p, Sizing(grid, stage_cycles(spec, p, dt, grid), sram,
                         f"meshgemv (k-tree allreduce) on {grid[0]}x{grid[1]}")

    def notes(self, st: Stage) -> list[str]:
        return ["gemv stages (matmuls of at most 8 rows against a resident weight): "
                "MeshGEMV, W blocked K over rows and N over columns; the input is "
                "replicated along the mesh rows (charged), the K-tree allreduce leaves the "
                "output replicated down the columns"]

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        x, w, b = ctx.value(node.args)
        p: GemvParams = st.params  # type: ignore[assignment]
        fab = ctx.fabric(st)
        grid = st.rect
        if ctx.timing_only:
            res = run((p.m, p.k), (p.k, p.n), grid=grid, fabric=fab, dtype=st.dtype,
                      accumulate="fp32")
        else:
            res = run(to_np(x).reshape(p.m, p.k), to_np(w), grid=grid, fabric=fab,
                      dtype=st.dtype, accumulate="fp32")
        end = res.cycles      # the output's arrival (the fabric's clocks stop at its ramp)
        if p.bias:
            end = float(np.max(local_pass(fab, fab.rect(0, 0, *grid),
                                          p.m * blocks(p.n, grid[1]), "fp32", "add", end,
                                          reads=2)))
        if not ctx.timing_only:
            y = np.asarray(res.value, np.float32).reshape(p.m, p.n)
            if b is not None:
                y = y + to_np(b).astype(np.float32)
            ctx.env[node.name] = to_torch(y.reshape(node.meta["shape"]), x.dtype)
        return done(fab, extra=input_broadcast_cycles(ctx.spec, p, grid)
                    + max(0.0, end - fab.elapsed()))


FAMILY = Gemv()

__all__ = ["ALGORITHMS", "FAMILY", "GEMV", "GEMV_MAX_ROWS", "Gemv", "GemvCost", "GemvParams",
           "GemvResult", "bias_cycles", "cost", "fuse_gemv", "gemv_op", "ideal_cycles",
           "input_broadcast_cycles", "run", "sram_bytes", "stage_cycles"]
