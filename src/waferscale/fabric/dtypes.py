"""Storage dtypes of the fabric and the hardware's accumulate rules.

NumPy has no bfloat16, so bf16 values are held in float32 arrays rounded to bf16 after every
operation that writes them (round to nearest even, as the hardware's converters do). fp16 is
NumPy's float16. Accumulation: fp32 FMACs accumulate in fp32; 16-bit FMACs either accumulate
in their own dtype (the SIMD-4 datapath) or in fp32 (the SIMD-2 "mixed" datapath).
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import DtypeError

STORAGE = {"fp32": np.float32, "fp16": np.float16, "bf16": np.float32}
BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def check_dtype(dtype: str) -> str:
    if dtype not in STORAGE:
        raise DtypeError(f"dtype {dtype!r} is not a fabric storage dtype; use one of "
                         f"{', '.join(STORAGE)}")
    return dtype


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    arr = np.asarray(x, dtype=np.float32)
    # ascontiguousarray makes a 0-d array 1-d: the bits are reshaped back to x's shape
    bits = np.ascontiguousarray(arr).view(np.uint32).reshape(arr.shape)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) & np.uint32(0xFFFF0000)).view(np.float32)
    # NaNs keep their payload high bits instead of rounding into infinity.
    return np.where(np.isnan(x), np.float32(np.nan), out).astype(np.float32)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """Cast values to how the fabric stores ``dtype``."""
    check_dtype(dtype)
    if dtype == "bf16":
        return round_bf16(np.asarray(x, dtype=np.float32))
    return np.asarray(x, dtype=STORAGE[dtype])


def compute_dtype(dtype: str, accumulate: str | None = None) -> type:
    """NumPy dtype arithmetic is done in: the accumulator's storage, else the operand's."""
    return STORAGE[accumulate or dtype]


def elements_per_wavelet(dtype: str) -> int:
    """Elements per wavelet when an instruction takes its operand from the fabric (an FMAC,
    an add, a move into a DSD of ``dtype``): one, for every dtype, 16-bit data in the low
    half [A] (the SDK's fabric DSDs count wavelets per element).

    Moving stored tiles memory to memory is different: see `move_wavelets`.
    """
    check_dtype(dtype)
    return 1


def move_wavelets(elements: np.ndarray | float, dtype: str, wavelet_bits: int = 32
                  ) -> np.ndarray:
    """Wavelets that move ``elements`` stored values from one PE's memory to another's when
    the program sends the tile as raw 32-bit words: a wavelet carries ``wavelet_bits`` of
    data [S: SDK, 32 bits + a 5-bit colour], so two 16-bit values per wavelet, one fp32.

    Only pure moves can pack (the receiver stores the words and computes on them from
    memory, as a GEMM's shifted blocks are); an instruction that consumes fabric data
    directly takes one element per wavelet (`elements_per_wavelet`).
    """
    per = max(1, wavelet_bits // (8 * BYTES[check_dtype(dtype)]))
    elements = np.asarray(elements, dtype=float)
    return elements if per == 1 else np.ceil(elements / per)
