"""Token embedding lookup: a local gather from a table replicated down the PE rows.

Mapping: the output [tokens, hidden] has tokens over the rectangle's rows and hidden over
its columns (the layout layer norm and the projections take). Every PE keeps the table
slice [vocab, hidden / C] of its column, so each token row is a local gather and nothing
crosses the fabric. That suits small vocabularies (GenSLM's 69 codons: 69 x 64 x 2 B =
8.8 KB per PE on 8 columns); a table that does not fit is refused with the column count
that would make it fit.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels.elementwise import check_dtype, local_pass, op_cycles

KERNEL = "embedding"
#: Token ids are stored as 32-bit words (one wavelet each).
ID_BYTES = 4


def sram_bytes(tokens: int, vocab: int, hidden: int, rect_shape: tuple[int, int],
               dtype: str = "fp32") -> int:
    """Bytes per PE: the table slice, the token ids of the PE's row and its output tile."""
    tr, tc = -(-tokens // rect_shape[0]), -(-hidden // rect_shape[1])
    return vocab * tc * BYTES[dtype] + tr * ID_BYTES + tr * tc * BYTES[dtype]


def check(spec: WaferSpec, tokens: int, vocab: int, hidden: int,
          rect_shape: tuple[int, int], dtype: str) -> None:
    """Raise what does not fit: too many rows/columns, or SRAM, with what would fit."""
    check_dtype(KERNEL, dtype)
    rows, cols = rect_shape
    if rows > tokens:
        raise KernelFitError(f"{KERNEL}: {tokens} tokens cannot be spread over {rows} PE rows; "
                             f"use at most {tokens} rows")
    if cols > hidden:
        raise KernelFitError(f"{KERNEL}: hidden size {hidden} cannot be spread over {cols} PE "
                             f"columns; use at most {hidden} columns")
    need = sram_bytes(tokens, vocab, hidden, rect_shape, dtype)
    if need <= spec.sram_bytes:
        return
    hint = "no column count fits: the vocabulary is too large to replicate; shard it"
    for c in range(cols + 1, hidden + 1):
        if sram_bytes(tokens, vocab, hidden, (rows, c), dtype) <= spec.sram_bytes:
            hint = f"use at least {c} columns"
            break
    raise KernelFitError(
        f"{KERNEL}: table [{vocab}, {hidden}] ({dtype}) with {tokens} tokens on {rows}x{cols} "
        f"PEs needs {need} B per PE (table slice {vocab * -(-hidden // cols) * BYTES[dtype]} "
        f"B) but a PE has {spec.sram_bytes} B; {hint}")


def run(fabric: Fabric, ids: np.ndarray, table: np.ndarray, *, rect: Rect | None = None,
        dtype: str = "fp32") -> MeshTensor:
    """``table[ids]`` as a [tokens, hidden] tensor (ids flattened), table resident at time 0.

    Ids must be integers in [0, vocab); anything else is refused before the fabric runs.
    """
    rect = rect or fabric.full
    ids = np.asarray(ids)
    table = np.asarray(table)
    if table.ndim != 2:
        raise KernelShapeError(f"{KERNEL}: table of shape {table.shape} must be [vocab, hidden]")
    if not np.issubdtype(ids.dtype, np.integer):
        raise KernelError(f"{KERNEL}: token ids must be integers, got dtype {ids.dtype}")
    ids = ids.reshape(-1)
    vocab, hidden = table.shape
    bad = np.nonzero((ids < 0) | (ids >= vocab))[0]
    if bad.size:
        raise KernelError(f"{KERNEL}: token id {int(ids[bad[0]])} at position {int(bad[0])} is "
                          f"out of range for a vocabulary of {vocab} (valid ids 0..{vocab - 1}); "
                          f"{bad.size} id(s) out of range")
    check(fabric.spec, ids.size, vocab, hidden, rect.shape, dtype)
    tab = MeshTensor.from_numpy(fabric, table.astype(np.float32), rect, None, 1, dtype,
                                name=fabric.fresh_name("embed_table"))
    idt = MeshTensor.from_numpy(fabric, ids.astype(np.float32), rect, 0, None, "fp32",
                                name=fabric.fresh_name("token_ids"))
    out_shape = (ids.size, hidden)
    probe = MeshTensor(fabric, rect, out_shape, dtype, 0, 1, None, allocate=False)
    n = float(np.prod(probe.tile_shape))
    end = local_pass(fabric, rect, n, dtype, "copy", np.maximum(tab.ready, idt.ready))
    tiles = None
    if not fabric.timing_only:
        tr = probe.tile_shape[0]
        local = idt.tiles.astype(np.int64)[..., None]              # [R, C, tr, 1]; pad = 0
        gathered = np.take_along_axis(tab.tiles, local, axis=2)     # [R, C, tr, tc]
        real = np.arange(tr)[None, :] < _row_extent(ids.size, rect.rows, tr)[:, None]
        tiles = to_storage(np.where(real[:, None, :, None], gathered.astype(np.float32), 0),
                           dtype)
    out = MeshTensor(fabric, rect, out_shape, dtype, 0, 1, tiles, end,
                     fabric.fresh_name("embedded"))
    tab.free()
    idt.free()
    return out


def _row_extent(tokens: int, rows: int, tr: int) -> np.ndarray:
    return np.clip(tokens - np.arange(rows) * tr, 0, tr)


def cost(spec: WaferSpec | str | None, tokens: int, vocab: int, hidden: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32") -> float:
    """Closed form of `run`: one gather pass over the output tile, no fabric traffic."""
    spec = get_spec(spec)
    check(spec, tokens, vocab, hidden, rect_shape, dtype)
    tr, tc = -(-tokens // rect_shape[0]), -(-hidden // rect_shape[1])
    return float(op_cycles(spec, tr * tc, dtype, "copy"))
