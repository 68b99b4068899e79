"""The naive baseline every figure is compared against: full-height vertical strips.

Each block gets a full-height strip, left to right in pipeline order, widths equal (or in
proportion to SRAM minimum), raised where a block's SRAM needs a wider strip. This is what a
first compiler does, and it is poor in exactly the way the placer fixes: widths ignore work,
so the heaviest kernel's strip is the bottleneck while light kernels idle. When there are
more blocks than columns the wafer is cut into horizontal bands of strips, snaking. The
baseline ignores pins and reserved areas.
"""

from __future__ import annotations

import math

import numpy as np

from waferscale.compiler.floorplan.objective import Geometry
from waferscale.compiler.floorplan.problem import PlacementProblem


def apportion(weights: np.ndarray, floors: np.ndarray, total: int) -> np.ndarray | None:
    """Integers >= ``floors`` summing to ``total``, otherwise in proportion to ``weights``
    (largest remainders). None if the floors alone exceed ``total``."""
    floors = np.asarray(floors, dtype=np.int64)
    if floors.sum() > total:
        return None
    weights = np.asarray(weights, dtype=float)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    lo, hi = 0.0, float(total) / weights[weights > 0].min() + 1.0
    for _ in range(100):  # water filling: share = max(floor, x * weight)
        mid = 0.5 * (lo + hi)
        if np.maximum(floors, mid * weights).sum() > total:
            hi = mid
        else:
            lo = mid
    share = np.maximum(floors, lo * weights)
    out = np.maximum(floors, np.floor(share).astype(np.int64))
    rest = total - int(out.sum())
    if rest > 0:
        frac = share - np.floor(share)
        out[np.argsort(-frac, kind="stable")[:rest]] += 1
    while out.sum() > total:  # rounding overshoot: take from the widest above its floor
        slack = out - floors
        out[int(np.argmax(slack))] -= 1
    return out


def strip_placement(problem: PlacementProblem, widths: str = "equal") -> Geometry | None:
    """Full-height strips in pipeline order (``widths``: "equal" or "sram"); None when the
    SRAM minimums do not fit even that way."""
    spec = problem.spec
    n = problem.n
    g = Geometry.empty(n)
    bands = max(1, math.ceil(n / spec.cols))
    while bands <= spec.rows:
        height = spec.rows // bands
        per = math.ceil(n / bands)
        ok = True
        for k in range(bands):
            idx = np.arange(k * per, min(n, (k + 1) * per))
            if idx.size == 0:
                continue
            top = k * height
            h = height if k < bands - 1 else spec.rows - top
            floors = -(-problem.min_areas[idx] // h)
            weight = problem.min_areas[idx].astype(float) if widths == "sram" else np.ones(idx.size)
            w = apportion(weight, floors, spec.cols)
            if w is None:
                ok = False
                break
            starts = np.concatenate([[0], np.cumsum(w)[:-1]])
            if k % 2 == 1:  # snake: odd bands run right to left
                starts = spec.cols - starts - w
            g.R[idx], g.C[idx], g.H[idx], g.W[idx] = top, starts, h, w
        if ok:
            return g
        bands *= 2
    return None
