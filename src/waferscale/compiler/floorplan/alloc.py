"""Step one of placement: how many PEs each block gets, and where free space is.

Areas come before shapes. In a pipeline the slowest stage sets the throughput, so the best
split of a fixed number of PEs gives every block the same stage time T, except blocks whose
SRAM needs more PEs than their work does (they sit at their minimum and are faster). That
is water filling: find T with ``sum_i max(min_i, W_i / (T - L_i)) = free PEs``.
"""

from __future__ import annotations

import numpy as np

from waferscale.fabric.grid import Rect


def curve_area(areas: np.ndarray, times: np.ndarray, t: float) -> float:
    """Fewest sampled PEs at which a block's time curve (non-increasing) reaches ``t``;
    the largest sampled area when ``t`` is below the curve's fastest time. No
    interpolation between samples: kernel times fall in stairs, and an area between two
    samples may run no faster than the smaller one (`PlacementProblem.time_curve`
    samples densely where the time drops)."""
    ok = np.flatnonzero(times <= t)
    return float(areas[ok[0]] if ok.size else areas[-1])


def water_fill(work: np.ndarray, latency: np.ndarray, min_area: np.ndarray,
               total_area: float, max_area: np.ndarray | None = None,
               curves: list[tuple[np.ndarray, np.ndarray] | None] | None = None
               ) -> tuple[np.ndarray, float]:
    """Real-valued areas and the common stage time T.

    Bisection on T, vectorised over blocks: the area sum is monotone decreasing in T.
    ``max_area`` (per block, inf for none) is what a kernel can use at most: a block is
    never planned more (the PEs would idle), so T is at least ``max_i work_i / max_i +
    latency_i`` and, when the capped blocks leave PEs over, the areas sum to less than
    ``total_area``: the rest is slack the slicer spreads, not time any block gains.
    ``curves[i]`` (areas, non-increasing times), where given, replaces block i's
    ``W / a + L`` model: its area at T is read off the curve (`curve_area`).
    """
    work = np.asarray(work, dtype=float)
    latency = np.asarray(latency, dtype=float)
    min_area = np.asarray(min_area, dtype=float)
    if work.size == 0:
        return np.zeros(0), 0.0
    cap = (np.full(work.size, np.inf) if max_area is None
           else np.maximum(np.asarray(max_area, dtype=float), min_area))
    if min_area.sum() >= total_area or not np.any(work > 0):
        extra = max(total_area - min_area.sum(), 0.0)
        areas = min_area + extra * (min_area / min_area.sum())
        return areas, float(np.max(work / np.minimum(areas, cap) + latency))

    curved = [k for k, c in enumerate(curves or []) if c is not None]
    for k in curved:  # beyond its fastest point a block only idles PEs
        a, ts = curves[k]  # type: ignore[index]
        cap[k] = max(min_area[k], min(cap[k], curve_area(a, ts, float(np.min(ts)))))

    def areas_at(t: float) -> np.ndarray:
        # no block needs more than the free area: the clip changes no comparison with
        # it and keeps the sum finite where T sits at a block's latency (work / ~0)
        slack = np.maximum(t - latency, 1e-300)
        with np.errstate(over="ignore"):   # work / ~0 is inf, clipped on the next line
            need = work / slack
        out = np.minimum(np.minimum(cap, total_area), np.maximum(min_area, need))
        for k in curved:
            a, ts = curves[k]  # type: ignore[index]
            out[k] = min(cap[k], max(min_area[k], curve_area(a, ts, t)))
        return out

    # No T below the slowest capped block is reachable, however many PEs are left (a
    # curve's latency is inside its times).
    with np.errstate(divide="ignore"):
        capped_t = np.where(np.isfinite(cap), work / cap + latency, 0.0)
    fit_latency = latency.copy()
    for k in curved:
        capped_t[k] = float(np.min(curves[k][1]))  # type: ignore[index]
        fit_latency[k] = 0.0
    lo = max(float(fit_latency.max()), float(np.max(capped_t)))
    if areas_at(lo).sum() <= total_area:
        hi = lo
    else:
        hi = max(lo, 1.0)
        while areas_at(hi).sum() > total_area:
            hi *= 2.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if areas_at(mid).sum() > total_area:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-12 * hi:
                break
    areas = areas_at(hi)
    # Hand the slack to the blocks that can still use PEs (those below their cap), so the
    # areas sum exactly to the total where caps allow; rounding margin for the cuts.
    for _ in range(8):
        slack = total_area - areas.sum()
        room = cap - areas
        active = (room > 1e-9) & (areas > min_area - 1e-9) & (work > 0)
        if slack <= 1e-9 or not active.any():
            break
        give = slack * areas[active] / areas[active].sum()
        areas[active] += np.minimum(give, room[active])
    return areas, hi


def free_regions(rows: int, cols: int, obstacles: list[Rect]) -> list[Rect]:
    """Obstacle-free rectangles that tile the rest of the wafer, in snake order.

    Horizontal slabs at every obstacle's top and bottom edge; within a slab the free column
    intervals; vertically adjacent pieces with the same interval merge. Obstacles are few
    (I/O, reserved runtime areas, pinned kernels), so this stays small. Snake order (left to
    right, then right to left) keeps consecutive regions adjacent, which keeps the pipeline
    contiguous when its blocks are handed to regions in order.
    """
    if not obstacles:
        return [Rect(0, 0, rows, cols)]
    cuts = sorted({0, rows, *(o.row for o in obstacles), *(o.row + o.rows for o in obstacles)})
    slabs: list[tuple[int, int, list[tuple[int, int]]]] = []
    for top, bottom in zip(cuts[:-1], cuts[1:], strict=False):
        if bottom <= top:
            continue
        blocked = sorted((o.col, o.col + o.cols) for o in obstacles
                         if o.row < bottom and top < o.row + o.rows)
        free: list[tuple[int, int]] = []
        at = 0
        for c0, c1 in blocked:
            if c0 > at:
                free.append((at, c0))
            at = max(at, c1)
        if at < cols:
            free.append((at, cols))
        slabs.append((top, bottom, free))
    # Merge vertically where the free intervals of consecutive slabs are identical.
    merged: list[tuple[int, int, list[tuple[int, int]]]] = []
    for top, bottom, free in slabs:
        if merged and merged[-1][2] == free and merged[-1][1] == top:
            merged[-1] = (merged[-1][0], bottom, free)
        else:
            merged.append((top, bottom, free))
    regions: list[Rect] = []
    for k, (top, bottom, free) in enumerate(merged):
        pieces = [Rect(top, c0, bottom - top, c1 - c0) for c0, c1 in free]
        regions.extend(pieces if k % 2 == 0 else pieces[::-1])
    return regions


def io_floor(problem_traffic_in: np.ndarray, problem_traffic_out: np.ndarray, t_stage: float,
             lane_load: float, budget: float) -> np.ndarray:
    """PEs a block needs so its busiest stream fits through one side of it.

    A stream of ``v`` wavelets per sample through ``lanes`` parallel links takes ``v/lanes``
    cycles per sample; to keep that below ``lane_load x t_stage`` the facing side needs
    ``v / (lane_load x t_stage)`` PEs, so a squarish block needs that side squared. Tiny
    kernels on a big stream (an embedding feeding a residual, a GELU between two GEMMs)
    otherwise end up one PE wide and the fabric, not compute, sets the pace. The floors are
    scaled down together if they would take more than ``budget`` PEs, and dropped when the
    budget is zero (the SRAM minimums alone already use it up): a floor that ignores its
    budget would squeeze the blocks that set the stage time.
    """
    v = np.maximum(problem_traffic_in, problem_traffic_out)
    if t_stage <= 0 or lane_load <= 0:
        return np.zeros_like(v)
    side = np.ceil(v / (lane_load * t_stage))
    floor = side * side
    total = floor.sum()
    if total > budget:
        floor = np.floor(floor * budget / total) if budget > 0 else np.zeros_like(floor)
    return floor.astype(np.int64)
