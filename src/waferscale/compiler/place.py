"""A first, simple, correct placer: shelf ("strip") packing in pipeline order.

Why this simple: pipelined execution only needs every stage on its own, non-overlapping
rectangle; placing producers next to consumers shortens the streams but is an optimisation
(a later, EDA-grade placer replaces this module behind the same interface). Stages are laid
left to right in topological order along horizontal strips; a strip is as tall as its
tallest rectangle, and the next strip starts below it, so consecutive stages are
neighbours and the stream between them is short.
"""

from __future__ import annotations

from typing import Any

from waferscale.compiler.errors import FitError
from waferscale.fabric.grid import Rect
from waferscale.hardware.spec import WaferSpec


def place(program: Any, spec: WaferSpec) -> dict[str, Rect]:
    """``{stage name: Rect}`` for every on-wafer stage of ``program`` (a plan or program with
    ``.stages``, each having ``name``, ``kind`` and ``rect`` = (rows, cols)).

    Raises :class:`FitError` naming the first stage that does not fit.
    """
    out: dict[str, Rect] = {}
    row = col = shelf = 0
    for st in program.stages:
        if st.kind == "fallback":
            continue
        r, c = st.rect
        if r > spec.rows or c > spec.cols:
            raise FitError(f"stage {st.name} ({st.kind}) needs {r}x{c} PEs, larger than the "
                           f"{spec.rows}x{spec.cols} wafer")
        if col + c > spec.cols:
            row, col, shelf = row + shelf, 0, 0
        if row + r > spec.rows:
            raise FitError(f"stage {st.name} ({st.kind}, {r}x{c} PEs) does not fit: the strips "
                           f"already fill {row} of {spec.rows} rows; the model needs weight "
                           f"streaming or smaller rectangles")
        out[st.name] = Rect(row, col, r, c)
        col += c
        shelf = max(shelf, r)
    return out


__all__ = ["place"]
