"""RMS norm over the last axis (Llama, Mistral, Qwen ...), with its row statistic reduced
over the fabric: ``x * rsqrt(mean(x^2) + eps) * weight``.

Why a kernel of its own: transformers writes the norm as five ATen ops (``pow``, ``mean``,
``add``, ``rsqrt``, ``mul``, then the weight ``mul``). The pointwise ones had kernels, but
``aten.mean.dim`` did not, so every norm sent the [tokens, hidden] squares to the host and
the statistic back across the system I/O. `fuse_rms_norm` recognises the pattern and writes
one ``RMS_NORM`` node, which this module runs on the fabric in one sweep.

Mapping: as the layer norm (`kernels.norm`): activations [..., N] with N blocked over the
rectangle's columns (tokens over rows) or held whole by each PE. Each PE sums the squares of
its part of a row (one fmac pass, fp32 accumulation for 16-bit data), a chain (or tree)
allreduce of one word per row gives every PE of the row the total, one fmac and one rsqrt
per row give ``rstd``, and one multiply pass per element scales (a second one applies the
weight). Unlike the layer norm there is no mean to subtract, so one statistic and one
allreduce suffice; E[x^2] has no cancellation to guard against. The statistic is fp32 and
the output is rounded once to the storage dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waferscale.errors import KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.tensor import AxisMap
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import (
    Graph,
    Node,
    Ref,
    const_value,
    eliminate_dead,
    ref_name,
    rewrite_call,
    sole_user,
)
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
    FLOAT_DTYPES,
    ExecContext,
    RowFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    done,
    rows_cols,
    shape_of,
    to_np,
    to_torch,
)
from waferscale.kernels.norm import accumulate_dtype, param_maps

KERNEL = "rms_norm"



def _place(x: MeshTensor, weight: np.ndarray | MeshTensor | None
           ) -> tuple[MeshTensor | None, bool]:
    """The weight on the fabric next to ``x`` (resident: ready at time 0); whether this
    call placed it (and so frees it)."""
    if weight is None or isinstance(weight, MeshTensor):
        if weight is not None and (weight.shape != (x.shape[-1],) or weight.rect != x.rect):
            raise KernelShapeError(f"{KERNEL}: weight {weight.shape} on {weight.rect} must be "
                                   f"[{x.shape[-1]}] on {x.rect}")
        return weight, False
    weight = np.asarray(weight)
    if weight.shape != (x.shape[-1],):
        raise KernelShapeError(f"{KERNEL}: weight has shape {weight.shape} but the normalised "
                               f"axis of {x.shape} has {x.shape[-1]} elements")
    row_map, col_map = param_maps(x)
    return MeshTensor.from_numpy(x.fabric, weight, x.rect, row_map, col_map, x.dtype,
                                 name=x.fabric.fresh_name("rms_weight")), True


def run(x: MeshTensor, weight: np.ndarray | MeshTensor | None = None, *, eps: float,
        algorithm: str = "chain") -> MeshTensor:
    """``x * rsqrt(mean(x^2, -1) + eps) * weight`` over the last axis.

    Passes per PE: sum of squares (fmac) -> allreduce of one word per row -> ``s / N +
    eps`` (fmac) and rsqrt per row -> ``x * rstd`` -> ``* weight`` (when given).
    """
    check_dtype(KERNEL, x.dtype)
    if not eps >= 0:
        raise KernelShapeError(f"{KERNEL}: eps {eps} must be >= 0")
    layout = RowLayout.of(KERNEL, x.shape, x.rect.shape, x.row_map, x.col_map)
    w, own_w = _place(x, weight)
    fabric, rect = x.fabric, x.rect
    n = tile_elements(x)
    mask = pad_mask(x)
    values = not fabric.timing_only
    x32 = x.tiles.astype(np.float32) if values else None

    end = local_pass(fabric, rect, n, x.dtype, "fmac", x.ready, writes=0,
                     accumulate=accumulate_dtype(x.dtype))                 # sum of x * x
    sq = None
    if values:
        # padded elements hold zeros; masking keeps that an invariant of the layout, not
        # an assumption of this kernel
        xx = np.square(x32) if mask is None else np.where(mask, np.square(x32), np.float32(0))
        sq = xx.sum(-1, keepdims=True, dtype=np.float32)
    s = allreduce_stat(stat_tensor(x, layout, 1, sq, end), layout, algorithm)
    rows = tile_elements(s)
    end = local_pass(fabric, rect, rows, WORK, "fmac", s.ready)        # s * (1 / N) + eps
    end = local_pass(fabric, rect, rows, WORK, "rsqrt", end)

    ready = end if w is None else np.maximum(end, w.ready)
    end = local_pass(fabric, rect, n, x.dtype, "mul", ready)          # x * rstd
    if w is not None:
        end = local_pass(fabric, rect, n, x.dtype, "mul", end, reads=2)   # * weight
    tiles = None
    if values:
        ms = s.tiles * np.float32(1 / x.shape[-1]) + np.float32(eps)
        y = x32 * (np.float32(1) / np.sqrt(ms))
        if w is not None:
            y = y * aligned(w, len(x.tile_shape))
        if mask is not None:
            y = np.where(mask, y, np.float32(0))
        tiles = to_storage(y, x.dtype)
    out = x.like(tiles, end)
    s.free()
    if own_w and w is not None:
        w.free()
    return out


def cost(spec: WaferSpec | str | None, shape: Sequence[int], rect_shape: tuple[int, int], *,
         row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32", weight: bool = True,
         algorithm: str = "chain") -> float:
    """Closed form of `run`: the same passes, plus one allreduce of one word per row when
    the normalised axis is split over the mesh (none when each PE holds whole rows)."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    layout = RowLayout.of(KERNEL, shape, rect_shape, row_map, col_map)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    n = float(np.prod(tile))
    rows = n / tile[-1]
    total = float(op_cycles(spec, n, dtype, "fmac", writes=0, accumulate=accumulate_dtype(dtype)))
    total += allreduce_stat_cycles(spec, rows, layout, algorithm)
    total += float(op_cycles(spec, rows, WORK, "fmac") + op_cycles(spec, rows, WORK, "rsqrt"))
    total += float(op_cycles(spec, n, dtype, "mul"))
    if weight:
        total += float(op_cycles(spec, n, dtype, "mul", reads=2))
    return total


def reference(x: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    """NumPy oracle over the last axis, in fp32."""
    x32 = np.asarray(x, np.float32)
    ms = np.square(x32).mean(-1, keepdims=True, dtype=np.float32)
    y = x32 / np.sqrt(ms + np.float32(eps))
    return y if weight is None else y * np.asarray(weight, np.float32)


# ------------------------------------------------------------------ the graph rewrite ----
# transformers' ``LlamaRMSNorm`` (and Mistral's, Qwen2's ...) exports, per norm, as
#
#     pow(x, 2) -> mean.dim(., [-1], keepdim=True) -> add(., eps) -> rsqrt
#     mul(x, rsqrt) -> mul(weight, .)
#
# `fuse_rms_norm` replaces it by one ``waferscale.rms_norm(x, weight, eps)`` node. The
# match is structural and strict, like the loss's (`kernels.loss.fuse_cross_entropy`):
# every intermediate has exactly one user, the mean is over the last axis only, and ``eps``
# is a scalar constant. The weight multiply is absorbed only when its other operand is a
# 1-D constant of the normalised size and the product keeps the activation's shape and
# dtype; otherwise the node is the unweighted norm and the weight multiply stays a pointwise
# op. Anything else is left alone.

#: The target of the node `fuse_rms_norm` writes.
RMS_NORM = "waferscale.rms_norm"


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """What the replaced ops computed, op for op in ``x``'s dtype, on the host (a host
    fallback of the stage and eager references)."""
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else weight * y


def _scalar(g: Graph, x: Any) -> float | None:
    """A float scalar argument (`ir.const_value`, a bool is not one)."""
    v = const_value(g, x)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _sole(users: dict[str, list[str]], name: str, g: Graph, *targets: str) -> Node | None:
    """The one user of ``name`` if it is a call of one of ``targets`` (ATen overloads)."""
    node = sole_user(users, name, g)
    return node if node is not None and node.target in targets else None


def _weight(g: Graph, mul: Node, normed: str, hidden: int) -> str | None:
    """The weight constant of ``mul`` (``weight * normed`` in either order) when it is a
    1-D constant of ``hidden`` elements and the product has ``normed``'s shape and dtype."""
    if mul.kwargs or len(mul.args) != 2:
        return None
    a, b = (ref_name(v) for v in mul.args)
    other = b if a == normed else a if b == normed else None
    node = g.nodes.get(other or "")
    src = g.nodes[normed].meta
    if node is None or node.op != "const" or node.meta.get("shape") != [hidden]:
        return None
    if mul.meta.get("shape") != src.get("shape") or mul.meta.get("dtype") != src.get("dtype"):
        return None
    return node.name


def _match(g: Graph, pw: Node, users: dict[str, list[str]]) -> dict[str, Any] | None:
    """The replaced pattern starting at a ``pow(x, 2)``, or None."""
    x = ref_name(pw.args[0]) if pw.args else None
    shape = pw.meta.get("shape")
    dtype = pw.meta.get("dtype")
    if x is None or len(pw.args) != 2 or _scalar(g, pw.args[1]) != 2.0 or pw.kwargs \
            or not isinstance(shape, list) or not shape or dtype not in FLOAT_DTYPES \
            or g.nodes[x].meta.get("dtype") != dtype:
        return None
    rank = len(shape)
    mean = _sole(users, pw.name, g, "aten.mean.dim")
    if mean is None or mean.kwargs.get("dtype") is not None:
        return None
    dims = mean.args[1] if len(mean.args) > 1 else None
    keep = mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False)
    if not isinstance(dims, (list, tuple)) or len(dims) != 1 or dims[0] not in (-1, rank - 1) \
            or keep is not True:
        return None
    add = _sole(users, mean.name, g, "aten.add.Tensor", "aten.add.Scalar")
    if add is None or add.kwargs or len(add.args) != 2:
        return None
    a, b = add.args
    eps = _scalar(g, b) if ref_name(a) == mean.name else _scalar(g, a) \
        if ref_name(b) == mean.name else None
    if eps is None or not eps >= 0:
        return None
    rs = _sole(users, add.name, g, "aten.rsqrt.default")
    normed = _sole(users, rs.name, g, "aten.mul.Tensor") if rs else None
    if normed is None or normed.kwargs or len(normed.args) != 2 \
            or {ref_name(v) for v in normed.args} != {x, rs.name} \
            or normed.meta.get("shape") != shape or normed.meta.get("dtype") != dtype:
        return None
    final, weight = normed, None
    wmul = _sole(users, normed.name, g, "aten.mul.Tensor")
    if wmul is not None:
        weight = _weight(g, wmul, normed.name, shape[-1])
        if weight is not None:
            final = wmul
    return {"x": x, "weight": weight, "eps": eps, "final": final, "source": pw}


def fuse_rms_norm(g: Graph) -> int:
    """Replace each decomposed RMS norm by one ``RMS_NORM`` node; returns how many.

    The last node of the pattern (the weight multiply, or ``x * rstd`` when no weight is
    absorbed) is rewritten in place, so its users and the graph's outputs are unchanged;
    the ops it replaces are then dead and dropped. It keeps its shape and dtype (those of
    ``x``) and takes the source line of the ``pow``, where the norm's statistic is written.
    """
    found = 0
    users = g.users()
    pos = {name: i for i, name in enumerate(g.nodes)}
    for node in list(g.calls()):
        if node.target != "aten.pow.Tensor_Scalar":
            continue
        m = _match(g, node, users)
        if m is None:
            continue
        final, src = m["final"], m["source"]
        before = final.inputs
        rewrite_call(final, RMS_NORM, rms_norm,
                     (Ref(m["x"]), None if m["weight"] is None else Ref(m["weight"]), m["eps"]),
                     src)
        # the rewritten node reads other values now: move it between their users' lists,
        # kept in graph order as `Graph.users` makes them (recomputing them for every norm
        # took 4 s of an 80-layer model's compile)
        for name in before:
            users[name].remove(final.name)
        for name in final.inputs:
            readers = users[name]
            at = next((i for i, u in enumerate(readers)
                       if u != "<output>" and pos[u] > pos[final.name]), None)
            if at is None:
                at = len(readers) - readers.count("<output>")
            readers.insert(at, final.name)
        found += 1
    if found:
        eliminate_dead(g)
    return found


# ------------------------------------------------------------------ the stage family ------
@dataclass(frozen=True)
class RmsNormParams(StageParams):
    """An RMS norm over the last axis of a [tokens, hidden] activation."""

    tokens: int
    hidden: int
    weight: bool
    eps: float

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.hidden < 1 or not self.eps >= 0:
            raise KernelShapeError(f"rms norm of [{self.tokens}, {self.hidden}] with eps "
                                   f"{self.eps}: sizes must be >= 1 and eps >= 0")


def stage_sram_bytes(p: RmsNormParams, dtype: str, r: int, c: int) -> int:
    """SRAM per PE of an RMS-norm stage on r x c PEs: input and output tiles, the weight's
    slice, and per row the fp32 partial sum of squares and its allreduced total."""
    eb = BYTES[dtype]
    tr, tc = -(-p.tokens // r), -(-p.hidden // c)
    return 2 * tr * tc * eb + (tc * eb if p.weight else 0) + 8 * tr


class RmsNorm(RowFamily):
    """The node `fuse_rms_norm` writes (``RMS_NORM``): one fp32 statistic per row, one
    chain allreduce along rows. Not (yet) fused as a GEMM prologue: it is a stage of its
    own on its own rectangle."""

    kind = "rms_norm"
    targets = frozenset({RMS_NORM})

    def match(self, g: Graph) -> int:
        return fuse_rms_norm(g)

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[RmsNormParams, float]:
        node = nodes[0]
        t, h = rows_cols(shape_of(g, node.args[0]))
        p = RmsNormParams(t, h, weight=node.args[1] is not None, eps=float(node.args[2]))
        # per element: square-accumulate (2), scale (1), weight (1)
        return p, 4.0 * t * h

    def extent(self, p: RmsNormParams) -> tuple[int, int]:
        return p.tokens, p.hidden

    def sram_bytes(self, p: RmsNormParams, dtype: str, r: int, c: int) -> int:
        return stage_sram_bytes(p, dtype, r, c)

    def cycles(self, spec: WaferSpec, p: RmsNormParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return cost(spec, [p.tokens, p.hidden], rect, dtype=dtype, weight=p.weight)

    def algorithm(self, p: RmsNormParams) -> str:
        return "sum of squares, chain allreduce"

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[StageParams, Sizing]:
        """The row layout's rectangle (`RowFamily.size`), narrowed to the column count
        `cost` says is fastest.

        The row layout spreads the hidden axis over about sqrt(area) columns; but each
        column adds a chain step (~6 cycles) to the allreduce while saving only its share
        of three short passes, so a norm over a small hidden axis is faster on fewer
        columns (tiny Llama, [16, 64] fp32: 459 cycles on 64 columns, 84 on 4). Among the
        halvings of the column count that fit the SRAM, take the fastest (the narrowest on
        a tie).
        """
        p, sz = super().size(spec, st, area, side_cap, bounds)
        r, c = sz.rect
        fits = [(r, cc) for cc in sorted({max(1, c >> i) for i in range(12)})
                if self.sram_bytes(p, st.dtype, r, cc) <= spec.sram_bytes]
        if not fits:
            return p, sz
        rect = min(fits, key=lambda rc: (self.cycles(spec, p, st.dtype, rc), rc[1]))
        return p, Sizing(rect, self.cycles(spec, p, st.dtype, rect),
                         self.sram_bytes(p, st.dtype, *rect), self.algorithm(p))

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        x, w, eps = ctx.value(node.args)
        fab = ctx.fabric(st)
        h = x.shape[-1]
        xm = ctx.mesh(fab, x, (x.numel() // h, h), st.dtype)
        if ctx.timing_only:      # the weight's values do not change the clocks
            run(xm, None if w is None else np.zeros(h, np.float32), eps=float(eps))
            return done(fab)
        out = run(xm, None if w is None else to_np(w), eps=float(eps))
        ctx.env[node.name] = to_torch(out.to_numpy().reshape(x.shape), x.dtype)
        return done(fab)


FAMILY = RmsNorm()

__all__ = ["FAMILY", "KERNEL", "RMS_NORM", "RmsNorm", "RmsNormParams", "cost", "fuse_rms_norm",
           "reference", "rms_norm", "run", "stage_sram_bytes"]
