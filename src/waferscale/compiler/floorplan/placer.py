"""Place and route in one call: anneal, route, feed congestion back, measure vs strips.

This is the entry point the compiler uses. Congestion feedback: after routing, if the
busiest link carries more wavelets per sample than ``config.congestion_limit`` x the
bottleneck stage time, the layout is annealed again (from where it is) with the
congestion term switched on, and the better of the two routings (by fabric-limited
bottleneck) is kept.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from waferscale.compiler.floorplan.anneal import Annealer, initial_layout
from waferscale.compiler.floorplan.objective import FloorplanConfig, Geometry, Scorer
from waferscale.compiler.floorplan.problem import PlacementProblem
from waferscale.compiler.floorplan.quality import Quality, compare, measure
from waferscale.compiler.floorplan.route import Routing, route
from waferscale.compiler.floorplan.strip import strip_placement
from waferscale.fabric.grid import Rect


@dataclass
class FloorplanResult:
    """A legal placement with its routing and figures (and the strip baseline's)."""

    problem: PlacementProblem
    config: FloorplanConfig
    geometry: Geometry
    routing: Routing
    quality: Quality
    terms: dict[str, float]
    baseline_geometry: Geometry | None = None
    baseline_routing: Routing | None = None
    baseline: Quality | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def rects(self) -> dict[str, Rect]:
        """Block name -> rectangle, the form the compiler's program stores."""
        g = self.geometry
        return {b.name: Rect(int(g.R[i]), int(g.C[i]), int(g.H[i]), int(g.W[i]))
                for i, b in enumerate(self.problem.blocks)}

    @property
    def versus_baseline(self) -> dict[str, float]:
        return compare(self.quality, self.baseline)


def _effective(q: Quality) -> float:
    return max(q.bottleneck_cycles, q.peak_link_load)


def place_and_route(problem: PlacementProblem, config: FloorplanConfig | None = None, *,
                    baseline: bool = True) -> FloorplanResult:
    """Place ``problem``'s blocks, route its nets and measure both against strips.

    Raises :class:`~waferscale.compiler.floorplan.errors.PlacementError` when the blocks
    cannot be legalised and :class:`~waferscale.compiler.floorplan.errors.RoutingError`
    when the nets need more colours than ``spec.routable_colors``.
    """
    cfg = config or FloorplanConfig()
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    layout = initial_layout(problem, cfg)
    history: list[dict[str, float]] = []
    annealer = Annealer(layout, cfg)
    stats = annealer.run(rng)
    history.append({"round": 0, **stats, **annealer.terms()})
    routing = route(problem, layout.geometry, cfg.route_orientation)
    best = (layout.geometry.copy(), routing, measure(problem, layout.geometry, routing))
    round_cfg = cfg
    for k in range(cfg.congestion_rounds):
        q = best[2]
        if q.congestion <= cfg.congestion_limit:
            break
        weight = max(cfg.congestion_weight, 0.1) * cfg.congestion_boost ** (k + 1)
        round_cfg = dataclasses.replace(round_cfg, congestion_weight=weight)
        annealer = Annealer(layout, round_cfg)
        stats = annealer.run(rng, time_limit_s=cfg.time_limit_s / 2 if cfg.time_limit_s else 0.0)
        history.append({"round": k + 1, **stats, **annealer.terms()})
        routing = route(problem, layout.geometry, cfg.route_orientation)
        q_new = measure(problem, layout.geometry, routing)
        if _effective(q_new) < _effective(q):
            best = (layout.geometry.copy(), routing, q_new)
    geometry, routing, _ = best
    wall = time.perf_counter() - start
    quality = measure(problem, geometry, routing, wall)
    terms = Scorer(problem, layout.t_ref, cfg, layout.free_area, len(layout.order)).evaluate(
        geometry)
    result = FloorplanResult(problem, cfg, geometry, routing, quality, terms, history=history)
    if baseline:
        t0 = time.perf_counter()
        g0 = strip_placement(problem)
        if g0 is not None:
            r0 = route(problem, g0, "xy", raise_on_budget=False)
            result.baseline_geometry, result.baseline_routing = g0, r0
            result.baseline = measure(problem, g0, r0, time.perf_counter() - t0)
    return result
