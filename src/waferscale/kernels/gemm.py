"""GEMM ``C = A @ B`` on a square p x p grid of PEs: SUMMA, Cannon and MeshGEMM.

Why three: they differ only in how operand tiles travel, and on a mesh that is the whole
story (WaferLLM, OSDI'25). Every PE (i, j) owns the C block (i, j) and, at each of p steps,
multiplies one A block by one B block on its compute engine.

* SUMMA: at step l, PE (i, l) floods A(i, l) along row i and PE (l, j) floods B(l, j) along
  column j. A flood crosses the whole line, so each step pays about p hops of latency.
* Cannon: blocks start skewed (A(i, i+j), B(i+j, j)) and shift one PE west / north each
  step, cyclically. A mesh has no wrap-around link, so the tile falling off the end travels
  p - 1 hops back: again about p hops per step.
* MeshGEMM: Cannon on an interleaved placement. Logical ring position l sits at physical
  position 2l (first half) or 2(p-1-l)+1 (second half), so ring neighbours are at most two
  hops apart: every step costs O(1) hops, and each PE needs only two routes (one to its
  ring successor per operand).

Steps (the same for all three, and the way WaferLLM analyses them): p synchronous steps.
SUMMA and Cannon: at the start of step s every PE launches the transfers that bring its
blocks for step s+1 into a spare buffer (double buffering) and multiplies its step-s blocks
meanwhile; step s+1 starts once the slowest PE has finished both. So a step costs
max(C, L): C the tile product, L the slowest delivery (both blocks through the receiver's
ramp, over the longest route: p - 1 hops for Cannon's wrap and SUMMA's flood). MeshGEMM
holds a third block per operand and forwards each block as soon as it has arrived
(`FORWARDING`), so its two shifts overlap across steps (`forwarded_cycles`). The grid-wide step
boundary stands in for the per-PE dependencies of a real program (a PE starts step s+1
when its own product, its send and its receive are done): on a dense problem every ring
holds a PE on the critical path, so the period is the same and only start-up transients
differ; with sparse blocks it is an upper bound (no slack between PEs is exploited).

Placement (skew, interleave) happens when operands are loaded, as in WaferLLM, and is not
timed. Shapes that do not divide by p are zero-padded to whole blocks; padded elements are
computed (the hardware would run the same full-tile loops), and count against efficiency.

Sparsity: ``skip='b'`` (zero weights) / ``'a'`` (zero activations) / ``'both'``: the sender
of a skipped operand sends only its nonzeros as (value, index) wavelets plus an end marker,
and the receiving PE runs one AXPY per nonzero (`compute.local_matmul(skip=...)`), so each
PE's cycles follow its own nonzeros and load imbalance shows up in the step times.
"""

from __future__ import annotations

import dataclasses
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
from waferscale.fabric.dtypes import BYTES, move_wavelets, to_storage
from waferscale.fabric.grid import Rect
from waferscale.fabric.timing import transfer_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node, Ref
from waferscale.kernels._common import (
    blocks,
    check_chain,
    check_datapath,
    check_nnz,
    check_skip,
    densest_block,
    fabric_accumulate,
    fmac_cycles,
    fmacs_per_cycle,
    mask_blocks,
    skip_with_mask,
    sparse_wavelets,
)
from waferscale.kernels._lines import line_permute
from waferscale.kernels.elementwise import op_cycles
from waferscale.kernels.family import (
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    is_layout,
    links_key,
    remember,
    remembered,
    shape_of,
    to_np,
    to_torch,
)
from waferscale.kernels.norm import LayerNormParams
from waferscale.kernels.norm import cost as norm_cost
from waferscale.kernels.pointwise import fused_cycles

ALGORITHMS = ("summa", "cannon", "meshgemm")
KERNEL = "gemm"
#: Ring algorithms that forward a block as soon as it has arrived, holding three blocks
#: per operand (the one multiplied, the next step's, and the one after arriving while the
#: next is sent on) instead of two [A]: WaferLLM does not say how MeshGEMM buffers; with
#: double buffering both blocks leave together at each step boundary and queue on one
#: ramp, which caps a 2K GEMM at 720^2 below its published > 70 % (docs/validation.md).
#: Cannon, WaferLLM's baseline, stays double buffered.
FORWARDING = frozenset({"meshgemm"})
#: Largest grid on which `cost` times a dense forwarding ring whose steps its block
#: arrivals bound by a timing-only fabric run, so that the compiler's plan equals its
#: fabric run exactly (`forwarded_cycles` is then a cycle or so slow); above, the closed
#: form (a run takes seconds there, and the cycle is noise).
EXACT_FORWARDING_GRID = 64


def ring_buffers(algorithm: str) -> int:
    """Blocks per operand a PE holds: SUMMA its own and two flood panels (the current and
    the next step's, since its own must stay for its turn as root), Cannon its own and
    one receive buffer, MeshGEMM three (`FORWARDING`)."""
    return 3 if algorithm == "summa" or algorithm in FORWARDING else 2


# --------------------------------------------------------------------------- layout -----
def interleave(p: int) -> np.ndarray:
    """MeshGEMM's placement: physical position of each logical ring position."""
    logical = np.arange(p)
    half = (p + 1) // 2
    return np.where(logical < half, 2 * logical, 2 * (p - 1 - logical) + 1)


def ring_dest(p: int) -> np.ndarray:
    """Interleaved ring shift: the physical PE each physical PE sends its block to (the
    one holding the previous logical position, as Cannon's west/north shift does)."""
    phys = interleave(p)
    dest = np.empty(p, dtype=int)
    dest[phys] = phys[(np.arange(p) - 1) % p]
    return dest


def placement(algorithm: str, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A block column, B block row, physical position) of every PE before step 0.

    Returns ``a_col[i, j]`` and ``b_row[i, j]`` over *logical* PE coordinates, and the
    logical-to-physical map applied to both mesh axes.
    """
    i, j = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    if algorithm == "summa":
        return j, i, np.arange(p)
    skew = (i + j) % p
    phys = interleave(p) if algorithm == "meshgemm" else np.arange(p)
    return skew, skew, phys


def _blocks4(x: np.ndarray, p: int, rb: int, cb: int) -> np.ndarray:
    """[p*rb, p*cb] -> [p, p, rb, cb] blocks."""
    return x.reshape(p, rb, p, cb).transpose(0, 2, 1, 3)


# --------------------------------------------------------------------------- checks -----
@dataclass(frozen=True)
class GemmProblem:
    """A validated GEMM problem on a p x p grid."""

    m: int
    k: int
    n: int
    p: int
    dtype: str
    accumulate: str
    skip: str | None

    @property
    def tiles(self) -> tuple[int, int, int]:
        """(mb, kb, nb): the padded block sizes each PE works on."""
        return blocks(self.m, self.p), blocks(self.k, self.p), blocks(self.n, self.p)


def sram_bytes(m: int, k: int, n: int, p: int, dtype: str, accumulate: str,
               algorithm: str = "meshgemm") -> int:
    """SRAM per PE: the C block and `ring_buffers` blocks per operand."""
    mb, kb, nb = blocks(m, p), blocks(k, p), blocks(n, p)
    return ring_buffers(algorithm) * (mb * kb + kb * nb) * BYTES[dtype] \
        + mb * nb * BYTES[accumulate]


def check_problem(m: int, k: int, n: int, p: int, spec: WaferSpec, dtype: str,
                  accumulate: str | None, skip: str | None, algorithm: str,
                  rect: tuple[int, int] | None = None) -> GemmProblem:
    """Reject problems the rectangle or the SRAM cannot hold, naming what would fit."""
    if algorithm not in ALGORITHMS:
        raise KernelShapeError(f"{KERNEL}: algorithm {algorithm!r}; use one of "
                               f"{', '.join(ALGORITHMS)}")
    acc = check_datapath(KERNEL, dtype, accumulate)
    check_skip(KERNEL, skip)
    for name, value in (("m", m), ("k", k), ("n", n), ("grid", p)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} must be a positive integer, got {value!r}")
    rows, cols = rect or (spec.rows, spec.cols)
    if p > min(rows, cols):
        raise KernelFitError(f"{KERNEL} [{m},{k}]x[{k},{n}]: a {p}x{p} grid does not fit the "
                             f"{rows}x{cols} rectangle; use a grid of at most "
                             f"{min(rows, cols)}")
    if p > min(m, k, n):
        raise KernelFitError(f"{KERNEL} [{m},{k}]x[{k},{n}]: a {p}x{p} grid leaves PEs "
                             f"without a block (every dimension needs >= p); use a grid of "
                             f"at most {min(m, k, n)}")
    need = sram_bytes(m, k, n, p, dtype, acc, algorithm)
    if need > spec.sram_bytes:
        fit = next((q for q in range(p, min(rows, cols, m, k, n) + 1)
                    if sram_bytes(m, k, n, q, dtype, acc, algorithm) <= spec.sram_bytes),
                   None)
        hint = (f"use a grid of at least {fit}x{fit}" if fit else
                f"the largest grid that fits the rectangle ({min(rows, cols, m, k, n)}) is "
                f"still too small; split the problem")
        raise KernelFitError(f"{KERNEL} [{m},{k}]x[{k},{n}] {dtype}: blocks on a {p}x{p} grid "
                             f"need {need} B per PE, over the {spec.sram_bytes} B SRAM; {hint}")
    return GemmProblem(int(m), int(k), int(n), int(p), dtype, acc, skip)


# --------------------------------------------------------------------------- result -----
@dataclass
class GemmResult:
    """What `run` returns: the product (None in timing-only mode) and the fabric's count."""

    algorithm: str
    grid: int
    value: np.ndarray | None
    cycles: float
    seconds: float
    efficiency: float
    stats: dict[str, float]
    fabric: Fabric = field(repr=False)


@dataclass(frozen=True)
class GemmCost:
    """What `cost` returns: closed-form cycles and the terms they come from."""

    algorithm: str
    grid: int
    m: int
    k: int
    n: int
    dtype: str
    accumulate: str
    cycles: float
    seconds: float
    compute_cycles: float      # one step's tile product on the busiest PE
    latency_cycles: float      # one step's delivery when both blocks leave together
    efficiency: float
    sram_bytes: int
    assumptions: dict[str, Any] = field(default_factory=dict)


def ideal_cycles(spec: WaferSpec, m: int, k: int, n: int, p: int, dtype: str,
                 accumulate: str) -> float:
    """Cycles if the p*p PEs did only the useful FMACs at their peak rate."""
    return m * k * n / (p * p * fmacs_per_cycle(spec, dtype, accumulate))


# ------------------------------------------------------------------------------ run -----
class _Operand:
    """A block per PE that travels: the tensor that owns its SRAM, the per-PE nonzeros of
    the block it holds (timing-only sparse runs), and how many wavelets it sends."""

    def __init__(self, owner: MeshTensor, nnz: np.ndarray | None, sparse: bool) -> None:
        self.owner = owner
        self.nnz = nnz
        self.sparse = sparse

    def view_at(self, begin: float) -> MeshTensor:
        """The tensor a step's product reads, from the step's start ``begin`` (nonzero
        counts attached when they were given)."""
        ready = np.maximum(self.owner.ready, begin)
        return self.owner.like(self.owner.tiles, ready, nnz=self.nnz, allocate=False)

    def sender(self, ready: np.ndarray) -> MeshTensor:
        """A view that sends from ``ready``: dense tiles, or nonzeros + end marker."""
        v = self.owner.like(self.owner.tiles, np.broadcast_to(ready, self.owner.rect.shape),
                            allocate=False)
        if self.sparse:
            nnz = self.owner.nnz() if self.nnz is None else self.nnz
            v.valid = sparse_wavelets(nnz, self.owner.dtype)
        else:   # a block moves memory to memory: 16-bit values travel two per wavelet
            v.valid = move_wavelets(v.valid, v.dtype, v.fabric.spec.wavelet_bits)
        return v


def _as_problem(x: np.ndarray | tuple[int, int], what: str) -> tuple[tuple[int, int],
                                                                     np.ndarray | None]:
    if isinstance(x, tuple):
        if len(x) != 2:
            raise KernelShapeError(f"{KERNEL}: {what} shape {x} must be 2-D (rows, cols)")
        return (int(x[0]), int(x[1])), None
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise KernelShapeError(f"{KERNEL}: {what} must be a 2-D matrix, got shape {arr.shape}")
    return (arr.shape[0], arr.shape[1]), arr


def run(a: np.ndarray | tuple[int, int], b: np.ndarray | tuple[int, int], *,
        algorithm: str = "meshgemm", grid: int,
        spec: WaferSpec | str | None = None, dtype: str = "fp32",
        accumulate: str | None = "fp32", skip: str | None = None,
        a_nnz: np.ndarray | None = None, b_nnz: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        fabric: Fabric | None = None, origin: tuple[int, int] = (0, 0)) -> GemmResult:
    """Multiply on the fabric: real values for arrays, clocks only for shapes.

    ``a``/``b`` are matrices, or ``(rows, cols)`` tuples for a timing-only run (then
    ``a_nnz``/``b_nnz`` may give each [p, p] block's nonzeros for a sparse timing run).
    ``mask`` is an unstructured weight mask ([k, n], True = kept): masked weights are
    zeroed and skipped (``skip`` becomes 'b', or 'both' with 'a'); in a timing-only run
    each block's nonzeros are counted from it.
    ``grid`` is p (``choose_gemm(...).grid`` picks one). ``fabric``/``origin`` place the
    kernel on an existing fabric; otherwise a p x p fabric is made (timing-only for shapes).
    """
    spec = fabric.spec if fabric is not None else get_spec(spec)
    (m, k), a_val = _as_problem(a, "A")
    (k2, n), b_val = _as_problem(b, "B")
    timing_only = check_chain(KERNEL, "A", "B", m, k, k2, n, a_val, b_val)
    rect_shape = None if fabric is None else (fabric.rows - origin[0], fabric.cols - origin[1])
    prob = check_problem(m, k, n, grid, spec, dtype, accumulate, skip, algorithm, rect_shape)
    p = prob.p
    mb, kb, nb = prob.tiles
    if not timing_only and (a_nnz is not None or b_nnz is not None):
        raise KernelShapeError(f"{KERNEL}: a_nnz/b_nnz are for timing-only runs; with real "
                               f"operands the nonzeros are counted from the values")
    if mask is not None:
        if b_nnz is not None:
            raise KernelShapeError(f"{KERNEL}: give a weight mask or b_nnz, not both")
        mask_nnz = mask_blocks(KERNEL, mask, (k, n), (p, p), (kb, nb))
        prob = dataclasses.replace(prob, skip=skip_with_mask(skip))
        if b_val is not None:
            b_val = np.where(np.asarray(mask, dtype=bool), b_val, 0)
        else:
            b_nnz = mask_nnz
    skip = prob.skip
    a_nnz = check_nnz(KERNEL, "a_nnz", a_nnz, (p, p), mb * kb)
    b_nnz = check_nnz(KERNEL, "b_nnz", b_nnz, (p, p), kb * nb)
    if fabric is None:
        fabric = Fabric(spec, p, p, timing_only=timing_only)
    elif fabric.timing_only != timing_only:
        mode = "timing-only" if fabric.timing_only else "valued"
        raise KernelShapeError(f"{KERNEL}: the fabric is {mode} but the operands are "
                               f"{'shapes' if timing_only else 'arrays'}")
    rect = fabric.rect(origin[0], origin[1], p, p)

    a_col, b_row, phys = placement(algorithm, p)
    li, lj = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")

    def place(blocks4: np.ndarray | None, nnz: np.ndarray | None, rows_of: np.ndarray,
              cols_of: np.ndarray, shape: tuple[int, int], name: str) -> _Operand:
        """Put logical block (rows_of[i,j], cols_of[i,j]) on the PE of logical (i, j)."""
        tiles = None
        if blocks4 is not None:
            logical = blocks4[rows_of, cols_of]
            tiles = np.empty_like(logical)
            tiles[np.ix_(phys, phys)] = logical
        pe_nnz = None
        if nnz is not None:
            pe_nnz = np.empty((p, p))
            pe_nnz[np.ix_(phys, phys)] = nnz[rows_of, cols_of]
        t = MeshTensor(fabric, rect, shape, dtype, 0, 1, tiles, 0.0, name, pe_nnz)
        sparse = skip in ("both", name.lower())
        return _Operand(t, pe_nnz, sparse)

    def padded(x: np.ndarray | None, rows: int, cols: int) -> np.ndarray | None:
        if x is None:
            return None
        out = np.zeros((rows, cols), dtype=np.float32)
        out[: x.shape[0], : x.shape[1]] = x
        return to_storage(out, dtype)

    value = None
    if _whole_product(a_val, prob, algorithm):
        # the tiles would only be summed step by step into C: one product over the whole
        # matrices gives C (fp32 accumulate, summed in BLAS order rather than block by
        # block: within the tolerance the kernel is held to) and the steps only run clocks
        a_val, b_val, value = None, None, product(a_val, b_val, dtype)
    a4 = None if a_val is None else _blocks4(padded(a_val, p * mb, p * kb), p, mb, kb)
    b4 = None if b_val is None else _blocks4(padded(b_val, p * kb, p * nb), p, kb, nb)
    a_op = place(a4, a_nnz, li, a_col, (p * mb, p * kb), "a")
    b_op = place(b4, b_nnz, b_row, lj, (p * kb, p * nb), "b")

    if algorithm == "summa":
        c = _run_summa(a_op, b_op, prob, rect)
    else:
        c = _run_ring(a_op, b_op, prob, algorithm)
    a_op.owner.free()
    b_op.owner.free()

    if c.tiles is not None:
        logical = c.tiles[np.ix_(phys, phys)]
        value = logical.transpose(0, 2, 1, 3).reshape(p * mb, p * nb)[:m, :n]
    cycles = float(c.ready.max())
    # an all-zero A (or B) with zero skipping sends and multiplies nothing: 0 cycles, and
    # no useful work to compare with (efficiency 0, as `cost` says for the same case)
    ideal = ideal_cycles(spec, m, k, n, p, dtype, prob.accumulate)
    return GemmResult(algorithm, p, value, cycles, spec.seconds(cycles),
                      ideal / cycles if cycles else 0.0, fabric.stats(), fabric)


def _whole_product(a_val: np.ndarray | None, prob: GemmProblem, algorithm: str) -> bool:
    """Whether C's values can come from one product of the whole matrices.

    Dense ring GEMMs (Cannon, MeshGEMM) accumulating in fp32: every PE sums its p block
    products in fp32, which is C's block up to the order of the fp32 additions, and no
    clock depends on a value (dense: no zeros are skipped). Millions of tiny per-PE tile
    products (a BLAS call each) are then one BLAS call, and the steps carry clocks only,
    which lets `_Periodic` skip the steps that repeat. A 16-bit accumulator rounds after
    every step and SUMMA floods panels, so those keep the per-step products.
    """
    return (a_val is not None and prob.skip is None and prob.accumulate == "fp32"
            and algorithm != "summa")


def product(a: np.ndarray, b: np.ndarray, dtype: str, out: np.ndarray | None = None
            ) -> np.ndarray:
    """``A @ B`` in fp32 from operands rounded to their storage dtype, as the tiles hold them;
    written into ``out`` (a C-contiguous fp32 array of the product's shape) when given.

    Through torch: the compiled model runs torch between its GEMMs, and NumPy's own BLAS
    threads then fight torch's spinning workers for the cores (a 0.1 ms product took 16 ms);
    torch's matmul shares its thread pool (and gives the same bits with or without ``out``).
    """
    work = np.float32
    a32 = torch.from_numpy(np.asarray(to_storage(a, dtype), dtype=work))
    b32 = torch.from_numpy(np.asarray(to_storage(b, dtype), dtype=work))
    if out is None:
        return a32.matmul(b32).numpy()
    torch.matmul(a32, b32, out=torch.from_numpy(out))
    return out


class _Periodic:
    """Skips the steps of a ring GEMM once they repeat exactly, shifted in time.

    Steps 1 .. p-2 are the same operation (send both blocks on, multiply, accumulate), the
    clocks' arithmetic is translation-invariant (max and +) and, dense, nothing depends on
    which block a PE holds. So when the state at the start of step s equals the state at
    the start of step s-1 shifted by ``delta = begin_s - begin_{s-1}``, every later step is
    that step shifted by delta again: the clocks a step writes advance by delta each step
    and the counters (busy, stalled, flops, bytes, wavelets) by the same increment. The
    state is compared where it can matter: a port clock or ready that did not move is
    compared only if it could still win a ``max`` (every start in a step is >= its begin).

    The jump is taken only when every value is an integer below 2**52, so ``x + r*delta``
    is bit-for-bit the r repeated additions; otherwise the steps run one by one.
    """

    LIMIT = float(2 ** 52)

    def __init__(self, fabric: Fabric, rect: Rect) -> None:
        self.fabric = fabric
        self.rows, self.cols = rect.slices
        self.last: tuple[list[np.ndarray], list[np.ndarray], float] | None = None

    def _clocks(self, tensors: list[MeshTensor]) -> list[np.ndarray]:
        f, r, c = self.fabric, self.rows, self.cols
        return [f.ce_clock[r, c], f.port_clock[:, r, c]] + [t.ready for t in tensors]

    def _counters(self) -> list[np.ndarray]:
        f, r, c = self.fabric, self.rows, self.cols
        return [f.busy[r, c], f.stalled[r, c], f.flops[r, c], f.mem_bytes[r, c],
                f.port_wavelets[:, r, c], np.array([f.wavelet_hops])]

    @classmethod
    def _exact(cls, arrays: list[np.ndarray]) -> bool:
        """Every value an integer of magnitude below 2**52 (one pass over all of them)."""
        x = np.concatenate([a.ravel() for a in arrays])
        with np.errstate(invalid="ignore"):
            return bool(np.all(np.abs(x) < cls.LIMIT) and np.all(np.floor(x) == x))

    def observe(self, begin: float, tensors: list[MeshTensor], remaining: int
                ) -> tuple[int, float]:
        """Record the state at the start of a step that starts at ``begin``; if it repeats
        the previous step's, advance the state by ``remaining`` steps in place and return
        ``remaining`` and the begin of the step after them; else ``(0, begin)``."""
        clocks, counters = self._clocks(tensors), self._counters()
        last, self.last = self.last, ([x.copy() for x in clocks],
                                      [x.copy() for x in counters], begin)
        if last is None or remaining < 1:
            return 0, begin
        old_clocks, old_counters, old_begin = last
        delta = begin - old_begin
        if not delta > 0 or len(old_clocks) != len(clocks):
            return 0, begin
        moved = []
        for x, old in zip(clocks, old_clocks, strict=True):
            if x.shape != old.shape:
                return 0, begin
            step = x - old
            shifted = step == delta
            if not np.all(shifted | ((step == 0) & (x <= old_begin))):
                return 0, begin
            moved.append(shifted)
        increments = [x - old for x, old in zip(counters, old_counters, strict=True)]
        after_clocks = [x + remaining * delta * m for x, m in zip(clocks, moved, strict=True)]
        after_counters = [x + remaining * inc for x, inc in zip(counters, increments,
                                                                 strict=True)]
        if not self._exact(clocks + counters + increments + after_clocks + after_counters
                           + [np.array([begin, delta, begin + remaining * delta])]):
            return 0, begin
        for x, after in zip(clocks + counters[:-1], after_clocks + after_counters[:-1],
                            strict=True):
            x[...] = after
        self.fabric.wavelet_hops = float(after_counters[-1][0])
        self.last = None
        return remaining, begin + remaining * delta


def _multiply(a: MeshTensor, b: MeshTensor, acc: MeshTensor | None, prob: GemmProblem
              ) -> MeshTensor:
    """One step's tile product, accumulated in place into C."""
    mb, _, nb = prob.tiles
    p = prob.p
    if acc is not None:
        acc.free()   # accumulation is in place: the new C reuses the old C's buffer
    return local_matmul(a, b, (p * mb, p * nb), 0, 1, acc=acc,
                        accumulate=fabric_accumulate(prob.accumulate), skip=prob.skip,
                        name=a.fabric.fresh_name("c"))


def _shifted(op: _Operand, ready: np.ndarray, axis: int, algorithm: str, dest: np.ndarray
             ) -> _Operand:
    """``op``'s blocks sent one ring step on (west along rows for A, north along columns for
    B; MeshGEMM's interleaved ring or Cannon's cyclic shift), leaving from ``ready``."""
    sender = op.sender(ready)
    if algorithm == "cannon":
        moved = mv.shift(sender, "west" if axis == 1 else "north", 1, cyclic=True)
        nnz = None if op.nnz is None else np.roll(op.nnz, -1, axis=axis)
    else:
        moved = line_permute(sender, "row" if axis == 1 else "col", dest)
        nnz = None
        if op.nnz is not None:
            nnz = np.empty_like(op.nnz)
            if axis == 1:
                nnz[:, dest] = op.nnz
            else:
                nnz[dest, :] = op.nnz
    return _Operand(moved, nnz, op.sparse)


def _run_ring(a_op: _Operand, b_op: _Operand, prob: GemmProblem, algorithm: str
              ) -> MeshTensor:
    """Cannon (cyclic shifts) or MeshGEMM (interleaved ring), one synchronous step at a
    time; step s starts when every PE has finished step s-1's product and holds step s's
    blocks.

    Cannon (double buffered): at the start of each step both blocks go on, together.
    MeshGEMM forwards each block as soon as it has arrived (`FORWARDING`): step 0's
    blocks leave at its start; after that a PE sends a block on once it has arrived and the
    receiver's third buffer is free (the receiver has begun the step before, so the block
    two steps back is done), so A's and B's shifts each follow their own arrivals instead
    of leaving together at the step boundary and queueing behind one another on the ramps.
    """
    p = prob.p
    c: MeshTensor | None = None
    dest = ring_dest(p)
    forward = algorithm in FORWARDING
    begin = 0.0          # when the current step starts on every PE
    # steps may be skipped only when they carry no values and every PE's work is the same
    # every step (no nonzero counts, no zero skipping)
    periodic = None
    if a_op.owner.tiles is None and b_op.owner.tiles is None and prob.skip is None \
            and a_op.nnz is None and b_op.nnz is None:
        periodic = _Periodic(a_op.owner.fabric, a_op.owner.rect)
    shape = a_op.owner.rect.shape
    # the blocks of the steps after the current one, in flight or arrived
    ahead: list[tuple[_Operand, _Operand]] = []
    last = p - 2 if forward else p - 1    # the steps before it may repeat exactly
    step = -1
    while step + 1 < p:
        step += 1
        if periodic is not None and c is not None and step < last:
            live = [a_op.owner, b_op.owner, c] + [o.owner for pair in ahead for o in pair]
            skipped, begin = periodic.observe(begin, live, last - step)
            step += skipped
        if not ahead and step + 1 < p:
            # the next step's blocks leave now (forwarding: only step 0's)
            at = np.full(shape, begin)
            ahead.append((_shifted(a_op, at, 1, algorithm, dest),
                          _shifted(b_op, at, 0, algorithm, dest)))
        if forward and step + 2 < p:
            # step s+2's blocks leave as step s+1's arrive, once the receivers hold a free
            # buffer (they have begun step s: `begin`)
            na, nb = ahead[-1]
            ahead.append((_shifted(na, np.maximum(na.owner.ready, begin), 1, algorithm, dest),
                          _shifted(nb, np.maximum(nb.owner.ready, begin), 0, algorithm, dest)))
        c = _multiply(a_op.view_at(begin), b_op.view_at(begin), c, prob)
        if ahead:
            na, nb = ahead.pop(0)
            begin = max(float(c.ready.max()), float(na.owner.ready.max()),
                        float(nb.owner.ready.max()))
            a_op.owner.free()
            b_op.owner.free()
            a_op, b_op = na, nb
    assert c is not None
    return c


def _run_summa(a_op: _Operand, b_op: _Operand, prob: GemmProblem, rect: Rect
               ) -> MeshTensor:
    """SUMMA: row floods of A's block column l and column floods of B's block row l, one
    synchronous step at a time (step l+1's floods travel while step l multiplies)."""
    p = prob.p
    mb, kb, nb = prob.tiles
    fabric = a_op.owner.fabric

    def panels(step: int, begin: float) -> tuple[_Operand, _Operand]:
        out = []
        for op, axis in ((a_op, "row"), (b_op, "col")):
            t = op.owner
            if axis == "row":
                src = Rect(rect.row, rect.col + step, p, 1)
                sl = (slice(None), slice(step, step + 1))
                shape, maps = (p * mb, kb), (0, None)
            else:
                src = Rect(rect.row + step, rect.col, 1, p)
                sl = (slice(step, step + 1), slice(None))
                shape, maps = (kb, p * nb), (None, 1)
            tiles = None if t.tiles is None else t.tiles[sl]
            nnz = None if op.nnz is None else op.nnz[sl]
            root = MeshTensor(fabric, src, shape, t.dtype, *maps, tiles,
                              np.maximum(t.ready[sl], begin), allocate=False)
            if op.sparse:
                root.valid = sparse_wavelets(root.nnz() if nnz is None else nnz, t.dtype)
            else:
                root.valid = move_wavelets(root.valid, t.dtype, fabric.spec.wavelet_bits)
            flood = mv.multicast(root, rect, axis)
            full = None if nnz is None else np.ascontiguousarray(np.broadcast_to(nnz, (p, p)))
            out.append(_Operand(flood, full, False))
        return out[0], out[1]

    if p == 1:   # one PE: its own blocks are the panels, nothing travels
        return _multiply(a_op.view_at(0.0), b_op.view_at(0.0), None, prob)
    c: MeshTensor | None = None
    current = panels(0, 0.0)
    begin = max(float(op.owner.ready.max()) for op in current)
    for step in range(p):
        upcoming = panels(step + 1, begin) if step + 1 < p else None
        c = _multiply(current[0].view_at(begin), current[1].view_at(begin), c, prob)
        begin = max([float(c.ready.max())] +
                    [float(op.owner.ready.max()) for op in upcoming or ()])
        for op in current:
            op.owner.free()
        if upcoming is not None:
            current = upcoming
    assert c is not None
    return c


# ----------------------------------------------------------------------------- cost -----
def route_hops(algorithm: str, p: int, step: int = 0) -> int:
    """Hops of the longest delivery of a step: Cannon's wrap (p - 1), MeshGEMM's 2, or the
    distance from SUMMA's step-``step`` root to the far end of its line."""
    if p < 2:
        return 0
    if algorithm == "cannon":
        return p - 1
    if algorithm == "meshgemm":
        return min(2, p - 1)
    return max(step, p - 1 - step)


def read_cycles(spec: WaferSpec) -> float:
    """Cycles from a send's start to its first wavelet on the ramp, as `timing` counts them:
    what a one-wavelet, zero-hop `transfer_cycles` has beyond its wavelet and two ramps."""
    return transfer_cycles(spec, 1, 0) - 1 - 2 * spec.ramp_cycles


def step_latency(spec: WaferSpec, algorithm: str, p: int, wa: float, wb: float,
                 step: int = 0) -> float:
    """Delivery of a step's two blocks to the worst-placed PE, over the longest route.

    Both blocks come in through its ramp, A first. B's sender sent its own A block first
    (ring algorithms; SUMMA's diagonal root floods A then B), so B leaves ``wa`` cycles
    (plus A's read) after the step starts and then takes a `transfer_cycles` of its own;
    A's message has left the receiver's ramp by then.
    """
    hops = route_hops(algorithm, p, step)
    if not hops:
        return 0.0
    return read_cycles(spec) + wa + transfer_cycles(spec, wb, hops)


def forwarded_cycles(spec: WaferSpec, p: int, wa: float, wb: float, comp: float,
                     hops: int) -> tuple[float, bool]:
    """The p steps of a ring that forwards blocks on arrival (`FORWARDING`), on a PE whose
    routes all take ``hops``: `_run_ring`'s schedule with `movement.send` / `deliver`'s
    port arithmetic, which every PE of a uniform ring repeats.

    Each send waits for its block, the receiver's free buffer (the step before has begun)
    and the ramp out, reads its first element, then holds the ramp ``w`` cycles; its first
    wavelet reaches the receiver's router T_R + hops later and climbs its ramp in, which
    takes one wavelet per cycle, then T_R. A step starts when the product before it is done
    and its blocks have arrived. Once the increments repeat, the remaining steps are the
    same shifted in time and are added at once.

    Returns the cycles and whether block arrivals bounded a step after the first: while
    the products bound every step this equals the fabric run; when the arrivals do, the
    interleaved ring's one-hop links at its ends let the run be a cycle or so faster.
    """
    t_r = spec.ramp_cycles
    ramp_out = ramp_in = 0.0

    def move(ready: float, w: float) -> float:
        nonlocal ramp_out, ramp_in
        start = max(ready, ramp_out) + 1.0
        ramp_out = start + w
        head = start + t_r + hops * spec.hop_cycles
        begin_in = max(head, ramp_in)
        ramp_in = begin_in + w
        return max(ramp_in, head + w) + t_r

    begin = 0.0
    chained = False
    ahead = [(move(0.0, wa), move(0.0, wb))]
    last: tuple[float, ...] | None = None
    delta: tuple[float, ...] | None = None
    step = 0
    while step < p:
        if step + 2 < p:
            na, nb = ahead[-1]
            ahead.append((move(max(na, begin), wa), move(max(nb, begin), wb)))
        done = begin + comp
        if not ahead:
            return done, chained
        na, nb = ahead.pop(0)
        chained |= step > 0 and max(na, nb) > done
        begin = max(done, na, nb)
        step += 1
        state = (begin, ramp_out, ramp_in, *ahead[-1]) if ahead else None
        if state is not None and last is not None and step + 3 < p:
            d = tuple(x - y for x, y in zip(state, last, strict=True))
            if d == delta:
                # steady: every later step repeats this one shifted by d[0]; run the
                # last ones (their sends stop) explicitly
                skip = p - 3 - step
                begin += skip * d[0]
                ramp_out += skip * d[1]
                ramp_in += skip * d[2]
                ahead = [(x + skip * d[0], y + skip * d[0]) for x, y in ahead]
                step += skip
                last = delta = None
                continue
            delta = d
        last = state
    return begin, chained


def step_cycles(spec: WaferSpec, algorithm: str, p: int, wa: float, wb: float,
                comp: float) -> float:
    """The p-step total: SUMMA first floods step 0's blocks; then each step costs
    max(compute, next delivery) and the last one its compute. A forwarding ring
    (`forwarded_cycles`) overlaps deliveries across steps instead."""
    if algorithm in FORWARDING and p > 1:
        return forwarded_cycles(spec, p, wa, wb, comp, route_hops(algorithm, p))[0]
    if algorithm == "summa":
        total = step_latency(spec, algorithm, p, wa, wb, 0)
        total += sum(max(comp, step_latency(spec, algorithm, p, wa, wb, s))
                     for s in range(1, p))
        return total + comp
    return (p - 1) * max(comp, step_latency(spec, algorithm, p, wa, wb)) + comp


def cost(m: int, k: int, n: int, *, algorithm: str = "meshgemm", grid: int,
         spec: WaferSpec | str | None = None, dtype: str = "fp32",
         accumulate: str | None = "fp32", skip: str | None = None,
         a_density: float = 1.0, b_density: float = 1.0) -> GemmCost:
    """Closed-form cycles of `run` for a dense or uniformly sparse problem.

    Built from `timing` terms: the tile product is `vector_cycles` of its FMACs (nonzero
    weights x rows for ``skip='b'``, and so on), a step's delivery is a `transfer_cycles`
    over the worst hop count (Cannon: the p - 1 hop wrap; MeshGEMM: 2) or a
    `multicast_cycles` across the line (SUMMA), and the p steps follow the step structure
    that `run` executes (`step_cycles`: double buffered, or MeshGEMM's forwarding, taken
    at two hops for every route; where block arrivals bound its steps on a grid up to
    `EXACT_FORWARDING_GRID`, a timing-only run, since the ring's one-hop links matter).
    Uniform densities give every PE the same work, so the load imbalance a real mask causes
    is not in here: run a timing-only fabric with per-block nonzeros for that.
    """
    spec = get_spec(spec)
    prob = check_problem(m, k, n, grid, spec, dtype, accumulate, skip, algorithm)
    for name, dens in (("a_density", a_density), ("b_density", b_density)):
        if not 0.0 <= dens <= 1.0:
            raise KernelShapeError(f"{KERNEL}: {name} must lie in [0, 1], got {dens!r}")
    p = prob.p
    mb, kb, nb = prob.tiles
    a_nnz, b_nnz = a_density * mb * kb, b_density * kb * nb
    fmacs = {None: mb * kb * nb, "a": a_nnz * nb, "b": b_nnz * mb,
             "both": a_nnz * b_nnz / kb}[skip]
    comp = float(fmac_cycles(spec, fmacs, dtype, prob.accumulate))
    wa = float(sparse_wavelets(a_nnz, dtype) if skip in ("a", "both")
               else move_wavelets(mb * kb, dtype, spec.wavelet_bits))
    wb = float(sparse_wavelets(b_nnz, dtype) if skip in ("b", "both")
               else move_wavelets(kb * nb, dtype, spec.wavelet_bits))
    cycles = step_cycles(spec, algorithm, p, wa, wb, comp)
    if algorithm in FORWARDING and skip is None and 1 < p <= EXACT_FORWARDING_GRID \
            and forwarded_cycles(spec, p, wa, wb, comp, route_hops(algorithm, p))[1]:
        # arrivals bound the steps: the ring's one-hop links matter, so take the schedule
        # from a timing-only fabric run (milliseconds at this size)
        cycles = run((m, k), (k, n), algorithm=algorithm, grid=p, spec=spec, dtype=dtype,
                     accumulate=prob.accumulate).cycles
    latency = step_latency(spec, algorithm, p, wa, wb, 0)
    ideal = ideal_cycles(spec, m, k, n, p, dtype, prob.accumulate)
    return GemmCost(
        algorithm, p, m, k, n, dtype, prob.accumulate, cycles, spec.seconds(cycles), comp,
        latency, ideal / cycles if cycles else 0.0,
        sram_bytes(m, k, n, p, dtype, prob.accumulate, algorithm),
        {"spec": spec.name, "clock_hz": spec.clock_hz, "skip": skip,
         "a_density": a_density, "b_density": b_density,
         "steps": "p synchronous steps; the next blocks travel during the product "
                  "(double buffering); a step ends when the slowest PE is done",
         "placement": "skew/interleave at load time, not timed"})




# ================================================================== the stage family ======
# How a GEMM stage (an mm/addmm/bmm of a compiled graph) sizes itself on a rectangle and
# runs there: side-by-side q x q MeshGEMM groups, fused layer-norm prologues and pointwise
# epilogues, all timed by `cost` so that the plan and the fabric agree.

#: Density assumed for activations after a ReLU when no values exist (estimate mode) and
#: the user stated none: half, a ReLU of zero-mean pre-activations [A].
RELU_DENSITY = 0.5

#: Node meta key of a nonzero fraction the user stated for an estimate (on weight
#: constants and ReLU outputs; `compiler.density` writes it, the GEMM stage reads it).
STATED_DENSITY = "stated_density"


@dataclass(frozen=True)
class Epilogue:
    """A pointwise chain fused after the product (`compiler.plan` fuses it). ``streamed``:
    its operands arriving tile for tile from other stages; ``numel``: set for a chain over
    a slice of the output (its elements spread over the GEMM's PEs), None for a chain over
    the whole output tile."""

    ops: tuple[str, ...]
    reads: int
    nodes: tuple[str, ...]
    streamed: int = 0
    numel: int | None = None


@dataclass(frozen=True)
class GemmParams(StageParams):
    """[m, k] x [k, n] (``batch`` of them for a bmm), and once sized: q x q ``grid``s,
    ``tiling`` = group rows x group cols, an mm's M rows split in ``msplit`` chunks of
    ``mrows`` (weights replicated per group), or its K dimension in ``ksplit`` chunks whose
    partial products are summed across the groups (`ksplit_cycles`). ``skip``: zero
    activations are skipped (the
    operand comes from a ReLU) and ``a_density`` is the nonzero fraction assumed for it
    where no values exist (`RELU_DENSITY` or the user's stated one); ``b_density``: the
    nonzero fraction of the weight, stated by the user for an estimate or counted from its
    values when the graph holds them (1 when dense or unknown); ``skip_weights``:
    sizing found sending only the nonzero weights faster than sending them dense."""

    op: str
    batch: int
    m: int
    k: int
    n: int
    bias: bool = False
    skip: bool = False
    a_density: float = RELU_DENSITY
    b_density: float = 1.0
    skip_weights: bool = False
    epilogue: tuple[Epilogue, ...] = ()
    prologue: LayerNormParams | None = None
    grid: int | None = None
    tiling: tuple[int, int] = (1, 1)
    msplit: int = 1
    mrows: int | None = None
    ksplit: int = 1

    def __post_init__(self) -> None:
        if self.op not in ("mm", "addmm", "bmm") or min(self.batch, self.m, self.k,
                                                         self.n) < 1:
            raise KernelShapeError(f"{KERNEL} stage {self.op} of {self.batch} x [{self.m}, "
                                   f"{self.k}] x [{self.k}, {self.n}]: op must be mm, addmm "
                                   f"or bmm and sizes >= 1")

    @property
    def splits_rows(self) -> bool:
        """An mm/addmm whose token rows may be split over groups (a bmm splits batch)."""
        return self.op in ("mm", "addmm") and self.batch == 1

    def without_names(self) -> GemmParams:
        """The fused epilogues without their node names (`StageParams.without_names`)."""
        if not self.epilogue:
            return self
        return dataclasses.replace(self, epilogue=tuple(
            dataclasses.replace(e, nodes=()) for e in self.epilogue))

    def extras(self) -> tuple[bool, bool, int]:
        """(bias, layer-norm prologue, fused output tiles) for `_extra_bytes`."""
        tiles = 1 + sum(c.streamed for c in self.epilogue) if self.epilogue else 0
        return self.bias, self.prologue is not None, tiles

    def skips(self, weights: bool | None = None) -> str | None:
        """The kernel's ``skip`` for zero activations and (``weights``, by default what
        sizing chose) zero weights."""
        w = self.skip_weights if weights is None else weights
        return {(False, False): None, (True, False): "a", (False, True): "b",
                (True, True): "both"}[(self.skip, w)]


def is_relu(node: Node) -> bool:
    """A ReLU as captured graphs spell it (``relu``, or ``clamp_min`` at 0)."""
    return node.short == "relu" or (node.short == "clamp_min" and len(node.args) > 1
                                    and node.args[1] == 0)


def _relu_source(g: Graph, x: Any) -> Node | None:
    """The ReLU a GEMM's activation comes from (through layout nodes), or None: only a
    ReLU's output is known to hold zeros worth skipping."""
    name = x.name if isinstance(x, Ref) else None
    while name is not None:
        node = g.nodes[name]
        if node.op != "call":
            return None
        if is_relu(node):
            return node
        if is_layout(node):
            refs = [i for i in node.inputs if g.nodes[i].op != "const"]
            name = refs[0] if refs else None
            continue
        return None
    return None


def _weight_density(g: Graph, x: Any) -> float:
    """Nonzero fraction of a GEMM's weight operand when it is a constant: the density the
    user stated for an estimate (``meta[STATED_DENSITY]`` on the constant, set by
    `compiler.density`) or else counted from the values the graph holds (through layout
    nodes: an nn.Linear's ``t``); 1.0 otherwise (an activation, or meta weights with no
    stated density: nothing to count)."""
    name = x.name if isinstance(x, Ref) else None
    while name is not None:
        node = g.nodes[name]
        if node.op != "call":
            break
        if not is_layout(node):
            return 1.0
        refs = [i for i in node.inputs if g.nodes[i].op != "const" or i in g.constants]
        name = refs[0] if refs else None
    if name is not None and STATED_DENSITY in g.nodes[name].meta:
        return float(g.nodes[name].meta[STATED_DENSITY])
    t = g.constants.get(name) if name is not None else None
    if not isinstance(t, torch.Tensor) or t.device.type == "meta" or t.numel() == 0:
        return 1.0
    return float(torch.count_nonzero(t)) / t.numel()


@functools.lru_cache(maxsize=65536)
def _grid_candidates(m: int, k: int, n: int, limit: int) -> tuple[int, ...]:
    """Grids p <= limit that give distinct tiles (for each tile size of m, k or n the
    smallest p reaching it): more PEs with the same tiles only add steps or hops. Cached
    (as `batched_tiling`): the layout search asks again for every rectangle it tries."""
    out: set[int] = set()
    for d in (m, k, n):
        lim = max(1, min(limit, d))
        for parts in range(1, lim + 1):
            tile = -(-d // parts)
            out.add(-(-d // tile))
    return tuple(sorted(p for p in out if 1 <= p <= limit))


@functools.lru_cache(maxsize=65536)
def batched_tiling(batch: int, p: int, rows: int, cols: int) -> tuple[int, int]:
    """(group rows, group cols) of p x p grids a batch of ``batch`` independent GEMMs uses
    in a ``rows x cols`` rectangle: as many groups as fit (at most the batch), side by side
    along the longer side first, so the groups' rectangle stays inside the bounds."""
    gr, gc = max(1, rows // p), max(1, cols // p)
    if gr * gc <= batch:
        return gr, gc
    # fewer groups than fit: the smallest gr x gc block of groups that holds the batch,
    # fewest rounds first, then fewest PEs, then squarest
    best: tuple[int, int, int, int, int] | None = None
    for r in range(1, gr + 1):
        c = min(gc, -(-batch // r))
        rounds = -(-batch // (r * c))
        key = (rounds, r * c, abs(r - c), r, c)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[3], best[4]


def _extra_bytes(mb: int, kb: int, nb: int, b: int, extras: tuple[bool, bool, int]) -> int:
    """SRAM per PE a GEMM stage keeps beyond `sram_bytes`: the bias slice, a fused layer
    norm's gamma / beta slices and two fp32 statistics per row, and the output tiles of
    fused pointwise chains (and of their streamed operands). ``extras`` = (bias,
    prologue, output tiles)."""
    bias, prologue, tiles = extras
    return (nb * b if bias else 0) + ((2 * kb * b + 8 * mb) if prologue else 0) \
        + tiles * mb * nb * b


def stage_extra_bytes(p: GemmParams, dtype: str, q: int, mg: int) -> int:
    """`_extra_bytes` of a GEMM stage on q x q groups of ``mg`` rows (the fabric run's SRAM
    peak adds the same)."""
    return _extra_bytes(-(-mg // q), -(-p.k // q), -(-p.n // q), BYTES[dtype], p.extras())


def _gemm_at(spec: WaferSpec, m: int, k: int, n: int, q: int, dtype: str, skip: str | None,
             density: float, extras: tuple[bool, bool, int] = (False, False, 0),
             b_density: float = 1.0) -> tuple[float, int] | None:
    """(cycles, SRAM bytes per PE) of MeshGEMM [m,k]x[k,n] on a q x q grid with the
    stage's ``extras`` (`_extra_bytes`), or None when it does not fit (q > min(m, k, n) or
    over the SRAM). Memoised by `_GridTable`."""
    if q > min(m, k, n):
        return None
    sram = sram_bytes(m, k, n, q, dtype, "fp32", "meshgemm") + _extra_bytes(
        -(-m // q), -(-k // q), -(-n // q), BYTES[dtype], extras)
    if sram > spec.sram_bytes:
        return None
    # zero skipping: the densest of the q x q blocks sets every step (`densest_block`)
    if skip in ("a", "both"):
        density = densest_block(density, -(-m // q) * -(-k // q), q * q)
    if skip in ("b", "both"):
        b_density = densest_block(b_density, -(-k // q) * -(-n // q), q * q)
    c = cost(m, k, n, algorithm="meshgemm", grid=q, spec=spec, dtype=dtype,
             accumulate="fp32", skip=skip, a_density=density, b_density=b_density)
    return float(c.cycles), int(sram)


def _rows_that_fit(spec: WaferSpec, k: int, n: int, q: int, dtype: str,
                   extras: tuple[bool, bool, int]) -> int:
    """Most A rows a q x q MeshGEMM grid holds with the weights: `sram_bytes` and
    `_extra_bytes` are both linear in the row block mb, so two evaluations give it."""
    kb, nb = -(-k // q), -(-n // q)

    def per_pe(mb: int) -> int:
        return sram_bytes(mb * q, k, n, q, dtype, "fp32", "meshgemm") + _extra_bytes(
            mb, kb, nb, BYTES[dtype], extras)

    fixed = per_pe(0)
    return int(max(0, (spec.sram_bytes - fixed) // (per_pe(1) - fixed))) * q


class _GridTable:
    """`_gemm_at` and `_rows_that_fit` of one GEMM's fixed arguments (all but its rows and
    grid), memoised on (rows, grid). The floorplanner asks ``time_at`` for thousands of
    rectangles and each one searches every grid: a lookup on two ints here costs a fraction
    of a cache keyed on all ten arguments, the wafer spec among them."""

    __slots__ = ("args", "at_memo", "fit_memo")

    def __init__(self, spec: WaferSpec, k: int, n: int, dtype: str, skip: str | None,
                 density: float, extras: tuple[bool, bool, int], b_density: float) -> None:
        self.args = (spec, k, n, dtype, skip, density, extras, b_density)
        self.at_memo: dict[tuple[int, int], tuple[float, int] | None] = {}
        self.fit_memo: dict[int, int] = {}

    def at(self, m: int, q: int) -> tuple[float, int] | None:
        key = (m, q)
        memo = self.at_memo
        if key in memo:
            return memo[key]
        spec, k, n, dtype, skip, density, extras, b_density = self.args
        got = memo[key] = _gemm_at(spec, m, k, n, q, dtype, skip, density, extras, b_density)
        return got

    def rows_that_fit(self, q: int) -> int:
        fit = self.fit_memo.get(q)
        if fit is None:
            spec, k, n, dtype, _, _, extras, _ = self.args
            fit = self.fit_memo[q] = _rows_that_fit(spec, k, n, q, dtype, extras)
        return fit


@functools.lru_cache(maxsize=1024)
def _grid_table(spec: WaferSpec, k: int, n: int, dtype: str, skip: str | None,
                density: float, extras: tuple[bool, bool, int], b_density: float
                ) -> _GridTable:
    """The one `_GridTable` of these arguments."""
    return _GridTable(spec, k, n, dtype, skip, density, extras, b_density)


def row_split(m: int, groups: int) -> tuple[int, int]:
    """(rows per group, groups used) when a GEMM's M rows (tokens) are split into at most
    ``groups`` chunks: equal chunks of ``ceil(m / groups)`` rows, the last one shorter, so
    the slowest group is a full chunk and no group is left empty."""
    groups = max(1, min(groups, m))
    mg = -(-m // groups)
    return mg, -(-m // mg)


@functools.lru_cache(maxsize=65536)
def _gemm_layout(spec: WaferSpec, batch: int, m: int, k: int, n: int, rows: int, cols: int,
                 area: float, side_cap: int, bounded: bool, split: bool, dtype: str,
                 skip: str | None, density: float,
                 extras: tuple[bool, bool, int] = (False, False, 0), b_density: float = 1.0
                 ) -> tuple[float, int, int, int, int, int, int, int] | None:
    """The fastest side-by-side layout of a GEMM stage in a ``rows x cols`` rectangle (or
    about ``area`` PEs when not ``bounded``): (cycles per entry x rounds, PEs, grid q,
    group rows, group cols, rows per group mg, row groups, SRAM per PE), or None.

    Batch entries (a bmm's heads) go on disjoint q x q groups; a single GEMM (``split``)
    has its M rows cut into as many groups as fit, each group holding a full copy of the
    weights (charged in its SRAM per PE), so a tall or wide rectangle is used, not just
    its short side squared. Every useful q is tried: a smaller grid with more groups often
    wins. Ties go to the fewest PEs."""
    limit = max(1, min(rows, cols, m, k, n))
    best: tuple[float, int, int, int, int, int, int, int] | None = None
    grids = _grid_table(spec, k, n, dtype, skip, density, extras, b_density)
    at = grids.at
    for q in _grid_candidates(m, k, n, limit):
        if bounded:
            slots_r, slots_c = max(1, rows // q), max(1, cols // q)
            slots = slots_r * slots_c
        else:
            # about ``area`` PEs: as many groups as the area holds (at least one)
            cap = max(1, m // q) if split and batch == 1 else batch
            groups = max(1, min(cap, int(max(area, 1) // (q * q))))
            gc = max(1, min(groups, side_cap // q, math.ceil(math.sqrt(groups))))
            gr = max(1, min(-(-groups // gc), side_cap // q))
            slots_r, slots_c, slots = gr, gc, gr * gc
        if split and batch == 1:
            mg, used = row_split(m, min(slots, max(1, m // q)))
            got = at(mg, q)
            if got is None and mg > q:
                # too many rows for the SRAM: chunks of the most rows that fit, the groups
                # taking them in rounds (a weight-stationary stream of token rows)
                fit = grids.rows_that_fit(q)
                if fit >= 1:
                    mg, used = row_split(m, -(-m // max(q, fit)))
                    got = at(mg, q)
            if got is None:
                continue
            gr, gc = batched_tiling(min(used, slots), q, slots_r * q, slots_c * q)
            rounds = -(-used // (gr * gc))
        else:
            mg, used = m, 1
            got = at(m, q)
            if got is None:
                continue
            if bounded:
                gr, gc = batched_tiling(batch, q, rows, cols)
            else:
                gr, gc = slots_r, slots_c
            rounds = -(-batch // (gr * gc))
        cyc, sram = got
        key = (rounds * cyc, gr * gc * q * q, q, gr, gc, mg, used, sram)
        if best is None or key[:2] < best[:2]:
            best = key
    return best


def extra_cycles(spec: WaferSpec, p: GemmParams, dtype: str, q: int, mg: int, rounds: int
                 ) -> float:
    """Cycles a sized GEMM stage adds to its products, every round: the bias add over the
    output tile, a fused layer norm (`prologue_cycles`) and fused pointwise chains
    (`epilogue_cycles`). The plan's cost and the fabric run both take them from here."""
    extra = prologue_cycles(spec, p, dtype, q, mg, rounds) \
        + epilogue_cycles(spec, p, dtype, q, mg, rounds)
    if p.bias:
        tile = -(-mg // q) * -(-p.n // q)
        extra += rounds * float(op_cycles(spec, tile, "fp32", "add", reads=2))
    return extra + ksplit_cycles(spec, p, q)


def ksplit_cycles(spec: WaferSpec, p: GemmParams, q: int) -> float:
    """Summing a K-split GEMM's partial products (0 without a K split).

    Each of the ``gr x gc`` groups holds a partial [m, n] product, an mb x nb fp32 tile per
    PE (a group given several K chunks in rounds accumulated them in place). The tiles are
    summed down each column of groups, then along the row of groups, as pipelined chains:
    a PE adds the tile arriving from the group before to its own and passes the sum on one
    word per cycle, so a chain of L groups q PEs apart costs the tile's words (the stream,
    with one fp32 add per word) plus (L - 1) times the distance q and the ramps on and
    off."""
    if p.ksplit <= 1:
        return 0.0
    gr, gc = p.tiling
    words = -(-p.m // q) * -(-p.n // q)
    add = float(op_cycles(spec, words, "fp32", "add", reads=2))
    hop = q * spec.hop_cycles + 2 * spec.ramp_cycles
    return sum(add + (length - 1) * hop for length in (gr, gc) if length > 1)


def prologue_cycles(spec: WaferSpec, p: GemmParams, dtype: str, q: int, mg: int,
                    rounds: int) -> float:
    """Cycles of a layer norm fused in front of the GEMM: `norm.cost` of ``mg`` token rows
    x ``k`` over each q x q group, every round; 0 without one."""
    pro = p.prologue
    if pro is None:
        return 0.0
    return rounds * norm_cost(spec, [mg, p.k], (min(q, mg), q), dtype=dtype,
                              weight=pro.weight, bias=pro.bias)


def epilogue_cycles(spec: WaferSpec, p: GemmParams, dtype: str, q: int, mg: int,
                    rounds: int) -> float:
    """Cycles of the pointwise chains fused into the GEMM: each chain is a `fused_cycles`
    pass over the per-PE output tile (``ceil(mg/q) x ceil(n/q)``), or for a chain over a
    slice of the output its ``numel`` elements spread over the GEMM's PEs and rounds,
    after the product, on every group and round."""
    tile = -(-mg // q) * -(-p.n // q)
    per_round = rounds * q * q * math.prod(p.tiling)
    return rounds * sum(fused_cycles(spec, -(-c.numel // per_round) if c.numel is not None
                                     else tile, dtype, c.ops, c.reads)
                        for c in p.epilogue)


def _same_links(fab: Fabric, src: tuple[int, int], dst: tuple[int, int], p: int) -> bool:
    """Whether two p x p sub-grids have the same link latencies (the only input of a
    dense GEMM's clocks that depends on where it sits)."""
    a = fab.link_extra[:, src[0]:src[0] + p, src[1]:src[1] + p]
    b = fab.link_extra[:, dst[0]:dst[0] + p, dst[1]:dst[1] + p]
    return bool(np.array_equal(a, b))


def _copy_region(fab: Fabric, src: tuple[int, int], dst: tuple[int, int], p: int,
                 hops: float) -> None:
    """Leave the fabric as if the GEMM run on the ``src`` sub-grid had also run on the
    untouched ``dst`` one.

    Why it is exact: `run` (dense, fp32 accumulate) touches only its p x p sub-grid,
    starts from zero clocks there (fresh fabric, disjoint sub-grids), and its clock
    arithmetic (max and +) does not depend on the position except through the link
    latencies, which `_same_links` checked equal. So every per-PE clock and counter of the
    ``dst`` run is the ``src`` one's, the wavelet-hop total grows by the same amount, and
    the SRAM use (hence the high-water mark, already reached at ``src``) is the same.
    """
    (r0, c0), (r1, c1) = src, dst
    s0 = (slice(r0, r0 + p), slice(c0, c0 + p))
    s1 = (slice(r1, r1 + p), slice(c1, c1 + p))
    for arr in (fab.ce_clock, fab.busy, fab.stalled, fab.flops, fab.mem_bytes,
                fab.sram.used):
        arr[s1] = arr[s0]
    for arr in (fab.port_clock, fab.port_wavelets):
        arr[(slice(None), *s1)] = arr[(slice(None), *s0)]
    fab.wavelet_hops += hops


def _row_products(outs: list[np.ndarray | None], a: torch.Tensor, b: torch.Tensor, mg: int,
                  dtype: str) -> np.ndarray:
    """The [M, N] product of a row-split ``a @ b`` from its row chunks in order: ``outs[i]``
    where chunk i's fabric run gave its value, and one `product` per run of consecutive
    chunks left as None (the chunks whose clocks `_copy_region` copied) instead of one per
    chunk, each written in place into the result (no copy of the pieces to stack them).

    Why: GenSLM-25M at 1,024 tokens made 324 such per-chunk products, most of the
    functional run's time (each a small BLAS call, many with zero rows padded to the grid
    side). The values are the same bits: an element of a product is its row's dot products
    over k, which the BLAS sums in the same order whatever rows surround it (MKL here:
    checked bit for bit on the model's GEMM shapes), and a padded chunk's zero rows are
    cropped anyway."""
    m = int(a.shape[0])
    out = np.empty((m, int(b.shape[1])), dtype=np.float32)
    bn = to_np(b)
    i = 0
    while i < len(outs):
        done_i = outs[i]
        if done_i is not None:
            rows = min(mg, m - i * mg)
            out[i * mg:i * mg + rows] = done_i[:rows]
            i += 1
            continue
        j = i
        while j < len(outs) and outs[j] is None:
            j += 1
        product(to_np(a[i * mg:j * mg]), bn, dtype, out=out[i * mg:min(j * mg, m)])
        i = j
    return out


def _round_key(ctx: ExecContext, st: Stage, p: int, gc: int,
               shapes: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
               ) -> tuple[Any, ...]:
    """Everything a dense round's figures depend on: its key among the remembered figures
    (`family.remembered`). A training step runs every GEMM stage again with the same
    shapes, and the layers of a model repeat their shapes, so without it every step
    re-simulated the same ring clocks (GenSLM-25M at 256 tokens: a 256 x 256 MeshGEMM whose
    steps never settle into the period `_Periodic` skips took most of a step's wall time).

    Why it is exact: a dense round (no zero skipping, fp32 accumulate) runs `run` for each
    entry on a fresh ``ctx.fabric(st)``, which is made from the spec, the stage's
    rectangle, timing-only or not and the stage's link latencies; entry j sits at the
    origin its index and the tiling's ``gc`` columns give, on ``p`` x ``p`` sub-grids, in
    the stage's dtype, with the ring schedule `FORWARDING` says; and no clock, SRAM
    allocation or counter depends on a value (dense, the values are one whole product,
    `_whole_product`). So two rounds with equal keys leave equal fabrics, hence equal
    cycles, SRAM peaks and busy shares.
    """
    return ("gemm round", ctx.spec, tuple(st.rect), ctx.timing_only, links_key(ctx, st), p,
            gc, st.dtype, "meshgemm" in FORWARDING, shapes)


def run_stage(ctx: ExecContext, st: Stage, a: torch.Tensor, b: torch.Tensor,
              bias: torch.Tensor | None, alpha: float = 1.0, beta: float = 1.0
              ) -> tuple[torch.Tensor | None, StageRun]:
    """mm / addmm / bmm via `run` (MeshGEMM, fp32 accumulate) on the stage's groups.

    A bmm's batch entries are independent GEMMs, so they run side by side: the plan's
    ``tiling`` (group rows x group cols) of ``grid`` x ``grid`` sub-grids tiles the stage's
    rectangle, and each round puts one entry on every group of one fabric (disjoint
    rectangles, ``run(origin=)``); a round lasts as long as its slowest group, and the
    rounds follow one another (``ceil(batch / groups)`` of them, as the plan's cost says).
    An mm/addmm the plan split by rows (``msplit`` chunks of ``mrows`` tokens) runs the same
    way: chunk i of A against the weight, which each group holds a copy of; the chunks'
    products stacked back are the product (the rows of A @ B are independent)."""
    prm: GemmParams = st.params  # type: ignore[assignment]
    timing_only = ctx.timing_only
    p = int(prm.grid or st.rect[0])
    gr, gc = prm.tiling
    slots = max(1, gr * gc)
    skip = prm.skips()
    a3 = a if a.dim() == 3 else a.unsqueeze(0)
    b3 = b if b.dim() == 3 else b.unsqueeze(0)
    # an mm/addmm whose M rows the plan split over the groups: entry i = rows chunk i
    # against the whole (replicated) weight
    split = a.dim() == 2 and prm.msplit > 1
    mg = int(prm.mrows or a3.shape[1]) if split else int(a3.shape[1])
    n_entries = -(-int(a3.shape[1]) // mg) if split else int(a3.shape[0])
    # or its K dimension in chunks: entry i = A's column chunk i against B's row chunk i
    kc = -(-int(a3.shape[2]) // prm.ksplit)
    if prm.ksplit > 1:
        n_entries = prm.ksplit

    def entry(i: int) -> tuple[Any, Any]:
        if prm.ksplit > 1:
            cols, rows = a3[0][:, i * kc:(i + 1) * kc], b3[0][i * kc:(i + 1) * kc]
            if cols.shape[1] < p:
                # a last chunk narrower than the grid: zero columns and rows up to p
                pad = p - cols.shape[1]
                cols = torch.cat([cols, cols.new_zeros(cols.shape[0], pad)], dim=1)
                rows = torch.cat([rows, rows.new_zeros(pad, rows.shape[1])])
            return cols, rows
        if split:
            rows = a3[0, i * mg:(i + 1) * mg]
            if rows.shape[0] < p:
                # a last chunk shorter than the grid side (every PE row needs a block):
                # zero rows up to p, no slower than a full chunk, cropped below
                rows = torch.cat([rows, rows.new_zeros(p - rows.shape[0], rows.shape[1])])
            return rows, b3[0]
        return a3[i], b3[i]

    outs, cycles, peak, busy = [], 0.0, 0, []
    density = None
    nnz, total = 0, 0
    rounds = -(-n_entries // slots)
    # a dense round that an earlier one matches in every input of its clocks (`_round_key`:
    # an earlier round of this stage, of another stage or of an earlier run) gives that
    # round's cycles, SRAM peak and busy share, and its values the products `run` would
    # return (one whole product each)
    reuse = skip is None and not prm.skip and not prm.skip_weights
    # the round shapes this call has met: a row chunk of a later round with them gets its
    # values with its neighbours' (`_row_products`); the first round of a shape gives the
    # chunks it ran (rather than copied) a product of their own, as its fabric run did,
    # so that the values keep their bits whether the round's figures were remembered
    # or not (one product over more rows may round differently)
    met: set[tuple[Any, ...]] = set()
    for r in range(rounds):
        pairs = [entry(r * slots + j) for j in range(min(slots, n_entries - r * slots))]
        shapes = tuple((tuple(ai.shape), tuple(bi.shape)) for ai, bi in pairs)
        round_key = _round_key(ctx, st, p, gc, shapes) if reuse else None
        again = remembered(round_key) if round_key is not None else None
        if again is not None:
            if not timing_only:
                ran = () if shapes in met else again[3]
                outs.extend(product(to_np(ai), to_np(bi), st.dtype)
                            if not split or j in ran else None
                            for j, (ai, bi) in enumerate(pairs))
            met.add(shapes)
            cycles += again[0]
            peak = max(peak, again[1])
            busy.append(again[2])
            continue
        fab = ctx.fabric(st)
        slowest = 0.0
        ran_here: list[int] = []    # the entries `run` ran (the others were copied)
        # dense entries of one shape on fresh sub-grids with the same link latencies run
        # the same clocks, translated: run the first, copy its sub-grid's state to the rest
        first: dict[tuple[Any, ...], tuple[tuple[int, int], float, float]] = {}
        for j, (ai, bi) in enumerate(pairs):
            origin = ((j // gc) * p, (j % gc) * p)
            key = (tuple(ai.shape), tuple(bi.shape))
            seen = first.get(key) if skip is None else None
            if seen is not None and _same_links(fab, seen[0], origin, p):
                _copy_region(fab, seen[0], origin, p, seen[2])
                if not timing_only:
                    # a row chunk's values come with its neighbours' (`_row_products`)
                    outs.append(None if split else product(to_np(ai), to_np(bi), st.dtype))
                slowest = max(slowest, seen[1])
                continue
            hops = fab.wavelet_hops
            ran_here.append(j)
            if timing_only:
                # zero weights skipped: each block's nonzeros counted from the weight's
                # values when it has them (a meta weight runs dense blocks)
                mask = None
                if prm.skip_weights and bi.device.type != "meta":
                    mask = to_np(bi) != 0
                res = run(tuple(ai.shape), tuple(bi.shape), grid=p, fabric=fab,
                          dtype=st.dtype, accumulate="fp32",
                          skip=skip if mask is not None else prm.skips(False), mask=mask,
                          origin=origin)
            else:
                an = to_np(ai)
                if prm.skip:
                    nnz, total = nnz + int(np.count_nonzero(an)), total + an.size
                res = run(an, to_np(bi), grid=p, fabric=fab, dtype=st.dtype,
                          accumulate="fp32", skip=skip, origin=origin)
                outs.append(res.value)
            first.setdefault(key, (origin, res.cycles, fab.wavelet_hops - hops))
            slowest = max(slowest, res.cycles)
        cycles += slowest
        round_peak, round_busy = int(fab.sram.peak()), fab.stats()["busy_fraction"]
        peak = max(peak, round_peak)
        busy.append(round_busy)
        met.add(shapes)
        if round_key is not None:
            remember(round_key, (slowest, round_peak, round_busy, tuple(ran_here)))
    if prm.skip and total:
        density = nnz / total
    peak += stage_extra_bytes(prm, st.dtype, p, mg)
    measured = StageRun(cycles + extra_cycles(ctx.spec, prm, st.dtype, p, mg, rounds), peak,
                        float(np.mean(busy)), density)
    if timing_only:
        return None, measured
    if split:
        out = _row_products(outs, a3[0], b3[0], mg, st.dtype)
    elif prm.ksplit > 1:
        out = outs[0].astype(np.float32)
        for part in outs[1:]:   # the chains' order: partial sums in fp32
            out = out + part.astype(np.float32)
    else:
        out = np.stack(outs) if a.dim() == 3 else outs[0]
    if alpha != 1.0:
        out = out * np.float32(alpha)
    if bias is not None:
        out = out + np.float32(beta) * to_np(bias)
    # no copy when it is fp32 already: every array here is the stage's own (a product,
    # a concatenation, a sum), never an operand's
    out = to_storage(out.astype(np.float32, copy=False), st.dtype)
    return to_torch(out, a.dtype), measured


class Gemm(KernelFamily):
    """mm / addmm / bmm on side-by-side q x q MeshGEMM groups; hosts fused layer-norm
    prologues and pointwise epilogues (an mm/addmm's)."""

    kind = "gemm"
    targets = frozenset({"mm", "addmm", "bmm"})

    def describe(self, g: Graph, nodes: list[Node], dtype: str) -> tuple[GemmParams, float]:
        node = nodes[0]
        short = node.short
        a_arg, b_arg = (node.args[1], node.args[2]) if short == "addmm" else node.args[:2]
        a, b = shape_of(g, a_arg), shape_of(g, b_arg)
        batch, m, k, n = (1, a[0], a[1], b[1]) if short != "bmm" else (a[0], a[1], a[2], b[2])
        relu = _relu_source(g, a_arg)
        a_density = RELU_DENSITY if relu is None else relu.meta.get(STATED_DENSITY,
                                                                     RELU_DENSITY)
        return (GemmParams(short, batch, m, k, n, bias=short == "addmm",
                           skip=relu is not None, a_density=float(a_density),
                           b_density=_weight_density(g, b_arg)),
                2.0 * batch * m * k * n)

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[GemmParams, Sizing]:
        """A bmm's batch entries (heads x batch) are independent GEMMs, each group running
        ``ceil(batch / groups)`` of them one after another; an mm/addmm has its M rows
        split over the groups. The stage takes the slowest group's time."""
        p: GemmParams = st.params  # type: ignore[assignment]
        dt = st.dtype
        batch, m, k, n = p.batch, p.m, p.k, p.n
        dens = p.a_density if p.skip else 1.0
        split = p.splits_rows
        extras = p.extras()

        def layout(skip: str | None, b_density: float
                   ) -> tuple[float, int, int, int, int, int, int, int] | None:
            if bounds is not None:
                return _gemm_layout(spec, batch, m, k, n, bounds[0], bounds[1], 0.0,
                                    side_cap, True, split, dt, skip, dens, extras, b_density)
            side = max(1, min(side_cap, int(math.sqrt(max(area, 1)))))
            got = _gemm_layout(spec, batch, m, k, n, side, side, area, side_cap, False,
                               split, dt, skip, dens, extras, b_density)
            if got is None:
                full = max(1, min(side_cap, m, k, n))
                got = _gemm_layout(spec, batch, m, k, n, full, full, float(full * full),
                                   side_cap, False, split, dt, skip, dens, extras, b_density)
            return got

        where = f"{bounds[0]}x{bounds[1]}" if bounds is not None else f"~{area:.0f}-PE"
        best = layout(p.skips(False), 1.0)
        skip_weights = False
        if p.b_density < 1.0:
            # zero weights: the runtime never multiplies by them when sending only the
            # nonzeros (value, index) is faster than sending the dense blocks
            sparse = layout(p.skips(True), p.b_density)
            if sparse is not None and (best is None or sparse[:2] < best[:2]):
                best, skip_weights = sparse, True
        if best is None and split:
            return self._ksplit(spec, p, dt, area, side_cap, bounds, where)
        if best is None:
            raise KernelError(f"gemm [{m},{k}]x[{k},{n}] {dt}: no square grid within the "
                              f"{where} rectangle fits the {spec.sram_bytes} B SRAM")
        total, _, q, gr, gc, mg, used, sram = best
        rounds = -(-(used if split else batch) // (gr * gc))
        sized = dataclasses.replace(p, grid=q, tiling=(gr, gc), msplit=used, mrows=mg,
                                    skip_weights=skip_weights)
        algorithm = "meshgemm"
        if skip_weights:
            algorithm += f" (zero weights skipped, density {p.b_density:.2f})"
        if batch > 1:
            algorithm += f" x{batch} on {gr}x{gc} groups of {q}x{q} ({rounds} per group)"
        elif used > 1:
            algorithm += (f", M split over {gr}x{gc} groups of {q}x{q} ({mg} rows each, "
                          f"weights replicated" + (f", {rounds} rounds)" if rounds > 1
                                                   else ")"))
        if p.prologue is not None:
            algorithm = "layer norm + " + algorithm
        return sized, Sizing((gr * q, gc * q),
                             total + extra_cycles(spec, sized, dt, q, mg, rounds), sram,
                             algorithm)

    @staticmethod
    def _ksplit(spec: WaferSpec, p: GemmParams, dt: str, area: float, side_cap: int,
                bounds: tuple[int, int] | None, where: str) -> tuple[GemmParams, Sizing]:
        """A GEMM too few rows deep for any grid to hold its [k, n] operand (a weight
        gradient: [out, tokens] x [tokens, in], with tokens in the thousands): K cut into
        chunks run on side-by-side groups like a bmm's entries, the partial products
        summed across the groups (`ksplit_cycles`). The fastest chunk count wins; chunk
        sizes go down by about a fifth at a time (the cost is smooth in them)."""
        m, k, n = p.m, p.k, p.n
        extras = p.extras()
        best: tuple[float, int, tuple[float, int, int, int, int, int, int, int]] | None = None
        kc = -(-k // 2)
        while kc >= 1:
            chunks = -(-k // kc)
            if bounds is not None:
                got = _gemm_layout(spec, chunks, m, kc, n, bounds[0], bounds[1], 0.0, side_cap,
                                   True, False, dt, None, 1.0, extras, 1.0)
            else:
                side = max(1, min(side_cap, int(math.sqrt(max(area, 1)))))
                got = _gemm_layout(spec, chunks, m, kc, n, side, side, area, side_cap, False,
                                   False, dt, None, 1.0, extras, 1.0)
            if got is not None:
                trial = dataclasses.replace(p, grid=got[2], tiling=(got[3], got[4]),
                                            ksplit=chunks)
                total = got[0] + ksplit_cycles(spec, trial, got[2])
                if best is None or total < best[0]:
                    best = (total, chunks, got)
            kc = min(kc - 1, kc * 4 // 5)
        if best is None:
            raise KernelError(f"gemm [{m},{k}]x[{k},{n}] {dt}: no square grid within the "
                              f"{where} rectangle fits the {spec.sram_bytes} B SRAM, "
                              f"with its K split over the groups either")
        _, chunks, (cyc, _, q, gr, gc, _, _, sram) = best
        rounds = -(-chunks // (gr * gc))
        sized = dataclasses.replace(p, grid=q, tiling=(gr, gc), ksplit=chunks)
        algorithm = (f"meshgemm, K split in {chunks} chunks of {-(-k // chunks)} over "
                     f"{gr}x{gc} groups of {q}x{q} ({rounds} per group), partial products "
                     f"summed across the groups")
        return sized, Sizing((gr * q, gc * q), cyc + extra_cycles(spec, sized, dt, q, m, rounds),
                             sram, algorithm)

    def hosts(self, st: Stage, role: str) -> bool:
        return st.params.splits_rows if role in ("epilogue", "prologue") else False  # type: ignore[attr-defined]

    def reads_as_input(self, st: Stage, node: Node, name: str) -> bool:
        a = node.args[1] if node.short == "addmm" else node.args[0]
        return node.name == st.nodes[0] and self.hosts(st, "prologue") \
            and isinstance(a, Ref) and a.name == name

    def absorb(self, st: Stage, other: Stage, role: str, *, streamed: int = 0,
               numel: int | None = None) -> Stage | None:
        p: GemmParams = st.params  # type: ignore[assignment]
        if role == "prologue":
            ln = other.params
            if not isinstance(ln, LayerNormParams) or ln.hidden != p.k or ln.tokens != p.m:
                return None
            return dataclasses.replace(
                st, nodes=(st.nodes[0], *other.nodes, *st.nodes[1:]),
                params=dataclasses.replace(p, prologue=ln), flops=st.flops + other.flops,
                weight_bytes=st.weight_bytes + other.weight_bytes)
        chain = Epilogue(other.params.ops, other.params.reads,  # type: ignore[attr-defined]
                         other.nodes, streamed, numel)
        return dataclasses.replace(
            st, nodes=st.nodes + other.nodes,
            params=dataclasses.replace(p, epilogue=p.epilogue + (chain,)),
            flops=st.flops + other.flops)

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        a = ctx.value(node.args)
        kw = node.kwargs
        if node.short == "addmm":
            out, measured = run_stage(ctx, st, a[1], a[2], a[0], kw.get("alpha", 1.0),
                                      kw.get("beta", 1.0))
        else:
            out, measured = run_stage(ctx, st, a[0], a[1], None)
        if out is not None:
            ctx.env[node.name] = out
        return measured


FAMILY = Gemm()


__all__ = ["ALGORITHMS", "FAMILY", "Epilogue", "GemmCost", "GemmParams", "GemmResult",
           "batched_tiling", "cost", "extra_cycles", "interleave", "product", "ring_dest",
           "row_split", "run", "run_stage", "sram_bytes", "stage_extra_bytes"]
