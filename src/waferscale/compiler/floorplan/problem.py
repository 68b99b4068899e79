"""The abstract placement problem: blocks (kernels), nets (streams) and a wafer.

It is deliberately independent of the compiler's IR, so the placer can be tested and
benchmarked on synthetic graphs and the compiler only has to translate its nodes into
:class:`Block` and its edges into :class:`Net`. Validation happens on construction, because a
contradiction found after minutes of annealing is a contradiction reported too late.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from waferscale.compiler.floorplan.errors import BlockSramError, ConstraintError, PlacementError
from waferscale.fabric.grid import Rect
from waferscale.hardware.spec import WaferSpec

#: `PlacementProblem.time_curve`: areas sampled per block, the time ratio between
#: neighbouring samples above which the gap is bisected, and how many times at most.
CURVE_SAMPLES = 16
CURVE_ASPECTS = (1.0, 2.0, 0.5)
CURVE_STEP = 1.2
CURVE_REFINE = 4


@dataclass(frozen=True)
class Block:
    """A kernel that gets one rectangle of PEs.

    ``work_pe_cycles``: PE-cycles of compute per sample; spread over ``area`` PEs its stage
    time is ``work_pe_cycles / area + latency_cycles``. ``sram_bytes_total``: the bytes it
    keeps resident (weights, caches, buffers), spread evenly, so it needs at least
    ``ceil(sram_bytes_total / spec.sram_bytes)`` PEs. ``min_pes``: any other lower bound
    (a kernel's smallest grid). ``max_aspect``: a hard limit on long side / short side.
    ``fixed``: pin the block to this rectangle (the placer does not move it).

    Shape model (why: a real kernel cannot use every rectangle of a given area: a GEMM runs
    on a square p x p grid, a token-by-hidden kernel on at most tokens x hidden PEs, and a
    1 x 60 sliver is useless to both): ``max_rows`` / ``max_cols`` bound the part of a
    rectangle the kernel can use, so on an ``h x w`` rectangle the time is
    ``work / (min(h, max_rows) x min(w, max_cols)) + latency``; the area allocation never
    plans more than ``max_rows x max_cols`` PEs for it. ``time_at(rows, cols)``, when
    given, replaces that formula with the kernel's real cycles in an ``rows x cols``
    rectangle (``inf`` where it does not fit); the placer calls it with memoisation, so it
    may be a few milliseconds of closed-form cost models.
    """

    name: str
    work_pe_cycles: float
    sram_bytes_total: float = 0.0
    min_pes: int = 1
    max_aspect: float | None = None
    fixed: Rect | None = None
    latency_cycles: float = 0.0
    max_rows: int | None = None
    max_cols: int | None = None
    time_at: Callable[[int, int], float] | None = field(default=None, compare=False,
                                                        repr=False)

    @property
    def max_pes(self) -> float:
        """PEs the kernel can use at most (inf when unbounded)."""
        return float(self.max_rows or math.inf) * float(self.max_cols or math.inf)

    def min_area(self, spec: WaferSpec) -> int:
        """PEs the block needs at least: its SRAM spread at ``spec.sram_bytes`` per PE."""
        by_sram = math.ceil(self.sram_bytes_total / spec.sram_bytes) if self.sram_bytes_total else 0
        return max(1, int(self.min_pes), by_sram)


@dataclass(frozen=True)
class Net:
    """A stream from ``src`` to ``dst`` of ``wavelets_per_sample`` 32-bit wavelets."""

    src: str
    dst: str
    wavelets_per_sample: float


def _inside(rect: Rect, spec: WaferSpec) -> bool:
    return (rect.row >= 0 and rect.col >= 0 and rect.rows > 0 and rect.cols > 0
            and rect.row + rect.rows <= spec.rows and rect.col + rect.cols <= spec.cols)


def overlaps(a: Rect, b: Rect) -> bool:
    """True when two rectangles share at least one PE."""
    return (a.row < b.row + b.rows and b.row < a.row + a.rows
            and a.col < b.col + b.cols and b.col < a.col + a.cols)


@dataclass
class PlacementProblem:
    """Blocks in pipeline order, nets between them, the wafer and its reserved areas.

    The order of ``blocks`` is taken as the pipeline order (the compiler passes them
    topologically sorted); the placer keeps consecutive blocks close because most traffic
    flows between them. ``reserved``: rectangles no block may use (I/O, runtime, defects).
    """

    blocks: list[Block]
    nets: list[Net]
    spec: WaferSpec
    reserved: list[Rect] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blocks = list(self.blocks)
        self.nets = list(self.nets)
        self.reserved = list(self.reserved)
        self._validate()
        self.index = {b.name: i for i, b in enumerate(self.blocks)}
        self.work = np.array([float(b.work_pe_cycles) for b in self.blocks])
        self.latency = np.array([float(b.latency_cycles) for b in self.blocks])
        self.min_areas = np.array([b.min_area(self.spec) for b in self.blocks], dtype=np.int64)
        self.net_src = np.array([self.index[n.src] for n in self.nets], dtype=np.int64)
        self.net_dst = np.array([self.index[n.dst] for n in self.nets], dtype=np.int64)
        self.net_traffic = np.array([float(n.wavelets_per_sample) for n in self.nets])
        self.max_rows = np.array([float(b.max_rows or np.inf) for b in self.blocks])
        self.max_cols = np.array([float(b.max_cols or np.inf) for b in self.blocks])
        self.has_time_at = np.array([b.time_at is not None for b in self.blocks], dtype=bool)
        self._memo: list[dict[tuple[int, int], float]] = [{} for _ in self.blocks]

    # -- validation ------------------------------------------------------------------
    def _validate(self) -> None:
        spec = self.spec
        if not self.blocks:
            raise PlacementError("placement problem has no blocks; give at least one kernel")
        names: set[str] = set()
        for b in self.blocks:
            if b.name in names:
                raise ConstraintError(f"block name {b.name!r} is used twice; names must be "
                                      f"unique", blocks=[b.name])
            names.add(b.name)
            if not (b.work_pe_cycles >= 0 and math.isfinite(b.work_pe_cycles)):
                raise PlacementError(f"block {b.name!r}: work_pe_cycles must be a finite number "
                                     f">= 0, got {b.work_pe_cycles!r}")
            if not (b.sram_bytes_total >= 0 and math.isfinite(b.sram_bytes_total)):
                raise PlacementError(f"block {b.name!r}: sram_bytes_total must be >= 0, got "
                                     f"{b.sram_bytes_total!r}")
            for side in ("max_rows", "max_cols"):
                v = getattr(b, side)
                if v is not None and v < 1:
                    raise PlacementError(f"block {b.name!r}: {side} must be >= 1, got {v!r}")
            if b.max_aspect is not None and b.max_aspect < 1:
                raise PlacementError(f"block {b.name!r}: max_aspect must be >= 1 (long side / "
                                     f"short side), got {b.max_aspect!r}")
        for n in self.nets:
            for end in (n.src, n.dst):
                if end not in names:
                    raise ConstraintError(f"net {n.src}->{n.dst}: block {end!r} is not in the "
                                          f"problem", blocks=[end])
            if n.src == n.dst:
                raise ConstraintError(f"net {n.src}->{n.dst} connects a block to itself; "
                                      f"keep intra-kernel traffic inside the kernel",
                                      blocks=[n.src])
            if not (n.wavelets_per_sample >= 0 and math.isfinite(n.wavelets_per_sample)):
                raise PlacementError(f"net {n.src}->{n.dst}: wavelets_per_sample must be >= 0")
        for i, r in enumerate(self.reserved):
            if not _inside(r, spec):
                raise ConstraintError(f"reserved area #{i} {r} leaves the {spec.rows}x"
                                      f"{spec.cols} wafer")
        pinned = [(b.name, b.fixed) for b in self.blocks if b.fixed is not None]
        for name, rect in pinned:
            if not _inside(rect, spec):
                raise ConstraintError(f"block {name!r} is pinned at {rect}, outside the "
                                      f"{spec.rows}x{spec.cols} wafer", blocks=[name])
        for i, (na, ra) in enumerate(pinned):
            for nb, rb in pinned[i + 1:]:
                if overlaps(ra, rb):
                    raise ConstraintError(f"blocks {na!r} ({ra}) and {nb!r} ({rb}) are pinned "
                                          f"to overlapping rectangles; move one", blocks=[na, nb])
            for j, r in enumerate(self.reserved):
                if overlaps(ra, r):
                    raise ConstraintError(f"block {na!r} is pinned at {ra}, overlapping reserved "
                                          f"area #{j} {r}; move it", blocks=[na])
        free_pes = spec.pes - _union_area(self.reserved, spec)
        for b in self.blocks:
            need = b.min_area(spec)
            if b.fixed is not None:
                if b.fixed.pes < need:
                    raise BlockSramError(
                        f"block {b.name!r} is pinned to {b.fixed} ({b.fixed.pes} PEs) but its "
                        f"{b.sram_bytes_total:,.0f} bytes of SRAM need {need} PEs; pin a larger "
                        f"rectangle", block=b.name,
                        excess_bytes=b.sram_bytes_total - b.fixed.pes * spec.sram_bytes)
                if b.max_aspect is not None:
                    aspect = max(b.fixed.rows, b.fixed.cols) / min(b.fixed.rows, b.fixed.cols)
                    if aspect > b.max_aspect + 1e-9:
                        raise ConstraintError(f"block {b.name!r} is pinned to {b.fixed} (aspect "
                                              f"{aspect:.2f}) but max_aspect is {b.max_aspect}",
                                              blocks=[b.name])
            elif need > free_pes:
                excess = b.sram_bytes_total - free_pes * spec.sram_bytes
                raise BlockSramError(
                    f"block {b.name!r} needs {b.sram_bytes_total:,.0f} bytes of SRAM, "
                    f"{excess:,.0f} bytes more than the {free_pes} free PEs x "
                    f"{spec.sram_bytes} bytes hold; stream its weights (weight-streaming mode) "
                    f"or split the kernel", block=b.name, excess_bytes=max(excess, 0.0))
        free_after_pins = free_pes - sum(r.pes for _, r in pinned)
        loose = [b for b in self.blocks if b.fixed is None]
        total_need = sum(b.min_area(spec) for b in loose)
        if total_need > free_after_pins:
            worst = sorted(loose, key=lambda b: -b.min_area(spec))[:3]
            names_ = ", ".join(f"{b.name!r} ({b.min_area(spec)} PEs)" for b in worst)
            raise BlockSramError(
                f"the blocks together need {total_need} PEs for their SRAM but only "
                f"{free_after_pins} are free; the largest are {names_}; stream weights or "
                f"use a bigger wafer", block=worst[0].name,
                excess_bytes=(total_need - free_after_pins) * spec.sram_bytes)

    # -- derived ---------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.blocks)

    def obstacles(self) -> list[Rect]:
        """Rectangles free blocks may not use: reserved areas and pinned blocks."""
        return self.reserved + [b.fixed for b in self.blocks if b.fixed is not None]

    @property
    def max_areas(self) -> np.ndarray:
        """PEs each block can use at most (its ``max_rows x max_cols``; inf if unbounded)."""
        return self.max_rows * self.max_cols

    def stage_times(self, areas: np.ndarray) -> np.ndarray:
        """Cycles per sample of every block on ``areas`` PEs in the best case (the usable
        part capped at ``max_rows x max_cols``; inf where a block has none). The area model
        of water filling; :meth:`rect_times` is what a rectangle's shape really gives."""
        areas = np.minimum(np.asarray(areas, dtype=float), self.max_areas)
        with np.errstate(divide="ignore"):
            return np.where(areas > 0, self.work / np.maximum(areas, 1e-300), np.inf) + self.latency

    def time_curve(self, b: int, samples: int = CURVE_SAMPLES
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(areas, times): how fast a block with ``time_at`` runs on about each area from
        its SRAM minimum to what it can use, in the worst of a few rectangle shapes per
        area (`CURVE_ASPECTS`, within ``max_rows x max_cols`` and the wafer). Times are
        made non-increasing in area (a kernel given more PEs can leave them idle).
        ``samples`` areas are spaced geometrically; where the time falls by more than
        `CURVE_STEP` between neighbours, the gap is bisected (up to `CURVE_REFINE` times),
        so the steps of kernels whose time falls in stairs (attention at one token per
        block, a GEMM's square grid) are found. Water filling reads areas off these
        curves instead of the ``W / a + L`` fit, which misjudges such kernels."""
        spec = self.spec
        assert self.blocks[b].time_at is not None
        rows_cap = int(min(self.max_rows[b], spec.rows))
        cols_cap = int(min(self.max_cols[b], spec.cols))
        lo = max(1, int(self.min_areas[b]))
        hi = max(lo, rows_cap * cols_cap)

        pts: dict[int, float] = {}

        def sample(a: int) -> None:
            """About ``a`` PEs in the shapes the slicer hands out (aspects 1, 2 and 1/2):
            the slowest of them, at the largest of their areas, so that a cell of that
            size reaches the time whatever its aspect."""
            worst, most = 0.0, 0
            for aspect in CURVE_ASPECTS:
                h = int(min(rows_cap, max(1, round(math.sqrt(a * aspect)))))
                w = int(min(cols_cap, max(1, -(-a // h))))
                h = int(min(rows_cap, max(h, -(-a // w))))
                t = self.rect_time(b, h, w)
                worst, most = max(worst, t), max(most, h * w)
            pts[most] = min(worst, pts.get(most, math.inf))

        for a in np.unique(np.geomspace(lo, hi, samples).round().astype(np.int64)):
            sample(int(a))
        for _ in range(CURVE_REFINE):
            keys = sorted(pts)
            best = np.minimum.accumulate([pts[a] for a in keys])
            new = [int(round(math.sqrt(a0 * a1)))
                   for a0, a1, t0, t1 in zip(keys, keys[1:], best, best[1:], strict=False)
                   if a1 > a0 + 1 and t1 * CURVE_STEP < t0]
            if not new:
                break
            for a in new:
                sample(a)
        keys = sorted(pts)
        times = np.minimum.accumulate(np.array([pts[a] for a in keys]))
        return np.array(keys, dtype=float), times

    def rect_time(self, b: int, h: int, w: int) -> float:
        """`rect_times` of one block, in plain Python floats (the same IEEE operations, so
        the same bits): the slicer sizes leaves one at a time, some hundred thousand times
        per placement of a training graph, and NumPy's overhead on one-element arrays was
        most of that time."""
        b, h, w = int(b), int(h), int(w)
        if self.has_time_at[b]:
            memo = self._memo[b]
            key = (h, w)
            t = memo.get(key)
            if t is None:
                fn = self.blocks[b].time_at
                assert fn is not None
                t = memo[key] = float(fn(h, w)) if h > 0 and w > 0 else math.inf
            return t
        used = min(float(h), float(self.max_rows[b])) * min(float(w), float(self.max_cols[b]))
        return (float(self.work[b]) / used if used > 0 else math.inf) + float(self.latency[b])

    def rect_times(self, idx: np.ndarray, h: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Cycles per sample of blocks ``idx`` on ``h x w`` rectangles: the block's
        ``time_at`` where it has one (memoised), else work over the usable part of the
        rectangle (``min(h, max_rows) x min(w, max_cols)``) plus latency."""
        idx = np.asarray(idx, dtype=np.int64)
        hf, wf = np.asarray(h, dtype=float), np.asarray(w, dtype=float)
        used = np.minimum(hf, self.max_rows[idx]) * np.minimum(wf, self.max_cols[idx])
        with np.errstate(divide="ignore"):
            t = (np.where(used > 0, self.work[idx] / np.maximum(used, 1e-300), np.inf)
                 + self.latency[idx])
        for j in np.flatnonzero(self.has_time_at[idx]):
            t[j] = self.rect_time(idx[j], h[j], w[j])   # the memoised ``time_at``
        return t


def _union_area(rects: list[Rect], spec: WaferSpec) -> int:
    """PEs covered by the union of ``rects`` (a mask: the reserved list is short)."""
    if not rects:
        return 0
    mask = np.zeros((spec.rows, spec.cols), dtype=bool)
    for r in rects:
        mask[r.slices] = True
    return int(mask.sum())
