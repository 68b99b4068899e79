"""The placement objective: a weighted sum of named terms, and every knob of the placer.

Terms (each dimensionless, so weights compare):

* ``balance``: the pipeline's throughput is set by its slowest stage, so the term is a
  smooth maximum of stage times, ``(1/beta) ln sum_i exp(beta t_i / T_ref)``, with
  ``t_i`` block i's time in its rectangle (``Block.time_at(rows, cols)``, or
  ``work_i / usable_area_i + latency_i`` with the usable area ``min(rows, max_rows) x
  min(cols, max_cols)``) and ``T_ref`` the water-filled ideal stage time.
  It equals ``max_i t_i / T_ref`` up to ``ln(n)/beta``; unlike ``max`` it tells the optimiser
  about the second-slowest stage too.
* ``wire``: traffic-weighted wirelength, ``sum_nets wavelets x Manhattan(centre_src,
  centre_dst)``, divided by ``total wavelets x sqrt(free PEs / free blocks)`` (a typical
  block side), so 1.0 means "every net one block away".
* ``aspect``: mean over blocks of ``max(0, ln(aspect / soft_max_aspect))**2``; skinny
  rectangles make kernels' own collectives long. (A block's ``max_aspect`` is a hard limit,
  enforced by legalisation, not by this term.)
* ``congestion``: sum over nets of ``max(0, load / T_ref - congestion_target)**2`` where
  ``load = wavelets / lanes`` estimates the busiest link of the net (its traffic spread over
  the width of the facing edges); a sum, not a mean, because one starved stream throttles
  the whole pipeline. The router raises its weight when the real link-load
  map shows a link busier than the bottleneck stage.
* SRAM fit is not a term: it is a hard constraint (no cut leaves a side fewer PEs than its
  blocks' SRAM needs), so no weight can trade it away.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from waferscale.compiler.floorplan.problem import PlacementProblem


@dataclass(frozen=True)
class FloorplanConfig:
    """Weights of the objective and settings of the optimiser and router.

    Objective: ``balance_weight`` (weight of the smooth max stage time), ``balance_sharpness``
    (beta of the log-sum-exp: larger is closer to the max, smaller smoother),
    ``wire_weight`` (weight of traffic x Manhattan distance), ``aspect_weight`` and
    ``soft_max_aspect`` (penalty on rectangles longer than this ratio), ``congestion_weight``
    (weight of the per-net link-load estimate; the router raises it when the real map is
    too hot), ``congestion_target`` (link load, as a fraction of the ideal stage time, below
    which a net costs nothing).

    Areas: ``io_lane_load`` (a block gets at least ``(v / (io_lane_load x T))**2`` PEs for
    its busiest stream of ``v`` wavelets, so one side of it is wide enough to carry the
    stream at that fraction of the stage time; 0 turns the floor off) and
    ``io_area_budget`` (the most of the free wafer these floors may take together).

    Optimiser: ``seed`` (random moves are reproducible), ``moves_per_block`` (annealing
    moves per free block), ``max_moves`` (a cap for huge graphs), ``time_limit_s`` (wall
    time the annealing may take in each round; None or 0: no time box, exactly the planned
    moves, so a seeded run is deterministic), ``initial_accept`` (probability of accepting
    an average uphill move at the start, which sets the starting temperature),
    ``final_temperature_ratio`` (end temperature / start temperature, geometric cooling).

    Router: ``route_orientation`` ("auto": per net the of XY or YX whose busiest link is
    less loaded, "xy" or "yx"), ``congestion_limit`` (peak link load / bottleneck stage time
    above which placement is annealed again with a heavier congestion term),
    ``congestion_rounds`` (how many times at most), ``congestion_boost`` (each redo
    multiplies the congestion weight by this factor).
    """

    balance_weight: float = 1.0
    balance_sharpness: float = 40.0
    wire_weight: float = 0.1
    aspect_weight: float = 0.05
    soft_max_aspect: float = 4.0
    congestion_weight: float = 0.5
    congestion_target: float = 0.5
    io_lane_load: float = 0.5
    io_area_budget: float = 0.1
    seed: int = 0
    moves_per_block: float = 40.0
    max_moves: int = 400_000
    time_limit_s: float | None = 20.0
    initial_accept: float = 0.5
    final_temperature_ratio: float = 1e-3
    route_orientation: str = "auto"
    congestion_limit: float = 1.0
    congestion_rounds: int = 2
    congestion_boost: float = 4.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and value < 0:
                raise ValueError(f"FloorplanConfig.{f.name} must be >= 0, got {value}")
        if self.route_orientation not in ("auto", "xy", "yx"):
            raise ValueError("FloorplanConfig.route_orientation must be 'auto', 'xy' or 'yx'")
        if self.soft_max_aspect < 1:
            raise ValueError("FloorplanConfig.soft_max_aspect must be >= 1")


@dataclass
class Geometry:
    """Rectangles of all blocks as arrays (row, col, rows, cols per block id)."""

    R: np.ndarray
    C: np.ndarray
    H: np.ndarray
    W: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Geometry:
        return cls(*(np.zeros(n, dtype=np.int64) for _ in range(4)))

    def copy(self) -> Geometry:
        return Geometry(self.R.copy(), self.C.copy(), self.H.copy(), self.W.copy())


def lanes(g: Geometry, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Parallel lanes a stream between rectangles a and b can use: the overlap of their
    facing edges, or for diagonal neighbours the narrower of the two turning sides."""
    r_ov = np.minimum(g.R[a] + g.H[a], g.R[b] + g.H[b]) - np.maximum(g.R[a], g.R[b])
    c_ov = np.minimum(g.C[a] + g.W[a], g.C[b] + g.W[b]) - np.maximum(g.C[a], g.C[b])
    diag = np.maximum(np.minimum(g.H[a], g.W[b]), np.minimum(g.W[a], g.H[b]))
    return np.where(r_ov > 0, r_ov, np.where(c_ov > 0, c_ov, diag)).astype(float)


class Scorer:
    """Per-block and per-net contributions to each term, so a move re-scores only what it
    touched."""

    def __init__(self, problem: PlacementProblem, t_ref: float, config: FloorplanConfig,
                 free_area: float, free_blocks: int) -> None:
        self.p, self.cfg = problem, config
        self.t_ref = max(float(t_ref), 1e-12)
        self.beta = float(config.balance_sharpness)
        total = float(problem.net_traffic.sum())
        side = float(np.sqrt(max(free_area, 1.0) / max(free_blocks, 1)))
        self.wire_norm = max(total, 1e-30) * side
        self.max_aspect_soft = float(config.soft_max_aspect)

    def block_exp(self, g: Geometry, idx: np.ndarray) -> np.ndarray:
        # The time the kernel really takes in the rectangle's shape (Block.time_at, or work
        # over the usable part), not work / area: a sliver a GEMM cannot use is slow here.
        t = self.p.rect_times(idx, g.H[idx], g.W[idx])
        x = np.minimum(self.beta * (t / self.t_ref - 1.0), 1e12)
        # Beyond exp(600) (no overflow) the term keeps growing linearly, so a block far too
        # slow (a kernel that does not fit its rectangle) still shows the way out.
        return np.exp(np.minimum(x, 600.0)) * (1.0 + np.maximum(x - 600.0, 0.0))

    def block_aspect(self, g: Geometry, idx: np.ndarray) -> np.ndarray:
        h, w = g.H[idx].astype(float), g.W[idx].astype(float)
        a = np.maximum(h, w) / np.maximum(np.minimum(h, w), 1.0)
        return np.maximum(0.0, np.log(np.maximum(a, 1e-300) / self.max_aspect_soft)) ** 2

    def net_wire(self, g: Geometry, idx: np.ndarray) -> np.ndarray:
        s, d = self.p.net_src[idx], self.p.net_dst[idx]
        dr = np.abs((2 * g.R[s] + g.H[s]) - (2 * g.R[d] + g.H[d])) / 2.0
        dc = np.abs((2 * g.C[s] + g.W[s]) - (2 * g.C[d] + g.W[d])) / 2.0
        return self.p.net_traffic[idx] * (dr + dc)

    def net_congestion(self, g: Geometry, idx: np.ndarray) -> np.ndarray:
        s, d = self.p.net_src[idx], self.p.net_dst[idx]
        load = self.p.net_traffic[idx] / np.maximum(lanes(g, s, d), 1.0)
        return np.maximum(0.0, load / self.t_ref - self.cfg.congestion_target) ** 2

    def combine(self, sum_exp: float, sum_wire: float, sum_aspect: float,
                sum_cong: float) -> dict[str, float]:
        """Named terms (unweighted) and the weighted total from the four sums."""
        n = max(self.p.n, 1)
        cfg = self.cfg
        terms = {
            "balance": float(np.log(max(sum_exp, 1e-300)) / self.beta + 1.0),
            "wire": sum_wire / self.wire_norm,
            "aspect": sum_aspect / n,
            "congestion": sum_cong,
        }
        terms["total"] = (cfg.balance_weight * terms["balance"] + cfg.wire_weight * terms["wire"]
                          + cfg.aspect_weight * terms["aspect"]
                          + cfg.congestion_weight * terms["congestion"])
        return terms

    def evaluate(self, g: Geometry) -> dict[str, float]:
        """All terms of a full placement."""
        blocks = np.arange(self.p.n)
        nets = np.arange(len(self.p.nets))
        return self.combine(float(self.block_exp(g, blocks).sum()),
                            float(self.net_wire(g, nets).sum()),
                            float(self.block_aspect(g, blocks).sum()),
                            float(self.net_congestion(g, nets).sum()))
