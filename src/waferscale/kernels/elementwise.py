"""Pointwise kernels (GELU, residual add, ...), softmax, and the per-element cost table.

Every transformer kernel of this package (norm, softmax, rotary, attention, embedding,
loss) runs its local work through `local_pass`, which charges the compute engine
`op_cycles` and nothing else, so the closed-form ``cost()`` functions and the simulated
``run()`` functions read one table, `OP_COSTS`.

Transcendental functions (exp, log, erf, tanh, reciprocal, rsqrt) have no published cycle
count for the wafer's compute engine. We ASSUME each is a short polynomial / Newton
evaluation that costs a fixed number of FMAC-width vector passes per element (see
`OP_COSTS` and docs/kernels-transformer.md). Change the table to explore other figures.

Layouts: a kernel reduces over the *last* tensor axis. If that axis is blocked over the
rectangle's columns (or rows), the partial results are combined with
`movement.allreduce` along that mesh axis; otherwise the reduction is local to each PE.
Values are computed in fp32 and rounded to the storage dtype once per stored tensor (as
PyTorch's CPU kernels do for fp16 / bf16).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from waferscale.errors import KernelDtypeError, KernelError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, STORAGE, to_storage
from waferscale.fabric.tensor import AxisMap, valid_extent
from waferscale.fabric.timing import allreduce_cycles, transfer_cycles, vector_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node
from waferscale.kernels.family import (
    ExecContext,
    RowFamily,
    Stage,
    StageParams,
    StageRun,
    done,
    float_out,
    shape_of,
    to_torch,
)


# ------------------------------------------------------------------ the cost table -------
@dataclass(frozen=True)
class OpCost:
    """Cost of one element of an op: ``passes`` vector instructions of SIMD class ``simd``.

    ``flops`` is what reports count per element (the work a GPU would also do), not the
    instructions issued.
    """

    simd: str
    passes: float
    flops: float


#: Per-element cost of every local op. ASSUMPTION for the transcendental rows (no public
#: figure exists): each is a polynomial or Newton evaluation of ``passes`` FMAC-width
#: instructions, e.g. exp = range reduction (1) + degree-4 Horner (4) + exponent scale (1).
OP_COSTS: dict[str, OpCost] = {
    "copy": OpCost("add", 1, 0),
    "select": OpCost("add", 1, 0),       # masked move (causal mask, target pick)
    "add": OpCost("add", 1, 1),
    "sub": OpCost("add", 1, 1),
    "max": OpCost("add", 1, 1),          # compare-and-keep runs on the adder
    "relu": OpCost("add", 1, 1),
    "mul": OpCost("mul", 1, 1),
    "neg": OpCost("mul", 1, 1),
    "fmac": OpCost("fmac", 1, 2),
    "square": OpCost("mul", 1, 1),
    # -- transcendental: ASSUMED FMAC-width passes per element -----------------------------
    "exp": OpCost("fmac", 6, 1),         # range reduction, degree-4 polynomial, 2^n scale
    "log": OpCost("fmac", 8, 1),         # exponent split, degree-6 polynomial
    "reciprocal": OpCost("fmac", 5, 1),  # bit-trick seed + 2 Newton steps
    "rsqrt": OpCost("fmac", 7, 1),       # bit-trick seed + 2 Newton steps of 3
    "div": OpCost("fmac", 6, 1),         # reciprocal + multiply
    "tanh": OpCost("fmac", 10, 1),       # rational minimax approximation
    "sin": OpCost("fmac", 8, 1),         # reduction by pi/2 (2) + degree-11 odd poly (6)
    "cos": OpCost("fmac", 8, 1),         # the same on the shifted argument
    "erf": OpCost("fmac", 14, 1),        # rational approximation on a clipped range
    "sigmoid": OpCost("fmac", 12, 1),    # exp + reciprocal + add
    "silu": OpCost("fmac", 13, 1),       # sigmoid + multiply
    "gelu": OpCost("fmac", 17, 8),       # 0.5 x (1 + erf(x / sqrt 2)): erf + 3
    "gelu_fast": OpCost("fmac", 15, 8),  # 0.5 x (1 + tanh(c x (1 + a x^2))): tanh + 5
}

#: Dtype statistics, scores and accumulators are kept in (PyTorch does the same on CPU).
WORK = "fp32"


def op_cycles(spec: WaferSpec, elements: np.ndarray | float, dtype: str, op: str, *,
              reads: int = 1, writes: int = 1, accumulate: str | None = None) -> np.ndarray:
    """CE cycles of ``op`` over ``elements`` per PE: ``passes`` instructions of its class.

    Memory operands are read and written once per element (the intermediate passes stay in
    registers), so the SRAM ports bound the rate of the whole op, not of each pass.
    """
    if op not in OP_COSTS:
        raise KernelError(f"op {op!r} has no cost entry; known ops: {', '.join(OP_COSTS)}")
    c = OP_COSTS[op]
    if isinstance(elements, np.ndarray):
        elements = elements.astype(float, copy=False) * c.passes
    else:
        elements = float(elements) * c.passes
    return vector_cycles(spec, elements, dtype, c.simd, reads=reads / c.passes,
                         writes=writes / c.passes, accumulate=accumulate,
                         element_bytes=BYTES[dtype])


def tile_elements(t: MeshTensor) -> float:
    """Elements of one (padded) tile: what every PE of an SPMD kernel processes.

    All PEs of a rectangle run the same program over the same tile shape, so edge PEs whose
    blocks are short still sweep the padded tile; the cost of every PE is the same, and the
    closed forms need no per-PE terms.
    """
    return float(np.prod(t.tile_shape)) if t.tile_shape else 1.0


def local_pass(fabric: Fabric, rect: Rect, elements: np.ndarray | float, dtype: str, op: str,
               ready: np.ndarray | float, *, reads: int = 1, writes: int = 1,
               accumulate: str | None = None) -> np.ndarray:
    """Charge ``op`` over ``elements`` (per PE) to the CEs of ``rect``; returns end clocks."""
    cycles = op_cycles(fabric.spec, elements, dtype, op, reads=reads, writes=writes,
                       accumulate=accumulate)
    elements = np.asarray(elements, dtype=float)
    return fabric.execute(rect, cycles, ready, flops=elements * OP_COSTS[op].flops,
                          mem_bytes=elements * (reads + writes) * BYTES[dtype])


# ------------------------------------------------------------------- value functions -----
def _erf(x: np.ndarray) -> np.ndarray:
    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x))).numpy().reshape(
        np.shape(x))


_SQRT_2_OVER_PI = 0.7978845608028654


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(1 / np.sqrt(2.0))))


def _gelu_fast(x: np.ndarray) -> np.ndarray:
    inner = np.float32(_SQRT_2_OVER_PI) * x * (1.0 + np.float32(0.044715) * x * x)
    return 0.5 * x * (1.0 + np.tanh(inner))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


#: Value functions of the pointwise kernels: (arity, function on fp32 arrays).
POINTWISE: dict[str, tuple[int, Callable[..., np.ndarray]]] = {
    "add": (2, np.add),
    "sub": (2, np.subtract),
    "mul": (2, np.multiply),
    "max": (2, np.maximum),
    "copy": (1, lambda x: x.copy()),
    "neg": (1, np.negative),
    "relu": (1, lambda x: np.maximum(x, np.float32(0))),
    "square": (1, np.square),
    "exp": (1, np.exp),
    "log": (1, np.log),
    "reciprocal": (1, np.reciprocal),
    "rsqrt": (1, lambda x: 1.0 / np.sqrt(x)),
    "tanh": (1, np.tanh),
    "sin": (1, np.sin),
    "cos": (1, np.cos),
    "erf": (1, _erf),
    "sigmoid": (1, _sigmoid),
    "silu": (1, lambda x: x * _sigmoid(x)),
    "gelu": (1, _gelu),
    "gelu_fast": (1, _gelu_fast),
}


# ------------------------------------------------------------------------- checks ---------
def check_dtype(kernel: str, dtype: str) -> str:
    """A storage dtype the compute engine has SIMD widths for, else a KernelError."""
    if dtype not in STORAGE:
        raise KernelDtypeError(f"{kernel}: dtype {dtype!r} is not supported by the compute engine; "
                          f"use one of {', '.join(STORAGE)}")
    return dtype


def tile_shape(shape: Sequence[int], rect_shape: tuple[int, int], row_map: AxisMap,
               col_map: AxisMap) -> tuple[int, ...]:
    """The tile one PE holds, computed like `MeshTensor` does (ceil blocks)."""
    tile = list(shape)
    for m, parts in ((row_map, rect_shape[0]), (col_map, rect_shape[1])):
        if isinstance(m, int) and not isinstance(m, bool):
            tile[m] = -(-shape[m] // parts)
    return tuple(tile)


def pad_mask(t: MeshTensor) -> np.ndarray | None:
    """Boolean mask (broadcastable to ``t.tiles``) of real elements; None if nothing is padded.

    Edge PEs hold zero-padded tiles when a blocked axis does not divide; kernels whose
    output at a zero input is not zero (exp, softmax, ...) re-zero the padding with it.
    """
    nd = len(t.tile_shape)
    mask = None
    for m, mesh_axis in ((t.row_map, 0), (t.col_map, 1)):
        if not isinstance(m, int) or isinstance(m, bool):
            continue
        parts = t.rect.shape[mesh_axis]
        if t.shape[m] == parts * t.tile_shape[m]:
            continue
        ext = valid_extent(t.shape[m], parts)
        ok = np.arange(t.tile_shape[m])[None, :] < ext[:, None]      # [parts, tile]
        shape = [1] * (2 + nd)
        shape[mesh_axis] = parts
        shape[2 + m] = t.tile_shape[m]
        ok = ok.reshape(shape)
        mask = ok if mask is None else mask & ok
    return mask


def aligned(t: MeshTensor, nd: int) -> np.ndarray:
    """fp32 tiles of ``t`` with axes inserted after the mesh axes so that a lower-rank
    operand (a [N] bias) broadcasts against [rows, cols, ..., N] tiles."""
    tiles = t.tiles.astype(np.float32, copy=False)
    extra = nd - len(t.tile_shape)
    return tiles.reshape(*tiles.shape[:2], *(1,) * extra, *t.tile_shape) if extra else tiles


def apply(fn: Callable[..., np.ndarray], inputs: Sequence[MeshTensor], dtype: str,
          mask: np.ndarray | None = None) -> np.ndarray | None:
    """``fn`` on the fp32 tiles of ``inputs``, rounded to ``dtype``; None when timing-only."""
    if inputs[0].fabric.timing_only:
        return None
    nd = len(inputs[0].tile_shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = fn(*[aligned(t, nd) for t in inputs])
    out = np.asarray(out, dtype=np.float32)
    if mask is not None:
        out = np.where(mask, out, np.float32(0))
    return to_storage(out, dtype)


# -------------------------------------------------------------- pointwise kernels ---------
def run(op: str, *inputs: MeshTensor, dtype: str | None = None) -> MeshTensor:
    """A pointwise kernel (``op`` in `POINTWISE`) over same-layout tensors, one local pass.

    Second operands may be lower-rank tensors that broadcast against the first one's tiles
    (a bias [N] replicated over rows and blocked like the first tensor's last axis).
    """
    if op not in POINTWISE:
        raise KernelError(f"elementwise: unknown op {op!r}; use one of {', '.join(POINTWISE)}")
    arity, fn = POINTWISE[op]
    if len(inputs) != arity:
        raise KernelError(f"elementwise {op}: takes {arity} tensor(s), got {len(inputs)}")
    first = inputs[0]
    dtype = check_dtype(f"elementwise {op}", dtype or first.dtype)
    _check_broadcast(f"elementwise {op}", inputs)
    ready = np.maximum.reduce([t.ready for t in inputs]) if arity > 1 else first.ready
    end = local_pass(first.fabric, first.rect, tile_elements(first), dtype, op, ready,
                     reads=arity)
    tiles = apply(fn, inputs, dtype, pad_mask(first))
    return first.like(tiles, end, dtype=dtype)


def cost(spec: WaferSpec | str | None, op: str, shape: Sequence[int],
         rect_shape: tuple[int, int], *, row_map: AxisMap = 0, col_map: AxisMap = 1,
         dtype: str = "fp32") -> float:
    """Cycles of `run` for a ``shape`` tensor on a ``rect_shape`` rectangle (closed form)."""
    spec = get_spec(spec)
    if op not in POINTWISE:
        raise KernelError(f"elementwise: unknown op {op!r}; use one of {', '.join(POINTWISE)}")
    n = float(np.prod(tile_shape(shape, rect_shape, row_map, col_map)))
    return float(op_cycles(spec, n, dtype, op, reads=POINTWISE[op][0]))


def gelu(x: MeshTensor, approximate: str = "none") -> MeshTensor:
    """GELU: exact (erf) with ``approximate='none'``, the tanh form ("gelu_fast") with 'tanh'."""
    return run(_gelu_op(approximate), x)


def gelu_cost(spec: WaferSpec | str | None, shape: Sequence[int], rect_shape: tuple[int, int],
              approximate: str = "none", **layout: object) -> float:
    return cost(spec, _gelu_op(approximate), shape, rect_shape, **layout)  # type: ignore[arg-type]


def _gelu_op(approximate: str) -> str:
    if approximate not in ("none", "tanh"):
        raise KernelError(f"gelu: approximate={approximate!r}; use 'none' (erf) or 'tanh'")
    return "gelu" if approximate == "none" else "gelu_fast"


def residual_add(x: MeshTensor, residual: MeshTensor) -> MeshTensor:
    """``x + residual`` for two tensors of the same shape and layout."""
    if (x.shape, x.rect, x.row_map, x.col_map) != (residual.shape, residual.rect,
                                                    residual.row_map, residual.col_map):
        raise KernelShapeError(f"residual_add: {x.shape} on {x.rect} maps ({x.row_map!r}, "
                          f"{x.col_map!r}) and {residual.shape} on {residual.rect} maps "
                          f"({residual.row_map!r}, {residual.col_map!r}) must match")
    return run("add", x, residual)


def _check_broadcast(kernel: str, inputs: Sequence[MeshTensor]) -> None:
    first = inputs[0]
    for t in inputs[1:]:
        if t.rect != first.rect:
            raise KernelShapeError(f"{kernel}: {t.name!r} lies on {t.rect} but {first.name!r} on "
                              f"{first.rect}; place operands on the same rectangle")
        if t.shape == first.shape and (t.row_map, t.col_map) == (first.row_map, first.col_map):
            continue
        try:
            np.broadcast_shapes(t.tile_shape, first.tile_shape)
            ok = np.broadcast_shapes(t.shape, first.shape) == first.shape
        except ValueError:
            ok = False
        if not ok:
            raise KernelShapeError(f"{kernel}: operand {t.name!r} of shape {t.shape} (tile "
                              f"{t.tile_shape}) does not broadcast to {first.shape} (tile "
                              f"{first.tile_shape})")


# ------------------------------------------------------- reductions over the last axis -----
@dataclass(frozen=True)
class RowLayout:
    """Where the last axis of a tensor lives: which mesh axis splits it, into how many parts.

    ``mesh`` is the `movement` axis name the partial results are combined along ('row'
    when the last axis is blocked over the columns, 'col' when over the rows, None when
    each PE holds whole rows and the reduction is local).
    """

    mesh: str | None
    parts: int
    stat_row_map: AxisMap
    stat_col_map: AxisMap

    @classmethod
    def of(cls, kernel: str, shape: Sequence[int], rect_shape: tuple[int, int],
           row_map: AxisMap, col_map: AxisMap) -> RowLayout:
        last = len(shape) - 1
        if last < 0:
            raise KernelShapeError(f"{kernel}: needs a tensor with at least one axis")
        if "partial" in (row_map, col_map):
            raise KernelShapeError(f"{kernel}: input holds partial sums; reduce it first")
        # a last axis "split" over one PE is whole on it: nothing to combine
        if col_map == last and rect_shape[1] > 1:
            return cls("row", rect_shape[1], row_map, "partial")
        if row_map == last and rect_shape[0] > 1:
            return cls("col", rect_shape[0], "partial", col_map)
        return cls(None, 1, row_map, col_map)


def stat_tensor(x: MeshTensor, layout: RowLayout, width: int, tiles: np.ndarray | None,
                ready: np.ndarray) -> MeshTensor:
    """A per-row statistic of ``x`` ([..., width] fp32), partial along the split mesh axis.

    Its blocked axes are padded to whole tiles, so every PE sends a full buffer in the
    collectives (SPMD: the same program and message sizes on every PE).
    """
    shape = list(x.shape[:-1])
    for m, parts in ((x.row_map, x.rect.rows), (x.col_map, x.rect.cols)):
        if isinstance(m, int) and m < len(shape):
            shape[m] = x.tile_shape[m] * parts
    return MeshTensor(x.fabric, x.rect, (*shape, width), WORK, layout.stat_row_map,
                      layout.stat_col_map, tiles, ready, x.fabric.fresh_name("stat"))


def allreduce_stat(stat: MeshTensor, layout: RowLayout, algorithm: str) -> MeshTensor:
    """Sum a partial statistic along the split mesh axis; every PE gets the total."""
    if layout.mesh is None:
        return stat
    # movement.allreduce = reduce to the first PE + multicast back; spelled out here so the
    # root's reduce buffer is released as soon as the broadcast has read it.
    summed = mv.reduce(stat, layout.mesh, algorithm, root="first")
    stat.free()
    out = mv.multicast(summed, stat.rect, layout.mesh)
    summed.free()
    return out


def allreduce_stat_cycles(spec: WaferSpec, wavelets: float, layout: RowLayout,
                          algorithm: str) -> float:
    if layout.mesh is None:
        return 0.0
    return allreduce_cycles(spec, wavelets, layout.parts, algorithm)


def last_axis_mask(x: MeshTensor) -> np.ndarray | None:
    """`pad_mask` restricted to the last axis (the axis reductions run over)."""
    mask = pad_mask(x)
    if mask is None:
        return None
    return np.broadcast_to(mask, (*x.rect.shape, *x.tile_shape)).any(
        axis=tuple(range(2, 2 + len(x.tile_shape) - 1)), keepdims=True)


def row_max(x: MeshTensor, layout: RowLayout, algorithm: str, ready: np.ndarray
            ) -> MeshTensor:
    """Max over the last axis on every PE, even when that axis is split over the mesh.

    The fabric's collectives only add, so the split case is an all-gather by addition: each
    PE writes its local max into its own slot of a zero vector of ``parts`` slots, a sum
    allreduce gives every PE all the maxima (adding zeros is exact), and a local max over
    the slots finishes. Returns the [..., 1] row max, replicated along the split axis.
    """
    fabric = x.fabric
    end = local_pass(fabric, x.rect, tile_elements(x), WORK, "max", ready, writes=0)
    if layout.mesh is None:
        tiles = None
        if not fabric.timing_only:
            tiles = _masked_max(x)
        return stat_tensor(x, layout, 1, tiles, end)
    parts = layout.parts
    tiles = None
    if not fabric.timing_only:
        local = _masked_max(x)                               # [R, C, ..., 1]
        pos = np.arange(x.rect.shape[1] if layout.mesh == "row" else x.rect.shape[0])
        slot = pos[None, :, None] if layout.mesh == "row" else pos[:, None, None]
        extra = (1,) * (len(x.tile_shape) - 1)
        onehot = (slot == np.arange(parts)[None, None, :]).reshape(
            *((1, parts) if layout.mesh == "row" else (parts, 1)), *extra, parts)
        tiles = np.where(onehot, local, np.float32(0)).astype(np.float32)
    gathered = allreduce_stat(stat_tensor(x, layout, parts, tiles, end), layout, algorithm)
    end = local_pass(fabric, x.rect, tile_elements(gathered), WORK, "max", gathered.ready,
                     writes=0)
    out_tiles = None
    if not fabric.timing_only:
        out_tiles = gathered.tiles.max(axis=-1, keepdims=True)
    out = MeshTensor(fabric, x.rect, (*x.shape[:-1], 1), WORK, gathered.row_map,
                     gathered.col_map, out_tiles, end, fabric.fresh_name("rowmax"))
    gathered.free()
    return out


def _masked_max(x: MeshTensor) -> np.ndarray:
    tiles = x.tiles.astype(np.float32, copy=False)
    mask = last_axis_mask(x)
    if mask is None:
        return tiles.max(axis=-1, keepdims=True)
    # the max over the real elements only, without a masked copy of the tiles (max is
    # exact, so the same values as masking the padding with -inf first)
    return np.max(tiles, axis=-1, keepdims=True, initial=np.float32(-np.inf),
                  where=np.broadcast_to(mask, tiles.shape))


def row_max_cycles(spec: WaferSpec, tile: Sequence[int], layout: RowLayout,
                   algorithm: str) -> float:
    """Closed form of `row_max`."""
    n = float(np.prod(tile))
    rows = n / tile[-1]
    total = float(op_cycles(spec, n, WORK, "max", writes=0))
    if layout.mesh is not None:
        total += allreduce_stat_cycles(spec, rows * layout.parts, layout, algorithm)
        total += float(op_cycles(spec, rows * layout.parts, WORK, "max", writes=0))
    return total


# --------------------------------------------------------------------------- softmax ------
def softmax(x: MeshTensor, *, dtype: str | None = None, algorithm: str = "chain",
            log: bool = False) -> MeshTensor:
    """Softmax over the last axis: max, exp, sum, scale, with fabric allreduces if split.

    Steps per PE: row max (gathered over the mesh if the axis is split), ``e = exp(x - m)``
    with its row sum in the same sweep, sum allreduce, one reciprocal per row and one
    multiply per element. ``log=True`` gives log-softmax instead: one log and one add per
    row (``m + log s``) and one subtract per element (``x - (m + log s)``), which is exact
    where the softmax underflows. Output in ``dtype`` (default: the input's).
    """
    dtype = check_dtype("softmax", dtype or x.dtype)
    layout = RowLayout.of("softmax", x.shape, x.rect.shape, x.row_map, x.col_map)
    fabric = x.fabric
    m = row_max(x, layout, algorithm, x.ready)
    n = tile_elements(x)
    mask = pad_mask(x)
    end = local_pass(fabric, x.rect, n, WORK, "exp", m.ready)
    e_tiles = apply(lambda a, b: np.exp(a - b), [x, m], WORK, mask)
    e = x.like(e_tiles, end, dtype=WORK)
    end = local_pass(fabric, x.rect, n, WORK, "add", end, writes=0)
    s_tiles = None if e_tiles is None else e_tiles.sum(axis=-1, keepdims=True)
    total = allreduce_stat(stat_tensor(x, layout, 1, s_tiles, end), layout, algorithm)
    rows = tile_elements(total)
    if log:
        end = local_pass(fabric, x.rect, rows, WORK, "log", total.ready)
        end = local_pass(fabric, x.rect, rows, WORK, "add", end, reads=2)
        end = local_pass(fabric, x.rect, n, dtype, "sub", end, reads=2)
    else:
        end = local_pass(fabric, x.rect, rows, WORK, "reciprocal", total.ready)
        end = local_pass(fabric, x.rect, n, dtype, "mul", end, reads=2)
    tiles = None
    if e_tiles is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            if log:
                vals = apply(lambda a, b: a - b, [x, m], WORK, mask) - np.log(total.tiles)
            else:
                vals = e_tiles / total.tiles
            tiles = to_storage(np.where(mask if mask is not None else True, vals,
                                        np.float32(0)), dtype)
    out = x.like(tiles, end, dtype=dtype)
    for t in (m, e, total):
        t.free()
    return out


def softmax_cost(spec: WaferSpec | str | None, shape: Sequence[int],
                 rect_shape: tuple[int, int], *, row_map: AxisMap = 0, col_map: AxisMap = 1,
                 dtype: str = "fp32", algorithm: str = "chain", log: bool = False) -> float:
    """Closed form of `softmax` (and of log-softmax with ``log=True``): the sum of its
    passes and allreduces."""
    spec = get_spec(spec)
    layout = RowLayout.of("softmax", shape, rect_shape, row_map, col_map)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    n = float(np.prod(tile))
    rows = n / tile[-1]
    return (row_max_cycles(spec, tile, layout, algorithm)
            + float(op_cycles(spec, n, WORK, "exp"))
            + float(op_cycles(spec, n, WORK, "add", writes=0))
            + allreduce_stat_cycles(spec, rows, layout, algorithm)
            + (float(op_cycles(spec, rows, WORK, "log"))
               + float(op_cycles(spec, rows, WORK, "add", reads=2))
               + float(op_cycles(spec, n, dtype, "sub", reads=2)) if log else
               float(op_cycles(spec, rows, WORK, "reciprocal"))
               + float(op_cycles(spec, n, dtype, "mul", reads=2))))


def relayout_cycles(spec: WaferSpec, elements: int, rect_shape: tuple[int, int]) -> float:
    """Gathering ``elements`` values (the whole tensor) along another axis than the one the
    producer left last, on an r x c rectangle: each PE's share streams across at most the
    rectangle's width plus height, as the compiler charges a permute (`plan.move_cycles`).
    A row kernel over a middle axis (a softmax over dim 1, a sum over middle dims) pays it
    once to read its input rows and is otherwise the same kernel."""
    r, c = rect_shape
    return float(transfer_cycles(spec, -(-elements // max(1, r * c)), max(1, r + c - 2)))


def moved_rows(x: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """``x`` with ``dims`` moved last (in order), the others first in theirs: the [kept,
    reduced] rows a row kernel sweeps when its axes are not the trailing ones."""
    rank = x.dim()
    picked = [d % rank for d in dims]
    return x.permute([a for a in range(rank) if a not in picked] + picked)


# ------------------------------------------------------------------ the softmax stage -----
@dataclass(frozen=True)
class SoftmaxParams(StageParams):
    """A (log-)softmax over the last axis of a [tokens, hidden] activation; ``dim`` the
    axis of the original tensor when it is not the last (gathered first:
    `relayout_cycles`)."""

    tokens: int
    hidden: int
    log: bool
    dim: int | None = None

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.hidden < 1:
            raise KernelShapeError(f"softmax of [{self.tokens}, {self.hidden}]: sizes must "
                                   f"be >= 1")


def softmax_sram_bytes(p: SoftmaxParams, dtype: str, r: int, c: int) -> int:
    """SRAM per PE of a softmax stage on r x c PEs: input and output tiles, the fp32
    exponentials, and per-row statistics as wide as the column count (the allreduce's
    buffers)."""
    tile = -(-p.tokens // r) * -(-p.hidden // c)
    return 2 * tile * BYTES[dtype] + 4 * tile + 16 * -(-p.tokens // r) * max(1, c)


class Softmax(RowFamily):
    """``aten._softmax`` / ``aten._log_softmax`` in the input's dtype: over the last axis,
    or over another one as the same kernel on the rows gathered along it (a relayout in
    and out, `relayout_cycles`)."""

    kind = "softmax"
    targets = frozenset({"_softmax", "_log_softmax"})

    def rejects(self, node: Node, g: Graph) -> str | None:
        if not float_out(node) or node.args[2] or not node.meta["shape"]:
            return ("softmax with half_to_float or of a 0-d value (run it in the input's "
                    "dtype)")
        return None

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[SoftmaxParams, float]:
        shape = shape_of(g, nodes[0].args[0])
        dim = nodes[0].args[1] % len(shape)
        n = shape[dim]
        t = math.prod(shape) // n
        return (SoftmaxParams(t, n, log=nodes[0].short == "_log_softmax",
                              dim=None if dim == len(shape) - 1 else dim), 5.0 * t * n)

    def extent(self, p: SoftmaxParams) -> tuple[int, int]:
        return p.tokens, p.hidden

    def sram_bytes(self, p: SoftmaxParams, dtype: str, r: int, c: int) -> int:
        return softmax_sram_bytes(p, dtype, r, c)

    def cycles(self, spec: WaferSpec, p: SoftmaxParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return softmax_cost(spec, [p.tokens, p.hidden], rect, dtype=dtype, log=p.log) \
            + self._moves(spec, p, rect)

    @staticmethod
    def _moves(spec: WaferSpec, p: SoftmaxParams, rect: tuple[int, int]) -> float:
        """Over a middle axis: the input gathered into rows and the output put back."""
        return 0.0 if p.dim is None else 2 * relayout_cycles(spec, p.tokens * p.hidden, rect)

    def algorithm(self, p: SoftmaxParams) -> str:
        over = "" if p.dim is None else f" over dim {p.dim} (relayout in and out)"
        return ("log-" if p.log else "") + "max/exp/sum, chain allreduce" + over

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        p: SoftmaxParams = st.params  # type: ignore[assignment]
        x = ctx.value(node.args[0])
        fab = ctx.fabric(st)
        rows = x if p.dim is None else x.movedim(p.dim, -1)
        out = softmax(ctx.mesh(fab, rows, (p.tokens, p.hidden), st.dtype), log=p.log)
        if not ctx.timing_only:
            y = to_torch(out.to_numpy().reshape(rows.shape), x.dtype)
            ctx.env[node.name] = y if p.dim is None else y.movedim(-1, p.dim).contiguous()
        return done(fab, self._moves(ctx.spec, p, st.rect))


FAMILY = Softmax()
