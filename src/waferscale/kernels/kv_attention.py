"""Decode attention: one new token per sequence against a KV cache resident over the mesh.

Why a kernel of its own: in a decode step each sequence brings one query per head, and the
keys and values of every earlier position are already on the wafer. Moving the cache is
what would cost, so the cache stays where it was written and the query goes to it; the
work is two skinny products (``q K^T`` and ``p V``) and three reductions, and as for the
GEMV the time is mostly the reductions' latency (WaferLLM, OSDI'25: KV cache spread over
the mesh, decode as GEMV-like steps).

Mapping on an R x C grid (R = ``rows``, C = ``cols``), for ``batch`` sequences of
``context`` positions, ``kv_heads`` key/value heads of ``head_dim`` features and
``group`` query heads per key/value head (grouped-query attention; 1 for multi-head):

* **features over columns**: the ``F = kv_heads * head_dim`` (head, feature) pairs are
  blocked over ``Cu = min(C, F)`` columns, ``dc = ceil(F / Cu)`` per column, so one
  key/value head spans ``cg = ceil(head_dim / dc)`` adjacent columns (or a column holds
  ``ceil(dc / head_dim)`` whole heads);
* **positions over rows**: position t of the cache lives on row ``t mod R`` (appending
  keeps the rows balanced), ``ell = ceil(context / R)`` positions per PE;
* every PE keeps ``2 * batch * ell * dc`` cache elements (K and V) in SRAM;
* the step's inputs arrive replicated down the columns (the QKV GEMV's allreduce leaves
  them there; its output columns are ordered at load time so that column c receives the q,
  k, v features of its (head, feature) block, rotary pairs kept together): for every
  column, q of the ``group`` query heads on its features, and the new k and v.

Passes of one step (``cost`` adds them; each is a `timing` primitive):

1. append: row ``context - 1 mod R`` copies the new k and v into its cache slot;
2. partial scores: ``batch * group * hc * ell * dc`` FMACs (fp32 accumulate);
3. score allreduce along each head's ``cg`` columns (MeshGEMV's K-tree, then a flood from
   its root): ``batch * group * hc * ell`` wavelets;
4. row max: a local max, then a K-tree allreduce down the ``R`` rows of ``batch * group *
   hc`` words;
5. ``p = exp(s - m)`` and the local sum ``l``;
6. partial output ``p V``: ``batch * group * hc * ell * dc`` FMACs;
7. reduction of the output partials and ``l`` down the rows (K-tree, then a flood down the
   column): ``batch * group * (dc + hc)`` wavelets, which leaves the output replicated down
   the column, the layout the output projection (a GEMV with K over columns) reads;
8. ``o / l``: one reciprocal per row of scores and one multiply per output element.

The softmax scale ``1 / sqrt(head_dim)`` is folded into the query projection's weights
at load time (free). Scores, the max, the sum and the output partials are fp32.

`run` executes the passes on a timing-only fabric of the grid (every pass a `local_pass`,
every reduction `ktree_reduce` + `movement.multicast` on the lines it runs along: the
head segments of each row, the columns), each pass starting when the previous one has
finished on every PE (a step boundary, as `gemm` models its steps); the values are the
same passes evaluated on the host arrays (fp32 scores, ``p`` stored in the dtype before
``p V``, one rounding of the output). `cost` is its closed form; the tests check they
agree exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.errors import KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import multicast_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels._common import fmac_cycles
from waferscale.kernels._lines import ktree_reduce, ktree_reduce_cycles
from waferscale.kernels.elementwise import WORK, check_dtype, local_pass, op_cycles

KERNEL = "kv_attention"


@dataclass(frozen=True)
class KvLayout:
    """How a decode step's cache and heads sit on an R x C grid (module docstring)."""

    batch: int
    kv_heads: int
    group: int
    head_dim: int
    context: int
    rows: int
    cols: int
    dtype: str

    @property
    def features(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def cols_used(self) -> int:
        return min(self.cols, self.features)

    @property
    def dc(self) -> int:
        """(head, feature) pairs per column."""
        return -(-self.features // self.cols_used)

    @property
    def cg(self) -> int:
        """Columns one key/value head spans (1 when a column holds whole heads)."""
        return max(1, -(-self.head_dim // self.dc))

    @property
    def hc(self) -> int:
        """Key/value heads one column holds whole (1 when a head spans columns)."""
        return max(1, -(-self.dc // self.head_dim))

    @property
    def rows_used(self) -> int:
        return min(self.rows, self.context)

    @property
    def ell(self) -> int:
        """Cache positions per PE."""
        return -(-self.context // self.rows_used)

    def cache_bytes(self, context: int | None = None) -> int:
        """K and V cache per PE at ``context`` positions (default: this step's)."""
        ell = -(-(context or self.context) // self.rows_used) if context else self.ell
        return 2 * self.batch * ell * self.dc * BYTES[self.dtype]

    def work_bytes(self) -> int:
        """What a step keeps beside the cache: q, new k and v, fp32 scores, p, max and sum,
        fp32 output partials and the output."""
        eb = BYTES[self.dtype]
        scores = self.batch * self.group * self.hc * self.ell
        out = self.batch * self.group * self.dc
        return (out * eb + 2 * self.batch * self.dc * eb + scores * 4 + scores * eb
                + 2 * self.batch * self.group * self.hc * 4 + out * 4 + out * eb)


def layout(batch: int, kv_heads: int, group: int, head_dim: int, context: int,
           grid: tuple[int, int], dtype: str = "fp16") -> KvLayout:
    """A validated `KvLayout`."""
    check_dtype(KERNEL, dtype)
    for name, value in (("batch", batch), ("kv_heads", kv_heads), ("group", group),
                        ("head_dim", head_dim), ("context", context), ("grid rows", grid[0]),
                        ("grid cols", grid[1])):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} must be a positive integer, "
                                   f"got {value!r}")
    return KvLayout(batch, kv_heads, group, head_dim, context, int(grid[0]), int(grid[1]),
                    dtype)


class KvCache:
    """One layer's keys and values where the PEs hold them, in the layout above.

    Why a class: the cache is the state a decode program keeps between steps, and it must
    be the layout's own (position slot s on row ``s mod R``, ``s // R`` deep; column c's
    ``dc`` (head, feature) pairs), so that what a step reads is what its PEs hold.
    ``tiles[r, c]`` is PE (r, c)'s share, K and V, [2, batch, ell, dc], in the storage
    dtype. ``capacity`` slots: the context the plan sizes the cache for, or a sliding
    window, in which case position t takes slot ``t mod capacity`` (a ring: attention sums
    over its positions in any order, so the oldest position is simply overwritten)."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, grid: tuple[int, int],
                 capacity: int, dtype: str = "fp16") -> None:
        self.layout = layout(batch, kv_heads, 1, head_dim, capacity, grid, dtype)
        lay = self.layout
        self.capacity = capacity
        self.tiles = np.zeros((lay.rows_used, lay.cols_used, 2, batch, lay.ell, lay.dc),
                              np.float32)
        self.length = 0

    @property
    def held(self) -> int:
        """Positions a step attends to: all written ones, or the window's last."""
        return min(self.length, self.capacity)

    @property
    def bytes_per_pe(self) -> int:
        return self.layout.cache_bytes()

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """Write positions ``length ..`` of ``k``, ``v`` [batch, kv_heads, n, head_dim]
        into their slots (rounded to the storage dtype)."""
        lay = self.layout
        b, kvh, n, d = k.shape
        if (b, kvh, d) != (lay.batch, lay.kv_heads, lay.head_dim) or v.shape != k.shape:
            raise KernelShapeError(f"{KERNEL}: k {k.shape}, v {v.shape} do not match the "
                                   f"cache's {lay.batch} x {lay.kv_heads} heads x "
                                   f"{lay.head_dim}")
        width = lay.cols_used * lay.dc
        both = np.zeros((2, b, n, width), np.float32)
        for i, x in enumerate((k, v)):
            flat = np.asarray(x, np.float32).transpose(0, 2, 1, 3).reshape(b, n, kvh * d)
            both[i, :, :, :kvh * d] = to_storage(flat, lay.dtype)
        blocks_ = both.reshape(2, b, n, lay.cols_used, lay.dc).transpose(2, 3, 0, 1, 4)
        for j in range(n):
            slot = (self.length + j) % self.capacity
            self.tiles[slot % lay.rows_used, :, :, :, slot // lay.rows_used] = blocks_[j]
        self.length += n

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        """K and V [batch, kv_heads, held, head_dim] gathered from the tiles, slot order."""
        lay = self.layout
        s = np.arange(self.held)
        t = self.tiles[s % lay.rows_used, :, :, :, s // lay.rows_used]  # [n, C, 2, b, dc]
        flat = t.transpose(2, 3, 0, 1, 4).reshape(2, lay.batch, self.held, -1)
        kv = flat[..., :lay.features].reshape(2, lay.batch, self.held, lay.kv_heads,
                                              lay.head_dim).transpose(0, 1, 3, 2, 4)
        return kv[0], kv[1]


def _allreduce(spec: WaferSpec, wavelets: float, n: int, ready: float) -> float:
    """MeshGEMV's K-tree reduce (K = 2) along a line of ``n`` PEs, then the flood from its
    root to the farther end: when the sum is on every PE of the line."""
    if n <= 1 or wavelets <= 0:
        return ready
    done, root = ktree_reduce_cycles(spec, wavelets, n, 2, ready=ready)
    return done + multicast_cycles(spec, wavelets, max(root, n - 1 - root) + 1)


@dataclass(frozen=True)
class KvAttentionCost:
    """What `cost` returns: the step's cycles, its passes (cumulative order as listed in
    the module docstring) and the layout."""

    cycles: float
    parts: dict[str, float]
    layout: KvLayout
    cache_bytes: int
    work_bytes: int
    assumptions: dict[str, Any] = field(default_factory=dict)


def cost(spec: WaferSpec | str | None, batch: int, kv_heads: int, group: int, head_dim: int,
         context: int, grid: tuple[int, int], *, dtype: str = "fp16") -> KvAttentionCost:
    """Closed-form cycles of one decode step of attention over ``context`` positions
    (the new one included) on ``grid``; see the module docstring for the passes."""
    spec = get_spec(spec)
    lay = layout(batch, kv_heads, group, head_dim, context, grid, dtype)
    return _cost(spec, lay)


@functools.lru_cache(maxsize=1 << 12)
def _cost(spec: WaferSpec, lay: KvLayout) -> KvAttentionCost:
    dt = lay.dtype
    b, g, hc, ell, dc = lay.batch, lay.group, lay.hc, lay.ell, lay.dc
    scores = b * g * hc * ell
    parts: dict[str, float] = {}
    t = float(op_cycles(spec, 2 * b * dc, dt, "copy"))
    parts["append"] = t
    t0 = t
    t += float(fmac_cycles(spec, scores * dc / hc, dt, "fp32"))
    parts["scores"] = t - t0
    t0 = t
    t = _allreduce(spec, scores, lay.cg, t)
    parts["score_allreduce"] = t - t0
    t0 = t
    t += float(op_cycles(spec, scores, WORK, "max"))
    t = _allreduce(spec, b * g * hc, lay.rows_used, t)
    parts["max_allreduce"] = t - t0
    t0 = t
    t += float(op_cycles(spec, scores, WORK, "sub") + op_cycles(spec, scores, WORK, "exp")
               + op_cycles(spec, scores, WORK, "add"))
    parts["exp_sum"] = t - t0
    t0 = t
    t += float(fmac_cycles(spec, scores * dc / hc, dt, "fp32"))
    parts["pv"] = t - t0
    t0 = t
    t = _allreduce(spec, b * g * (dc + hc), lay.rows_used, t)
    parts["out_allreduce"] = t - t0
    t0 = t
    t += float(op_cycles(spec, b * g * hc, WORK, "reciprocal")
               + op_cycles(spec, b * g * dc, WORK, "mul"))
    parts["normalise"] = t - t0
    return KvAttentionCost(t, parts, lay, lay.cache_bytes(), lay.work_bytes(),
                           {"spec": spec.name, "clock_hz": spec.clock_hz,
                            "allreduce": "K-tree (K = 2) then flood from the root",
                            "scale": "1/sqrt(head_dim) folded into W_q at load time"})


@dataclass
class KvAttentionResult:
    """What `run` returns: the output [batch, heads, head_dim] (None without values), the
    step's cycles and its passes, and the fabric (timing-only) it ran on."""

    value: np.ndarray | None
    cycles: float
    parts: dict[str, float]
    layout: KvLayout
    fabric: Fabric = field(repr=False)


def _lines_allreduce(fab: Fabric, rows: int, cols: int, wavelets: float, axis: str,
                     segment: int, ready: float) -> float:
    """K-tree reduce then flood of ``wavelets`` fp32 partials along ``axis`` ('row': along
    each row, within segments of ``segment`` columns; 'col': down every column), all PEs
    ready at ``ready``; returns when the last PE has the sum."""
    length = cols if axis == "row" else rows
    if length <= 1 or wavelets <= 0:
        return ready
    seg = segment if axis == "row" else rows
    end = ready
    for c0 in range(0, cols if axis == "row" else 1, seg if axis == "row" else 1):
        width = min(seg, cols - c0) if axis == "row" else cols
        sub = fab.rect(0, c0, rows, width)
        maps = (None, "partial") if axis == "row" else ("partial", None)
        part = MeshTensor(fab, sub, (int(wavelets),), "fp32", *maps, None, ready)
        if (width if axis == "row" else rows) > 1:
            summed, _ = ktree_reduce(part, axis, 2)
            out = mv.multicast(summed, sub, axis)
            end = max(end, float(out.ready.max()))
            summed.free()
            out.free()
        part.free()
    return end


def run(spec: WaferSpec | str | None, batch: int, kv_heads: int, group: int, head_dim: int,
        context: int, grid: tuple[int, int], *, dtype: str = "fp16",
        q: np.ndarray | None = None, k: np.ndarray | None = None,
        v: np.ndarray | None = None, cache: KvCache | None = None) -> KvAttentionResult:
    """One decode step on the fabric (module docstring). ``q`` is [batch, kv_heads * group,
    head_dim] (already scaled by 1/sqrt(head_dim)); ``k`` and ``v`` [batch, kv_heads,
    context, head_dim], the new position last. Without them the run is timing only.

    With a ``cache`` (`KvCache`), ``k`` and ``v`` are the new position's [batch, kv_heads,
    head_dim]: the append pass writes them into their slot, and the step reads every key
    and value from the cache's tiles (``context`` must be what it then holds)."""
    spec = get_spec(spec)
    lay = layout(batch, kv_heads, group, head_dim, context, grid, dtype)
    if cache is not None:
        if q is None or k is None or v is None:
            raise KernelShapeError(f"{KERNEL}: a step on a cache needs q and the new k, v")
        cl = cache.layout
        if (cl.batch, cl.kv_heads, cl.head_dim, cl.rows, cl.cols, cl.dtype) != (
                batch, kv_heads, head_dim, lay.rows, lay.cols, dtype):
            raise KernelShapeError(f"{KERNEL}: the cache's layout {cl} is not this step's")
        cache.append(np.asarray(k)[:, :, None], np.asarray(v)[:, :, None])
        if cache.held != context:
            raise KernelShapeError(f"{KERNEL}: the cache holds {cache.held} positions, the "
                                   f"step was asked for {context}")
        k, v = cache.read()
    dt = lay.dtype
    b, g, hc, ell, dc = lay.batch, lay.group, lay.hc, lay.ell, lay.dc
    rows, cols = lay.rows_used, lay.cols_used
    fab = Fabric(spec, rows, cols, timing_only=True)
    rect = fab.rect(0, 0, rows, cols)
    scores = b * g * hc * ell
    parts: dict[str, float] = {}

    def step(name: str, end: Any, t0: float) -> float:
        t = float(np.max(end))
        parts[name] = t - t0
        return t

    t = step("append", local_pass(fab, rect, 2 * b * dc, dt, "copy", 0.0), 0.0)
    t = step("scores", local_pass(fab, rect, scores * dc / hc, dt, "fmac", t, reads=2,
                                  accumulate="fp32"), t)
    t = step("score_allreduce", _lines_allreduce(fab, rows, cols, scores, "row", lay.cg, t),
             t)
    t0 = t
    t = float(np.max(local_pass(fab, rect, scores, WORK, "max", t)))
    t = step("max_allreduce", _lines_allreduce(fab, rows, cols, b * g * hc, "col", 1, t), t0)
    t0 = t
    for op in ("sub", "exp", "add"):
        t = float(np.max(local_pass(fab, rect, scores, WORK, op, t)))
    parts["exp_sum"] = t - t0
    t = step("pv", local_pass(fab, rect, scores * dc / hc, dt, "fmac", t, reads=2,
                              accumulate="fp32"), t)
    t = step("out_allreduce", _lines_allreduce(fab, rows, cols, b * g * (dc + hc), "col", 1,
                                               t), t)
    t0 = t
    t = float(np.max(local_pass(fab, rect, b * g * hc, WORK, "reciprocal", t)))
    t = float(np.max(local_pass(fab, rect, b * g * dc, WORK, "mul", t)))
    parts["normalise"] = t - t0
    value = None
    if q is not None and k is not None and v is not None:
        value = reference(q, k, v, dtype=dt)
    return KvAttentionResult(value, t, parts, lay, fab)


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, dtype: str = "fp32"
              ) -> np.ndarray:
    """The step's values: q [b, heads, d] (scaled), k, v [b, kv_heads, n, d]; query head
    ``h`` reads key/value head ``h // group`` (transformers' ``repeat_kv``). Inputs rounded
    to ``dtype``, fp32 scores, ``p`` in ``dtype`` before ``p V``, one rounding out."""
    qs, ks, vs = (to_storage(np.asarray(x, np.float32), dtype).astype(np.float32)
                  for x in (q, k, v))
    bsz, heads, d = qs.shape
    kvh = ks.shape[1]
    if heads % kvh or ks.shape != vs.shape or ks.shape[0] != bsz or ks.shape[3] != d:
        raise KernelShapeError(f"{KERNEL}: q {qs.shape}, k {ks.shape}, v {vs.shape} do not "
                               f"form a grouped-query step")
    qg = qs.reshape(bsz, kvh, heads // kvh, d)
    s = np.einsum("bngd,bnld->bngl", qg, ks, dtype=np.float32)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - m, dtype=np.float32)
    denom = p.sum(-1, keepdims=True, dtype=np.float32)
    p = to_storage(p, dtype).astype(np.float32)
    o = np.einsum("bngl,bnld->bngd", p, vs, dtype=np.float32) / denom
    return to_storage(o.reshape(bsz, heads, d).astype(np.float32), dtype)


def check_fits(spec: WaferSpec, lay: KvLayout, resident: int) -> None:
    """Raise `KernelFitError` when the step's buffers do not fit beside ``resident`` bytes
    (weights and the cache) in a PE's SRAM."""
    need = resident + lay.work_bytes()
    if need > spec.sram_bytes:
        raise KernelFitError(
            f"{KERNEL}: {lay.batch} x {lay.kv_heads * lay.group} heads x {lay.context} "
            f"positions on {lay.rows}x{lay.cols}: {lay.work_bytes()} B of step buffers "
            f"beside {resident} B resident exceed the {spec.sram_bytes} B SRAM")


def flops(batch: int, heads: int, head_dim: int, context: int) -> float:
    """Useful FLOPs of a decode step: q K^T and p V over ``context`` positions."""
    return 4.0 * batch * heads * head_dim * context


__all__ = ["KERNEL", "KvAttentionCost", "KvAttentionResult", "KvCache", "KvLayout", "check_fits",
           "cost", "flops", "layout", "reference", "run"]
