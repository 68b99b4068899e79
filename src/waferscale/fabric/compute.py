"""Local compute on each PE's compute engine, at the spec's SIMD widths, skipping zeros.

Every function computes real values (unless the fabric is timing-only) and charges each
PE's CE the cycles of `timing.vector_cycles` for the elements *it* holds, so edge PEs with
short tiles finish early and sparse tiles finish in proportion to their nonzeros.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from waferscale.errors import ShapeError
from waferscale.fabric.dtypes import BYTES, compute_dtype, to_storage
from waferscale.fabric.tensor import AxisMap, MeshTensor
from waferscale.fabric.timing import vector_cycles


def _same_layout(tensors: Sequence[MeshTensor], what: str) -> MeshTensor:
    first = tensors[0]
    for t in tensors[1:]:
        if (t.rect, t.shape, t.row_map, t.col_map) != (first.rect, first.shape, first.row_map,
                                                         first.col_map):
            raise ShapeError(f"{what}: operands {first.name!r} {first.shape} on {first.rect} and "
                             f"{t.name!r} {t.shape} on {t.rect} must share shape and layout")
    return first


def _ready(tensors: Sequence[MeshTensor]) -> np.ndarray:
    """When every input's tile is ready, as compact as the inputs' ready times are."""
    ready = tensors[0]._ready
    for t in tensors[1:]:
        ready = np.maximum(ready, t._ready)
    return ready


def elementwise(fn: Callable[..., np.ndarray], inputs: Sequence[MeshTensor], op: str = "add",
                *, dtype: str | None = None, flops_per_element: float = 1.0,
                skip_zeros_of: MeshTensor | None = None, name: str | None = None
                ) -> MeshTensor:
    """``fn`` applied tile-wise to same-layout ``inputs``: one vector instruction per PE.

    ``op`` picks the SIMD width (fmac/mul/add). ``skip_zeros_of``: the operand whose zeros
    the hardware skips (it triggers work only per arriving nonzero), so cycles follow its
    nonzeros instead of the tile size.
    """
    first = _same_layout(inputs, f"elementwise {op}")
    fabric = first.fabric
    dtype = dtype or first.dtype
    # one count for every PE where it is one (no zero anywhere, a uniform layout): the
    # counters then take a scalar instead of a wafer-sized array
    elements = skip_zeros_of._nnz_compact() if skip_zeros_of is not None \
        else first._valid_compact()
    # nonzero counts are whole numbers; so is ``valid`` when its layout's info says so
    # (the counts of wavelets are the elements, one per wavelet)
    integral = skip_zeros_of is not None or first.wavelet_info().integral
    cycles = vector_cycles(fabric.spec, elements, dtype, op, reads=len(inputs), writes=1,
                           element_bytes=BYTES[dtype], integral=integral)
    per_element_bytes = (len(inputs) + 1) * BYTES[dtype]
    # the counters gain elements * flops and * bytes per element: the fabric forms the
    # products in a reused buffer; the work starts once every input is ready
    if integral:      # whole numbers: one product is exactly the two the reference takes
        mem_bytes, bytes_per = elements, float(per_element_bytes)
    else:
        mem_bytes = elements * (len(inputs) + 1)
        mem_bytes *= BYTES[dtype]
        bytes_per = None
    end = fabric._execute(first.rect, cycles, inputs[0]._ready, flops=elements,
                          mem_bytes=mem_bytes, more_ready=[t._ready for t in inputs[1:]],
                          flops_per=flops_per_element, bytes_per=bytes_per)
    tiles = None
    if not fabric.timing_only:
        work = compute_dtype(dtype)
        tiles = to_storage(fn(*[t.tiles.astype(work, copy=False) for t in inputs]), dtype)
    return first.like(tiles, end, dtype=dtype, name=name, own_ready=True)


def fmac(acc: MeshTensor, a: MeshTensor, b: MeshTensor | float, *,
         skip_zeros: bool = True) -> MeshTensor:
    """``acc + a * b``, triggered per nonzero of ``a`` when ``skip_zeros``."""
    operands = [acc, a] + ([b] if isinstance(b, MeshTensor) else [])

    def body(acc_t: np.ndarray, a_t: np.ndarray, *rest: np.ndarray) -> np.ndarray:
        # a * b + acc into one temporary: IEEE addition commutes, so the values are those
        # of acc + a * b without a second tile-sized array
        product = np.multiply(a_t, rest[0] if rest else np.asarray(b, dtype=a_t.dtype))
        return np.add(product, acc_t, out=product)

    return elementwise(body, operands, "fmac", flops_per_element=2.0,
                       skip_zeros_of=a if skip_zeros else None)


def matmul_fmacs(a: MeshTensor, b: MeshTensor, skip: str | None) -> np.ndarray:
    """FMACs each PE issues for its tile product ``a @ b`` (last two tile axes).

    ``skip``: None (dense), "a" (zero activations skipped), "b" (zero weights never sent,
    the FMAC runs per arriving nonzero: an AXPY per nonzero weight) or "both" (only
    products of two nonzeros).
    """
    k = a.tile_shape[-1]
    b_batch = float(np.prod(b.tile_shape[:-2])) if len(b.tile_shape) > 2 else 1.0
    # per PE: a.valid = batch * m * k and b.valid = b_batch * k * n (edge tiles are shorter)
    if skip is None:
        return a.valid * b.valid / (b_batch * k)
    if skip == "a":
        return a.nnz() * b.valid / (b_batch * k)
    if skip == "b":
        return b.nnz() * a.valid / (b_batch * k)
    if skip == "both":
        if a.tiles is None or b.tiles is None:
            return a.nnz() * b.nnz() / (b_batch * k)
        a_cols = np.count_nonzero(a.tiles, axis=-2).astype(float)      # [..., k]
        b_rows = np.count_nonzero(b.tiles, axis=-1).astype(float)      # [..., k]
        products = (a_cols * b_rows).sum(axis=-1)
        return products.reshape(*a.rect.shape, -1).sum(axis=-1)
    raise ShapeError(f"matmul skip={skip!r}: use None, 'a', 'b' or 'both'")


def local_matmul(a: MeshTensor, b: MeshTensor, out_shape: tuple[int, ...],
                 row_map: AxisMap, col_map: AxisMap, *, acc: MeshTensor | None = None,
                 accumulate: str | None = None, skip: str | None = None,
                 name: str | None = None) -> MeshTensor:
    """Every PE multiplies its tiles ``a @ b`` (+ ``acc``) on its own compute engine.

    The caller states the global layout of the product (what the tiles mean together).
    ``accumulate='fp32'`` runs 16-bit inputs on the mixed fp16 x fp16 -> fp32 datapath.
    Operands without tiles (a kernel that computes the values elsewhere, in one product
    over the whole matrix) give a product without tiles; the clocks advance all the same.
    """
    if a.rect != b.rect:
        raise ShapeError(f"local_matmul: {a.name!r} on {a.rect} and {b.name!r} on {b.rect} "
                         f"must sit on the same rectangle")
    if a.tile_shape[-1] != b.tile_shape[-2]:
        raise ShapeError(f"local_matmul: tile {a.tile_shape} of {a.name!r} cannot multiply "
                         f"tile {b.tile_shape} of {b.name!r}")
    fabric = a.fabric
    out_dtype = accumulate or a.dtype
    fmacs = matmul_fmacs(a, b, skip)
    cycles = vector_cycles(fabric.spec, fmacs, a.dtype, "fmac", reads=2, writes=1,
                           accumulate=accumulate, element_bytes=BYTES[a.dtype])
    inputs = [a, b] + ([acc] if acc is not None else [])
    end = fabric.execute(a.rect, cycles, _ready(inputs), flops=2.0 * fmacs,
                         mem_bytes=fmacs * 3 * BYTES[a.dtype])
    tiles = None
    if not fabric.timing_only and a.tiles is not None and b.tiles is not None:
        work = compute_dtype(a.dtype, accumulate)
        product = np.matmul(a.tiles.astype(work, copy=False), b.tiles.astype(work, copy=False))
        if acc is not None:
            # in place: same rounding as product + acc, without another [rows, cols, m, n]
            np.add(product, acc.tiles.astype(work, copy=False), out=product)
        tiles = to_storage(product, out_dtype)
    return MeshTensor(fabric, a.rect, out_shape, out_dtype, row_map, col_map, tiles, end,
                      name or fabric.fresh_name("matmul"))
