"""Geometry shared by the primitives: lines of PEs, directions, colour allocation.

Every collective runs along *lines*: the rows of a rectangle (east/west) or its columns
(south/north). Writing each primitive once in terms of "position along the line" and the
ports toward higher and lower positions lets one program serve all four directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import ColorBudgetError, GridError, ShapeError

#: direction -> (axis, reverse): reverse means data moves toward lower row/col indices
DIRECTIONS = {"east": ("row", False), "west": ("row", True),
              "south": ("col", False), "north": ("col", True)}


@dataclass(frozen=True)
class Lines:
    """Positions along the lines of ``rect`` = (row, col, rows, cols) of a rows x cols grid.

    ``pos`` is -1 outside the rectangle; ``fwd`` is the port toward higher positions.
    """

    pos: np.ndarray
    inside: np.ndarray
    length: int
    fwd: str
    back: str

    @classmethod
    def of(cls, grid: tuple[int, int], rect: tuple[int, int, int, int] | None, axis: str,
           reverse: bool = False) -> Lines:
        rows, cols = grid
        r0, c0, h, w = rect if rect is not None else (0, 0, rows, cols)
        if r0 < 0 or c0 < 0 or h < 1 or w < 1 or r0 + h > rows or c0 + w > cols:
            raise GridError(f"rectangle {h}x{w} at ({r0},{c0}) does not fit the {rows}x{cols} "
                            f"grid")
        if axis not in ("row", "col"):
            raise ShapeError(f"axis {axis!r}: use 'row' (east-west) or 'col' (north-south)")
        r, c = np.indices((rows, cols))
        inside = (r >= r0) & (r < r0 + h) & (c >= c0) & (c < c0 + w)
        raw = (c - c0) if axis == "row" else (r - r0)
        length = w if axis == "row" else h
        pos = np.where(inside, (length - 1 - raw) if reverse else raw, -1)
        hi, lo = ("E", "W") if axis == "row" else ("S", "N")
        fwd, back = (lo, hi) if reverse else (hi, lo)
        return cls(pos, inside, length, fwd, back)

    def at(self, p: int | np.ndarray) -> np.ndarray:
        return self.inside & (self.pos == p)


class ColorPool:
    """Hands out colours in order and fails with the budget when they run out."""

    def __init__(self, budget: int, start: int = 0) -> None:
        self.budget, self.next = budget, start

    def take(self, count: int, what: str) -> list[int]:
        if self.next + count > self.budget:
            raise ColorBudgetError(
                f"{what} needs {count} more colour(s) but only {self.budget - self.next} of the "
                f"{self.budget} routable colours are left; use fewer phases or a smaller "
                f"distance")
        out = list(range(self.next, self.next + count))
        self.next += count
        return out
