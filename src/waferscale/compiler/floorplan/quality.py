"""Figures of merit of a placement, and the same figures for the strip baseline.

* ``utilisation``: busy PE-cycles / all PE-cycles in steady state: ``sum_i work_i /
  (spec.pes x bottleneck)``, where the bottleneck is the slowest stage time, each block timed
  in its rectangle's shape (``PlacementProblem.rect_times``). Idle PEs
  (light kernels on big rectangles, unused or reserved area) lower it.
* ``utilisation_fabric``: the same with the bottleneck raised to the peak link load when
  a link is busier per sample than the slowest stage (the fabric then sets the pace).
* ``wire_traffic``: ``sum_nets wavelets x Manhattan(centres)``, wavelet-hops per sample.
* ``peak_link_load``: wavelets per sample on the busiest link; ``congestion`` is that over
  the bottleneck stage time (> 1: the fabric, not compute, limits throughput).
* ``colors_used`` (DSatur), ``color_demand_peak`` (most nets on one PE, a lower bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from waferscale.compiler.floorplan.objective import Geometry
from waferscale.compiler.floorplan.problem import PlacementProblem
from waferscale.compiler.floorplan.route import Routing


@dataclass(frozen=True)
class Quality:
    """Figures of one placement (see the module docstring for definitions)."""

    utilisation: float
    utilisation_fabric: float
    bottleneck_cycles: float
    bottleneck_block: str
    wire_traffic: float
    peak_link_load: float
    congestion: float
    colors_used: int
    color_demand_peak: int
    pes_used: int
    wall_s: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def measure(problem: PlacementProblem, g: Geometry, routing: Routing | None,
            wall_s: float = 0.0) -> Quality:
    """Quality of geometry ``g`` (and its routing, if any)."""
    area = (g.H * g.W).astype(float)
    t = problem.rect_times(np.arange(problem.n), g.H, g.W)
    worst = int(np.argmax(t))
    bottleneck = float(t[worst])
    work = float(problem.work.sum())
    peak = routing.peak_link_load if routing else 0.0
    effective = max(bottleneck, peak)
    s, d = problem.net_src, problem.net_dst
    dist = (np.abs((2 * g.R[s] + g.H[s]) - (2 * g.R[d] + g.H[d]))
            + np.abs((2 * g.C[s] + g.W[s]) - (2 * g.C[d] + g.W[d]))) / 2.0
    pes = problem.spec.pes
    return Quality(
        utilisation=work / (pes * bottleneck) if bottleneck > 0 else 0.0,
        utilisation_fabric=work / (pes * effective) if effective > 0 else 0.0,
        bottleneck_cycles=bottleneck,
        bottleneck_block=problem.blocks[worst].name,
        wire_traffic=float((problem.net_traffic * dist).sum()),
        peak_link_load=peak,
        congestion=peak / bottleneck if bottleneck > 0 else 0.0,
        colors_used=routing.colors_used if routing else 0,
        color_demand_peak=routing.color_demand_peak if routing else 0,
        pes_used=int(area.sum()),
        wall_s=wall_s,
    )


def compare(placed: Quality, baseline: Quality | None) -> dict[str, float]:
    """Placed / baseline for every numeric figure (higher-is-better ones and others alike)."""
    if baseline is None:
        return {}
    out: dict[str, float] = {}
    for key, value in placed.to_dict().items():
        base = baseline.to_dict()[key]
        if isinstance(value, (int, float)) and isinstance(base, (int, float)) and base:
            out[key] = float(value) / float(base)
    return out
