"""Per-PE SRAM accounting with the hard capacity limit.

Bytes are tracked per PE as an int64 array, so a tensor blocked unevenly over a rectangle
charges each PE what it really holds. Allocation is all-or-nothing: a failing request leaves
every PE's usage untouched, so nothing already placed is lost.

Most tensors charge the same bytes to every PE of their rectangle, and a program allocates
and frees them on the same rectangle over and over (every step of a GEMM). Such uniform
charges on one rectangle are kept as a pending per-PE total instead of being added to the
array each time: integer sums are exact in any order, the rectangle's largest usage is that
total plus the array's maximum there (kept while the array does not change), so the capacity
check and the high-water mark are the same, and a wafer-wide alloc/free costs no pass over
the wafer. Anything else (another rectangle, uneven bytes, a look at `used`) settles first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import SramOverflowError, WaferscaleError

Region = tuple[int, int, int, int]


@dataclass(frozen=True)
class Allocation:
    name: str
    row: int
    col: int
    bytes: np.ndarray  # [rows, cols] of the rectangle
    uniform: int | None = None      # the bytes of every PE, when they are all the same


class SramAllocator:
    """Usage of every PE's SRAM over a fabric of ``rows`` x ``cols`` PEs."""

    def __init__(self, rows: int, cols: int, capacity: int) -> None:
        self.capacity = capacity
        self._used = np.zeros((rows, cols), dtype=np.int64)
        self.allocations: dict[str, Allocation] = {}
        self.high_water = 0
        # uniform charges not yet in ``_used``: at most one rectangle at a time
        self._pending: tuple[Region, int] | None = None
        # max of ``_used`` over a rectangle, valid until ``_used`` changes
        self._region_max: dict[Region, int] = {}

    @property
    def used(self) -> np.ndarray:
        """Bytes every PE holds now (callers may write into it: the caches are dropped)."""
        self._settle()
        self._region_max.clear()
        return self._used

    def _settle(self) -> None:
        if self._pending is not None:
            (row, col, h, w), per_pe = self._pending
            self._pending = None
            if per_pe:
                self._used[row:row + h, col:col + w] += per_pe
                self._region_max.clear()

    def alloc(self, name: str, row: int, col: int, nbytes: np.ndarray | int,
              shape: tuple[int, int] | None = None) -> Allocation:
        if name in self.allocations:
            raise WaferscaleError(f"SRAM: a tensor named {name!r} is already allocated; "
                                  f"free it or choose another name")
        if shape is None:
            shape = np.shape(nbytes)
        if np.ndim(nbytes) == 0 and self._alloc_uniform(name, (row, col, *shape), int(nbytes)):
            return self.allocations[name]
        self._settle()
        self._region_max.clear()
        need = np.broadcast_to(np.asarray(nbytes, dtype=np.int64), shape)
        region = self._used[row:row + shape[0], col:col + shape[1]]
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

    def _alloc_uniform(self, name: str, region: Region, per_pe: int) -> bool:
        """Charge ``per_pe`` bytes to every PE of ``region`` as a pending total; False (and
        nothing charged) where the exact path must decide: another rectangle pending, or
        the charge would overflow (that path names the PE)."""
        if self._pending is not None and self._pending[0] != region:
            self._settle()
        pending = self._pending[1] if self._pending is not None else 0
        row, col, h, w = region
        if h < 1 or w < 1:
            return False
        base = self._region_max.get(region)
        if base is None:
            base = self._region_max[region] = int(self._used[row:row + h, col:col + w].max())
        top = base + pending + per_pe
        if top > self.capacity:
            return False
        self._pending = (region, pending + per_pe)
        self.high_water = max(self.high_water, top)
        view = np.broadcast_to(np.int64(per_pe), (h, w))
        self.allocations[name] = Allocation(name, row, col, view, per_pe)
        return True

    def free(self, name: str) -> None:
        allocation = self.allocations.pop(name, None)
        if allocation is None:
            return
        h, w = allocation.bytes.shape
        region = (allocation.row, allocation.col, h, w)
        if allocation.uniform is not None and (self._pending is None
                                               or self._pending[0] == region):
            pending = self._pending[1] if self._pending is not None else 0
            self._pending = (region, pending - allocation.uniform)
            return
        self._settle()
        self._region_max.clear()
        self._used[allocation.row:allocation.row + h, allocation.col:allocation.col + w] -= \
            allocation.bytes

    def peak(self) -> int:
        """The most bytes any PE has held at once so far."""
        return self.high_water
