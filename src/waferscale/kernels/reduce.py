"""Sums over one axis of a [rows, cols] tensor on the fabric: the reductions of a backward pass.

A training step's backward graph sums over tokens (bias and layer-norm weight gradients:
[tokens, hidden] -> [hidden]) and over the hidden axis (layer-norm and softmax backward:
[tokens, hidden] -> [tokens, 1]). Mapping: rows over the rectangle's PE rows, columns over
its PE columns (what the producing kernel leaves).

- ``axis=1`` (over columns): each PE adds its tile's rows into one partial per row, then
  the partials are summed along each PE row and the total is multicast back (the softmax's
  row-sum allreduce), so every PE of a row holds the sum its consumer reads.
- ``axis=0`` (over rows): each PE adds its tile's rows into one partial row, then a reduce
  down each PE column leaves the sums on the rectangle's first PE row.

Sums are kept in fp32 and stored in the input's dtype. A mean (``aten.mean``) is the same
sum divided by the count in fp32 before the one rounding (one more pass per result, as
PyTorch divides the fp32 accumulator). A sum or mean over other dims than leading or
trailing ones is the ``axis=1`` kernel on the input gathered into [kept, reduced] rows,
which costs a relayout first (`elementwise.relayout_cycles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from waferscale.errors import KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import reduce_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node
from waferscale.kernels.elementwise import (
    WORK,
    RowLayout,
    allreduce_stat,
    allreduce_stat_cycles,
    check_dtype,
    local_pass,
    moved_rows,
    op_cycles,
    pad_mask,
    relayout_cycles,
    stat_tensor,
    tile_shape,
)
from waferscale.kernels.family import (
    ExecContext,
    RowFamily,
    Stage,
    StageParams,
    StageRun,
    done,
    figures_key,
    remember,
    remembered,
    to_np,
    to_torch,
)

KERNEL = "reduce_sum"


def _check(shape: tuple[int, ...], axis: int, row_map: object, col_map: object) -> None:
    if len(shape) != 2 or axis not in (0, 1):
        raise KernelShapeError(f"{KERNEL}: a [rows, cols] tensor and axis 0 or 1, got shape "
                               f"{tuple(shape)} and axis {axis!r}")
    if (row_map, col_map) != (0, 1):
        raise KernelShapeError(f"{KERNEL}: rows must map to PE rows and columns to PE "
                               f"columns, got ({row_map!r}, {col_map!r}); relayout first")


def run(x: MeshTensor, axis: int, *, algorithm: str = "chain", count: int = 1) -> MeshTensor:
    """``x.sum(axis, keepdim=True)``: [rows, 1] on every PE column, or [1, cols] on the
    rectangle's first PE row; divided by ``count`` in fp32 when it is not 1 (a mean)."""
    check_dtype(KERNEL, x.dtype)
    _check(x.shape, axis, x.row_map, x.col_map)
    fabric, rect = x.fabric, x.rect
    tr, tc = x.tile_shape
    mask = pad_mask(x)
    tiles = None
    if x.tiles is not None:
        t = x.tiles.astype(np.float32)
        tiles = np.where(mask, t, np.float32(0)) if mask is not None else t
    end = local_pass(fabric, rect, float(tr * tc), WORK, "add", x.ready, writes=0)
    if axis == 1:
        layout = RowLayout.of(KERNEL, x.shape, rect.shape, 0, 1)
        part = None if tiles is None else tiles.sum(-1, keepdims=True)
        summed = allreduce_stat(stat_tensor(x, layout, 1, part, end), layout, algorithm)
        return _result(summed, (x.shape[0], 1), x.dtype, "row_sum", count, float(tr))
    part = None if tiles is None else tiles.sum(-2, keepdims=True)
    # padded to whole tiles: every PE sends a full buffer (SPMD), as `stat_tensor` does
    partial = MeshTensor(fabric, rect, (1, tc * rect.cols), WORK, "partial", 1, part, end,
                         fabric.fresh_name("col_partial"))
    summed = mv.reduce(partial, "col", algorithm, root="first")
    partial.free()
    return _result(summed, (1, x.shape[1]), x.dtype, "col_sum", count, float(tc))


def _result(summed: MeshTensor, shape: tuple[int, int], dtype: str, name: str, count: int,
            per_pe: float) -> MeshTensor:
    """The sums (over ``count`` when not 1: one division pass over the ``per_pe`` results
    a PE holds) in ``dtype`` under the real (unpadded) shape, same tiles and PEs."""
    ready, tiles = summed.ready, summed.tiles
    if count != 1:
        ready = local_pass(summed.fabric, summed.rect, per_pe, WORK, "div", ready)
        tiles = None if tiles is None else tiles / np.float32(count)
    tiles = None if tiles is None else to_storage(tiles, dtype)
    out = MeshTensor(summed.fabric, summed.rect, shape, dtype, summed.row_map,
                     summed.col_map, tiles, ready, summed.fabric.fresh_name(name))
    summed.free()
    return out


def cost(spec: WaferSpec | str | None, shape: tuple[int, int], rect_shape: tuple[int, int],
         axis: int, *, dtype: str = "fp32", algorithm: str = "chain", count: int = 1) -> float:
    """Closed form of `run`: the local pass plus the fabric reduction (and the division
    of a mean)."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    _check(tuple(shape), axis, 0, 1)
    tr, tc = tile_shape(tuple(shape), rect_shape, 0, 1)
    local = float(op_cycles(spec, float(tr * tc), WORK, "add", writes=0))
    div = float(op_cycles(spec, float(tr if axis == 1 else tc), WORK, "div")) \
        if count != 1 else 0.0
    if axis == 1:
        layout = RowLayout.of(KERNEL, tuple(shape), rect_shape, 0, 1)
        return local + allreduce_stat_cycles(spec, float(tr), layout, algorithm) + div
    return local + reduce_cycles(spec, float(tc), rect_shape[0], algorithm) + div


def values(x: np.ndarray, axis: int, rect_shape: tuple[int, int], dtype: str = "fp32",
           count: int = 1) -> np.ndarray:
    """What ``run(...).to_numpy()`` returns for ``x`` ([rows, cols]) on a rectangle of
    ``rect_shape``, to the bit, without a fabric: the pipelined runtime's values once a
    stage's figures are known (`family.remembered`).

    The fp32 sums are NumPy's in the order `run`'s are: NumPy sums a contiguous axis
    pairwise and any other one row after row, so the order follows the memory layout.
    `run` sums each zero-padded tile ([R, C, tr, tc]) over its rows, row after row (or
    pairwise over tr when tc = 1, the only axis left), and over its columns pairwise; then
    the per-PE partials along each line, root first (`movement.reduce`). Here the tile
    sums run on the padded matrix as it is where the order is the same (a reduction of
    [R, tr, C*tc] over tr, of [R*tr, C, tc] over tc), without `run`'s copy into tiles, and
    the line sums on partials laid out as `run`'s are. `tests/test_kernels_reduce.py`
    compares the bits over shapes, rectangles, dtypes and special values.
    """
    check_dtype(KERNEL, dtype)
    _check(x.shape, axis, 0, 1)
    (rows, cols), (r, c) = x.shape, rect_shape
    tr, tc = tile_shape(x.shape, rect_shape, 0, 1)
    stored = to_storage(x, dtype)
    padded = np.zeros((r * tr, c * tc), dtype=np.float32)
    padded[:rows, :cols] = stored
    if axis == 1:
        part = padded.reshape(r * tr, c, tc).sum(-1)                  # [R*tr, C]
        part = np.ascontiguousarray(part.reshape(r, tr, c).transpose(0, 2, 1))[..., None]
        if c > 1:                                                     # [R, C, tr, 1]
            to_line, _ = mv.local_view("row", True)
            part = to_line(part).sum(axis=1, keepdims=True)           # [R, 1, tr, 1]
        sums = part.reshape(r * tr, 1)[:rows]
    else:
        if tc > 1:
            part = padded.reshape(r, tr, c * tc).sum(1)               # [R, C*tc]
        else:
            part = np.ascontiguousarray(padded.reshape(r, tr, c).transpose(0, 2, 1)).sum(-1)
        to_line, _ = mv.local_view("col", True)
        sums = to_line(part.reshape(r, c, 1, tc)).sum(axis=1, keepdims=True)
        sums = sums.reshape(1, c * tc)[:, :cols]
    if count != 1:
        sums = sums / np.float32(count)
    return np.ascontiguousarray(to_storage(sums, dtype), dtype=np.float32)


def reference(x: np.ndarray, axis: int, count: int = 1) -> np.ndarray:
    """NumPy oracle (fp32 sum, divided by ``count`` in fp32)."""
    s = x.astype(np.float32).sum(axis=axis, keepdims=True, dtype=np.float32)
    return s if count == 1 else s / np.float32(count)


__all__ = ["KERNEL", "cost", "reference", "run", "values"]


# ------------------------------------------------------------------ the stage family ------
@dataclass(frozen=True)
class ReduceParams(StageParams):
    """A sum over axis ``axis`` of the input seen as [rows, cols] (`reduce_layout`);
    ``count`` the divisor of a mean (1 for a sum); ``moved`` the reduced dims when they are
    neither leading nor trailing (the input is gathered into [kept, reduced] rows)."""

    rows: int
    cols: int
    axis: int
    count: int = 1
    moved: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1 or self.axis not in (0, 1) or self.count < 1:
            raise KernelShapeError(f"reduce of [{self.rows}, {self.cols}] over axis "
                                   f"{self.axis} (count {self.count}): sizes and the count "
                                   f"must be >= 1 and the axis 0 or 1")


def _picked(node: Node, g: Graph) -> list[int] | None:
    """The reduced dims of a sum or mean, sorted (every dim when none are given); None for
    a ``dtype`` argument, a 0-d input or dims that are not a list."""
    shape = list(g.nodes[node.inputs[0]].meta.get("shape") or [])
    rank = len(shape)
    dims = node.args[1] if len(node.args) > 1 else None
    if rank == 0 or node.kwargs.get("dtype") is not None or \
            (dims is not None and not isinstance(dims, (list, tuple))):
        return None
    return sorted({d % rank for d in dims}) if dims else list(range(rank))


def reduce_layout(node: Node, g: Graph) -> tuple[int, int, int] | None:
    """``(rows, cols, axis)`` of a sum or mean seen as a sum over axis 0 or 1 of the input
    flattened to [rows, cols] (the kernel's layout): leading dims are axis 0, trailing
    ones axis 1, any other set axis 1 of the input gathered into [kept, reduced] rows
    (`ReduceParams.moved`). None for a ``dtype`` argument or a 0-d input."""
    picked = _picked(node, g)
    if picked is None:
        return None
    shape = list(g.nodes[node.inputs[0]].meta["shape"])
    k = len(picked)
    reduced = math.prod(shape[d] for d in picked)
    if picked == list(range(k)):
        return reduced, math.prod(shape) // reduced, 0
    return math.prod(shape) // reduced, reduced, 1


def stage_sram_bytes(p: ReduceParams, dtype: str, r: int, c: int) -> int:
    """SRAM per PE on r x c PEs: the input tile and fp32 partial sums per row and column."""
    tr, tc = -(-p.rows // r), -(-p.cols // c)
    return tr * tc * BYTES[dtype] + 4 * (tr + tc)


class Reduce(RowFamily):
    """``aten.sum`` and ``aten.mean`` over any dims (bias gradients, pooled features, a
    standalone mean): the sum kernel, a division for a mean, a relayout for middle dims."""

    kind = "reduce"
    targets = frozenset({"sum", "mean"})

    def rejects(self, node: Node, g: Graph) -> str | None:
        return super().rejects(node, g) or (
            None if reduce_layout(node, g) is not None
            else "a sum or mean with a dtype argument, or of a 0-d value")

    def describe(self, g: Graph, nodes: list[Node], dtype: str) -> tuple[ReduceParams, float]:
        node = nodes[0]
        layout = reduce_layout(node, g)
        picked = _picked(node, g)
        assert layout is not None and picked is not None, "lowering checked the layout"
        rows, cols, axis = layout
        rank = len(g.nodes[node.inputs[0]].meta["shape"])
        trailing = picked == list(range(rank - len(picked), rank))
        return ReduceParams(rows, cols, axis,
                            count=(rows if axis == 0 else cols) if node.short == "mean" else 1,
                            moved=None if axis == 0 or trailing else tuple(picked)), \
            float(rows * cols)

    def extent(self, p: ReduceParams) -> tuple[int, int]:
        return p.rows, p.cols

    def sram_bytes(self, p: ReduceParams, dtype: str, r: int, c: int) -> int:
        return stage_sram_bytes(p, dtype, r, c)

    def cycles(self, spec: WaferSpec, p: ReduceParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return cost(spec, (p.rows, p.cols), rect, p.axis, dtype=dtype, count=p.count) \
            + self._move(spec, p, rect)

    @staticmethod
    def _move(spec: WaferSpec, p: ReduceParams, rect: tuple[int, int]) -> float:
        return 0.0 if p.moved is None else relayout_cycles(spec, p.rows * p.cols, rect)

    def algorithm(self, p: ReduceParams) -> str:
        what = "mean" if p.count != 1 else "sum"
        over = f"dims {list(p.moved)} (relayout first)" if p.moved is not None \
            else "rows" if p.axis == 0 else "columns"
        return f"{what} over {over}, chain reduce"

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        """The fabric run the first time a stage with these figures runs; after that the
        figures it measured (no clock depends on a value: every PE sums its whole tile)
        and the values from `values`, the same bits without the fabric's bookkeeping (a
        backward pass has one per bias and layer-norm weight, every training step)."""
        p: ReduceParams = st.params  # type: ignore[assignment]
        x = ctx.value(node.args[0])
        rows = x if p.moved is None or ctx.timing_only else moved_rows(x, p.moved)
        key = figures_key(ctx, st)
        measured = remembered(key)
        if measured is not None:
            if not ctx.timing_only:
                sums = values(to_np(rows).reshape(p.rows, p.cols), p.axis, st.rect,
                              st.dtype, p.count)
                ctx.env[node.name] = to_torch(sums.reshape(node.meta["shape"]), x.dtype)
            return measured
        fab = ctx.fabric(st)
        out = run(ctx.mesh(fab, rows, (p.rows, p.cols), st.dtype), p.axis, count=p.count)
        if not ctx.timing_only:
            ctx.env[node.name] = to_torch(out.to_numpy().reshape(node.meta["shape"]), x.dtype)
        return remember(key, done(fab, self._move(ctx.spec, p, st.rect)))


FAMILY = Reduce()
