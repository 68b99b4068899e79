"""Placement of a planned program: the compiler's side of the EDA-style floorplanner.

The planner sizes every stage once at a nominal share of the wafer; that is only a
calibration. Here each stage becomes a :class:`~waferscale.compiler.floorplan.Block`:

* ``work_pe_cycles`` and ``latency_cycles``: the stage's total cycles (kernel ``cost()`` plus
  the data-moving layout ops charged to it) at two areas, fitted to ``t(a) = W / a + L`` so
  the floorplanner's water filling sizes areas by *total* stage cycles and sees the part of
  a kernel that does not shrink with more PEs (a GEMM's systolic fill, a reduction chain);
* ``sram_bytes_total``: weights plus the buffers the kernel keeps on its rectangle;
* nets: every producer -> consumer activation stream, in 32-bit wavelets per sample (one
  sample = one compiled batch).

``floorplan.place_and_route`` places and routes them; every kernel is then re-sized inside
its placed rectangle (``plan.size_stage(bounds=)``): `place_plan` returns those sized
stages beside the placement (the caller builds the placed plan from them), so the
runtime's rectangle sizes and the report come from the placement, and stream times use
the routed distances.

The naive baseline every figure is compared against is ``floorplan.strip`` (full-height
strips in pipeline order); :func:`place` returns it for callers of the old interface.
There is one strip implementation, the floorplanner's.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from waferscale.compiler import sizing_cache
from waferscale.compiler.floorplan import (
    Block,
    BlockSramError,
    ConstraintError,
    FloorplanConfig,
    FloorplanResult,
    Geometry,
    Net,
    PlacementProblem,
    Quality,
    Routing,
    place_and_route,
    strip_placement,
)
from waferscale.compiler.plan import (
    Plan,
    Stage,
    home_of,
    moves_of,
    on_wafer,
    size_stage,
    with_moves,
)
from waferscale.compiler.sizing_cache import SizingMemo, stage_key
from waferscale.fabric.dtypes import BYTES
from waferscale.fabric.grid import EAST, WEST, Rect
from waferscale.fabric.timing import stream_cycles
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Node

#: The compiler's floorplanner settings. Every block carries its kernel's real time in a
#: rectangle (``Block.time_at``; water filling reads its areas off the sampled time curve),
#: so the balance term already sees what a sliver costs and the aspect term stays the
#: library's light default. Annealing is a fixed, seeded number of moves (no time box):
#: the same model compiles to the same placement on every machine.
COMPILE_CONFIG = FloorplanConfig(time_limit_s=None, moves_per_block=60, seed=0)
#: Smallest rectangle of any kernel: below this the slicer's cuts leave one-PE-wide slivers
#: that no kernel layout can use.
MIN_PES = 256

#: Head-room on a stage's SRAM: a kernel re-sized inside a non-square rectangle uses less of
#: it (a p x p GEMM grid in a p x 2p rectangle), so its bytes per used PE are higher.
SRAM_MARGIN = 2.0

RectLike = Rect | tuple[int, int, int, int] | list[int]


def as_rect(r: RectLike, what: str) -> Rect:
    """A user rectangle ``(row, col, rows, cols)`` as a :class:`Rect` (typed error if not)."""
    if isinstance(r, Rect):
        return r
    try:
        row, col, rows, cols = (int(v) for v in r)
    except (TypeError, ValueError) as exc:
        raise ConstraintError(f"{what}: {r!r} is not (row, col, rows, cols)") from exc
    if rows <= 0 or cols <= 0:
        raise ConstraintError(f"{what}: {r!r} has no PEs (rows and cols must be > 0)")
    return Rect(row, col, rows, cols)


@dataclass
class Calibration:
    """What the floorplanner needs to know about one stage (see the module docstring):
    the area model (``work``, ``latency``: the strip baseline and the wire/aspect terms
    use it) and the SRAM. Its real cycles in a given rectangle come from
    :func:`stage_time_at`, and the areas from their curves (``time_curve``)."""

    work: float
    latency: float
    sram: float


@dataclass
class PlacedProgram:
    """The result of placing a plan: rectangles, routing, every on-wafer stage sized inside
    its rectangle (``stages``), realised figures, baseline."""

    result: FloorplanResult
    rects: dict[str, Rect]
    offsets: dict[tuple[str, str], tuple[int, int]]
    stages: dict[str, Stage] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)


def _timed(spec: WaferSpec, st: Stage, moves: list[Node], *, area: float = 0.0,
           bounds: tuple[int, int] | None = None, max_side: int | None = None) -> Stage:
    """``st`` sized at ``area`` PEs (or inside ``bounds``), its data movement included."""
    return with_moves(spec, size_stage(spec, st, area, max_side, bounds), moves)


def calibrate(spec: WaferSpec, st: Stage, moves: list[Node],
              max_side: int | None = None) -> Calibration:
    """Fit ``t(a) = W / a + L`` through the stage's total cycles at its planned area and at a
    quarter of it; a stage that is no slower on fewer PEs (capped by its problem size) is
    all work at its planned area."""
    a1, t1 = max(1, st.pes), st.cost_cycles + st.move_cycles
    small = _timed(spec, st, moves, area=a1 / 4, max_side=max_side)
    a2, t2 = max(1, small.pes), small.cost_cycles + small.move_cycles
    sram = float(min(st.sram_per_pe * a1, small.sram_per_pe * a2) if small.fits
                 else st.sram_per_pe * a1)
    sram = max(sram, float(st.weight_bytes))
    if a2 < a1 and t2 > t1:
        w = (t2 - t1) / (1.0 / a2 - 1.0 / a1)
        lat = max(0.0, t1 - w / a1)
    else:
        w, lat = t1 * a1, 0.0
    return Calibration(max(w, 1.0), lat, sram)


def stage_time_at(spec: WaferSpec, st: Stage, moves: list[Node],
                  max_side: int | None = None, inbound: tuple[int, ...] = (),
                  memo: SizingMemo | None = None):  # noqa: ANN201 - a closure
    """``time_at(rows, cols)`` for the floorplanner: the stage's kernel sized inside a
    ``rows x cols`` rectangle (``size_stage(bounds=)``, the same call that sizes it after
    placement) plus its data movement plus its slowest inbound stream (``inbound``: the
    producers' output elements) from one rectangle side away, the same ``stream_cycles``
    the realised figure uses over the routed distance: a thin rectangle receiving a big
    tensor is slow even when its kernel is cheap. inf where the kernel does not fit (SRAM),
    which the slicer treats as an illegal leaf, so no kernel is placed where it cannot run.

    Closures given the same ``memo`` share their sizings between stages that size alike
    (a model's repeated layers) and with the compiles that filled it (`sizing_cache`).
    """
    key = stage_key(st, moves, max_side)
    sized = {} if memo is None else memo.setdefault(key, {})

    def kernel_at(rows: int, cols: int) -> tuple[tuple[int, int] | None, float]:
        c = _timed(spec, st, moves, bounds=(rows, cols), max_side=max_side)
        if not (c.fits and c.rect[0] <= rows and c.rect[1] <= cols):
            return None, math.inf
        return c.rect, float(c.cost_cycles + c.move_cycles)

    def time_at(rows: int, cols: int) -> float:
        got = sized.get((rows, cols))
        if got is None:
            got = sized[(rows, cols)] = kernel_at(rows, cols)
        rect, cycles = got
        if rect is None:
            return math.inf
        r, k = rect
        stream = max((stream_cycles(spec, math.ceil(n / max(1, r * k)), r, k, r, k)
                      for n in inbound), default=0.0)
        return cycles + stream

    return time_at


def smallest_square(time_at: Callable[[int, int], float], spec: WaferSpec) -> int:
    """Side of the smallest square rectangle the kernel fits in (finite ``time_at``), by
    bisection. Its area is the block's SRAM minimum: the bytes a planned layout keeps
    can be several times what the kernel needs at its densest (weights replicated per
    row group, queries per key split), and minimums that big left the water filling a
    third of the wafer (GenSLM-25M at 10,240 tokens: 566k of 750k PEs)."""
    lo, hi = 1, min(spec.rows, spec.cols)
    if not math.isfinite(time_at(hi, hi)):
        return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if math.isfinite(time_at(mid, mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def out_numel(g: Graph, st: Stage) -> int:
    """Elements of a stage's output (the first output of a multi-output kernel)."""
    node = g.nodes[st.nodes[-1]]
    shape = node.meta.get("shape")
    n = node.meta.get("numel", 0) or 0
    if isinstance(shape, list) and shape and isinstance(shape[0], list):
        n = math.prod(shape[0])
    return int(n)


def read_numel(g: Graph, st: Stage, src: Stage, stage_of: dict[str, str]) -> int:
    """Elements a stage reads from one producer: what crosses the fabric between them.

    A consumer often reads a slice of its producer's output (a rotary ``neg`` reads 8 of
    the QKV GEMM's 1,536 columns; the slice is data movement charged on the bigger
    rectangle), so the stream into it carries the values it reads, after the layout ops,
    not the producer's whole output; never more than that output."""
    members = set(st.nodes)
    seen: set[str] = set()
    total = 0
    for n in st.nodes:
        for i in g.nodes[n].inputs:
            if i in members or i in seen or g.nodes[i].op == "const":
                continue
            if home_of(g, i, stage_of) != src.name:
                continue
            seen.add(i)
            numel = g.nodes[i].meta.get("numel")
            total += int(numel) if isinstance(numel, int) and numel > 0 else out_numel(g, src)
    full = out_numel(g, src)
    return min(total, full) if total else full


def wavelets(g: Graph, st: Stage) -> float:
    """32-bit wavelets of a stage's output per sample (16-bit values travel two per wavelet)."""
    return out_numel(g, st) * BYTES[st.dtype] / 4.0


def build_problem(g: Graph, p: Plan, spec: WaferSpec, moves: dict[str, list[Node]], *,
                  reserve: list[RectLike] | None = None,
                  pin: dict[str, RectLike] | None = None, max_side: int | None = None,
                  memo: SizingMemo | None = None
                  ) -> tuple[PlacementProblem, dict[str, Calibration]]:
    """The placement problem of a plan's on-wafer stages (pipeline order) and their nets.
    ``moves``: each stage's data-moving layout nodes (`plan.moves_of`). The blocks'
    ``time_at`` share ``memo`` (`sizing_cache`; a fresh one when None).

    Raises :class:`ConstraintError` for pins of unknown stages or contradicting pins and
    reserved rectangles, :class:`BlockSramError` when the stages do not fit.
    """
    placed = on_wafer(p.stages)
    names = {s.name for s in placed}
    pins = {k: as_rect(v, f"pin {k!r}") for k, v in (pin or {}).items()}
    unknown = [k for k in pins if k not in names]
    if unknown:
        raise ConstraintError(f"pin: no on-wafer stage named {', '.join(map(repr, unknown))}; "
                              f"stages are e.g. {', '.join(list(names)[:6])} (see the report's "
                              f"stage list)", blocks=unknown)
    reserved = [as_rect(r, f"reserve #{i}") for i, r in enumerate(reserve or [])]
    by_name = {s.name: s for s in placed}
    feeds = {s.name: tuple(read_numel(g, s, by_name[i], p.stage_of) for i in s.inputs
                           if i in by_name and i != s.name) for s in placed}
    cal = {s.name: calibrate(spec, s, moves.get(s.name, []), max_side) for s in placed}
    memo = {} if memo is None else memo
    fit_sides = {s.name: smallest_square(stage_time_at(spec, s, moves.get(s.name, []),
                                                        max_side, memo=memo), spec)
                 for s in placed}
    blocks = [Block(s.name, cal[s.name].work,
                    min(cal[s.name].sram * SRAM_MARGIN,
                        float(fit_sides[s.name] ** 2 * spec.sram_bytes)),
                    min_pes=min(MIN_PES, max(1, s.pes)), fixed=pins.get(s.name),
                    latency_cycles=cal[s.name].latency,
                    time_at=stage_time_at(spec, s, moves.get(s.name, []), max_side,
                                          feeds[s.name], memo))
              for s in placed]
    traffic: dict[tuple[str, str], float] = {}
    for s in placed:
        for src in s.inputs:
            if src in by_name and src != s.name:
                traffic[(src, s.name)] = (read_numel(g, s, by_name[src], p.stage_of)
                                          * BYTES[by_name[src].dtype] / 4.0)
    nets = [Net(a, b, v) for (a, b), v in traffic.items()]
    try:
        problem = PlacementProblem(blocks, nets, spec, reserved=reserved)
    except BlockSramError as exc:
        raise BlockSramError(f"{exc}. {_too_big(g, cal, spec, reserved)}", block=exc.block,
                             excess_bytes=exc.excess_bytes) from exc
    return problem, cal


def _too_big(g: Graph, cal: dict[str, Calibration], spec: WaferSpec, reserved: list[Rect]
             ) -> str:
    """Which layers do not fit and by how much (largest SRAM first), and what to do."""
    free = spec.pes - sum(r.pes for r in reserved)
    total = sum(c.sram for c in cal.values())
    cap = free * spec.sram_bytes
    worst = sorted(cal.items(), key=lambda kv: -kv[1].sram)[:5]
    src = {n: g.nodes[n].meta.get("source", "") if n in g.nodes else "" for n in cal}
    items = "; ".join(f"{n} ({src[n] or 'stage'}) {c.sram / 1e6:,.1f} MB = "
                      f"{math.ceil(c.sram / spec.sram_bytes):,} PEs" for n, c in worst)
    over = max(0.0, total - cap)
    return (f"The stages need {total / 1e9:.2f} GB of SRAM in all, {over / 1e9:.2f} GB more than "
            f"the {free:,} free PEs hold; largest: {items}. Use weight streaming "
            f"(mode='auto' or 'estimate') for this model")


def routed_offsets(problem: PlacementProblem, routing: Routing) -> dict[tuple[str, str],
                                                                           tuple[int, int]]:
    """(rows, cols) hops each net's routed bundle travels between the two rectangles."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for r in routing.routes:
        net = problem.nets[r.net]
        dr = dc = 0
        for b in r.bands:
            if b.direction in (EAST, WEST):
                dc += b.rect.cols
            else:
                dr += b.rect.rows
        out[(net.src, net.dst)] = (dr, dc)
    return out


def _geometry_rects(problem: PlacementProblem, geom: Any) -> dict[str, Rect]:
    return {b.name: Rect(int(geom.R[i]), int(geom.C[i]), int(geom.H[i]), int(geom.W[i]))
            for i, b in enumerate(problem.blocks)}


def fit_into(spec: WaferSpec, g: Graph, p: Plan, rects: dict[str, Rect],
             offsets: dict[tuple[str, str], tuple[int, int]], max_side: int | None = None
             ) -> tuple[dict[str, Stage], dict[str, float]]:
    """Every on-wafer stage sized inside its rectangle (new stages) and its stage time:
    kernel + data movement + the slowest inbound stream over its routed distance.

    Every kernel runs inside the rectangle it was placed in (``size_stage(bounds=)``); one
    that does not fit there keeps ``fits = False`` and its reason, and the compiler reports
    the plan as not fitting rather than quietly running it on another shape."""
    moves = moves_of(g)
    sized: dict[str, Stage] = {}
    for s in p.stages:
        if s.name not in rects:
            continue
        r = rects[s.name]
        st = _timed(spec, s, moves.get(s.name, []), bounds=(r.rows, r.cols),
                    max_side=max_side)
        if st.fits and (st.rect[0] > r.rows or st.rect[1] > r.cols):
            st = dataclasses.replace(st, sizing=dataclasses.replace(
                st.sizing, fits=False, why_not=f"kernel shape {st.rect[0]}x{st.rect[1]} does "
                                               f"not fit its placed rectangle {r.rows}x{r.cols}"))
        sized[s.name] = st
    times: dict[str, float] = {}
    for name, st in sized.items():
        inbound = 0.0
        for src in st.inputs:
            if src not in sized:
                continue
            dr, dc = offsets.get((src, name), (1, 1))
            per_pe = math.ceil(read_numel(g, st, sized[src], p.stage_of) / max(1, st.pes))
            inbound = max(inbound, stream_cycles(spec, per_pe, max(dr, 0), max(dc, 1),
                                                 st.rect[0], st.rect[1]))
        times[name] = (st.cost_cycles + st.move_cycles + inbound) if st.fits else math.inf
    return sized, times


def _finite(x: float) -> float | None:
    """A figure as strict JSON takes it: None (null) where it is not finite; the figures
    beside it say why (``baseline_note``, ``placement_note``)."""
    return float(x) if math.isfinite(x) else None


def busy_pe_cycles(sized: dict[str, Stage]) -> float:
    """PE-cycles the kernels are busy per sample: each stage's ``cost()`` in the rectangle
    it was placed in, times the PEs its kernel uses there (computing or moving its own
    data). Not counted: PEs of a rectangle the kernel cannot use, and the time a stage
    waits for its next inputs. Read from the placed kernels, not from the placer's
    calibrated ``W / a + L`` fit, whose ``W`` moves with the planned areas (it once read
    93 % for a placement whose kernels kept 26 % of the wafer busy)."""
    return float(sum(s.cost_cycles * s.pes for s in sized.values() if s.fits))


def flop_utilization(spec: WaferSpec, stages: tuple[Stage, ...] | list[Stage], period: float
                     ) -> float:
    """Useful FLOPs per period over the wafer's peak FLOPs in the same time (every PE
    issuing its dtype's widest FMAC each cycle): the strict figure, the MFU of a GPU."""
    if period <= 0:
        return 0.0
    peak = sum(s.flops / (2.0 * spec.simd.width(s.dtype, "fmac")) for s in on_wafer(stages))
    return peak / (spec.pes * period)


def place_plan(g: Graph, p: Plan, spec: WaferSpec, *, reserve: list[RectLike] | None = None,
               pin: dict[str, RectLike] | None = None, max_side: int | None = None,
               config: FloorplanConfig | None = None) -> PlacedProgram:
    """Place and route a plan's stages; size every kernel inside its rectangle (returned
    as ``PlacedProgram.stages``) and measure placed vs strip utilisation.

    Utilisation (placed and strips the same way) = busy PE-cycles (`busy_pe_cycles`) /
    (wafer PEs x the slowest realised stage time), the realised times coming from the
    kernels' ``cost()`` inside the rectangles they got plus their inbound streams, so the
    figure is what the pipeline would achieve; `flop_utilization` is the stricter one.
    """
    t0 = time.perf_counter()
    if not on_wafer(p.stages):
        return nothing_to_place(spec, reserve=reserve, pin=pin)
    moves = moves_of(g)
    entry = sizing_cache.key(spec, (stage_key(s, moves.get(s.name, []), max_side)
                                    for s in on_wafer(p.stages)))
    memo = sizing_cache.load(entry)
    known = sizing_cache.entries(memo)
    problem, cal = build_problem(g, p, spec, moves, reserve=reserve, pin=pin,
                                 max_side=max_side, memo=memo)
    result = place_and_route(problem, config or COMPILE_CONFIG)
    if sizing_cache.entries(memo) > known:
        sizing_cache.save(entry, memo)
    rects = result.rects
    offsets = routed_offsets(problem, result.routing)
    sized, times = fit_into(spec, g, p, rects, offsets, max_side)
    work = busy_pe_cycles(sized)
    period = max(times.values()) if times else 0.0
    figures: dict[str, Any] = {
        "utilization": work / (spec.pes * period) if period else 0.0,
        "flop_utilization": flop_utilization(spec, p.stages, period),
        "bottleneck_stage": max(times, key=times.get) if times else "",
        "bottleneck_cycles": _finite(period),
        "colors_used": result.routing.colors_used,
        "peak_link_load": result.routing.peak_link_load,
        "wire_traffic": result.quality.wire_traffic,
        "placer_utilization": result.quality.utilisation,
        "unfit_stages": sum(not s.fits for s in sized.values()),
        "blocks": problem.n, "nets": len(problem.nets),
    }
    if result.baseline_geometry is not None and result.baseline_routing is not None:
        b_rects = _geometry_rects(problem, result.baseline_geometry)
        b_sized, b_times = fit_into(spec, g, p, b_rects,
                                    routed_offsets(problem, result.baseline_routing), max_side)
        b_period = max(b_times.values()) if b_times else 0.0
        b_work = busy_pe_cycles(b_sized)
        figures.update(
            baseline_utilization=b_work / (spec.pes * b_period) if b_period else 0.0,
            baseline_bottleneck_stage=max(b_times, key=b_times.get) if b_times else "",
            baseline_bottleneck_cycles=_finite(b_period),
            baseline_colors_used=result.baseline_routing.colors_used,
            baseline_peak_link_load=result.baseline_routing.peak_link_load,
            baseline_wire_traffic=result.baseline.wire_traffic if result.baseline else 0.0)
        if not math.isfinite(b_period):
            figures["baseline_note"] = (
                f"in strips, {sum(not math.isfinite(t) for t in b_times.values())} kernel(s) "
                f"do not fit their strip (e.g. {max(b_times, key=b_times.get)}): no strip "
                f"period (baseline_bottleneck_cycles null)")
    else:
        figures.update(baseline_utilization=0.0, baseline_note="strips do not fit the SRAM")
    if not math.isfinite(period):
        figures["placement_note"] = (
            f"{figures['unfit_stages']} kernel(s) do not fit their placed rectangle (e.g. "
            f"{figures['bottleneck_stage']}): no period (bottleneck_cycles null)")
    figures["place_seconds"] = time.perf_counter() - t0
    return PlacedProgram(result, rects, offsets, sized, figures)


def nothing_to_place(spec: WaferSpec, *, reserve: list[RectLike] | None = None,
                     pin: dict[str, RectLike] | None = None) -> PlacedProgram:
    """The placement of a plan with no on-wafer stage: every op relabels or moves data, or
    runs on the host. That is a valid program (it runs; its figures are the host's and
    the I/O's), so it gets an empty placement instead of the floorplanner's refusal of a
    problem without blocks. Pins name no stage here, so any pin is the user's mistake;
    reserved rectangles are still checked against the wafer."""
    if pin:
        raise ConstraintError(f"pin: no on-wafer stage named {', '.join(map(repr, pin))}; "
                              f"this model has no stage on the wafer (every op is a layout "
                              f"op or runs on the host)", blocks=list(pin))
    reserved = [as_rect(r, f"reserve #{i}") for i, r in enumerate(reserve or [])]
    for i, r in enumerate(reserved):
        if r.row < 0 or r.col < 0 or r.row + r.rows > spec.rows or r.col + r.cols > spec.cols:
            raise ConstraintError(f"reserved area #{i} {r} leaves the {spec.rows}x{spec.cols} "
                                  f"wafer")
    problem = PlacementProblem.__new__(PlacementProblem)  # its validation refuses no blocks
    problem.blocks, problem.nets, problem.spec, problem.reserved = [], [], spec, reserved
    problem.index = {}
    routing = Routing([], np.zeros((4, 0, 0)), 0, 0, spec.routable_colors)
    quality = Quality(utilisation=0.0, utilisation_fabric=0.0, bottleneck_cycles=0.0,
                      bottleneck_block="", wire_traffic=0.0, peak_link_load=0.0,
                      congestion=0.0, colors_used=0, color_demand_peak=0, pes_used=0,
                      wall_s=0.0)
    result = FloorplanResult(problem, COMPILE_CONFIG, Geometry.empty(0), routing, quality, {})
    figures: dict[str, Any] = {
        "utilization": 0.0, "flop_utilization": 0.0, "bottleneck_stage": "",
        "bottleneck_cycles": 0.0, "colors_used": 0, "peak_link_load": 0.0,
        "wire_traffic": 0.0, "placer_utilization": 0.0, "unfit_stages": 0, "blocks": 0,
        "nets": 0, "baseline_utilization": 0.0,
        "placement_note": "no stage runs on the wafer (every op is a layout op or runs on "
                          "the host): nothing to place",
        "place_seconds": 0.0}
    return PlacedProgram(result, {}, {}, {}, figures)


def place(program: Any, spec: WaferSpec) -> dict[str, Rect]:
    """The strip baseline, ``{stage name: Rect}`` for every on-wafer stage of ``program``
    (a :class:`~waferscale.compiler.program.Program`): ``floorplan.strip`` over the
    program's calibrated blocks. Kept for callers of the first compiler's interface; the
    compiler itself places with :func:`place_plan`."""
    problem, _ = build_problem(program.graph, program.plan, spec, moves_of(program.graph))
    geom = strip_placement(problem)
    if geom is None:
        raise BlockSramError("the stages' SRAM does not fit in full-height strips",
                             block=problem.blocks[0].name, excess_bytes=0.0)
    return _geometry_rects(problem, geom)


__all__ = ["COMPILE_CONFIG", "Calibration", "PlacedProgram", "as_rect", "build_problem",
           "busy_pe_cycles", "calibrate", "fit_into", "flop_utilization", "nothing_to_place",
           "out_numel", "place",
           "place_plan", "read_numel", "routed_offsets", "smallest_square", "stage_time_at",
           "wavelets"]
