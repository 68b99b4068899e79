"""Routing: one bundle of parallel XY (or YX) lanes per net, the link-load map, colours.

Model. A net streams ``wavelets`` from its producer's rectangle to its consumer's. The
stream leaves through the producer's edge that faces the consumer and spreads over
``lanes`` parallel rows (or columns): the overlap of the facing edges when the rectangles
share rows or columns, else (diagonal neighbours) the narrower of the turning sides. Each
link of the bundle carries ``wavelets / lanes`` per sample; one wavelet crosses a link per
cycle, so that is also link-busy cycles per sample. A diagonal net goes X then Y or Y then
X; with ``route_orientation="auto"`` nets are routed in falling traffic order and each
takes the orientation whose busiest link is less loaded so far. Movement inside a
rectangle (the kernel's own collectives, getting data to its edge) belongs to the kernel.

Link loads are accumulated for all bands at once into a [4, rows, cols] array (outgoing
link E, W, S, N of each PE) with 2-D difference arrays (``np.add.at`` on the corners, then
cumulative sums), so there is no Python loop over PEs.

Colours. A net's colour is configured on every PE of its producer, its consumer and its
bundle; two nets that share a PE need different colours. The conflict graph comes from a
sweep over the footprints' column intervals; DSatur colours it greedily with ids
``0 .. spec.routable_colors - 1`` (the runtime's reserved colours stay free). Needing more
raises :class:`RoutingError` naming the worst region.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from waferscale.compiler.floorplan.errors import RoutingError
from waferscale.compiler.floorplan.objective import Geometry
from waferscale.compiler.floorplan.problem import PlacementProblem
from waferscale.fabric.grid import EAST, NORTH, SOUTH, WEST, Rect

DIR_NAMES = {EAST: "E", WEST: "W", SOUTH: "S", NORTH: "N"}


@dataclass(frozen=True)
class Band:
    """PEs ``rect`` whose outgoing link ``direction`` carries ``load`` wavelets per sample."""

    direction: int
    rect: Rect
    load: float


@dataclass
class NetRoute:
    """How one net is routed: ``kind`` is "h"/"v" (straight), "xy"/"yx" (one turn)."""

    net: int
    kind: str
    lanes: int
    bands: list[Band]
    footprint: list[Rect]
    color: int = -1


@dataclass
class Routing:
    """Routes of all nets, the link-load map and the colour assignment."""

    routes: list[NetRoute]
    link_load: np.ndarray
    colors_used: int
    color_demand_peak: int
    colors_available: int
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def peak_link_load(self) -> float:
        return float(self.link_load.max()) if self.link_load.size else 0.0


def _rect(r0: int, r1: int, c0: int, c1: int) -> Rect | None:
    return Rect(r0, c0, r1 - r0, c1 - c0) if r1 > r0 and c1 > c0 else None


def _straight(a: tuple[int, int, int, int], b: tuple[int, int, int, int], v: float,
              transpose: bool) -> tuple[list[Band], list[Rect], int]:
    """A horizontal bundle between row-overlapping a and b (transposed: vertical)."""
    ar, ac, ah, aw = a
    br, bc, bh, bw = b
    r0, r1 = max(ar, br), min(ar + ah, br + bh)
    lanes = r1 - r0
    load = v / lanes
    if bc >= ac + aw:  # b to the east
        links, foot, d = (ac + aw - 1, bc), (ac + aw, bc), EAST
    else:  # b to the west
        links, foot, d = (bc + bw, ac + 1), (bc + bw, ac), WEST
    band = _rect(r0, r1, *links)
    fp = _rect(r0, r1, *foot)
    if transpose:
        band = band and Rect(band.col, band.row, band.cols, band.rows)
        fp = fp and Rect(fp.col, fp.row, fp.cols, fp.rows)
        d = {EAST: SOUTH, WEST: NORTH}[d]
    return ([Band(d, band, load)] if band else []), ([fp] if fp else []), lanes


def _xy(a: tuple[int, int, int, int], b: tuple[int, int, int, int], v: float,
        transpose: bool) -> tuple[list[Band], list[Rect], int]:
    """Diagonal neighbours: lanes leave a sideways in a's rows nearest b, turn, and enter b
    in its columns nearest a (transposed: the YX route)."""
    ar, ac, ah, aw = a
    br, bc, bh, bw = b
    w = max(1, min(ah, bw))
    below = br >= ar + ah
    right = bc >= ac + aw
    h0, h1 = (ar + ah - w, ar + ah) if below else (ar, ar + w)
    b0, b1 = (bc, bc + w) if right else (bc + bw - w, bc + bw)
    load = v / w
    bands: list[tuple[int, Rect | None]] = []
    foot: list[Rect | None] = []
    if right:
        bands.append((EAST, _rect(h0, h1, ac + aw - 1, b1 - 1)))
        foot.append(_rect(h0, h1, ac + aw, b1))
    else:
        bands.append((WEST, _rect(h0, h1, b0 + 1, ac + 1)))
        foot.append(_rect(h0, h1, b0, ac))
    if below:
        bands.append((SOUTH, _rect(h0, br, b0, b1)))
        foot.append(_rect(h1, br, b0, b1))
    else:
        bands.append((NORTH, _rect(br + bh, h1, b0, b1)))
        foot.append(_rect(br + bh, h0, b0, b1))
    out_b, out_f = [], []
    swap = {EAST: SOUTH, WEST: NORTH, SOUTH: EAST, NORTH: WEST}
    for d, rc in bands:
        if rc is None:
            continue
        if transpose:
            rc, d = Rect(rc.col, rc.row, rc.cols, rc.rows), swap[d]
        out_b.append(Band(d, rc, load))
    for rc in foot:
        if rc is None:
            continue
        out_f.append(Rect(rc.col, rc.row, rc.cols, rc.rows) if transpose else rc)
    return out_b, out_f, w


def _t(x: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return (x[1], x[0], x[3], x[2])


def route_net(a: tuple[int, int, int, int], b: tuple[int, int, int, int], v: float,
              kind: str) -> tuple[list[Band], list[Rect], int]:
    """Bands, footprint (outside both rectangles) and lanes of one net of the given kind."""
    if kind == "h":
        return _straight(a, b, v, False)
    if kind == "v":
        return _straight(_t(a), _t(b), v, True)
    if kind == "xy":
        return _xy(a, b, v, False)
    return _xy(_t(a), _t(b), v, True)


def _kind(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> str | None:
    if min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]):
        return "h"
    if min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1]):
        return "v"
    return None


def accumulate_loads(bands: list[Band], rows: int, cols: int) -> np.ndarray:
    """Sum band loads into [4, rows, cols] with 2-D difference arrays (vectorised)."""
    diff = np.zeros((4, rows + 1, cols + 1))
    if bands:
        d = np.array([b.direction for b in bands])
        r0 = np.array([b.rect.row for b in bands])
        c0 = np.array([b.rect.col for b in bands])
        r1 = r0 + np.array([b.rect.rows for b in bands])
        c1 = c0 + np.array([b.rect.cols for b in bands])
        v = np.array([b.load for b in bands])
        np.add.at(diff, (d, r0, c0), v)
        np.add.at(diff, (d, r0, c1), -v)
        np.add.at(diff, (d, r1, c0), -v)
        np.add.at(diff, (d, r1, c1), v)
    # one direction at a time: NumPy's cumsum over the middle axis of a 3-D array runs
    # ten times slower than over the first axis of each 2-D slice (the same sums)
    for plane in diff:
        plane[:] = plane.cumsum(axis=0).cumsum(axis=1)
    return diff[:, :rows, :cols]


def _count_map(rects: list[Rect], rows: int, cols: int) -> np.ndarray:
    diff = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    if rects:
        r0 = np.array([r.row for r in rects])
        c0 = np.array([r.col for r in rects])
        r1 = r0 + np.array([r.rows for r in rects])
        c1 = c0 + np.array([r.cols for r in rects])
        np.add.at(diff, (r0, c0), 1)
        np.add.at(diff, (r0, c1), -1)
        np.add.at(diff, (r1, c0), -1)
        np.add.at(diff, (r1, c1), 1)
    return diff.cumsum(axis=0).cumsum(axis=1)[:rows, :cols]


def conflict_pairs(owner: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray,
                   c1: np.ndarray) -> np.ndarray:
    """Pairs (i, j) of owners whose rectangles share a PE: sort by first column, and for
    each rectangle test only those starting before it ends (a sweep)."""
    order = np.argsort(c0, kind="stable")
    owner, r0, r1, c0, c1 = owner[order], r0[order], r1[order], c0[order], c1[order]
    ends = np.searchsorted(c0, c1, side="left")
    pairs: list[np.ndarray] = []
    for i in range(len(order)):
        j = np.arange(i + 1, ends[i])
        if j.size == 0:
            continue
        hit = j[(r0[j] < r1[i]) & (r0[i] < r1[j]) & (owner[j] != owner[i])]
        if hit.size:
            pairs.append(np.stack([np.full(hit.size, owner[i]), owner[hit]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(pairs)
    allp.sort(axis=1)
    return np.unique(allp, axis=0)


def dsatur(n: int, pairs: np.ndarray) -> np.ndarray:
    """Greedy DSatur colouring: always colour the node with the most distinct neighbour
    colours next (ties: most neighbours). Exact on interval-like graphs in practice."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in pairs.tolist():
        adj[i].append(j)
        adj[j].append(i)
    colors = np.full(n, -1, dtype=np.int64)
    seen: list[set[int]] = [set() for _ in range(n)]
    heap = [(0, -len(adj[i]), i) for i in range(n)]
    heapq.heapify(heap)
    while heap:
        sat, _, i = heapq.heappop(heap)
        if colors[i] >= 0 or -sat != len(seen[i]):
            continue
        c = 0
        while c in seen[i]:
            c += 1
        colors[i] = c
        for j in adj[i]:
            if colors[j] < 0 and c not in seen[j]:
                seen[j].add(c)
                heapq.heappush(heap, (-len(seen[j]), -len(adj[j]), j))
    return colors


def route(problem: PlacementProblem, geometry: Geometry, orientation: str = "auto",
          raise_on_budget: bool = True) -> Routing:
    """Route every net of a legal placement, accumulate link loads, assign colours.

    ``raise_on_budget=False`` returns a routing that needs too many colours instead of
    raising (the strip baseline is measured, not enforced).
    """
    spec = problem.spec
    rows, cols = spec.rows, spec.cols
    g = geometry
    rect = [(int(g.R[i]), int(g.C[i]), int(g.H[i]), int(g.W[i])) for i in range(problem.n)]
    m = len(problem.nets)
    routes: list[NetRoute | None] = [None] * m
    traffic = problem.net_traffic
    diag: list[int] = []
    for k in range(m):
        a, b = rect[int(problem.net_src[k])], rect[int(problem.net_dst[k])]
        kind = _kind(a, b)
        if kind is None:
            diag.append(k)
            continue
        bands, foot, lanes = route_net(a, b, float(traffic[k]), kind)
        routes[k] = NetRoute(k, kind, lanes, bands, foot)
    straight_bands = [bd for r in routes if r is not None for bd in r.bands]
    load = accumulate_loads(straight_bands, rows, cols)
    for k in sorted(diag, key=lambda k: -traffic[k]):
        a, b = rect[int(problem.net_src[k])], rect[int(problem.net_dst[k])]
        options = ["xy", "yx"] if orientation == "auto" else [orientation]
        best = None
        for kind in options:
            bands, foot, lanes = route_net(a, b, float(traffic[k]), kind)
            peak = max((float(load[bd.direction][bd.rect.slices].max()) + bd.load
                        for bd in bands), default=0.0)
            if best is None or peak < best[0]:
                best = (peak, kind, bands, foot, lanes)
        assert best is not None
        _, kind, bands, foot, lanes = best
        for bd in bands:
            load[bd.direction][bd.rect.slices] += bd.load
        routes[k] = NetRoute(k, kind, lanes, bands, foot)
    done = [r for r in routes if r is not None]
    # the exact map, all bands at once (the greedy above only steered the choice)
    link_load = accumulate_loads([bd for r in done for bd in r.bands], rows, cols)
    # colours: footprint = producer, consumer and bundle
    owner, pieces = [], []
    for r in done:
        s, d = int(problem.net_src[r.net]), int(problem.net_dst[r.net])
        for pc in (Rect(*rect[s]), Rect(*rect[d]), *r.footprint):
            owner.append(r.net)
            pieces.append(pc)
    own = np.array(owner, dtype=np.int64)
    r0 = np.array([p.row for p in pieces], dtype=np.int64)
    c0 = np.array([p.col for p in pieces], dtype=np.int64)
    r1 = r0 + np.array([p.rows for p in pieces], dtype=np.int64)
    c1 = c0 + np.array([p.cols for p in pieces], dtype=np.int64)
    pairs = conflict_pairs(own, r0, r1, c0, c1) if m else np.zeros((0, 2), dtype=np.int64)
    colors = dsatur(m, pairs) if m else np.zeros(0, dtype=np.int64)
    for r in done:
        r.color = int(colors[r.net])
    demand = _count_map(pieces, rows, cols) if pieces else np.zeros((rows, cols), np.int64)
    used = int(colors.max()) + 1 if m else 0
    budget = spec.routable_colors
    result = Routing(done, link_load, used, int(demand.max()) if demand.size else 0, budget,
                     {"conflicts": float(len(pairs))})
    if used > budget and raise_on_budget:
        worst = int(np.argmax(colors))
        pr, pc = np.unravel_index(int(np.argmax(demand)), demand.shape)
        if demand.max() > budget:
            region = Rect(int(pr), int(pc), 1, 1)
            where = f"PE ({pr},{pc}) lies on {int(demand.max())} nets"
        else:
            fp = [p for o, p in zip(owner, pieces, strict=True) if o == worst]
            rr0 = min(p.row for p in fp)
            cc0 = min(p.col for p in fp)
            region = Rect(rr0, cc0, max(p.row + p.rows for p in fp) - rr0,
                          max(p.col + p.cols for p in fp) - cc0)
            net = problem.nets[worst]
            where = f"net {net.src}->{net.dst} around {region}"
        raise RoutingError(
            f"routing needs {used} colours but programs have {budget} "
            f"(spec.colors={spec.colors} minus {spec.reserved_colors} reserved): {where}; "
            f"fuse kernels, drop skip connections across many blocks, or give the placer "
            f"more room", region=region, colors_needed=used, colors_available=budget)
    return result
