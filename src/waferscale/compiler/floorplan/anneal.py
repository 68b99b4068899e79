"""The optimiser: recursive bisection, then simulated annealing over the slicing trees.

1. Areas: water filling gives each free block a target area (work-proportional, never below
   its SRAM minimum) and the ideal stage time ``T_ref``.
2. Regions: reserved areas and pinned blocks cut the wafer into obstacle-free rectangles
   (snake order); the pipeline-ordered free blocks are dealt to them in contiguous runs in
   proportion to area.
3. Bisection: in each region a slicing tree recursively halves the run by weight and cuts
   the rectangle across its longer side, cut lines placed so areas follow the targets. This
   alone is a good, legal placement in O(n log n), and it is the hierarchy that makes big
   instances tractable.
4. Annealing: random moves on tree nodes: flip a cut (vertical <-> horizontal), mirror a
   node (which side its earlier half takes), or shift its split point by one block
   (rebuilding the two halves). A node only moves the blocks of its own run, so a move is
   re-laid-out and re-scored locally (nodes are sampled uniformly, so the average move
   touches O(log n) blocks). Metropolis acceptance, geometric cooling on the larger of the
   move fraction and the time fraction, so a time limit ends at a low temperature instead
   of cutting the schedule short.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from waferscale.compiler.floorplan.alloc import free_regions, io_floor, water_fill
from waferscale.compiler.floorplan.errors import PlacementError
from waferscale.compiler.floorplan.objective import FloorplanConfig, Geometry, Scorer
from waferscale.compiler.floorplan.problem import PlacementProblem
from waferscale.compiler.floorplan.slicing import Node, Slicer, sample_internal
from waferscale.fabric.grid import Rect


@dataclass
class Layout:
    """A placement under construction: geometry plus the trees that generate it."""

    problem: PlacementProblem
    geometry: Geometry
    slicer: Slicer
    roots: list[Node]
    order: np.ndarray
    targets: np.ndarray
    t_ref: float
    free_area: int
    regions: list[Rect] = field(default_factory=list)


def _deal_to_regions(slicer: Slicer, regions: list[Rect]) -> list[tuple[int, int]]:
    """Contiguous runs of free blocks per region: boundaries where cumulative target area
    crosses cumulative region area, then nudged so each run's SRAM minimum fits."""
    m = len(slicer.order)
    areas = np.array([r.pes for r in regions], dtype=float)
    total_w, total_a = slicer.cw[-1], areas.sum()
    cw = np.asarray(slicer.cw)
    bounds = [0]
    for j in range(len(regions) - 1):
        target = total_w * areas[: j + 1].sum() / total_a
        b = int(np.clip(np.searchsorted(cw, target), bounds[-1], m))
        if b > bounds[-1] and abs(cw[b - 1] - target) < abs(cw[b] - target):
            b -= 1
        while b > bounds[-1] and slicer.cn[b] - slicer.cn[bounds[-1]] > regions[j].pes:
            b -= 1
        bounds.append(b)
    bounds.append(m)
    runs = list(zip(bounds[:-1], bounds[1:], strict=True))
    for (lo, hi), reg in zip(runs, regions, strict=True):
        if slicer.cn[hi] - slicer.cn[lo] > reg.pes:
            names = [slicer.order[i] for i in range(lo, min(hi, lo + 3))]
            raise PlacementError(
                f"free region {reg} cannot hold the SRAM of blocks #{names}...: "
                f"{slicer.cn[hi] - slicer.cn[lo]} PEs needed, {reg.pes} there; reserved "
                f"areas or pinned blocks fragment the wafer too much")
    return runs


def initial_layout(problem: PlacementProblem, config: FloorplanConfig | None = None) -> Layout:
    """Water-filled areas and a recursive-bisection placement (no annealing yet)."""
    cfg = config or FloorplanConfig()
    spec = problem.spec
    obstacles = problem.obstacles()
    regions = [r for r in free_regions(spec.rows, spec.cols, obstacles) if r.pes > 0]
    free_area = sum(r.pes for r in regions)
    order = np.array([i for i, b in enumerate(problem.blocks) if b.fixed is None], dtype=np.int64)
    geometry = Geometry.empty(problem.n)
    for i, b in enumerate(problem.blocks):
        if b.fixed is not None:
            geometry.R[i], geometry.C[i] = b.fixed.row, b.fixed.col
            geometry.H[i], geometry.W[i] = b.fixed.rows, b.fixed.cols
    targets = np.zeros(problem.n)
    t_ref = 0.0
    need = problem.min_areas.copy()
    if order.size:
        caps = problem.max_areas[order]
        curves = [problem.time_curve(int(b)) if problem.has_time_at[b] else None
                  for b in order]
        areas, t_ref = water_fill(problem.work[order], problem.latency[order],
                                  need[order], free_area, caps, curves)
        if cfg.io_lane_load > 0 and len(problem.nets):
            t_in = np.zeros(problem.n)
            t_out = np.zeros(problem.n)
            np.maximum.at(t_in, problem.net_dst, problem.net_traffic)
            np.maximum.at(t_out, problem.net_src, problem.net_traffic)
            budget = cfg.io_area_budget * free_area
            floor = io_floor(t_in[order], t_out[order], t_ref, cfg.io_lane_load,
                             max(budget - float(need[order].sum()), 0.0))
            need[order] = np.maximum(need[order], floor)
            areas, t_ref = water_fill(problem.work[order], problem.latency[order],
                                      need[order], free_area, caps, curves)
        targets[order] = areas
    fixed = [i for i, b in enumerate(problem.blocks) if b.fixed is not None]
    if fixed and not order.size:
        t_ref = float(np.max(problem.stage_times(geometry.H[fixed] * geometry.W[fixed])))
    max_aspect = np.array([b.max_aspect if b.max_aspect else np.inf for b in problem.blocks])
    slicer = Slicer(order, targets, need, max_aspect,
                    geometry.R, geometry.C, geometry.H, geometry.W,
                    max_rows=problem.max_rows, max_cols=problem.max_cols,
                    leaf_time=problem.rect_time)
    roots: list[Node] = []
    if order.size:
        for (lo, hi), reg in zip(_deal_to_regions(slicer, regions), regions, strict=True):
            if hi <= lo:
                continue
            root = slicer.build(lo, hi, reg.row, reg.col, reg.rows, reg.cols)
            if root is None:
                first = problem.blocks[slicer.order[lo]].name
                last = problem.blocks[slicer.order[hi - 1]].name
                raise PlacementError(
                    f"blocks {first!r}..{last!r} ({hi - lo} blocks, "
                    f"{slicer.cn[hi] - slicer.cn[lo]} PEs of SRAM minimum) cannot be cut "
                    f"into rectangles of region {reg} ({reg.pes} PEs); the SRAM minimums "
                    f"are too tight: free space or stream weights")
            roots.append(root)
    return Layout(problem, geometry, slicer, roots, order, targets, t_ref, free_area, regions)


class Annealer:
    """Simulated annealing over a layout's slicing trees, scored incrementally."""

    def __init__(self, layout: Layout, config: FloorplanConfig) -> None:
        self.L, self.cfg = layout, config
        p = layout.problem
        self.scorer = Scorer(p, layout.t_ref, config, layout.free_area, len(layout.order))
        g = layout.geometry
        self.all_blocks = np.arange(p.n)
        self.all_nets = np.arange(len(p.nets))
        self.e = self.scorer.block_exp(g, self.all_blocks)
        self.a = self.scorer.block_aspect(g, self.all_blocks)
        self.w = self.scorer.net_wire(g, self.all_nets)
        self.c = self.scorer.net_congestion(g, self.all_nets)
        self._resum()
        # nets incident to each position of the free order (CSR), for local re-scoring
        pos = np.full(p.n, -1, dtype=np.int64)
        pos[layout.order] = np.arange(len(layout.order))
        ends = np.concatenate([pos[p.net_src], pos[p.net_dst]])
        nets = np.concatenate([self.all_nets, self.all_nets])
        keep = ends >= 0
        ends, nets = ends[keep], nets[keep]
        srt = np.argsort(ends, kind="stable")
        self.adj = nets[srt]
        self.adj_ptr = np.searchsorted(ends[srt], np.arange(len(layout.order) + 1))
        sizes = np.array([r.size - 1 for r in layout.roots], dtype=float)
        self.root_p = sizes / sizes.sum() if sizes.sum() > 0 else None

    def _resum(self) -> None:
        self.se, self.sa = float(self.e.sum()), float(self.a.sum())
        self.sw, self.sc = float(self.w.sum()), float(self.c.sum())

    def cost(self, se: float, sa: float, sw: float, sc: float) -> float:
        return self.scorer.combine(se, sw, sa, sc)["total"]

    def terms(self) -> dict[str, float]:
        return self.scorer.combine(self.se, self.sw, self.sa, self.sc)

    # -- moves -----------------------------------------------------------------------
    def _apply(self, node: Node, kind: int, rng: np.random.Generator) -> object | None:
        """Change ``node``; return what undo needs, or None if the move is impossible."""
        if kind == 0:
            node.orient ^= 1
            return ("orient",)
        if kind == 1:
            node.mirror = not node.mirror
            return ("mirror",)
        step = 1 if rng.random() < 0.5 else -1
        k = node.k + step
        if not node.lo < k < node.hi:
            return None
        r, c, h, w = node.rect
        sl = self.L.slicer
        x = sl.cut(node.lo, k, node.hi, node.orient, h, w)
        if x is None:
            return None
        if node.orient == 0:
            left = sl.build(node.lo, k, r, c, h, x)
            right = sl.build(k, node.hi, r, c + x, h, w - x) if left else None
        else:
            left = sl.build(node.lo, k, r, c, x, w)
            right = sl.build(k, node.hi, r + x, c, h - x, w) if left else None
        if left is None or right is None:
            sl.realize(node, r, c, h, w)  # build wrote leaves; put them back
            return None
        undo = ("split", node.k, node.left, node.right)
        node.k, node.left, node.right = k, left, right
        return undo

    def _undo(self, node: Node, undo: tuple) -> None:
        if undo[0] == "orient":
            node.orient ^= 1
        elif undo[0] == "mirror":
            node.mirror = not node.mirror
        else:
            node.k, node.left, node.right = undo[1], undo[2], undo[3]

    def step(self, rng: np.random.Generator, temperature: float) -> tuple[bool, float]:
        """One Metropolis move. Returns (accepted, cost delta)."""
        L = self.L
        if self.root_p is None:
            return False, 0.0
        root = L.roots[int(rng.choice(len(L.roots), p=self.root_p))] if len(L.roots) > 1 \
            else L.roots[0]
        node = sample_internal(root, rng)
        if node is None:
            return False, 0.0
        kind = int(rng.integers(0, 3))
        undo = self._apply(node, kind, rng)
        if undo is None:
            return False, 0.0
        r, c, h, w = node.rect
        if not L.slicer.realize(node, r, c, h, w):
            self._undo(node, undo)
            L.slicer.realize(node, r, c, h, w)
            return False, 0.0
        g = L.geometry
        blocks = L.order[node.lo:node.hi]
        nets = np.unique(self.adj[self.adj_ptr[node.lo]:self.adj_ptr[node.hi]])
        e_new = self.scorer.block_exp(g, blocks)
        a_new = self.scorer.block_aspect(g, blocks)
        w_new = self.scorer.net_wire(g, nets)
        c_new = self.scorer.net_congestion(g, nets) if self.cfg.congestion_weight > 0 \
            else self.c[nets]
        se = self.se + float(e_new.sum() - self.e[blocks].sum())
        sa = self.sa + float(a_new.sum() - self.a[blocks].sum())
        sw = self.sw + float(w_new.sum() - self.w[nets].sum())
        sc = self.sc + float(c_new.sum() - self.c[nets].sum())
        delta = self.cost(se, sa, sw, sc) - self.cost(self.se, self.sa, self.sw, self.sc)
        if delta <= 0 or (temperature > 0 and rng.random() < math.exp(-delta / temperature)):
            self.e[blocks], self.a[blocks], self.w[nets], self.c[nets] = e_new, a_new, w_new, c_new
            self.se, self.sa, self.sw, self.sc = se, sa, sw, sc
            return True, delta
        self._undo(node, undo)
        L.slicer.realize(node, r, c, h, w)
        return False, delta

    def run(self, rng: np.random.Generator, time_limit_s: float | None = None
            ) -> dict[str, float]:
        """Anneal; returns statistics (moves, accepted, seconds, start/end cost).

        ``time_limit_s`` (default: the config's) of None or 0 means no time box: the run
        makes exactly its planned moves, so a seeded run is reproducible."""
        cfg = self.cfg
        start = time.perf_counter()
        limit = cfg.time_limit_s if time_limit_s is None else time_limit_s
        limit = 0.0 if limit is None else limit  # None: no time box, the move count decides
        total = int(min(cfg.max_moves, cfg.moves_per_block * max(len(self.L.order), 1)))
        cost0 = self.cost(self.se, self.sa, self.sw, self.sc)
        if total <= 0 or self.root_p is None:
            return {"moves": 0, "accepted": 0, "seconds": 0.0, "cost_start": cost0,
                    "cost_end": cost0}
        # starting temperature from a few trial moves, all undone
        ups = []
        for _ in range(min(100, total)):
            _, d = self.step(rng, 0.0)
            if d > 0:
                ups.append(d)
        t0 = (float(np.mean(ups)) / -math.log(max(min(cfg.initial_accept, 0.999), 1e-6))
              if ups else 1e-9)
        ratio = max(cfg.final_temperature_ratio, 1e-12)
        moves = accepted = 0
        frac = 0.0
        while frac < 1.0:
            temperature = t0 * ratio ** frac
            acc, _ = self.step(rng, temperature)
            accepted += acc
            moves += 1
            if moves % 128 == 0:
                elapsed = time.perf_counter() - start
                frac = max(moves / total, elapsed / limit if limit > 0 else 0.0)
                if moves % 8192 == 0:
                    self._resum()
            else:
                frac = max(frac, moves / total)
        self._resum()
        return {"moves": moves, "accepted": accepted,
                "seconds": time.perf_counter() - start, "cost_start": cost0,
                "cost_end": self.cost(self.se, self.sa, self.sw, self.sc)}
