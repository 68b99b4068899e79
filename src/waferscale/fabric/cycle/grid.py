"""PE selections: how a program says "these PEs" in SPMD style.

Every per-PE setting (a route, a task, an instruction mask, an allocation) takes ``where``:
None for all PEs, a boolean [rows, cols] array, an index expression such as
``(slice(None), 0)`` for the first column, or a function of the row and column index grids.
One helper turns all of them into a boolean grid so the rest of the simulator sees one form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from waferscale.errors import GridError

Where = None | np.ndarray | tuple[Any, ...] | slice | int | Callable[..., Any]


def select(where: Where, rows: int, cols: int, what: str = "selection") -> np.ndarray:
    """A boolean [rows, cols] grid for ``where``."""
    if where is None:
        return np.ones((rows, cols), dtype=bool)
    if callable(where):
        r, c = np.indices((rows, cols))
        out = np.asarray(where(r, c))
        if out.shape != (rows, cols) or out.dtype != bool:
            raise GridError(f"{what}: the function must return a bool array of shape "
                            f"({rows}, {cols}), got {out.dtype} {out.shape}")
        return out
    if isinstance(where, np.ndarray) and where.dtype == bool:
        if where.shape != (rows, cols):
            raise GridError(f"{what}: mask shape {where.shape} does not match the "
                            f"{rows}x{cols} grid")
        return where.copy()
    out = np.zeros((rows, cols), dtype=bool)
    try:
        out[where] = True
    except (IndexError, TypeError, ValueError) as exc:
        raise GridError(f"{what}: {where!r} does not select PEs of a {rows}x{cols} grid "
                        f"({exc})") from None
    return out


def per_pe(value: Any, rows: int, cols: int, dtype: Any, what: str) -> np.ndarray:
    """A scalar or [rows, cols] array broadcast to a flat per-PE vector of ``dtype``."""
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(rows * cols, arr, dtype=dtype)
    if arr.shape != (rows, cols):
        raise GridError(f"{what}: per-PE values must be a scalar or shaped ({rows}, {cols}), "
                        f"got {arr.shape}")
    return arr.reshape(-1).copy()


def pe_name(pe: int, cols: int) -> str:
    """``(row,col)`` for a flat PE index, the way messages name PEs."""
    return f"({pe // cols},{pe % cols})"
