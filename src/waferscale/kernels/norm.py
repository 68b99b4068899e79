"""Layer norm over the last axis, with its row statistics reduced over the fabric.

Mapping: activations [..., N] with the normalised axis N either blocked over the
rectangle's columns (the usual [tokens, hidden] layout: tokens over rows, hidden over
columns) or held whole by each PE. In the split case each PE sums its part of a row and a
chain (or tree) allreduce along the row gives every PE the total.

Two-pass statistics (mean first, then the sum of squared deviations) cost one more
allreduce than E[x^2] - E[x]^2 but do not cancel catastrophically when |mean| >> std, which
residual streams do reach. All statistics are fp32; the output is rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from waferscale.errors import KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.tensor import AxisMap
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node, iter_refs, per_graph
from waferscale.kernels.elementwise import (
    WORK,
    RowLayout,
    aligned,
    allreduce_stat,
    allreduce_stat_cycles,
    check_dtype,
    local_pass,
    op_cycles,
    pad_mask,
    stat_tensor,
    tile_elements,
    tile_shape,
)
from waferscale.kernels.family import (
    ExecContext,
    RowFamily,
    Stage,
    StageParams,
    StageRun,
    done,
    rows_cols,
    shape_of,
    to_np,
    to_torch,
)

KERNEL = "layer_norm"


def accumulate_dtype(dtype: str) -> str | None:
    """16-bit sums run on the mixed fp16 x fp16 -> fp32 datapath."""
    return WORK if dtype != "fp32" else None


def param_maps(x: MeshTensor) -> tuple[AxisMap, AxisMap]:
    """Layout of a [N] weight/bias that lines up with ``x``'s last axis on every PE."""
    last = len(x.shape) - 1
    return (0 if x.row_map == last else None, 0 if x.col_map == last else None)


def _place(x: MeshTensor, value: np.ndarray | MeshTensor | None, what: str
           ) -> tuple[MeshTensor | None, bool]:
    """Put a weight/bias on the fabric next to ``x`` (resident: ready at time 0)."""
    if value is None or isinstance(value, MeshTensor):
        if value is not None and (value.shape != (x.shape[-1],) or value.rect != x.rect):
            raise KernelShapeError(f"{KERNEL}: {what} {value.shape} on {value.rect} must be "
                                   f"[{x.shape[-1]}] on {x.rect}")
        return value, False
    value = np.asarray(value)
    if value.shape != (x.shape[-1],):
        raise KernelShapeError(f"{KERNEL}: {what} has shape {value.shape} but the normalised "
                               f"axis of {x.shape} has {x.shape[-1]} elements")
    row_map, col_map = param_maps(x)
    return MeshTensor.from_numpy(x.fabric, value, x.rect, row_map, col_map, x.dtype,
                                 name=x.fabric.fresh_name(f"ln_{what}")), True


def run(x: MeshTensor, weight: np.ndarray | MeshTensor | None = None,
        bias: np.ndarray | MeshTensor | None = None, *, eps: float = 1e-5,
        algorithm: str = "chain") -> MeshTensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased var).

    Passes per PE: row sum -> allreduce -> mean; sum of squared deviations -> allreduce ->
    rstd; ``x * rstd - mean * rstd``; ``* weight + bias`` (when given).
    """
    check_dtype(KERNEL, x.dtype)
    layout = RowLayout.of(KERNEL, x.shape, x.rect.shape, x.row_map, x.col_map)
    w, own_w = _place(x, weight, "weight")
    b, own_b = _place(x, bias, "bias")
    fabric, rect = x.fabric, x.rect
    n = tile_elements(x)
    acc = accumulate_dtype(x.dtype)
    size = np.float32(x.shape[-1])
    mask = pad_mask(x)
    values = not fabric.timing_only
    x32 = x.tiles.astype(np.float32) if values else None

    end = local_pass(fabric, rect, n, x.dtype, "add", x.ready, writes=0, accumulate=acc)
    s1 = stat_tensor(x, layout, 1, x32.sum(-1, keepdims=True) if values else None, end)
    s1 = allreduce_stat(s1, layout, algorithm)
    rows = tile_elements(s1)
    end = local_pass(fabric, rect, rows, WORK, "mul", s1.ready)
    mean = s1.tiles / size if values else None

    end = local_pass(fabric, rect, n, x.dtype, "sub", end, writes=0)
    end = local_pass(fabric, rect, n, x.dtype, "fmac", end, writes=0, accumulate=acc)
    sq = None
    if values:
        dev = x32 - mean
        if mask is not None:
            dev = np.where(mask, dev, np.float32(0))
        sq = np.square(dev).sum(-1, keepdims=True)
    s2 = allreduce_stat(stat_tensor(x, layout, 1, sq, end), layout, algorithm)
    end = local_pass(fabric, rect, rows, WORK, "fmac", s2.ready)
    end = local_pass(fabric, rect, rows, WORK, "rsqrt", end)
    end = local_pass(fabric, rect, rows, WORK, "mul", end)       # shift = -mean * rstd

    affine = w is not None or b is not None
    inputs = [x] + [t for t in (w, b) if t is not None]
    ready = np.maximum.reduce([end] + [t.ready for t in inputs])
    end = local_pass(fabric, rect, n, x.dtype, "fmac", ready,
                     writes=1)                                  # x * rstd + shift
    if affine:
        end = local_pass(fabric, rect, n, x.dtype, "fmac", end, reads=len(inputs))
    tiles = None
    if values:
        y = (x32 - mean) * (np.float32(1) / np.sqrt(s2.tiles / size + np.float32(eps)))
        if w is not None:
            y = y * aligned(w, len(x.tile_shape))
        if b is not None:
            y = y + aligned(b, len(x.tile_shape))
        if mask is not None:
            y = np.where(mask, y, np.float32(0))
        tiles = to_storage(y, x.dtype)
    out = x.like(tiles, end)
    for t, own in ((s1, True), (s2, True), (w, own_w), (b, own_b)):
        if own and t is not None:
            t.free()
    return out


def cost(spec: WaferSpec | str | None, shape: Sequence[int], rect_shape: tuple[int, int], *,
         row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32", weight: bool = True,
         bias: bool = True, algorithm: str = "chain") -> float:
    """Closed form of `run`: its local passes plus two allreduces of one word per row.

    ``weight`` / ``bias``: whether `run` gets them (each adds a read to the affine pass).
    """
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    layout = RowLayout.of(KERNEL, shape, rect_shape, row_map, col_map)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    n = float(np.prod(tile))
    rows = n / tile[-1]
    acc = accumulate_dtype(dtype)
    total = float(op_cycles(spec, n, dtype, "add", writes=0, accumulate=acc))
    total += allreduce_stat_cycles(spec, rows, layout, algorithm)
    total += float(op_cycles(spec, rows, WORK, "mul"))
    total += float(op_cycles(spec, n, dtype, "sub", writes=0))
    total += float(op_cycles(spec, n, dtype, "fmac", writes=0, accumulate=acc))
    total += allreduce_stat_cycles(spec, rows, layout, algorithm)
    total += float(op_cycles(spec, rows, WORK, "fmac") + op_cycles(spec, rows, WORK, "rsqrt")
                   + op_cycles(spec, rows, WORK, "mul"))
    total += float(op_cycles(spec, n, dtype, "fmac"))
    if weight or bias:
        total += float(op_cycles(spec, n, dtype, "fmac", reads=1 + weight + bias))
    return total


# ------------------------------------------------------------------ the stage family ------
@dataclass(frozen=True)
class LayerNormParams(StageParams):
    """A layer norm over the last axis of a [tokens, hidden] activation."""

    tokens: int
    hidden: int
    weight: bool
    bias: bool
    eps: float

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.hidden < 1 or not self.eps >= 0:
            raise KernelShapeError(f"layer norm of [{self.tokens}, {self.hidden}] with eps "
                                   f"{self.eps}: sizes must be >= 1 and eps >= 0")


def stage_sram_bytes(p: LayerNormParams, dtype: str, r: int, c: int) -> int:
    """SRAM per PE of a layer-norm stage on r x c PEs: input and output tiles, gamma and
    beta slices, two fp32 statistics per row (mean, rstd) and their partial sums."""
    eb = BYTES[dtype]
    tile = -(-p.tokens // r) * -(-p.hidden // c)
    return 2 * tile * eb + 2 * -(-p.hidden // c) * eb + 16 * -(-p.tokens // r)


def values(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, eps: float,
           dtype: str) -> torch.Tensor:
    """`run`'s arithmetic on the plain [..., hidden] array (fp32 two-pass statistics, one
    rounding of the output to the storage dtype): a layer norm fused in front of a GEMM,
    whose cycles are the GEMM stage's. The row sums are added in one order instead of
    per tile then across the row: rounding order only."""
    x32 = to_np(x).astype(np.float32)
    mean = x32.mean(-1, keepdims=True, dtype=np.float32)
    dev = x32 - mean
    var = np.square(dev).sum(-1, keepdims=True, dtype=np.float32) / np.float32(x.shape[-1])
    y = dev * (np.float32(1) / np.sqrt(var + np.float32(eps)))
    if w is not None:
        y = y * to_np(w).astype(np.float32)
    if b is not None:
        y = y + to_np(b).astype(np.float32)
    return to_torch(to_storage(y, dtype), x.dtype)


def stats(x: torch.Tensor, dims: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and rstd outputs of ``native_layer_norm`` over the last ``dims`` axes (the
    kernel computes them; a training graph saves them for its backward), in fp32."""
    axes = list(range(x.dim() - dims, x.dim()))
    xf = x.float()
    return (xf.mean(dim=axes, keepdim=True),
            torch.rsqrt(xf.var(dim=axes, unbiased=False, keepdim=True) + eps))


#: Per graph (by id, dropped with the graph): the names some node reads other than
#: through ``getitem(name, 0)`` (see `reads_stats`); one pass over the graph per run.
_READ_BEYOND_FIRST: dict[int, frozenset[str]] = {}


def reads_stats(g: Graph, name: str) -> bool:
    """Whether anything reads the mean or rstd of the layer norm ``name``, i.e. anything
    but ``getitem(name, 0)``: a training graph's backward does, an inference forward
    reads the normalised values only, and computing its statistics anyway was 7 % of
    GenSLM-25M's functional forward. Unread, they are left as None."""
    names = per_graph(_READ_BEYOND_FIRST, g, lambda: frozenset(
        [r.name for n in g.nodes.values()
         if not (n.short == "getitem" and len(n.args) == 2 and n.args[1] == 0)
         for r in iter_refs((n.args, n.kwargs))]
        + [r.name for r in iter_refs(g.outputs)]))
    return name in names


def _outputs(ctx: ExecContext, node: Node, y: torch.Tensor, x: torch.Tensor, dims: int,
             eps: float) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``native_layer_norm``'s three outputs: the statistics only where they are read."""
    if not reads_stats(ctx.graph, node.name):
        return y, None, None
    return (y, *stats(x, dims, eps))


def run_stage(ctx: ExecContext, st: Stage, x: torch.Tensor, w: torch.Tensor | None,
              b: torch.Tensor | None, eps: float) -> tuple[torch.Tensor | None, StageRun]:
    """The kernel on the stage's fabric: the normalised values (None when timing only)."""
    fab = ctx.fabric(st)
    h = x.shape[-1]
    xm = ctx.mesh(fab, x, (x.numel() // h, h), st.dtype)
    if ctx.timing_only:
        run(xm, None if w is None else np.zeros(h, np.float32),
            None if b is None else np.zeros(h, np.float32), eps=eps)
        return None, done(fab)
    out = run(xm, None if w is None else to_np(w), None if b is None else to_np(b), eps=eps)
    return to_torch(out.to_numpy().reshape(x.shape), x.dtype), done(fab)


class LayerNorm(RowFamily):
    """``aten.native_layer_norm``: two-pass statistics with chain allreduces along rows.
    Fuses in front of the GEMM that alone reads it (a prologue)."""

    kind = "layer_norm"
    targets = frozenset({"native_layer_norm"})
    fuses_into = "prologue"

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[LayerNormParams, float]:
        node = nodes[0]
        t, h = rows_cols(shape_of(g, node.args[0]))
        p = LayerNormParams(t, h, weight=node.args[2] is not None,
                            bias=node.args[3] is not None, eps=float(node.args[4]))
        return p, 8.0 * t * h

    def extent(self, p: LayerNormParams) -> tuple[int, int]:
        return p.tokens, p.hidden

    def sram_bytes(self, p: LayerNormParams, dtype: str, r: int, c: int) -> int:
        return stage_sram_bytes(p, dtype, r, c)

    def cycles(self, spec: WaferSpec, p: LayerNormParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return cost(spec, [p.tokens, p.hidden], rect, dtype=dtype, weight=p.weight,
                    bias=p.bias)

    def algorithm(self, p: LayerNormParams) -> str:
        return "two-pass, chain allreduce"

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        x, shape, w, b, eps = ctx.value(node.args)[:5]
        out, measured = run_stage(ctx, st, x, w, b, float(eps))
        if out is not None:
            ctx.env[node.name] = _outputs(ctx, node, out, x, len(shape), float(eps))
        return measured

    def execute_fused(self, ctx: ExecContext, st: Stage, node: Node) -> None:
        if ctx.timing_only:
            return
        x, shape, w, b, eps = ctx.value(node.args)[:5]
        ctx.env[node.name] = _outputs(ctx, node, values(x, w, b, float(eps), st.dtype), x,
                                      len(shape), float(eps))


FAMILY = LayerNorm()
