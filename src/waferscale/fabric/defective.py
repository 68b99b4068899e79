"""A fabric on a flawed wafer: the remap's detours become per-link latency.

The hardware layer (`waferscale.hardware.defects`) hides defective cores behind spares so
that software still sees a perfect rectangle; the only visible trace is that some logical
links are physically longer. This module is the bridge: it turns a defect map into a
`Remap` and hands the remap's extra cycles per link to `Fabric(link_extra=...)`, which every
movement primitive already charges. A program therefore runs *unchanged* on the result and
computes the same values; only its clocks move. The fabric layer imports the hardware layer,
never the reverse, so this lives here and not in ``hardware/defects.py``.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import GridError
from waferscale.fabric.grid import Fabric
from waferscale.hardware.defects import DefectMap, Remap, generate_defects
from waferscale.hardware.spec import WaferSpec, get_spec


def _shape(spec: WaferSpec, rows: int | None, cols: int | None) -> tuple[int, int]:
    rows = spec.rows if rows is None else rows
    cols = spec.cols if cols is None else cols
    return rows, cols


def link_extra_for(remap: Remap, spec: WaferSpec, rows: int, cols: int) -> np.ndarray:
    """The remap's ``[4, rows, cols]`` extra cycles of the top-left rectangle a program uses.

    The remap covers the spec's whole program rectangle (spares are per physical row, so a
    smaller remap would be a different wafer); a program on a sub-rectangle only uses the
    links inside it, so slicing is exact. Links leaving the slice are never used by it.
    """
    lrows, lcols = remap.shape
    if rows > lrows or cols > lcols:
        raise GridError(f"fabric of {rows}x{cols} PEs does not fit the remapped rectangle "
                        f"of {lrows}x{lcols}; use a smaller fabric or a larger spec")
    extra = remap.link_extra_cycles(spec.hop_cycles)[:, :rows, :cols]
    return np.ascontiguousarray(extra)


#: What ``waferscale.compile(defects=...)`` accepts: a ready `Remap`, a `DefectMap` to remap,
#: a density per mm² (seed 0) or a ``(density, seed)`` pair to draw a Poisson map from.
DefectsLike = Remap | DefectMap | float | tuple[float, int]


def resolve_remap(spec: WaferSpec | str | None, defects: DefectsLike | None) -> Remap | None:
    """The `Remap` behind a ``defects=`` argument (None for a perfect wafer).

    One entry point so that the compiler, the runtime and the benchmarks draw the same map
    from the same (density, seed); raises `SparesExhaustedError` when it cannot be hidden.
    """
    if defects is None or isinstance(defects, Remap):
        return defects
    spec = get_spec(spec)
    if isinstance(defects, DefectMap):
        return Remap.from_defects(defects, spec)
    if isinstance(defects, tuple):
        density, seed = defects
    else:
        density, seed = float(defects), 0
    return Remap.from_defects(generate_defects(spec, float(density), seed=int(seed)), spec)


def link_extra_at(extra: np.ndarray, row: int, col: int, rows: int, cols: int) -> np.ndarray:
    """Slice a wafer-wide ``[4, R, C]`` link-extra array at a placed rectangle.

    A compiled stage runs on a fabric the size of its kernel grid, whose PE (0, 0) sits at
    the placed rectangle's corner (``row``, ``col``) on the wafer; it only uses links inside
    that rectangle, so the slice is exact (the links leaving it belong to other stages).
    """
    _, lrows, lcols = extra.shape
    if row < 0 or col < 0 or row + rows > lrows or col + cols > lcols:
        raise GridError(f"rectangle ({row}, {col}, {rows}, {cols}) does not fit the remapped "
                        f"rectangle of {lrows}x{lcols}")
    return np.ascontiguousarray(extra[:, row:row + rows, col:col + cols])


def fabric_from_remap(spec: WaferSpec | str | None, remap: Remap, rows: int | None = None,
                      cols: int | None = None, *, timing_only: bool = False) -> Fabric:
    """A fresh `Fabric` whose links cost what ``remap`` says (used again after a re-remap)."""
    spec = get_spec(spec)
    rows, cols = _shape(spec, rows, cols)
    return Fabric(spec, rows, cols, timing_only=timing_only,
                  link_extra=link_extra_for(remap, spec, rows, cols))


def fabric_from_defects(spec: WaferSpec | str | None, defect_map: DefectMap,
                        rows: int | None = None, cols: int | None = None, *,
                        timing_only: bool = False) -> tuple[Fabric, Remap]:
    """Remap a given defect map (raises `SparesExhaustedError` if a row runs out)."""
    spec = get_spec(spec)
    remap = Remap.from_defects(defect_map, spec)
    return fabric_from_remap(spec, remap, rows, cols, timing_only=timing_only), remap


def defective_fabric(spec: WaferSpec | str | None, rows: int | None = None,
                     cols: int | None = None, density_per_mm2: float = 0.0, seed: int = 0,
                     model: str = "poisson", timing_only: bool = False
                     ) -> tuple[Fabric, Remap]:
    """Draw a defect map at ``density_per_mm2`` (reproducible from ``seed``), remap, and
    return a ``rows x cols`` fabric with the detours plus the remap that explains them.

    ``rows``/``cols`` default to the spec's program rectangle. Programs run on the fabric
    exactly as on `Fabric(spec, rows, cols)`; values are identical, cycles are not lower.
    Raises `SparesExhaustedError` when the map cannot be hidden behind the spares.
    """
    spec = get_spec(spec)
    dmap = generate_defects(spec, density_per_mm2, model=model, seed=seed)
    return fabric_from_defects(spec, dmap, rows, cols, timing_only=timing_only)
