"""Floorplanner and router: legality, hand-computed objective terms, quality against the
strip baseline, colour budget and typed errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from waferscale.compiler.floorplan import (
    Block,
    BlockSramError,
    ConstraintError,
    FloorplanConfig,
    Geometry,
    Net,
    PlacementProblem,
    RoutingError,
    place_and_route,
    route,
    strip_placement,
)
from waferscale.compiler.floorplan.alloc import curve_area, free_regions, water_fill
from waferscale.compiler.floorplan.objective import Scorer
from waferscale.compiler.floorplan.route import accumulate_loads
from waferscale.compiler.floorplan.serialize import rects_from, to_dict
from waferscale.compiler.floorplan.strip import apportion
from waferscale.compiler.floorplan.synthetic import random_pipeline, transformer_pipeline
from waferscale.fabric.grid import EAST, SOUTH, Rect
from waferscale.hardware.spec import PRESETS, custom_spec

FAST = FloorplanConfig(time_limit_s=2.0, moves_per_block=20, congestion_rounds=1)


def _owner_map(problem: PlacementProblem, g: Geometry) -> np.ndarray:
    occ = np.zeros((problem.spec.rows, problem.spec.cols), dtype=np.int64)
    for i in range(problem.n):
        occ[g.R[i]:g.R[i] + g.H[i], g.C[i]:g.C[i] + g.W[i]] += 1
    return occ


def assert_legal(problem: PlacementProblem, g: Geometry) -> None:
    spec = problem.spec
    assert (g.R >= 0).all() and (g.C >= 0).all() and (g.H > 0).all() and (g.W > 0).all()
    assert (g.R + g.H <= spec.rows).all() and (g.C + g.W <= spec.cols).all()
    occ = _owner_map(problem, g)
    assert occ.max() <= 1, "two blocks share a PE"
    for r in problem.reserved:
        assert occ[r.slices].sum() == 0, f"reserved {r} used"
    area = g.H * g.W
    per_pe = np.array([b.sram_bytes_total for b in problem.blocks]) / area
    assert (per_pe <= spec.sram_bytes).all()
    assert (area >= problem.min_areas).all()
    for i, b in enumerate(problem.blocks):
        if b.fixed is not None:
            assert Rect(int(g.R[i]), int(g.C[i]), int(g.H[i]), int(g.W[i])) == b.fixed
        if b.max_aspect is not None:
            assert max(g.H[i], g.W[i]) <= b.max_aspect * min(g.H[i], g.W[i])


def test_legal_with_reserved_pinned_and_aspect_limits() -> None:
    spec = custom_spec(rows=48, cols=64)
    base = random_pipeline(40, spec, seed=3)
    blocks = list(base.blocks)
    blocks[5] = Block(blocks[5].name, blocks[5].work_pe_cycles, blocks[5].sram_bytes_total,
                      fixed=Rect(30, 40, 10, 12))
    blocks[7] = Block(blocks[7].name, blocks[7].work_pe_cycles, blocks[7].sram_bytes_total,
                      max_aspect=1.5)
    reserved = [Rect(0, 0, 6, 64), Rect(20, 10, 8, 8)]
    problem = PlacementProblem(blocks, base.nets, spec, reserved=reserved)
    res = place_and_route(problem, FAST)
    assert_legal(problem, res.geometry)
    assert res.rects[blocks[5].name] == Rect(30, 40, 10, 12)
    assert res.quality.colors_used <= spec.routable_colors


def test_free_regions_tile_the_rest_of_the_wafer() -> None:
    obstacles = [Rect(2, 3, 4, 5), Rect(10, 0, 2, 20)]
    regions = free_regions(16, 20, obstacles)
    mask = np.zeros((16, 20), dtype=np.int64)
    for r in regions + obstacles:
        mask[r.slices] += 1
    assert (mask == 1).all()


def test_water_fill_by_hand() -> None:
    areas, t = water_fill(np.array([1.0, 3.0]), np.zeros(2), np.array([1, 1]), 8)
    assert np.allclose(areas, [2, 6]) and math.isclose(t, 0.5, rel_tol=1e-9)
    # an SRAM-bound block sits at its minimum; the other takes the rest
    areas, t = water_fill(np.array([1.0, 3.0]), np.zeros(2), np.array([5, 1]), 8)
    assert np.allclose(areas, [5, 3]) and math.isclose(t, 1.0, rel_tol=1e-9)


def test_objective_terms_by_hand() -> None:
    spec = custom_spec(rows=4, cols=4)
    problem = PlacementProblem([Block("a", 8.0), Block("b", 16.0)], [Net("a", "b", 10.0)], spec)
    g = Geometry(np.array([0, 0]), np.array([0, 2]), np.array([4, 4]), np.array([2, 2]))
    cfg = FloorplanConfig(balance_sharpness=4.0, soft_max_aspect=1.5, congestion_target=0.5,
                          wire_weight=0.1, aspect_weight=0.05, congestion_weight=2.0)
    terms = Scorer(problem, 1.5, cfg, free_area=16, free_blocks=2).evaluate(g)
    beta = 4.0
    # stage times 8/8 = 1 and 16/8 = 2 cycles, T_ref = 1.5
    balance = math.log(math.exp(beta * 1 / 1.5) + math.exp(beta * 2 / 1.5)) / beta
    # centres (2, 1) and (2, 3): 2 hops x 10 wavelets, over 10 wavelets x sqrt(16 / 2)
    wire = 2 * 10 / (10 * math.sqrt(8))
    aspect = (2 * math.log(2 / 1.5) ** 2) / 2
    # the facing edge has 4 lanes: 2.5 wavelets per link, 2.5 / 1.5 - 0.5 over target
    congestion = (2.5 / 1.5 - 0.5) ** 2
    assert terms["balance"] == pytest.approx(balance)
    assert terms["wire"] == pytest.approx(wire)
    assert terms["aspect"] == pytest.approx(aspect)
    assert terms["congestion"] == pytest.approx(congestion)
    assert terms["total"] == pytest.approx(balance + 0.1 * wire + 0.05 * aspect
                                           + 2.0 * congestion)


def test_link_loads_match_a_loop_over_pes() -> None:
    spec = custom_spec(rows=8, cols=12)
    problem = PlacementProblem([Block("a", 1.0), Block("b", 1.0), Block("c", 1.0)],
                               [Net("a", "b", 6.0), Net("a", "c", 4.0)], spec)
    # a: rows 0-2 cols 0-1; b: rows 1-3 cols 6-7 (row overlap 2); c: rows 5-6 cols 9-10
    g = Geometry(np.array([0, 1, 5]), np.array([0, 6, 9]), np.array([3, 3, 2]),
                 np.array([2, 2, 2]))
    rt = route(problem, g, "xy")
    ref = np.zeros((4, 8, 12))
    for r in rt.routes:
        for band in r.bands:
            for rr in range(band.rect.row, band.rect.row + band.rect.rows):
                for cc in range(band.rect.col, band.rect.col + band.rect.cols):
                    ref[band.direction, rr, cc] += band.load
    assert np.allclose(rt.link_load, ref)
    # a -> b: 2 lanes (rows 1, 2), 3 wavelets per link, from a's last column to b's first
    assert rt.link_load[EAST, 1:3, 1:6].min() >= 3.0 and rt.link_load[EAST, 0, 2:6].max() == 0
    straight = rt.routes[0]
    assert straight.kind == "h" and straight.lanes == 2
    assert straight.bands[0].rect == Rect(1, 1, 2, 5) and straight.bands[0].load == 3.0
    diag = rt.routes[1]
    assert diag.kind == "xy" and any(b.direction == SOUTH for b in diag.bands)
    assert accumulate_loads([], 3, 3).shape == (4, 3, 3)


def _genslm_chain(spec):  # 8 layers x [qkv, attn, proj, ln, fc1, gelu, fc2, ln]
    return transformer_pipeline(spec, layers=8, d=512, ffn=2048, seq=2048, heads=8)


def test_placed_beats_strips_on_a_genslm_like_chain() -> None:
    spec = PRESETS["wse2"]
    problem = _genslm_chain(spec)
    assert problem.n == 64
    res = place_and_route(problem, FAST)
    assert_legal(problem, res.geometry)
    assert res.baseline is not None
    assert res.quality.utilisation > 0.6
    assert res.quality.utilisation >= 1.5 * res.baseline.utilisation
    assert res.quality.colors_used <= spec.routable_colors


def test_colour_budget_respected_and_conflicts_get_distinct_colours() -> None:
    spec = custom_spec(rows=64, cols=64)
    problem = random_pipeline(30, spec, seed=1)
    res = place_and_route(problem, FAST)
    routes = res.routing.routes
    colors = [r.color for r in routes]
    assert 0 <= min(colors) and max(colors) < spec.routable_colors
    # per PE, every net there has its own colour
    owners: dict[tuple[int, int], set[int]] = {}
    rects = res.rects
    for r in routes:
        net = problem.nets[r.net]
        for piece in (rects[net.src], rects[net.dst], *r.footprint):
            for rr in range(piece.row, piece.row + piece.rows):
                for cc in range(piece.col, piece.col + piece.cols):
                    seen = owners.setdefault((rr, cc), set())
                    assert r.color not in seen, f"colour clash at {(rr, cc)}"
                    seen.add(r.color)
    assert max(len(s) for s in owners.values()) <= spec.routable_colors


def test_unroutable_star_raises_with_region_and_count() -> None:
    spec = custom_spec(rows=32, cols=32, colors=5, reserved_colors=2)
    blocks = [Block("hub", 100.0)] + [Block(f"s{i}", 100.0) for i in range(5)]
    nets = [Net("hub", f"s{i}", 10.0) for i in range(5)]
    with pytest.raises(RoutingError) as err:
        place_and_route(PlacementProblem(blocks, nets, spec), FAST)
    assert err.value.colors_needed == 5 and err.value.colors_available == 3
    assert isinstance(err.value.region, Rect)
    assert "colours" in str(err.value)


def test_contradictory_constraints_name_the_blocks() -> None:
    spec = custom_spec(rows=16, cols=16)
    with pytest.raises(ConstraintError, match="'a'.*'b'") as err:
        PlacementProblem([Block("a", 1, fixed=Rect(0, 0, 4, 4)),
                          Block("b", 1, fixed=Rect(2, 2, 4, 4))], [], spec)
    assert err.value.blocks == ["a", "b"]
    with pytest.raises(ConstraintError, match="'a'.*reserved"):
        PlacementProblem([Block("a", 1, fixed=Rect(0, 0, 4, 4))], [], spec,
                         reserved=[Rect(3, 3, 2, 2)])
    with pytest.raises(ConstraintError, match="outside"):
        PlacementProblem([Block("a", 1, fixed=Rect(14, 0, 4, 4))], [], spec)
    with pytest.raises(ConstraintError, match="'zz'"):
        PlacementProblem([Block("a", 1)], [Net("a", "zz", 1.0)], spec)
    with pytest.raises(BlockSramError, match="'big'.*weight") as err2:
        PlacementProblem([Block("big", 1, sram_bytes_total=300 * spec.sram_bytes)], [], spec)
    assert err2.value.block == "big"
    assert err2.value.excess_bytes == pytest.approx(44 * spec.sram_bytes)
    with pytest.raises(BlockSramError, match="together"):
        PlacementProblem([Block(f"b{i}", 1, sram_bytes_total=100 * spec.sram_bytes)
                          for i in range(3)], [], spec)


def test_strip_baseline_is_legal_and_snakes_when_blocks_outnumber_columns() -> None:
    spec = custom_spec(rows=20, cols=10)
    problem = random_pipeline(25, spec, seed=2, sram_fill=0.2)
    g = strip_placement(problem)
    assert g is not None
    assert_legal(problem, g)
    widths = apportion(np.ones(3), np.array([1, 5, 1]), 10)
    assert widths is not None and widths.sum() == 10 and widths.tolist() in ([3, 5, 2], [2, 5, 3])
    assert apportion(np.ones(2), np.array([6, 6]), 10) is None


def test_json_round_trip_and_plot(tmp_path) -> None:
    from waferscale.compiler.floorplan.plot import plot_floorplan

    spec = custom_spec(rows=32, cols=32)
    problem = random_pipeline(12, spec, seed=4)
    res = place_and_route(problem, FAST)
    data = json.loads(json.dumps(to_dict(res)))
    assert rects_from(data) == res.rects
    assert {r["color"] for r in data["routes"]} <= set(range(spec.routable_colors))
    out = plot_floorplan(res, tmp_path / "plan.png", baseline=True)
    assert out.stat().st_size > 1000


def test_io_floor_zero_budget_drops_floors() -> None:
    """SRAM minimums that use up the I/O budget leave no room: floors are dropped, not
    applied unscaled."""
    from waferscale.compiler.floorplan.alloc import io_floor

    f = io_floor(np.array([1e6, 0.0]), np.array([0.0, 1e6]), 10.0, 0.5, 0.0)
    assert (f == 0).all()
    f = io_floor(np.array([1e6, 0.0]), np.array([0.0, 1e6]), 10.0, 0.5, 100.0)
    assert f.sum() <= 100


def test_water_fill_respects_caps() -> None:
    areas, t = water_fill(np.array([100.0, 100.0]), np.zeros(2), np.ones(2), 1000.0,
                          np.array([10.0, np.inf]))
    assert areas[0] <= 10 + 1e-9 and t >= 10.0 - 1e-9


def test_curve_area_takes_the_first_sample_that_is_fast_enough() -> None:
    areas, times = np.array([10.0, 20.0, 40.0, 80.0]), np.array([100.0, 100.0, 50.0, 50.0])
    assert curve_area(areas, times, 100.0) == 10.0
    assert curve_area(areas, times, 60.0) == 40.0     # a stair: 20 PEs are no faster than 10
    assert curve_area(areas, times, 10.0) == 80.0     # below the fastest: all it can use


def test_water_fill_with_a_stair_curve() -> None:
    """A block whose time falls in one stair (100 cycles below 64 PEs, 25 from 64 on)
    gets 64 PEs, never more (they would idle), and the W/a block the rest; with more work
    on the W/a block the common time is what it reaches on the 64 PEs left (dropping the
    stair block to 16 PEs would make that one 100 cycles)."""
    curve = (np.array([16.0, 32.0, 64.0, 128.0]), np.array([100.0, 100.0, 25.0, 25.0]))
    areas, t = water_fill(np.array([1.0, 1000.0]), np.zeros(2), np.ones(2), 128.0,
                          curves=[curve, None])
    assert areas[0] == 64.0 and areas[1] == pytest.approx(64.0) and t == 25.0
    areas, t = water_fill(np.array([1.0, 4000.0]), np.zeros(2), np.ones(2), 128.0,
                          curves=[curve, None])
    assert areas[0] == 64.0 and t == pytest.approx(4000.0 / 64.0, rel=1e-6)


def test_time_curve_finds_the_stair() -> None:
    """`time_curve` is non-increasing and bisects towards where a stepped kernel's time
    drops (here at 300 PEs)."""
    spec = custom_spec(rows=64, cols=64)

    def stepped(rows: int, cols: int) -> float:
        return 100.0 if rows * cols < 300 else 40.0

    problem = PlacementProblem([Block("s", 1.0, time_at=stepped)], [], spec)
    areas, times = problem.time_curve(0)
    assert np.all(np.diff(times) <= 0) and times[0] == 100.0 and times[-1] == 40.0
    first = areas[np.argmax(times <= 40.0)]
    assert 300 <= first <= 300 * 1.2


def test_shape_model_guides_placement() -> None:
    """A block that can only use 8 columns, timed by its callback, is never handed a shape
    it cannot use, and the measured time is the callback's."""
    spec = custom_spec(rows=64, cols=64)

    def narrow(rows: int, cols: int) -> float:
        return 4096.0 / (min(rows, 64) * min(cols, 8)) if rows >= 8 else math.inf

    blocks = [Block("a", 4096.0), Block("n", 4096.0, max_cols=8, time_at=narrow),
              Block("b", 4096.0)]
    problem = PlacementProblem(blocks, [Net("a", "n", 10.0), Net("n", "b", 10.0)], spec)
    res = place_and_route(problem, FloorplanConfig(time_limit_s=None, moves_per_block=30))
    assert_legal(problem, res.geometry)
    r = res.rects["n"]
    assert r.cols <= 8 and r.rows >= 8
    assert res.quality.bottleneck_cycles >= narrow(r.rows, r.cols) - 1e-9


def test_rect_time_is_rect_times_bit_for_bit() -> None:
    """The slicer's one-block sizing (`rect_time`, plain floats) against the vectorised
    `rect_times` it stands in for: the same float for every block and shape, including
    the shape caps, zero-area shapes and a block with its own (memoised) ``time_at``."""
    spec = custom_spec(name="t", rows=64, cols=64)
    calls: list[tuple[int, int]] = []

    def time_at(rows: int, cols: int) -> float:
        calls.append((rows, cols))
        return 1e5 / (rows * cols) ** 0.7 + 3.0

    blocks = [Block("a", 12345.6, latency_cycles=7.25),
              Block("b", 9.87e6, max_rows=5, max_cols=40, latency_cycles=0.1),
              Block("c", 1.0e6, time_at=time_at)]
    problem = PlacementProblem(blocks, [Net("a", "b", 1.0), Net("b", "c", 1.0)], spec)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 3, size=400)
    h, w = rng.integers(0, 70, size=400), rng.integers(0, 70, size=400)
    vec = problem.rect_times(idx, h, w)
    one = np.array([problem.rect_time(b, r, c) for b, r, c in zip(idx, h, w, strict=True)])
    assert np.array_equal(vec, one)
    assert vec[(h == 0) & (idx < 2)].tolist() == [math.inf] * int(np.sum((h == 0) & (idx < 2)))
    assert len(calls) == len(set(calls))     # each shape's time_at asked once
