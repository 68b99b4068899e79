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
K / V blocks reach it as in the forward (``kv``):

* ``"shift"``: block s travels along the snake exactly as in the forward
  (`attention._snake_shift`: at step t position b holds block b - t) and carries its fp32
  dK / dV accumulators with K and V (4 g tq D wavelets per hop instead of 2); they are
  complete when the block leaves the chain's end. The step recurrence is the forward's
  (`last_step_end`) with the backward's steps and hop. Every block passes every position
  one hop per step, so this takes at least about 4 g D S hop-cycles.
* ``"stream"`` (split S): K / V enter at the chain head and stream down it as in the
  forward (`attention._stream_cycles`); each position keeps its partial dK / dV of every
  block it meets, and each block's partials are summed by a running sum flowing back up
  the chain on the opposite links, from the tail to the block's home position, each PE
  adding its partial as the wavelets pass (a fabric-input add on a microthread). Split,
  the S sub-bands hold the same query blocks and every S-th K / V block, and their dQ
  partials are merged by a tree at the end. `_stream_cost` derives the cycles.

Per (query block, key block) step: 5 block products instead of the forward's 2, plus the
exponentials and the dS passes (and, streaming, the running sum's add).

What is modelled and what is not: cycles and SRAM come from this closed form only (there
is no step-by-step fabric `run()` of the backward yet, unlike the forward); the values a
pipelined run returns are PyTorch's fused CPU backward on the storage-rounded inputs,
rounded to the storage dtype, as the forward's closed-form path does.
"""

from __future__ import annotations

import functools
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


#: How K/V blocks reach the query blocks, as in the forward (`attention.KV_MODES`).
KV_MODES = ("shift", "stream")


@dataclass(frozen=True)
class Geometry:
    """The forward's layout on ``rows x cols`` PEs folded ``fold`` times; streaming, each
    band holds ``split`` sub-bands side by side (module docstring)."""

    groups: int
    seq: int
    head_dim: int
    rows: int
    cols: int
    fold: int
    kv: str = "shift"
    split: int = 1

    @property
    def chain(self) -> int:
        return self.rows * self.fold

    @property
    def g(self) -> int:
        return -(-self.groups // (self.cols // (self.fold * self.split)))

    @property
    def tq(self) -> int:
        return -(-self.seq // self.chain)


def check(groups: int, seq: int, head_dim: int, rect: tuple[int, int], fold: int,
          kv: str = "shift", split: int = 1) -> Geometry:
    """The geometry, or a typed error saying which constraint the layout breaks."""
    rows, cols = rect
    if min(groups, seq, head_dim, rows, cols, fold, split) < 1:
        raise KernelShapeError(f"{KERNEL}: sizes, rectangle, fold and split must be >= 1")
    if kv not in KV_MODES or (split > 1 and kv != "stream"):
        raise KernelShapeError(f"{KERNEL}: kv {kv!r} with split {split}: kv is 'shift' or "
                               f"'stream', and only a stream is split")
    width = fold * split
    if cols % width:
        raise KernelShapeError(f"{KERNEL}: {cols} columns cannot be cut into bands of "
                               f"{width}; use a multiple of {width}")
    if rows * fold > seq:
        raise KernelFitError(f"{KERNEL}: {seq} tokens cannot be cut into {rows * fold} query "
                             f"blocks; use at most {seq // fold} rows")
    if cols // width > groups:
        raise KernelFitError(f"{KERNEL}: {groups} groups cannot spread over {cols // width} "
                             f"bands; use at most {groups * width} columns")
    if split > rows * fold:
        raise KernelFitError(f"{KERNEL}: split {split} exceeds the chain of {rows * fold} "
                             f"query blocks")
    return Geometry(groups, seq, head_dim, rows, cols, fold, kv, split)


def sram_bytes(geo: Geometry, dtype: str, spec: WaferSpec | None = None) -> int:
    """Per PE: Q, dO (storage dtype), dQ (fp32), lse and D (fp32 per row); two buffers of
    the K, V block (storage); the scores S / P and dS (fp32) and P in the storage dtype.
    Shifting, two buffers of the travelling dK, dV (fp32). Streaming, the partial dK, dV
    of every block whose running sum has not passed yet (`_pending`) and, split, one dQ
    partial arriving to be merged."""
    b = BYTES[dtype]
    blk, scores, rows = geo.g * geo.tq * geo.head_dim, geo.g * geo.tq * geo.tq, geo.g * geo.tq
    common = 2 * blk * b + 4 * blk + 8 * rows + 2 * 2 * blk * b + 2 * 4 * scores + scores * b
    if geo.kv == "shift":
        return common + 2 * 2 * 4 * blk
    pending = _pending(get_spec(spec), geo, dtype)
    return common + pending * 2 * 4 * blk + (4 * blk if geo.split > 1 else 0)


def _hop_latency(spec: WaferSpec) -> float:
    """Cycles a running sum of dK / dV gains per position it passes up the chain: one hop,
    down the ramp into the CE, the add (a fabric-input DSD on a microthread, at one wavelet
    per cycle) and up the ramp again (cut-through: a wavelet moves on once added)."""
    return spec.hop_cycles + 2 * spec.ramp_cycles + 1


def _pending(spec: WaferSpec, geo: Geometry, dtype: str) -> int:
    """Partial dK / dV blocks a PE holds at once, streaming: its partial of a block waits
    for the block's running sum, which left the chain's tail ``(L-1-l) (hop + 2 T_R + 1)``
    cycles after the block passed position l, i.e. up to ``(L-1)(2 T_R + 1)`` cycles,
    while a new block arrives every ``M = max(W, B)`` cycles."""
    blk = geo.g * geo.tq * geo.head_dim
    m = max(_stream_step(spec, geo, dtype, False), 2 * blk)
    return int(math.ceil((geo.chain - 1) * (2 * spec.ramp_cycles + 1) / m)) + 1


def step_cycles(spec: WaferSpec, geo: Geometry, dtype: str, diagonal: bool) -> float:
    """CE cycles of one (query block, key block) step (module docstring's passes)."""
    return _step(spec, geo.g, geo.tq, geo.head_dim, dtype, diagonal, False)


def _stream_step(spec: WaferSpec, geo: Geometry, dtype: str, diagonal: bool) -> float:
    """A streaming step: the shift's passes plus adding the passing running sum of the
    previous block's dK / dV (2 g tq D fp32, on a microthread)."""
    return _step(spec, geo.g, geo.tq, geo.head_dim, dtype, diagonal, True)


@functools.lru_cache(maxsize=65536)
def _step(spec: WaferSpec, g: int, tq: int, head_dim: int, dtype: str, diagonal: bool,
          stream: bool) -> float:
    """`step_cycles` (``stream``: `_stream_step`) from the block sizes they depend on.
    Cached: `choose_layout` prices thousands of layouts that share a few (g, tq)."""
    acc = WORK if dtype != "fp32" else None
    scores = g * tq * tq
    products = 5 * float(op_cycles(spec, scores * head_dim, dtype, "fmac", reads=2,
                                   accumulate=acc))
    step = (products
            + (float(op_cycles(spec, scores, WORK, "select")) if diagonal else 0.0)
            + float(op_cycles(spec, scores, WORK, "exp", reads=2))       # P = exp(. - lse)
            + float(op_cycles(spec, scores, WORK, "sub", reads=2))       # dP - D
            + float(op_cycles(spec, scores, WORK, "mul", reads=2)))      # P * (.)
    if stream:
        step += float(op_cycles(spec, 2 * g * tq * head_dim, WORK, "add", reads=2))
    return step


def _stream_cost(spec: WaferSpec, geo: Geometry, dtype: str) -> float:
    """Cycles of the backward with K / V streamed down each chain (split S).

    Down the chain it is the forward's stream (`attention._stream_cycles`), with the
    backward's steps: a(0) = B + T_R, and with ``M = max(W, B)``, B = 2 g tq D, a PE with K
    blocks is done at ``G_j + lat_l + B + T_R + (K-1) M + W'``; sub-band j starts when
    Q, dO, lse and D have reached it, ``G_j`` = a transfer of 2 g tq (D + 1) wavelets over
    j fold hops. Up the chain, each block's dK / dV running sum leaves the tail as soon as
    the tail is done with it and gains `_hop_latency` per position, never waiting for a
    partial (upstream positions met the block earlier), so only the last blocks' sums,
    whose homes are within S positions of the tail, add to the end: at most S such
    positions and the sum's 2 g tq D wavelets. Then ceil(log2 S) levels of the dQ partials'
    merge (a transfer of g tq D wavelets over 2^l fold hops and an fp32 add) and F."""
    g, tq, d, chain = geo.g, geo.tq, geo.head_dim, geo.chain
    blk, fold, split = g * tq * d, geo.fold, geo.split
    w0, w = _stream_step(spec, geo, dtype, True), _stream_step(spec, geo, dtype, False)
    b = 2 * blk
    m = max(w, b)
    first = b + spec.ramp_cycles
    k = -(-chain // split)
    last_band = (chain - 1) % split

    def gate(j: int) -> float:
        return float(_transfer(spec, 2 * g * tq * (d + 1), j * fold, fold)) if j else 0.0

    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    hop = spec.hop_cycles
    down = gate(last_band) + (chain - 1) * hop + first + (k - 1) * m + w0
    if last_band < split - 1 and k >= 2:   # sub-band S-1: one block fewer, later queries
        down = max(down, gate(split - 1) + first + (k - 2) * m
                   + max((chain - 1) * hop + w, (chain - 2 - last_band) * hop + w0))
    drain = 2 * blk + split * _hop_latency(spec)
    levels = (split - 1).bit_length()
    merge = sum(float(_transfer(spec, blk, (2 ** lvl) * fold, fold))
                + float(op_cycles(spec, blk, WORK, "add", reads=2)) for lvl in range(levels))
    final = 2 * float(op_cycles(spec, blk, WORK, "mul"))
    return t0 + down + drain + merge + final


def cost(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect: tuple[int, int], *, dtype: str = "fp32", fold: int = 1, kv: str = "shift",
         split: int = 1) -> float:
    """Cycles of the backward. Shifting: ``T0`` (D = rowsum(dO * O)), then the forward's
    step recurrence with the backward's steps W0 / W and hop X of 4 g tq D wavelets
    (`attention.last_step_end`), then the final scaling of dQ and of the outgoing dK.
    Streaming: `_stream_cost`."""
    spec = get_spec(spec)
    geo = check(groups, seq, head_dim, rect, fold, kv, split)
    if kv == "stream":
        return _stream_cost(spec, geo, dtype)
    blk = geo.g * geo.tq * geo.head_dim
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    x = _transfer(spec, 4 * blk, 1, 1)
    w0, w = step_cycles(spec, geo, dtype, True), step_cycles(spec, geo, dtype, False)
    final = 2 * float(op_cycles(spec, blk, WORK, "mul"))
    return float(last_step_end(t0, w0, w, x, geo.chain)) + final


def mean_busy_cycles(spec: WaferSpec, geo: Geometry, dtype: str) -> float:
    """CE cycles an average PE computes (position l works through l + 1 steps; streaming
    with split S, the S sub-bands share them and add the dQ merges)."""
    blk = geo.g * geo.tq * geo.head_dim
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    final = 2 * float(op_cycles(spec, blk, WORK, "mul"))
    if geo.kv == "shift":
        w0, w = step_cycles(spec, geo, dtype, True), step_cycles(spec, geo, dtype, False)
        return t0 + w0 + w * (geo.chain - 1) / 2 + final
    w0, w = _stream_step(spec, geo, dtype, True), _stream_step(spec, geo, dtype, False)
    merge = float(op_cycles(spec, blk, WORK, "add", reads=2))
    return t0 + (w * (geo.chain + 1) / 2 + w0 - w + (geo.split - 1) * merge) / geo.split \
        + final


def _row_counts(seq: int, fold: int, max_rows: int) -> list[int]:
    """Row counts to try at a fold: for every block size the fewest rows that reach it
    (more rows with the same block only lengthen the chain), thinned geometrically past
    64 candidates (the cost varies smoothly with the block there)."""
    rows_for: dict[int, int] = {}
    for rows in range(1, min(max_rows, seq // fold) + 1):
        rows_for.setdefault(-(-seq // (rows * fold)), rows)
    counts = sorted(rows_for.values())
    if len(counts) <= 64:
        return counts
    keep = {counts[0], counts[-1]}
    step = len(counts) / 64
    keep.update(counts[int(i * step)] for i in range(64))
    return sorted(keep)


@functools.lru_cache(maxsize=4096)
def choose_layout(spec: WaferSpec, groups: int, seq: int, head_dim: int, *, max_rows: int,
                  max_cols: int, dtype: str) -> tuple[Geometry, float]:
    """The fastest layout within ``max_rows x max_cols`` that fits the SRAM: shifting or
    streaming, for each fold (powers of two) and split (streaming; powers of two) the most
    bands the columns and groups allow, and the row counts of `_row_counts`. Ties go to
    fewer PEs. Past 64 block sizes per fold the rows are sampled, so the pick is the best
    of the layouts tried, not always the best of all. Cached: every layer asks the same."""
    best: tuple[float, int, Geometry] | None = None
    fold = 1
    while fold <= min(max_cols, seq):
        for kv in KV_MODES:
            split = 1
            while fold * split <= max_cols:
                bands = min(groups, max_cols // (fold * split))
                cols = bands * fold * split
                for rows in _row_counts(seq, fold, max_rows):
                    if split > rows * fold:
                        continue
                    geo = Geometry(groups, seq, head_dim, rows, cols, fold, kv, split)
                    if sram_bytes(geo, dtype, spec) > spec.sram_bytes:
                        continue
                    cyc = cost(spec, groups, seq, head_dim, (rows, cols), dtype=dtype,
                               fold=fold, kv=kv, split=split)
                    key = (cyc, rows * cols, geo)
                    if best is None or key[:2] < best[:2]:
                        best = key
                if kv == "shift":
                    break
                split *= 2
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
    kv: str = "shift"
    split: int = 1

    def __post_init__(self) -> None:
        if min(self.groups, self.seq, self.head_dim, self.fold, self.split) < 1 \
                or self.kv not in KV_MODES:
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
        how = (f"K/V and dK/dV shifted along a snake (fold {geo.fold})" if geo.kv == "shift"
               else f"K/V streamed down a snake, dK/dV summed back up it (fold {geo.fold}, "
                    f"split {geo.split})")
        return (AttentionBackwardParams(p.groups, p.seq, p.head_dim, geo.fold, geo.kv,
                                        geo.split),
                Sizing((geo.rows, geo.cols), cyc, sram_bytes(geo, st.dtype, spec),
                       f"flash backward, {how}; closed form"))

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        p: AttentionBackwardParams = st.params  # type: ignore[assignment]
        geo = check(p.groups, p.seq, p.head_dim, st.rect, p.fold, p.kv, p.split)
        cycles = cost(ctx.spec, p.groups, p.seq, p.head_dim, st.rect, dtype=st.dtype,
                      fold=p.fold, kv=p.kv, split=p.split)
        measured = StageRun(cycles, sram_bytes(geo, st.dtype, ctx.spec),
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
