"""The backward of causal flash attention on the forward's snake of PEs (closed form).

Training graphs keep ATen's CPU flash attention whole (`backend.decompositions`); its
backward, ``_scaled_dot_product_flash_attention_for_cpu_backward(dO, Q, K, V, O, lse)``,
runs here on the layout of the forward kernel (`attention`, ``kv="shift"``): the sequence
cut into a chain of ``L = R * fold`` query blocks of ``tq`` tokens snaked over the
rectangle, ``g`` (batch x head) groups per PE. The flash-attention-2 backward
(Dao, 2023, Algorithm 2) per (query block b, key block s <= b) pair:

    S = Q_b K_s^T,  P = exp(scale S - lse_b)          (recomputed, masked on the diagonal)
    dV_s += P^T dO_b,  dP = dO_b V_s^T,  dS = P * (dP - D_b),
    dQ_b += scale dS K_s,  dK_s += scale dS^T Q_b,    D_b = rowsum(dO_b * O_b) (once)

Mapping: each PE keeps its query block's Q, dO, lse, D and the fp32 dQ accumulator; the
key block s travels along the snake exactly as in the forward (`attention._snake_shift`:
at step t position b holds block b - t, so every position meets the blocks its causal
queries need) and now carries its fp32 dK / dV accumulators with K and V (4 g tq D
wavelets per hop instead of 2). Block s's dK / dV are complete when it leaves the chain's
end, which sends them out. So the step recurrence is the forward's (`last_step_end`) with
the backward's step cycles and hop: 5 block products per step instead of 2, plus the
exponentials and the dS passes.

What is modelled and what is not: cycles and SRAM come from this closed form only (there
is no step-by-step fabric `run()` of the backward yet, unlike the forward); the values a
pipelined run returns are PyTorch's fused CPU backward on the storage-rounded inputs,
rounded to the storage dtype, as the forward's closed-form path does. Only ``kv="shift"``
layouts are searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node, Ref
from waferscale.kernels.attention import _transfer, causal_mask_value, flops, last_step_end
from waferscale.kernels.elementwise import WORK, op_cycles
from waferscale.kernels.family import (
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    float_out,
    shape_of,
    to_np,
    to_torch,
)

KERNEL = "attention_backward"
#: The ATen op this family lowers.
FLASH_CPU_BACKWARD = "_scaled_dot_product_flash_attention_for_cpu_backward"


@dataclass(frozen=True)
class Geometry:
    """The forward's shift layout on ``rows x cols`` PEs folded ``fold`` times."""

    groups: int
    seq: int
    head_dim: int
    rows: int
    cols: int
    fold: int

    @property
    def chain(self) -> int:
        return self.rows * self.fold

    @property
    def g(self) -> int:
        return -(-self.groups // (self.cols // self.fold))

    @property
    def tq(self) -> int:
        return -(-self.seq // self.chain)


def check(groups: int, seq: int, head_dim: int, rect: tuple[int, int], fold: int) -> Geometry:
    """The geometry, or a typed error saying which constraint the layout breaks."""
    rows, cols = rect
    if min(groups, seq, head_dim, rows, cols, fold) < 1:
        raise KernelShapeError(f"{KERNEL}: sizes, rectangle and fold must be >= 1")
    if cols % fold:
        raise KernelShapeError(f"{KERNEL}: {cols} columns cannot be cut into bands of fold "
                               f"{fold}; use a multiple of {fold}")
    if rows * fold > seq:
        raise KernelFitError(f"{KERNEL}: {seq} tokens cannot be cut into {rows * fold} query "
                             f"blocks; use at most {seq // fold} rows")
    if cols // fold > groups:
        raise KernelFitError(f"{KERNEL}: {groups} groups cannot spread over {cols // fold} "
                             f"bands; use at most {groups * fold} columns")
    return Geometry(groups, seq, head_dim, rows, cols, fold)


def sram_bytes(geo: Geometry, dtype: str) -> int:
    """Per PE: Q, dO (storage dtype), dQ (fp32), lse and D (fp32 per row); two buffers of
    the travelling K, V (storage) and dK, dV (fp32); the scores S / P and dS (fp32) and
    P in the storage dtype for the products."""
    b = BYTES[dtype]
    blk, scores, rows = geo.g * geo.tq * geo.head_dim, geo.g * geo.tq * geo.tq, geo.g * geo.tq
    return (2 * blk * b + 4 * blk + 8 * rows + 2 * (2 * blk * b + 2 * 4 * blk)
            + 2 * 4 * scores + scores * b)


def step_cycles(spec: WaferSpec, geo: Geometry, dtype: str, diagonal: bool) -> float:
    """CE cycles of one (query block, key block) step (module docstring's passes)."""
    acc = WORK if dtype != "fp32" else None
    scores = geo.g * geo.tq * geo.tq
    products = 5 * float(op_cycles(spec, scores * geo.head_dim, dtype, "fmac", reads=2,
                                   accumulate=acc))
    return (products
            + (float(op_cycles(spec, scores, WORK, "select")) if diagonal else 0.0)
            + float(op_cycles(spec, scores, WORK, "exp", reads=2))       # P = exp(. - lse)
            + float(op_cycles(spec, scores, WORK, "sub", reads=2))       # dP - D
            + float(op_cycles(spec, scores, WORK, "mul", reads=2)))      # P * (.)


def cost(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect: tuple[int, int], *, dtype: str = "fp32", fold: int = 1) -> float:
    """Cycles of the backward: ``T0`` (D = rowsum(dO * O)), then the forward's step
    recurrence with the backward's steps W0 / W and hop X of 4 g tq D wavelets
    (`attention.last_step_end`), then the final scaling of dQ and of the outgoing dK."""
    spec = get_spec(spec)
    geo = check(groups, seq, head_dim, rect, fold)
    blk = geo.g * geo.tq * geo.head_dim
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    x = _transfer(spec, 4 * blk, 1, 1)
    w0, w = step_cycles(spec, geo, dtype, True), step_cycles(spec, geo, dtype, False)
    final = 2 * float(op_cycles(spec, blk, WORK, "mul"))
    return float(last_step_end(t0, w0, w, x, geo.chain)) + final


def mean_busy_cycles(spec: WaferSpec, geo: Geometry, dtype: str) -> float:
    """CE cycles an average PE computes (position l works through l + 1 steps)."""
    blk = geo.g * geo.tq * geo.head_dim
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    w0, w = step_cycles(spec, geo, dtype, True), step_cycles(spec, geo, dtype, False)
    return t0 + w0 + w * (geo.chain - 1) / 2 + 2 * float(op_cycles(spec, blk, WORK, "mul"))


def choose_layout(spec: WaferSpec, groups: int, seq: int, head_dim: int, *, max_rows: int,
                  max_cols: int, dtype: str) -> tuple[Geometry, float]:
    """The fastest shift layout within ``max_rows x max_cols`` that fits the SRAM: for
    each fold (powers of two) the most bands the columns and groups allow, and for each
    distinct block size the fewest rows that reach it (more rows with the same block
    only lengthen the chain). Ties go to fewer PEs."""
    best: tuple[float, int, Geometry] | None = None
    fold = 1
    while fold <= min(max_cols, seq):
        bands = min(groups, max_cols // fold)
        cols = bands * fold
        rows_for: dict[int, int] = {}
        for rows in range(1, min(max_rows, seq // fold) + 1):
            tq = -(-seq // (rows * fold))
            rows_for.setdefault(tq, rows)
        for rows in rows_for.values():
            geo = Geometry(groups, seq, head_dim, rows, cols, fold)
            if sram_bytes(geo, dtype) > spec.sram_bytes:
                continue
            cyc = cost(spec, groups, seq, head_dim, (rows, cols), dtype=dtype, fold=fold)
            key = (cyc, rows * cols, geo)
            if best is None or key[:2] < best[:2]:
                best = key
        fold *= 2
    if best is None:
        raise KernelFitError(f"{KERNEL}: {groups} groups x {seq} tokens x head_dim "
                             f"{head_dim} ({dtype}) fits no layout within {max_rows}x"
                             f"{max_cols} PEs ({spec.sram_bytes} B per PE)")
    return best[2], best[0]


@dataclass(frozen=True)
class AttentionBackwardParams(StageParams):
    """Causal attention backward of ``batch x heads`` groups of [seq, head_dim]; the
    forward's ``fold`` once sized."""

    groups: int
    seq: int
    head_dim: int
    fold: int = 1

    def __post_init__(self) -> None:
        if min(self.groups, self.seq, self.head_dim, self.fold) < 1:
            raise KernelShapeError(f"{KERNEL}: {self.groups} groups of [{self.seq}, "
                                   f"{self.head_dim}] at fold {self.fold}: sizes must be >= 1")


def _causal(node: Node, g: Graph) -> bool:
    """``is_causal``, or a folded mask equal to a lower triangle, and no dropout."""
    a, kw = node.args, node.kwargs
    dropout = float(a[6]) if len(a) > 6 else 0.0
    is_causal = bool(a[7]) if len(a) > 7 else False
    if dropout:
        return False
    if is_causal:
        return True
    mask = kw.get("attn_mask")
    if not isinstance(mask, Ref):
        return False
    src = g.nodes[mask.name]
    if src.meta.get("causal_mask"):   # the forward's kernel found it causal (`backend`)
        return True
    return src.op == "const" and causal_mask_value(node, g.constants[mask.name])


class AttentionBackward(KernelFamily):
    """``_scaled_dot_product_flash_attention_for_cpu_backward`` (module docstring)."""

    kind = KERNEL
    targets = frozenset({FLASH_CPU_BACKWARD})

    def rejects(self, node: Node, g: Graph) -> str | None:
        if not float_out(node) or not _causal(node, g):
            return ("attention backward with a non-causal mask or dropout (the kernel is "
                    "causal, no dropout)")
        return None

    def weight_bytes(self, g: Graph, nodes: list[Node], dtype: str) -> int:
        return 0   # its only constant is the causal mask, built from positions

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[AttentionBackwardParams, float]:
        b, h, s, d = shape_of(g, nodes[0].args[1])
        # five block products per pair instead of the forward's two
        return AttentionBackwardParams(b * h, s, d), 2.5 * flops(b * h, s, d)

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[AttentionBackwardParams, Sizing]:
        p: AttentionBackwardParams = st.params  # type: ignore[assignment]
        if bounds is not None:
            limits = bounds
        else:
            rows = max(1, min(spec.rows, side_cap))
            limits = (rows, max(1, min(spec.cols, side_cap, int(max(area, 1) // rows))))
        try:
            geo, cyc = choose_layout(spec, p.groups, p.seq, p.head_dim, max_rows=limits[0],
                                     max_cols=limits[1], dtype=st.dtype)
        except KernelError:
            if bounds is not None:
                raise
            geo, cyc = choose_layout(spec, p.groups, p.seq, p.head_dim,
                                     max_rows=min(spec.rows, side_cap),
                                     max_cols=min(spec.cols, side_cap), dtype=st.dtype)
        return (AttentionBackwardParams(p.groups, p.seq, p.head_dim, geo.fold),
                Sizing((geo.rows, geo.cols), cyc, sram_bytes(geo, st.dtype),
                       f"flash backward, K/V and dK/dV shifted along a snake (fold "
                       f"{geo.fold}); closed form"))

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        p: AttentionBackwardParams = st.params  # type: ignore[assignment]
        geo = check(p.groups, p.seq, p.head_dim, st.rect, p.fold)
        cycles = cost(ctx.spec, p.groups, p.seq, p.head_dim, st.rect, dtype=st.dtype,
                      fold=p.fold)
        measured = StageRun(cycles, sram_bytes(geo, st.dtype),
                            mean_busy_cycles(ctx.spec, geo, st.dtype) / cycles if cycles
                            else 0.0)
        if ctx.timing_only:
            return measured
        vals = ctx.value(node.args)
        rounded = [torch.from_numpy(to_storage(to_np(t), st.dtype).astype(np.float32))
                   if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                   for t in vals[:6]]
        scale = node.kwargs.get("scale")
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *rounded, 0.0, True, scale=scale if scale is not None
            else 1.0 / math.sqrt(p.head_dim))
        ctx.env[node.name] = tuple(to_torch(to_storage(to_np(x), st.dtype), vals[1].dtype)
                                   for x in grads)
        return measured


FAMILY = AttentionBackward()

__all__ = ["FAMILY", "FLASH_CPU_BACKWARD", "AttentionBackwardParams", "Geometry", "check",
           "choose_layout", "cost", "sram_bytes", "step_cycles"]
