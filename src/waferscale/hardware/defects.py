"""Defect maps and the spare-core remap: how a flawed wafer still looks like a perfect mesh.

A wafer is never clean, so the physical array carries spare cores and the hardware maps
every logical PE of the program rectangle onto a healthy physical one. Software (and the
fabric model above this layer) then sees a perfect ``rows x cols`` rectangle; the only trace
of the defects is that some logical links are physically longer and cost extra hops.

Geometry (see docs/defects.md for the full argument):

* The physical array has the same rows as the logical one and ``physical_cols(cols,
  spare_fraction) = ceil(cols / (1 - spare_fraction))`` columns, so ``spare_fraction`` is the
  share of *physical* cores that are spares (that is how the WSE-3 figure "900k enabled of
  ~970k physical" reads). Each row therefore owns ``S = physical_cols - cols`` spare cores.
* Remap ("row shift with neighbour coordination"): logical PE ``(r, c)`` sits at physical
  ``(r, c + s[r, c])``. Within a row the shift ``s`` never decreases (PEs slide right past
  each defect, one position per defect), every target core is healthy, ``s <= S``, and two
  vertical neighbours differ by at most one position, ``|s[r, c] - s[r+1, c]| <= 1``, so
  the redundant diagonal links (NE/SE/NW/SW) always join them in one hop. We compute the
  *least* such shift field by a vectorised fixed-point iteration; if it needs more than
  ``S`` in some row, that row's spares are exhausted and `SparesExhaustedError` says so.
* Link cost: a vertical logical link is one hop (straight or diagonal). A horizontal link
  whose endpoints are ``w`` columns apart physically takes ``w + 1`` hops, through the gap
  if its cores are healthy, otherwise around it through the row above or below via the
  diagonal links; if all three rows are blocked it goes two rows out (``w + 3`` hops).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from waferscale.errors import DefectError, DefectMapError, SparesExhaustedError
from waferscale.hardware.spec import WaferSpec

#: Defect generators. ``poisson``: every core independently defective with probability
#: ``1 - exp(-D0 * core_area)``. ``clustered``: the same, but the density of each cluster
#: block is scaled by a Gamma(alpha, 1/alpha) factor (mean 1), so counts per block are
#: negative binomial and vary more than Poisson ones.
MODELS = ("poisson", "clustered")
#: Default clustering parameter: smaller is more clustered, infinity is Poisson.
DEFAULT_ALPHA = 2.0
#: Default cluster block in cores (32 x 32 cores is about 51 mm^2 at 0.05 mm^2 per core).
DEFAULT_CLUSTER_SHAPE = (32, 32)
#: Header written into every defect-map file, so a stray .npz/.json is rejected early.
FILE_FORMAT = "waferscale-defect-map"
FILE_VERSION = 1
#: Direction order of `Remap.link_extra_cycles`: East (col+1), West, South (row+1), North.
DIRECTIONS = ("east", "west", "south", "north")


# -- geometry -------------------------------------------------------------------------------

def physical_cols(cols: int, spare_fraction: float) -> int:
    """Physical columns needed so spares are ``spare_fraction`` of each physical row.

    ``ceil(cols / (1 - f))``: on WSE-2 (755 columns, f = 1.5 %) that is 767 (12 spares per
    row); on WSE-3 (f = 70k/970k) 814, i.e. 92.8 % of the physical cores enabled.
    """
    if not isinstance(cols, int | np.integer) or cols <= 0:
        raise DefectError(f"field cols must be a positive integer, got {cols!r}")
    if not 0.0 <= spare_fraction < 1.0:
        raise DefectError(f"field spare_fraction must be in [0, 1), got {spare_fraction!r}")
    if spare_fraction == 0.0:
        return int(cols)
    return max(int(cols), math.ceil(cols / (1.0 - spare_fraction) - 1e-9))


def physical_shape(spec: WaferSpec) -> tuple[int, int]:
    """Shape of the physical core array behind ``spec``'s program rectangle."""
    return spec.rows, physical_cols(spec.cols, spec.spare_fraction)


def spares_per_row(spec: WaferSpec) -> int:
    """Spare cores each physical row owns."""
    return physical_shape(spec)[1] - spec.cols


def check_density(density_per_mm2: float) -> float:
    if (not isinstance(density_per_mm2, int | float | np.floating)
            or isinstance(density_per_mm2, bool) or not math.isfinite(density_per_mm2)
            or density_per_mm2 < 0):
        raise DefectError(f"field density_per_mm2 must be a finite number >= 0, "
                          f"got {density_per_mm2!r}")
    return float(density_per_mm2)


def check_alpha(alpha: float) -> float:
    if (not isinstance(alpha, int | float | np.floating) or not alpha > 0
            or not math.isfinite(alpha)):
        raise DefectError(f"field alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


# -- defect maps ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DefectMap:
    """Which physical cores are defective, plus how the map was made.

    ``defective`` is a read-only bool array ``[rows, physical_cols]`` of the spec named by
    ``spec_name``; the provenance fields travel with the file so a result can state the
    assumptions it was computed under.
    """

    defective: np.ndarray
    spec_name: str
    density_per_mm2: float = 0.0
    model: str = "none"
    alpha: float | None = None
    seed: int | None = None
    core_area_mm2: float | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.defective)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DefectMapError(f"field defective must be a non-empty 2-D array "
                                 f"[rows, physical_cols], got shape {list(arr.shape)}")
        if arr.dtype != np.bool_:
            if not np.isin(arr, (0, 1)).all():
                raise DefectMapError("field defective must hold booleans (0/1)")
            arr = arr.astype(np.bool_)
        arr = np.array(arr, dtype=np.bool_, copy=True)
        arr.setflags(write=False)
        object.__setattr__(self, "defective", arr)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def perfect(cls, spec: WaferSpec) -> DefectMap:
        """A flawless wafer: useful as the baseline of a defect study."""
        return cls(np.zeros(physical_shape(spec), dtype=bool), spec.name)

    @classmethod
    def from_coords(cls, spec: WaferSpec, coords: Sequence[Sequence[int]] | np.ndarray,
                    **provenance: Any) -> DefectMap:
        """A map with defects at the given physical ``(row, col)`` positions."""
        shape = physical_shape(spec)
        arr = np.zeros(shape, dtype=bool)
        pts = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
        bad = (pts[:, 0] < 0) | (pts[:, 0] >= shape[0]) | (pts[:, 1] < 0) | (pts[:, 1] >= shape[1])
        if bad.any():
            r, c = pts[np.argmax(bad)]
            raise DefectMapError(f"defect ({r}, {c}) is outside the physical array; field "
                                 f"coords must lie in [0, {shape[0]}) x [0, {shape[1]})")
        arr[pts[:, 0], pts[:, 1]] = True
        return cls(arr, spec.name, model=provenance.pop("model", "manual"), **provenance)

    def with_failed(self, cores: Sequence[Sequence[int]] | np.ndarray) -> tuple[DefectMap, int]:
        """This map with the physical ``cores`` (row, col) also defective, and how many of
        them are new. A core already marked (a fault reported twice, or on a core retired
        earlier) changes nothing: the spare it took is not taken again."""
        pts = np.asarray(cores, dtype=np.int64).reshape(-1, 2)
        arr = np.array(self.defective)
        before = int(np.count_nonzero(arr))
        arr[pts[:, 0], pts[:, 1]] = True
        return dataclasses.replace(self, defective=arr), int(np.count_nonzero(arr)) - before

    # -- facts ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.defective.shape[0]), int(self.defective.shape[1]))

    @property
    def n_defects(self) -> int:
        """Defective cores (a core with several flaws counts once: it is lost either way)."""
        return int(np.count_nonzero(self.defective))

    def defects_per_row(self) -> np.ndarray:
        return np.count_nonzero(self.defective, axis=1)

    def coords(self) -> np.ndarray:
        """``[n, 2]`` physical (row, col) of every defective core, row-major."""
        return np.argwhere(self.defective)

    def check(self, spec: WaferSpec) -> None:
        """Raise `DefectMapError` unless this map was made for ``spec``'s physical array."""
        if self.spec_name != spec.name:
            raise DefectMapError(f"defect map: field spec is {self.spec_name!r}, "
                                 f"expected {spec.name!r}")
        expected = list(physical_shape(spec))
        if list(self.shape) != expected:
            raise DefectMapError(f"defect map: field shape is {list(self.shape)}, expected "
                                 f"{expected} (rows x physical columns of {spec.name!r})")

    def metadata(self) -> dict[str, Any]:
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "spec": self.spec_name,
                "shape": list(self.shape), "density_per_mm2": self.density_per_mm2,
                "model": self.model, "alpha": self.alpha, "seed": self.seed,
                "core_area_mm2": self.core_area_mm2, "n_defects": self.n_defects}

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (dense bool array, compact) or ``.json`` (sparse, human-readable)."""
        path = Path(path)
        meta = self.metadata()
        if path.suffix == ".npz":
            with path.open("wb") as fh:
                np.savez_compressed(fh, defective=np.packbits(self.defective, axis=1),
                                    meta=np.array(json.dumps(meta)))
        elif path.suffix == ".json":
            meta["defects"] = self.coords().tolist()
            path.write_text(json.dumps(meta) + "\n")
        else:
            raise DefectMapError(f"defect map {path.name}: field suffix is {path.suffix!r}, "
                                 f"expected '.npz' or '.json'")
        return path

    @classmethod
    def load(cls, path: str | Path, spec: WaferSpec | None = None) -> DefectMap:
        """Read a map written by `save`; with ``spec``, reject a map of another spec or shape."""
        path = Path(path)
        if not path.is_file():
            raise DefectMapError(f"defect map {path} does not exist; write one with "
                                 f"DefectMap.save")
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
                    packed = data["defective"]
                shape = _meta_shape(meta, path)
                arr = np.unpackbits(packed, axis=1, count=shape[1]).astype(bool)
            elif path.suffix == ".json":
                meta = json.loads(path.read_text())
                shape = _meta_shape(meta, path)
                arr = np.zeros(shape, dtype=bool)
                pts = np.asarray(meta.get("defects", []), dtype=np.int64).reshape(-1, 2)
                if pts.size and ((pts < 0).any() or (pts[:, 0] >= shape[0]).any()
                                 or (pts[:, 1] >= shape[1]).any()):
                    raise DefectMapError(f"defect map {path.name}: field defects has a "
                                         f"position outside shape {list(shape)}")
                arr[pts[:, 0], pts[:, 1]] = True
            else:
                raise DefectMapError(f"defect map {path.name}: field suffix is "
                                     f"{path.suffix!r}, expected '.npz' or '.json'")
        except DefectMapError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DefectMapError(f"defect map {path.name} is not a readable {FILE_FORMAT} "
                                 f"file ({type(exc).__name__}); write it with DefectMap.save"
                                 ) from None
        if arr.shape != tuple(shape):
            raise DefectMapError(f"defect map {path.name}: field shape is {list(arr.shape)} in "
                                 f"the data, expected {list(shape)} from its header")
        dmap = cls(arr, str(meta.get("spec")), density_per_mm2=float(meta.get("density_per_mm2")
                                                                     or 0.0),
                   model=str(meta.get("model", "none")), alpha=meta.get("alpha"),
                   seed=meta.get("seed"), core_area_mm2=meta.get("core_area_mm2"))
        if spec is not None:
            try:
                dmap.check(spec)
            except DefectMapError as exc:
                raise DefectMapError(str(exc).replace("defect map:", f"defect map {path.name}:",
                                                      1)) from None
        return dmap


def _meta_shape(meta: Any, path: Path) -> tuple[int, int]:
    if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DefectMapError(f"defect map {path.name}: field format is {found!r}, "
                             f"expected {FILE_FORMAT!r}")
    if meta.get("version") != FILE_VERSION:
        raise DefectMapError(f"defect map {path.name}: field version is "
                             f"{meta.get('version')!r}, expected {FILE_VERSION}")
    shape = meta.get("shape")
    if (not isinstance(shape, list) or len(shape) != 2
            or not all(isinstance(v, int) and v > 0 for v in shape)):
        raise DefectMapError(f"defect map {path.name}: field shape is {shape!r}, expected "
                             f"[rows, physical_cols] of positive integers")
    return int(shape[0]), int(shape[1])


def generate_defects(spec: WaferSpec, density_per_mm2: float, *, model: str = "poisson",
                     alpha: float = DEFAULT_ALPHA, seed: int | np.random.Generator | None = 0,
                     cluster_shape: tuple[int, int] | None = DEFAULT_CLUSTER_SHAPE,
                     core_area_mm2: float | None = None) -> DefectMap:
    """Draw a defect map for ``spec``'s physical array, reproducibly from ``seed``.

    ``density_per_mm2`` is D0, the mean number of killer defects per mm^2; each core of
    area ``core_area_mm2`` (default: the spec's) is hit ``Poisson(D0 * area)`` times and is
    defective if hit at least once. ``clustered`` multiplies the density of each
    ``cluster_shape`` block of cores (``None``: the whole wafer shares one factor, the
    "large-area clustering" the yield model assumes) by Gamma(alpha, 1/alpha).
    """
    density = check_density(density_per_mm2)
    if model not in MODELS:
        raise DefectError(f"field model is {model!r}, expected one of {', '.join(MODELS)}")
    area = spec.core_area_mm2 if core_area_mm2 is None else float(core_area_mm2)
    if not area > 0:
        raise DefectError(f"field core_area_mm2 must be > 0, got {core_area_mm2!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shape = physical_shape(spec)
    lam = density * area
    used_alpha: float | None = None
    if model == "poisson":
        p: float | np.ndarray = -math.expm1(-lam)
    else:
        used_alpha = check_alpha(alpha)
        rows, cols = shape
        br, bc = (rows, cols) if cluster_shape is None else cluster_shape
        if not (isinstance(br, int) and isinstance(bc, int) and br > 0 and bc > 0):
            raise DefectError(f"field cluster_shape must be two positive integers, "
                              f"got {cluster_shape!r}")
        factor = rng.gamma(used_alpha, 1.0 / used_alpha, size=(-(-rows // br), -(-cols // bc)))
        factor = np.repeat(np.repeat(factor, br, axis=0), bc, axis=1)[:rows, :cols]
        p = -np.expm1(-lam * factor)
    defective = rng.random(shape) < p
    return DefectMap(defective, spec.name, density_per_mm2=density, model=model,
                     alpha=used_alpha, seed=seed if isinstance(seed, int) else None,
                     core_area_mm2=area)


# -- remap ----------------------------------------------------------------------------------

class Remap:
    """Logical rectangle -> healthy physical cores, and what each logical link really costs.

    Build with `Remap.perfect` (no defects, identity) or `Remap.from_defects`. The fabric
    reads `logical_to_physical` and `link_extra_cycles`; everything else is for reports.
    """

    def __init__(self, shift: np.ndarray, defective: np.ndarray, *, spec_name: str | None = None,
                 iterations: int = 0) -> None:
        """Prefer the constructors: ``shift[r, c]`` is physical col minus logical col."""
        shift = np.asarray(shift)
        defective = np.asarray(defective, dtype=bool)
        if shift.ndim != 2 or defective.ndim != 2 or shift.shape[0] != defective.shape[0]:
            raise DefectError(f"field shift {list(shift.shape)} and field defective "
                              f"{list(defective.shape)} must share their row count")
        self._shift = shift.astype(np.int32)
        self._shift.setflags(write=False)
        self._defective = defective.view()
        self._defective.setflags(write=False)
        self.spec_name = spec_name
        self.iterations = iterations
        rows, cols = self._shift.shape
        l2p = np.empty((rows, cols, 2), dtype=np.int64)
        l2p[..., 0] = np.arange(rows)[:, None]
        l2p[..., 1] = np.arange(cols)[None, :] + self._shift
        l2p.setflags(write=False)
        self.logical_to_physical: np.ndarray = l2p
        self._extra_hops: np.ndarray | None = None

    # -- constructors ---------------------------------------------------------------------
    @classmethod
    def perfect(cls, rows: int, cols: int) -> Remap:
        """A flawless ``rows x cols`` array without spares: every PE where it says it is."""
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int | np.integer) or value <= 0:
                raise DefectError(f"field {name} must be a positive integer, got {value!r}")
        return cls(np.zeros((rows, cols), dtype=np.int32), np.zeros((rows, cols), dtype=bool))

    @classmethod
    def from_defects(cls, defect_map: DefectMap, spec: WaferSpec) -> Remap:
        """Hide ``defect_map``'s flaws behind ``spec``'s spares (raises if a row runs out)."""
        defect_map.check(spec)
        return cls.from_array(defect_map.defective, spec.cols, spec_name=spec.name,
                              spare_fraction=spec.spare_fraction)

    @classmethod
    def from_array(cls, defective: np.ndarray, cols: int, *, spec_name: str | None = None,
                   spare_fraction: float | None = None) -> Remap:
        """Remap a bare bool array ``[rows, physical_cols]`` onto ``cols`` logical columns."""
        defective = np.asarray(defective, dtype=bool)
        if defective.ndim != 2 or defective.shape[1] < cols or cols <= 0:
            raise DefectError(f"field defective must be [rows, physical_cols >= cols={cols}], "
                              f"got shape {list(defective.shape)}")
        shift, iterations = _least_shift(defective, cols, spare_fraction)
        return cls(shift, defective, spec_name=spec_name, iterations=iterations)

    # -- facts ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Logical (rows, cols): what software sees."""
        return (int(self._shift.shape[0]), int(self._shift.shape[1]))

    @property
    def physical_shape(self) -> tuple[int, int]:
        return (int(self._defective.shape[0]), int(self._defective.shape[1]))

    @property
    def spares_per_row(self) -> int:
        return self.physical_shape[1] - self.shape[1]

    @property
    def shift(self) -> np.ndarray:
        """``[rows, cols]`` physical column minus logical column (0 .. spares_per_row)."""
        return self._shift

    @property
    def defective(self) -> np.ndarray:
        return self._defective

    @property
    def n_defects(self) -> int:
        return int(np.count_nonzero(self._defective))

    @property
    def n_remapped(self) -> int:
        """Logical PEs that do not sit on the physical core with their own coordinates."""
        return int(np.count_nonzero(self._shift))

    def physical_to_logical(self) -> np.ndarray:
        """``[rows, physical_cols]`` logical column hosted by each core, -1 if none."""
        rows, cols = self.shape
        out = np.full(self.physical_shape, -1, dtype=np.int64)
        out[self.logical_to_physical[..., 0], self.logical_to_physical[..., 1]] = \
            np.broadcast_to(np.arange(cols), (rows, cols))
        return out

    def link_extra_hops(self) -> np.ndarray:
        """``[4, rows, cols]`` extra hops per outgoing link (East, West, South, North)."""
        if self._extra_hops is None:
            self._extra_hops = _extra_hops(self.logical_to_physical[..., 1], self._defective)
            self._extra_hops.setflags(write=False)
        return self._extra_hops

    def link_extra_cycles(self, hop_cycles: int) -> np.ndarray:
        """``[4, rows, cols]`` float64 cycles beyond one normal hop on each logical link.

        Index 0..3 = East (col+1), West, South (row+1), North of each logical PE. A link
        that is physically adjacent (straight or diagonal) costs 0; one that skips ``w``
        cores costs ``w * hop_cycles`` (``w + 2`` hops' worth when all three rows are
        blocked and the detour goes two rows out). Links leaving the rectangle are 0.
        """
        if (not isinstance(hop_cycles, int | np.integer) or isinstance(hop_cycles, bool)
                or hop_cycles < 0):
            raise DefectError(f"field hop_cycles must be an integer >= 0, got {hop_cycles!r}")
        return self.link_extra_hops().astype(np.float64) * float(hop_cycles)

    def summary(self) -> dict[str, Any]:
        """Plain-JSON facts for reports: how many defects, how much was moved, detour cost."""
        extra = self.link_extra_hops()
        rows, cols = self.shape
        east = extra[0, :, :-1] if cols > 1 else np.zeros((rows, 0))
        south = extra[2, :-1, :] if rows > 1 else np.zeros((0, cols))
        links = east.size + south.size
        detours = int(np.count_nonzero(east) + np.count_nonzero(south))
        total = float(east.sum() + south.sum())
        return {
            "spec": self.spec_name,
            "rows": rows, "cols": cols,
            "physical_rows": self.physical_shape[0], "physical_cols": self.physical_shape[1],
            "spares_per_row": self.spares_per_row,
            "n_defects": self.n_defects,
            "n_remapped": self.n_remapped,
            "max_shift": int(self._shift.max(initial=0)),
            "mean_shift": float(self._shift.mean()) if self._shift.size else 0.0,
            "links": int(links),
            "detour_links": detours,
            "max_extra_hops": int(extra.max(initial=0)),
            "mean_extra_hops_per_link": total / links if links else 0.0,
            "iterations": self.iterations,
        }

    def __repr__(self) -> str:
        return (f"Remap({self.shape[0]}x{self.shape[1]} on {self.physical_shape[0]}x"
                f"{self.physical_shape[1]}, defects={self.n_defects}, "
                f"remapped={self.n_remapped})")


def _least_shift(defective: np.ndarray, cols: int,
                 spare_fraction: float | None) -> tuple[np.ndarray, int]:
    """The least shift field obeying the remap rules, by monotone fixed-point iteration.

    Start from each row's own minimum (the c-th healthy core), then repeat: enforce the
    vertical rule ``s[r] >= s[r±1] - 1`` (a max-plus scan, two cumulative maxima over rows),
    move any PE that landed on a defect to the next healthy core, and restore the row
    order with a cumulative maximum along the row. Every step only raises ``s`` to a value
    any valid field must reach, so the first fixed point is the least valid field, and a
    shift beyond the spares proves the wafer cannot be remapped (no better choice exists).
    """
    rows, phys = defective.shape
    spares = phys - cols
    healthy = ~defective
    per_row = np.count_nonzero(defective, axis=1)
    short = np.flatnonzero(per_row > spares)
    if short.size:
        _raise_exhausted(defective, int(short[0]), spares, spare_fraction, need=None)
    # Each row on its own: logical c -> the c-th healthy core of that row.
    hr, hc = np.nonzero(healthy)
    del hr
    starts = np.concatenate(([0], np.cumsum(phys - per_row)[:-1]))
    col = np.arange(cols, dtype=np.int32)
    shift = (hc[starts[:, None] + col[None, :]] - col).astype(np.int32)
    if not defective.any():
        return shift, 0
    # Small integers halve the memory traffic of the scans (the hot loop is bandwidth bound).
    itype = np.int16 if phys + rows < np.iinfo(np.int16).max else np.int32
    shift = shift.astype(itype)
    col = col.astype(itype)
    # nxt[r * phys + j]: first healthy column >= j in row r (phys if none), flat for np.take.
    idx = np.where(healthy, np.arange(phys, dtype=itype), itype(phys))
    nxt = np.ascontiguousarray(np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]).ravel()
    offset = (np.arange(rows, dtype=np.int64) * phys)[:, None]
    ridx = np.arange(rows, dtype=itype)[:, None]
    iterations = 0
    while True:
        iterations += 1
        up = np.maximum.accumulate(shift + ridx, axis=0) - ridx
        down = np.maximum.accumulate((shift - ridx)[::-1], axis=0)[::-1] + ridx
        shift = np.maximum(up, down)
        worst = shift[:, -1]
        if worst.max() > spares:
            row = int(np.argmax(worst))
            _raise_exhausted(defective, row, spares, spare_fraction, need=int(worst[row]))
        x = col + shift
        moved = np.take(nxt, offset + x)
        if np.array_equal(moved, x):
            return shift.astype(np.int32), iterations
        shift = np.maximum.accumulate(moved - col, axis=1)


def _raise_exhausted(defective: np.ndarray, row: int, spares: int,
                     spare_fraction: float | None, need: int | None) -> None:
    found = np.flatnonzero(defective[row]).tolist()
    shown = ", ".join(map(str, found[:8])) + (", ..." if len(found) > 8 else "")
    frac = f", spare_fraction={spare_fraction:g}" if spare_fraction is not None else ""
    if need is None:
        why = f"{len(found)} defective cores at physical columns [{shown}]"
    else:
        why = (f"{len(found)} defective cores at physical columns [{shown}], and staying "
               f"within one column of its neighbours needs a shift of {need}")
    raise SparesExhaustedError(
        f"spares exhausted in row {row}: {why}; expected at most {spares} (the row's "
        f"{spares} spares{frac}): lower the defect density or raise spare_fraction",
        row=row, defects=found, spares=spares)


def _extra_hops(phys_col: np.ndarray, defective: np.ndarray) -> np.ndarray:
    """Extra hops per logical link, vectorised over the whole array.

    Vertical neighbours are at most one column apart (the remap guarantees it), so a
    straight or diagonal link reaches them in one hop. Horizontal neighbours ``w`` columns
    apart need ``w + 1`` hops if the gap row, or the row above or below (via the diagonal
    links), is free of defects over the gap; otherwise ``w + 3`` (two rows out and back).
    """
    rows, cols = phys_col.shape
    phys = defective.shape[1]
    out = np.zeros((4, rows, cols), dtype=np.int32)
    if cols < 2:
        return out
    # prefix[r + 1, j] = defects in row r, columns [0, j); virtual rows -1 and `rows` are
    # solid (every cell blocked) so a detour never leaves the wafer.
    prefix = np.empty((rows + 2, phys + 1), dtype=np.int32)
    prefix[0] = prefix[-1] = np.arange(phys + 1)
    prefix[1:-1, 0] = 0
    np.cumsum(defective, axis=1, out=prefix[1:-1, 1:])
    a = phys_col[:, :-1] + 1      # first gap column
    b = phys_col[:, 1:]           # one past the last gap column
    gap = b - a
    hops = np.ones_like(gap)
    has_gap = gap > 0
    if has_gap.any():
        r = np.arange(rows)[:, None] + 1

        def blocked(dr: int) -> np.ndarray:
            return (prefix[r + dr, b] - prefix[r + dr, a]) > 0

        clear = ~blocked(0) | ~blocked(-1) | ~blocked(1)
        hops = np.where(has_gap, np.where(clear, gap + 1, gap + 3), 1)
    extra = (hops - 1).astype(np.int32)
    out[0, :, :-1] = extra
    out[1, :, 1:] = extra
    return out
