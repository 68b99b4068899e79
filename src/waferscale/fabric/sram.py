"""Per-PE SRAM accounting with the hard capacity limit.

Bytes are tracked per PE as an int64 array, so a tensor blocked unevenly over a rectangle
charges each PE what it really holds. Allocation is all-or-nothing: a failing request leaves
every PE's usage untouched, so nothing already placed is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import SramOverflowError, WaferscaleError


@dataclass(frozen=True)
class Allocation:
    name: str
    row: int
    col: int
    bytes: np.ndarray  # [rows, cols] of the rectangle


class SramAllocator:
    """Usage of every PE's SRAM over a fabric of ``rows`` x ``cols`` PEs."""

    def __init__(self, rows: int, cols: int, capacity: int) -> None:
        self.capacity = capacity
        self.used = np.zeros((rows, cols), dtype=np.int64)
        self.allocations: dict[str, Allocation] = {}
        self.high_water = 0

    def alloc(self, name: str, row: int, col: int, nbytes: np.ndarray | int,
              shape: tuple[int, int] | None = None) -> Allocation:
        if name in self.allocations:
            raise WaferscaleError(f"SRAM: a tensor named {name!r} is already allocated; "
                                  f"free it or choose another name")
        if shape is None:
            shape = np.shape(nbytes)
        need = np.broadcast_to(np.asarray(nbytes, dtype=np.int64), shape)
        region = self.used[row:row + shape[0], col:col + shape[1]]
        # in place, then undone on overflow: one pass instead of a copy and a write-back
        region += need
        top = int(region.max()) if region.size else 0
        if top > self.capacity:
            r, c = np.unravel_index(int(np.argmax(region - self.capacity)), shape)
            region -= need
            free = int(self.capacity - region[r, c])
            raise SramOverflowError(
                f"SRAM overflow at PE (row {row + r}, col {col + c}): tensor {name!r} needs "
                f"{int(need[r, c])} B but only {free} B of {self.capacity} B are free; "
                f"spread it over more PEs or free other tensors")
        self.high_water = max(self.high_water, top)
        # a read-only array of the right shape (tensors share one per layout) is kept as is
        if isinstance(nbytes, np.ndarray) and not nbytes.flags.writeable \
                and nbytes.shape == tuple(shape) and nbytes.dtype == np.int64:
            kept = nbytes
        else:
            kept = np.array(need)
        allocation = Allocation(name, row, col, kept)
        self.allocations[name] = allocation
        return allocation

    def free(self, name: str) -> None:
        allocation = self.allocations.pop(name, None)
        if allocation is None:
            return
        h, w = allocation.bytes.shape
        self.used[allocation.row:allocation.row + h, allocation.col:allocation.col + w] -= \
            allocation.bytes

    def peak(self) -> int:
        """The most bytes any PE has held at once so far."""
        return self.high_water
