"""Checks and small helpers the GEMM and GEMV kernels share.

Kept apart so that both kernels reject the same bad inputs with the same wording, and so
that the datapath rules (which dtype/accumulate pairs the compute engine has) live in one
place.
"""

from __future__ import annotations

import math

import numpy as np

from waferscale.errors import KernelDtypeError, KernelShapeError
from waferscale.fabric.dtypes import BYTES
from waferscale.fabric.timing import vector_cycles
from waferscale.hardware.spec import WaferSpec

#: Accumulators each storage dtype can use: its own datapath, or fp32 (the mixed SIMD-2
#: ``fmachs`` datapath for 16-bit inputs).
ACCUMULATE = {"fp32": ("fp32",), "fp16": ("fp16", "fp32"), "bf16": ("bf16", "fp32")}
SKIPS = (None, "a", "b", "both")


def check_datapath(kernel: str, dtype: str, accumulate: str | None) -> str:
    """Validate (dtype, accumulate) and return the accumulator dtype (fp32 by default)."""
    if dtype not in ACCUMULATE:
        raise KernelDtypeError(
            f"{kernel}: dtype {dtype!r} has no FMAC datapath on the compute engine; use "
            f"{', '.join(ACCUMULATE)}")
    acc = accumulate or "fp32"
    if acc not in ACCUMULATE[dtype]:
        raise KernelDtypeError(
            f"{kernel}: {dtype} inputs cannot accumulate in {acc!r}; the hardware offers "
            f"{' or '.join(ACCUMULATE[dtype])}")
    return acc


def check_chain(kernel: str, left: str, right: str, m: int, k: int, k2: int, n: int,
                left_value: object, right_value: object) -> bool:
    """Operands that multiply: inner sizes equal, both arrays or both shapes.

    Returns True for a timing-only run (both operands given as shapes).
    """
    if k != k2:
        raise KernelShapeError(f"{kernel}: {left} [{m},{k}] and {right} [{k2},{n}] do not "
                               f"chain; the inner dimensions must match")
    if (left_value is None) != (right_value is None):
        raise KernelShapeError(f"{kernel}: pass both operands as arrays, or both as shapes "
                               f"for a timing-only run")
    return left_value is None


def check_skip(kernel: str, skip: str | None) -> None:
    if skip not in SKIPS:
        raise KernelShapeError(f"{kernel}: skip={skip!r}; use None, 'a' (zero activations), "
                               f"'b' (zero weights) or 'both'")


def fabric_accumulate(accumulate: str) -> str | None:
    """The ``accumulate`` argument `compute.local_matmul` takes for this accumulator: fp32
    selects the mixed datapath for 16-bit inputs; a 16-bit accumulator is the inputs' own."""
    return "fp32" if accumulate == "fp32" else None


def fmac_cycles(spec: WaferSpec, fmacs: float | np.ndarray, dtype: str, accumulate: str
                ) -> np.ndarray:
    """Cycles of a tile product of ``fmacs`` FMACs: `timing.vector_cycles`, as
    `compute.local_matmul` charges them."""
    return vector_cycles(spec, fmacs, dtype, "fmac", reads=2, writes=1,
                         accumulate=fabric_accumulate(accumulate),
                         element_bytes=BYTES[dtype])


def fmacs_per_cycle(spec: WaferSpec, dtype: str, accumulate: str) -> float:
    """Peak FMACs per cycle per PE on this datapath (SIMD width or SRAM ports, the lower)."""
    probe = 1 << 20
    return probe / float(fmac_cycles(spec, probe, dtype, accumulate))


def wavelets_per_nonzero(dtype: str) -> int:
    """A sparse sender sends (value, index) pairs: a 16-bit value and a 16-bit index share
    one 32-bit wavelet; an fp32 value needs a second wavelet for its index."""
    return 1 if BYTES[dtype] == 2 else 2


def sparse_wavelets(nnz: np.ndarray | float, dtype: str) -> np.ndarray:
    """Wavelets of a zero-skipping send: the nonzeros plus one end-of-tile control wavelet
    (the receiver cannot otherwise know an empty or short tile has ended)."""
    return np.asarray(nnz, dtype=float) * wavelets_per_nonzero(dtype) + 1.0


def densest_block(density: float, block: int, count: int) -> float:
    """Expected nonzero fraction of the densest of ``count`` blocks of ``block`` elements
    cut from an unstructured mask of mean ``density``.

    Why: a ring GEMM's synchronous step holds every block of the weight on some PE at once
    (each step is a permutation of the blocks), so with zero skipping every step lasts as
    long as the densest block's sends and FMACs. Unstructured pruning keeps each weight
    independently [A], so a block's nonzeros are binomial; the maximum of ``count`` of them
    is taken at the Gaussian tail, mean + sigma * sqrt(2 ln count), capped at a full block.
    """
    if block <= 0 or count <= 1 or density <= 0.0 or density >= 1.0:
        return density
    mean = density * block
    sigma = math.sqrt(block * density * (1.0 - density))
    return min(1.0, (mean + sigma * math.sqrt(2.0 * math.log(count))) / block)


def blocks(n: int, parts: int) -> int:
    """Block size when ``n`` is cut into ``parts`` equal padded blocks."""
    return math.ceil(n / parts)


def check_nnz(kernel: str, name: str, nnz: np.ndarray | None, shape: tuple[int, int],
              capacity: int) -> np.ndarray | None:
    """An explicit nonzero count per block must match the grid and fit the block."""
    if nnz is None:
        return None
    nnz = np.asarray(nnz, dtype=float)
    if nnz.shape != shape:
        raise KernelShapeError(f"{kernel}: {name} must give one nonzero count per block, "
                               f"shape {shape}, got {nnz.shape}")
    if (nnz < 0).any() or (nnz > capacity).any():
        raise KernelShapeError(f"{kernel}: {name} counts must lie in [0, {capacity}] (the "
                               f"elements of one block)")
    return nnz


def mask_blocks(kernel: str, mask: np.ndarray | None, shape: tuple[int, int],
                parts: tuple[int, int], block: tuple[int, int]) -> np.ndarray | None:
    """Validate a weight mask against the weight's shape; return nonzeros per block.

    ``parts`` blocks of ``block`` elements cut the (zero-padded) weight, as the kernels
    lay it out, so a timing-only run charges every PE the nonzeros its block really has.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise KernelShapeError(f"{kernel}: mask of shape {mask.shape} does not match the "
                               f"weight [{shape[0]},{shape[1]}]; pass a boolean "
                               f"[{shape[0]},{shape[1]}] array (True = kept)")
    (pr, pc), (rb, cb) = parts, block
    padded = np.zeros((pr * rb, pc * cb), dtype=bool)
    padded[: shape[0], : shape[1]] = mask.astype(bool)
    return padded.reshape(pr, rb, pc, cb).sum(axis=(1, 3)).astype(float)


def skip_with_mask(skip: str | None) -> str:
    """A weight mask means zero weights are skipped (on top of any activation skipping)."""
    return "both" if skip in ("a", "both") else "b"


def distinct_parts(size: int, limit: int) -> list[int]:
    """Part counts <= limit that give distinct block sizes ceil(size / parts): for each
    block size the fewest parts that reach it."""
    limit = max(1, min(limit, size))
    tiles = np.unique(np.ceil(size / np.arange(1, limit + 1)).astype(int))
    parts = np.unique(np.ceil(size / tiles).astype(int))
    return [int(p) for p in parts if 1 <= p <= limit]
