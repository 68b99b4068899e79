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

import numpy as np

from waferscale.errors import KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.tensor import AxisMap
from waferscale.hardware.spec import WaferSpec, get_spec
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

KERNEL = "layer_norm"


def _accumulate(dtype: str) -> str | None:
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
    acc = _accumulate(x.dtype)
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
    acc = _accumulate(dtype)
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
