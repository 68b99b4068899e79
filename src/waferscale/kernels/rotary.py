"""Rotary position embeddings as GPT-NeoX applies them (partial rotary, rotate-half).

GPT-NeoX rotates only the first ``rotary_ndims = int(head_dim * rotary_pct)`` features of
each head (GenSLM: rotary_pct = 0.25, so 16 of 64) and passes the rest through:

    x_rot  = x[..., :r];  rotate_half(x_rot) = cat(-x_rot[..., r/2:], x_rot[..., :r/2])
    out    = cat(x_rot * cos + rotate_half(x_rot) * sin, x[..., r:])

with ``cos, sin`` of ``position * inv_freq`` repeated twice along the feature axis and
``inv_freq = base ** -(arange(0, r, 2) / r)``, computed in fp32 and cast to the activation
dtype (transformers' ``GPTNeoXRotaryEmbedding``).

Mapping: x is [..., seq, head_dim] with each PE holding whole heads (head_dim is never
split, since rotate_half pairs feature i with i + r/2). The cos/sin tables [seq, r] are
resident constants blocked like x's sequence axis. Per PE: one multiply pass and one FMAC
pass over the rotated features; a functional `run` also copies the pass-through features.
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
    check_dtype,
    local_pass,
    op_cycles,
    tile_shape,
)

KERNEL = "rotary"


def rotary_dims(head_dim: int, rotary_pct: float) -> int:
    """Features rotated per head, as GPT-NeoX computes it; must be even."""
    if not 0.0 <= rotary_pct <= 1.0:
        raise KernelShapeError(f"{KERNEL}: rotary_pct {rotary_pct} must lie in [0, 1]")
    rot = int(head_dim * rotary_pct)
    if rot % 2:
        raise KernelShapeError(f"{KERNEL}: head_dim {head_dim} x rotary_pct {rotary_pct} = "
                               f"{rot} rotated features; rotate_half needs an even count")
    return rot


def tables(seq: int, rot: int, base: float = 10000.0, dtype: str = "fp32"
           ) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin tables [seq, rot] (fp32 math, rounded to ``dtype`` like transformers)."""
    inv_freq = (1.0 / (base ** (np.arange(0, rot, 2, dtype=np.int64).astype(np.float32)
                                / np.float32(rot)))).astype(np.float32)
    freqs = np.arange(seq, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return (to_storage(np.cos(emb).astype(np.float32), dtype),
            to_storage(np.sin(emb).astype(np.float32), dtype))


def rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rot: int) -> np.ndarray:
    """fp32 rotary of ``x[..., seq, head_dim]``'s first ``rot`` features; cos/sin broadcast
    as [..., seq, rot]."""
    half = rot // 2
    xr = x[..., :rot]
    rotated = np.concatenate([-xr[..., half:], xr[..., :half]], axis=-1)
    return np.concatenate([xr * cos + rotated * sin, x[..., rot:]], axis=-1)


def pass_cycles(spec: WaferSpec, rotated_elements: float, dtype: str) -> float:
    """CE cycles of the two passes over ``rotated_elements`` (x*cos, then += rot(x)*sin)."""
    return float(op_cycles(spec, rotated_elements, dtype, "mul", reads=2)
                 + op_cycles(spec, rotated_elements, dtype, "fmac", reads=3))


def _check(x_shape: Sequence[int], row_map: AxisMap, col_map: AxisMap, rot: int) -> None:
    if len(x_shape) < 2:
        raise KernelShapeError(f"{KERNEL}: input {tuple(x_shape)} must be [..., seq, head_dim]")
    last = len(x_shape) - 1
    if last in (row_map, col_map):
        raise KernelShapeError(
            f"{KERNEL}: head_dim (axis {last} of {tuple(x_shape)}) is split over the mesh; "
            f"rotate_half pairs features {rot // 2} apart, so keep whole heads on each PE "
            f"(map heads or sequence to the mesh instead)")
    if "partial" in (row_map, col_map):
        raise KernelShapeError(f"{KERNEL}: input holds partial sums; reduce it first")


def table_maps(x_shape: Sequence[int], row_map: AxisMap, col_map: AxisMap
               ) -> tuple[AxisMap, AxisMap]:
    """Layout of a [seq, rot] table that lines up with x's sequence axis on every PE."""
    seq_axis = len(x_shape) - 2
    return (0 if row_map == seq_axis else None, 0 if col_map == seq_axis else None)


def place_tables(x: MeshTensor, rot: int, base: float, positions: int | None = None
                 ) -> tuple[MeshTensor, MeshTensor]:
    """cos/sin as resident constants next to ``x`` (ready at time 0)."""
    seq = x.shape[-2] if positions is None else positions
    cos, sin = tables(seq, rot, base, x.dtype)
    maps = table_maps(x.shape, x.row_map, x.col_map)
    fabric = x.fabric
    return (MeshTensor.from_numpy(fabric, cos, x.rect, *maps, x.dtype,
                                  name=fabric.fresh_name("rope_cos")),
            MeshTensor.from_numpy(fabric, sin, x.rect, *maps, x.dtype,
                                  name=fabric.fresh_name("rope_sin")))


def run(x: MeshTensor, *, rotary_pct: float = 0.25, base: float = 10000.0) -> MeshTensor:
    """GPT-NeoX rotary on ``x[..., seq, head_dim]`` (positions 0..seq-1); a new tensor."""
    check_dtype(KERNEL, x.dtype)
    rot = rotary_dims(x.shape[-1], rotary_pct)
    _check(x.shape, x.row_map, x.col_map, rot)
    fabric = x.fabric
    lead = float(np.prod(x.tile_shape[:-1]))
    end = x.ready
    tiles = None
    if rot:
        cos, sin = place_tables(x, rot, base)
        ready = np.maximum.reduce([x.ready, cos.ready, sin.ready])
        end = local_pass(fabric, x.rect, lead * rot, x.dtype, "mul", ready, reads=2)
        end = local_pass(fabric, x.rect, lead * rot, x.dtype, "fmac", end, reads=3)
        if not fabric.timing_only:
            nd = len(x.tile_shape)
            shape = (*x.rect.shape, *(1,) * (nd - 2), *cos.tile_shape)
            c = cos.tiles.astype(np.float32).reshape(shape)
            s = sin.tiles.astype(np.float32).reshape(shape)
            tiles = to_storage(rotate(x.tiles.astype(np.float32), c, s, rot), x.dtype)
        cos.free()
        sin.free()
    elif not fabric.timing_only:
        tiles = x.tiles.copy()
    if x.shape[-1] > rot:
        end = local_pass(fabric, x.rect, lead * (x.shape[-1] - rot), x.dtype, "copy", end)
    return x.like(tiles, end)


def cost(spec: WaferSpec | str | None, shape: Sequence[int], rect_shape: tuple[int, int], *,
         row_map: AxisMap = 0, col_map: AxisMap = None, dtype: str = "fp32",
         rotary_pct: float = 0.25) -> float:
    """Closed form of `run`: two passes over the rotated features, a copy of the rest."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    rot = rotary_dims(shape[-1], rotary_pct)
    _check(shape, row_map, col_map, rot)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    lead = float(np.prod(tile[:-1]))
    total = pass_cycles(spec, lead * rot, dtype) if rot else 0.0
    if shape[-1] > rot:
        total += float(op_cycles(spec, lead * (shape[-1] - rot), dtype, "copy"))
    return total
