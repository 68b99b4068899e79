"""Visibility: per-cycle trace of wavelets on links, per-PE summary, profile."""

import numpy as np

from waferscale.fabric.cycle import CycleConfig, CycleSim, FabIn, FabOut, Mem, mov
from waferscale.fabric.cycle.runs import run_multicast, run_reduce
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=8, cols=8)


def test_trace_of_a_row_broadcast():
    run = run_multicast(SPEC, 1, 4, 2, "row", 0, trace=True)
    tr = run.result.trace
    links = [(e.cycle, e.pe, e.port) for e in tr.links()]
    t0 = 1 + SPEC.ramp_cycles
    first = [(t0, (0, 0), "E"), (t0 + 1, (0, 1), "E"), (t0 + 1, (0, 1), "R"),
             (t0 + 2, (0, 2), "E"), (t0 + 2, (0, 2), "R"), (t0 + 3, (0, 3), "R")]
    assert [x for x in links if x in first] == sorted(first)
    assert len(links) == 2 * 6
    text = "\n".join(tr.lines())
    assert "PE (0,0) -E-> (0,1)" in text and "router -> CE ramp" in text
    assert tr.to_records()[0]["cycle"] == 0


def test_trace_values_follow_the_reduction():
    run = run_reduce(SPEC, 1, 3, 1, "row", "chain", "first", trace=True)
    x = np.random.default_rng(0).standard_normal((1, 3, 1)).astype(np.float32)
    sends = {e.pe: e.value for e in run.result.trace.events if e.kind == "send"}
    assert sends[(0, 2)] == x[0, 2, 0]
    assert np.isclose(sends[(0, 1)], x[0, 1, 0] + x[0, 2, 0])


def test_trace_limit_truncates():
    sim = CycleSim(SPEC, 1, 2, config=CycleConfig(trace_limit=10))
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    sim.alloc("x", 50)
    sim.task("s", [mov(FabOut(0), Mem("x"), 50)], where=(0, 0), entry=True)
    sim.task("r", [mov(Mem("x"), FabIn(0), 50)], where=(0, 1), entry=True)
    res = sim.run(trace=True)
    assert len(res.trace.events) == 10 and res.trace.truncated


def test_summary_and_profile():
    run = run_reduce(SPEC, 4, 8, 16, "row", "chain", "first")
    res = run.result
    total = sum(res.stats[k] for k in ("busy", "fabric_stall", "memory_stall", "idle"))
    np.testing.assert_array_equal(total, res.cycles)
    # the root waits for the pipeline to fill, then adds one wavelet per cycle
    assert res.stats["busy"][0, 0] >= 16
    assert res.stats["fabric_stall"][0, 0] >= (2 * SPEC.ramp_cycles + 2) * 7 - 1
    text = res.summary()
    assert "fabric_stall" in text and len(text.splitlines()) == 1 + 4 + 4
    assert {"ce", "router", "control", "setup"} <= set(res.profile)
    assert res.pe_cycles_per_s > 0 and res.profile_lines()
