"""The compiler places and routes with the floorplanner: figures, wafer map, constraints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waferscale.api import PLACEMENT_KEYS
from waferscale.cli import parse_rect
from waferscale.compiler.floorplan import ConstraintError
from waferscale.errors import WaferscaleError
from waferscale.hardware.spec import get_spec
from waferscale.models import load_model
from waferscale.report.compile import compile_report

SEQ = 64


@pytest.fixture(scope="module")
def small_genslm() -> dict:
    """GenSLM-25M cut to two layers, 64 tokens: compiled once for the module."""
    return compile_report("genslm-25m", seq=SEQ, batch=1, estimate=False, strict=False,
                          layers=2)


def test_json_keys_and_figures(small_genslm: dict) -> None:
    r = json.loads(json.dumps(small_genslm, default=str))
    for key in ("mode", "samples_per_second", "tokens_per_second", "sram_bytes",
                "fallback_ops", "compile_seconds", *PLACEMENT_KEYS):
        assert key in r, key
    assert r["mode"] == "pipelined"
    assert 0 < r["utilization"] <= 1
    assert 0 <= r["baseline_utilization"] <= 1
    assert 0 < r["colors_used"] <= get_spec("wse2").routable_colors
    assert r["peak_link_load"] > 0 and r["place_seconds"] > 0


def test_placed_beats_strips(small_genslm: dict) -> None:
    """Deterministic: the compiler's annealing is seeded and runs a fixed move count."""
    assert small_genslm["utilization"] > small_genslm["baseline_utilization"]


def test_every_kernel_runs_inside_its_rectangle(small_genslm: dict) -> None:
    """No reshaping: each kernel's grid lies inside the rectangle the placer gave it."""
    import waferscale
    from waferscale.compiler.place import COMPILE_CONFIG

    assert not COMPILE_CONFIG.time_limit_s
    assert small_genslm["unfit_stages"] == 0
    assert all("[reshaped" not in st["algorithm"] for st in small_genslm["stages"])
    m, ex, _ = load_model("genslm-25m", seq=SEQ, batch=1, layers=1)
    prog = waferscale.compile(m, ex, spec="wse2").program
    for st in prog.plan.stages:
        if st.kind == "fallback":
            continue
        r = prog.placement[st.name]
        assert st.fits and st.rect[0] <= r.rows and st.rect[1] <= r.cols, (st.name, st.rect, r)


def test_placement_is_deterministic() -> None:
    a = compile_report("genslm-25m", seq=SEQ, batch=1, estimate=True, strict=False, layers=1)
    b = compile_report("genslm-25m", seq=SEQ, batch=1, estimate=True, strict=False, layers=1)
    assert a["utilization"] == b["utilization"]
    assert a["bottleneck_cycles"] == b["bottleneck_cycles"]


def test_bottleneck_is_a_compute_stage(small_genslm: dict) -> None:
    """Layout ops are charged to the bigger neighbour, so no one-op `neg` stage sets the pace."""
    worst = max(small_genslm["stages"], key=lambda s: s["stage_cycles"])
    assert worst["algorithm"] not in ("fused: neg",), worst


def test_map_and_program_json(tmp_path: Path) -> None:
    import waferscale
    from waferscale.report.compile import write_map

    m, ex, _ = load_model("genslm-25m", seq=SEQ, batch=1, layers=1)
    cm = waferscale.compile(m, ex, spec="wse2")
    out = write_map(cm, tmp_path / "map.png")
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    prog = json.loads(cm.program.dumps())
    assert prog["floorplan"]["blocks"] and prog["floorplan"]["routes"]
    assert prog["placement"] and all(r["color"] >= 0 for r in prog["routes"])


def test_reserve_and_pin_contradictions_are_typed() -> None:
    import waferscale

    m, ex, _ = load_model("genslm-25m", seq=SEQ, batch=1, layers=1)
    cm = waferscale.compile(m, ex, spec="wse2", reserve=[(0, 0, 100, 100)])
    assert all(r.row >= 100 or r.col >= 100 for r in cm.program.placement.values())
    stage = cm.program.stages[1].name
    with pytest.raises(ConstraintError) as err:
        waferscale.compile(m, ex, spec="wse2", reserve=[(0, 0, 100, 100)],
                           pin={stage: (50, 50, 100, 100)})
    assert stage in str(err.value) and "reserved area #0" in str(err.value)
    other = cm.program.stages[2].name
    with pytest.raises(ConstraintError) as err:
        waferscale.compile(m, ex, spec="wse2", pin={stage: (200, 200, 64, 64),
                                                    other: (230, 230, 64, 64)})
    assert stage in str(err.value) and other in str(err.value)
    with pytest.raises(ConstraintError, match="no on-wafer stage"):
        waferscale.compile(m, ex, spec="wse2", pin={"no_such_layer": (0, 0, 8, 8)})


def test_parse_rect() -> None:
    assert parse_rect("1, 2,3,4") == (1, 2, 3, 4)
    with pytest.raises(WaferscaleError):
        parse_rect("1,2,3")


def test_layers_share_sizings_and_the_shared_memo_changes_no_time() -> None:
    """`Stage.as_sized` drops only what sizing never reads: each stage sizes to the same
    figures as its anonymous twin, the second layer's stages have the first's twins (so the
    placer sizes them once), and `stage_time_at` with a memo shared by all stages returns
    the times of closures that each size on their own."""
    import waferscale
    from waferscale.compiler.place import stage_time_at
    from waferscale.compiler.plan import moves_of, on_wafer, size_stage

    m, ex, _ = load_model("genslm-25m", seq=SEQ, batch=1, layers=2)
    prog = waferscale.compile(m, ex, spec="wse2", mode="estimate").program
    spec, moves = prog.spec, moves_of(prog.graph)
    stages = on_wafer(prog.plan.stages)
    twins = [st.as_sized() for st in stages]
    assert len(set(twins)) < len(twins)          # the two layers' stages coincide
    assert all(t.name == "" and t.nodes == () for t in twins)
    memo: dict = {}
    for st, twin in zip(stages, twins, strict=True):
        for bounds in ((8, 8), (16, 40), (33, 7)):
            assert size_stage(spec, twin, 0.0, None, bounds).sizing \
                == size_stage(spec, st, 0.0, None, bounds).sizing, (st.name, bounds)
        shared = stage_time_at(spec, st, moves.get(st.name, []), memo=memo)
        alone = stage_time_at(spec, st, moves.get(st.name, []))
        for rows, cols in ((4, 4), (12, 30), (40, 9), (64, 64)):
            assert shared(rows, cols) == alone(rows, cols), (st.name, rows, cols)
