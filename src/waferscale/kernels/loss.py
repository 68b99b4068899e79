"""Cross-entropy loss over the vocabulary, with its gradient, on the fabric.

Mapping: logits [tokens, vocab] with tokens over the rectangle's rows and the vocabulary
over its columns (what the LM head leaves), or whole rows per PE. Per token the kernel
needs the row max, the sum of exponentials and the target's logit; the last two travel
together in one allreduce along the row. The mean over tokens is a chain reduce down the
rows. The gradient ``(softmax(z) - onehot(y)) / n`` is produced in the same sweep, in the
logits' dtype, so the backward pass can start without another pass over the logits.

Matches ``torch.nn.functional.cross_entropy(z, y, ignore_index=-100)`` (mean over the
tokens whose target is not ignored) and its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from waferscale.errors import KernelError, KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.tensor import AxisMap, _valid_extent
from waferscale.fabric.timing import reduce_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels.elementwise import (
    WORK,
    RowLayout,
    allreduce_stat,
    allreduce_stat_cycles,
    check_dtype,
    local_pass,
    op_cycles,
    pad_mask,
    row_max,
    row_max_cycles,
    stat_tensor,
    tile_elements,
    tile_shape,
)

KERNEL = "cross_entropy"


def _layout(shape: Sequence[int], rect_shape: tuple[int, int], row_map: AxisMap,
            col_map: AxisMap) -> RowLayout:
    if len(shape) != 2:
        raise KernelShapeError(f"{KERNEL}: logits of shape {tuple(shape)} must be "
                               f"[tokens, vocab]")
    if row_map not in (0, None) or col_map not in (1, None):
        raise KernelShapeError(f"{KERNEL}: logits must map tokens (axis 0) to PE rows or "
                               f"nothing and the vocabulary (axis 1) to PE columns or nothing, "
                               f"got ({row_map!r}, {col_map!r})")
    return RowLayout.of(KERNEL, shape, rect_shape, row_map, col_map)


def _check_targets(targets: np.ndarray, tokens: int, vocab: int, ignore_index: int
                   ) -> np.ndarray:
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise KernelError(f"{KERNEL}: targets must be integer class ids, got {targets.dtype}")
    targets = targets.reshape(-1)
    if targets.size != tokens:
        raise KernelShapeError(f"{KERNEL}: {targets.size} targets for {tokens} rows of logits")
    bad = np.nonzero(((targets < 0) | (targets >= vocab)) & (targets != ignore_index))[0]
    if bad.size:
        raise KernelError(f"{KERNEL}: target {int(targets[bad[0]])} at position "
                          f"{int(bad[0])} is out of range for {vocab} classes (valid 0.."
                          f"{vocab - 1}, or ignore_index {ignore_index})")
    if not (targets != ignore_index).any():
        raise KernelError(f"{KERNEL}: every target equals ignore_index {ignore_index}; the "
                          f"mean loss is undefined")
    return targets


def run(logits: MeshTensor, targets: np.ndarray, *, ignore_index: int = -100,
        algorithm: str = "chain") -> tuple[MeshTensor, MeshTensor]:
    """Mean cross-entropy and d(loss)/d(logits).

    Returns ``(loss, grad)``: ``loss`` is a [1] fp32 tensor on the rectangle's first row
    (every column holds it), ``grad`` has the logits' shape, layout and dtype. Targets are
    resident 32-bit words next to the logits.
    """
    check_dtype(KERNEL, logits.dtype)
    layout = _layout(logits.shape, logits.rect.shape, logits.row_map, logits.col_map)
    tokens, vocab = logits.shape
    targets = _check_targets(targets, tokens, vocab, ignore_index)
    count = float((targets != ignore_index).sum())
    fabric, rect = logits.fabric, logits.rect
    values = not fabric.timing_only
    tgt = MeshTensor.from_numpy(fabric, targets.astype(np.float32), rect, logits.row_map,
                                None, "fp32", name=fabric.fresh_name("targets"))
    n = tile_elements(logits)
    rows = n / logits.tile_shape[-1]
    mask = pad_mask(logits)

    m = row_max(logits, layout, algorithm, np.maximum(logits.ready, tgt.ready))
    end = local_pass(fabric, rect, n, WORK, "exp", m.ready)
    end = local_pass(fabric, rect, rows, WORK, "select", end, reads=2)      # pick z[y]
    end = local_pass(fabric, rect, n, WORK, "add", end, writes=0)           # sum of e
    e = stats = hit = None
    if values:
        z = logits.tiles.astype(np.float32)
        e = np.exp(z - m.tiles)
        if mask is not None:
            e = np.where(mask, e, np.float32(0))
        hit, local_idx = _target_hits(logits, tgt, ignore_index)
        zy = np.where(hit, np.take_along_axis(z, local_idx[..., None], -1)[..., 0], 0)
        stats = np.stack([e.sum(-1), zy], axis=-1).astype(np.float32)        # [R, C, tr, 2]
    packed = allreduce_stat(stat_tensor(logits, layout, 2, stats, end), layout, algorithm)
    end = local_pass(fabric, rect, rows, WORK, "log", packed.ready)
    end = local_pass(fabric, rect, rows, WORK, "add", end, reads=2)         # lse = m + log
    end = local_pass(fabric, rect, rows, WORK, "sub", end, reads=2)         # lse - z[y]
    end = local_pass(fabric, rect, rows, WORK, "mul", end, reads=2)         # x ignore mask
    # gradient: e / (sum e) / count, minus 1 / count at the target
    end = local_pass(fabric, rect, rows, WORK, "reciprocal", end)
    end = local_pass(fabric, rect, rows, WORK, "mul", end, reads=2)
    end = local_pass(fabric, rect, n, logits.dtype, "mul", end)
    end = local_pass(fabric, rect, rows, logits.dtype, "sub", end, reads=2)
    g_tiles = token_loss = None
    if values:
        weight = _weights(tgt, ignore_index)                                  # [R, C, tr]
        total, zy = packed.tiles[..., 0], packed.tiles[..., 1]
        total = np.where(weight > 0, total, np.float32(1))                    # padded rows
        token_loss = (m.tiles[..., 0] + np.log(total) - zy) * weight
        scale = weight / (total * np.float32(count))
        g = e * scale[..., None] - np.where(
            hit[..., None] & (np.arange(logits.tile_shape[-1]) == _local(logits, tgt)[..., None]),
            np.float32(1 / count), np.float32(0))
        g_tiles = to_storage(g, logits.dtype)
    grad = logits.like(g_tiles, end)
    # the mean over tokens: local sum, chain reduce down the rows, scale by 1 / count
    end = local_pass(fabric, rect, rows, WORK, "add", end, writes=0)
    part = None if token_loss is None else token_loss.sum(-1, keepdims=True)
    split = logits.row_map == 0
    loss = MeshTensor(fabric, rect, (1,), WORK, "partial" if split else None, None, part, end,
                      fabric.fresh_name("loss_partial"))
    if split:
        summed = mv.reduce(loss, "col", algorithm, root="first")
        loss.free()
        loss = summed
    end = local_pass(fabric, loss.rect, 1.0, WORK, "mul", loss.ready)
    out_tiles = None if loss.tiles is None else loss.tiles / np.float32(count)
    result = loss.like(out_tiles, end, name=fabric.fresh_name("loss"))
    for t in (loss, packed, m, tgt):
        t.free()
    return result, grad


def _weights(tgt: MeshTensor, ignore_index: int) -> np.ndarray:
    """1 for each real, not-ignored token of a PE's rows, 0 for ignored and padded ones."""
    real = pad_mask(tgt)
    keep = tgt.tiles != ignore_index
    return (keep & real if real is not None else keep).astype(np.float32)


def _local(logits: MeshTensor, tgt: MeshTensor) -> np.ndarray:
    """Each PE's target index relative to its vocabulary slice: [R, C, tr]."""
    tc = logits.tile_shape[-1]
    offset = np.arange(logits.rect.cols) * tc if logits.col_map == 1 else \
        np.zeros(logits.rect.cols)
    return tgt.tiles.astype(np.int64) - offset.astype(np.int64)[None, :, None]


def _target_hits(logits: MeshTensor, tgt: MeshTensor, ignore_index: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    local = _local(logits, tgt)
    tc = logits.tile_shape[-1]
    extent = _valid_extent(logits.shape[1], logits.rect.cols) if logits.col_map == 1 else \
        np.full(logits.rect.cols, logits.shape[1])
    hit = (local >= 0) & (local < extent[None, :, None]) & (_weights(tgt, ignore_index) > 0)
    return hit, np.clip(local, 0, tc - 1)


def cost(spec: WaferSpec | str | None, tokens: int, vocab: int, rect_shape: tuple[int, int],
         *, row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32",
         algorithm: str = "chain") -> float:
    """Closed form of `run` (loss and gradient)."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    shape = (tokens, vocab)
    layout = _layout(shape, rect_shape, row_map, col_map)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    n = float(np.prod(tile))
    rows = float(tile[0])

    def c(elements: float, dt: str, op: str, **kw: int) -> float:
        return float(op_cycles(spec, elements, dt, op, **kw))

    total = row_max_cycles(spec, tile, layout, algorithm)
    total += c(n, WORK, "exp") + c(rows, WORK, "select", reads=2) + c(n, WORK, "add", writes=0)
    total += allreduce_stat_cycles(spec, 2 * rows, layout, algorithm)
    total += c(rows, WORK, "log") + c(rows, WORK, "add", reads=2) \
        + c(rows, WORK, "sub", reads=2) + c(rows, WORK, "mul", reads=2)
    total += c(rows, WORK, "reciprocal") + c(rows, WORK, "mul", reads=2) + c(n, dtype, "mul") \
        + c(rows, dtype, "sub", reads=2)
    total += c(rows, WORK, "add", writes=0)
    if row_map == 0:
        total += reduce_cycles(spec, 1.0, rect_shape[0], algorithm)
    return total + c(1.0, WORK, "mul")
