"""Cycle simulator, fabric side: latency, multicast, link sharing, backpressure."""

import numpy as np
import pytest

from waferscale.fabric.cycle import CycleSim, FabIn, FabOut, Mem, Scalar, fmac, mov
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=16, cols=16)


def point_to_point(spec, hops, wavelets, trace=False):
    sim = CycleSim(spec, 1, hops + 1)
    x = np.arange(1, wavelets + 1, dtype=np.float32)
    sim.route(0, "R", "E", (0, 0))
    if hops > 1:
        sim.route(0, "W", "E", (0, slice(1, hops)))
    sim.route(0, "W", "R", (0, hops))
    sim.alloc("x", wavelets, init=x)
    sim.alloc("y", wavelets)
    sim.task("send", [mov(FabOut(0), Mem("x"), wavelets)], where=(0, 0), entry=True)
    sim.task("recv", [mov(Mem("y"), FabIn(0), wavelets)], where=(0, hops), entry=True)
    res = sim.run(trace=trace)
    np.testing.assert_array_equal(sim.read("y")[0, hops], x)
    return res


@pytest.mark.parametrize("hops", [1, 3, 7])
@pytest.mark.parametrize("wavelets", [1, 5, 64])
def test_point_to_point_cycles(hops, wavelets):
    # B wavelets, H hops: one cycle of CE pipeline, T_R down, H hops, T_R up, one per cycle
    res = point_to_point(SPEC, hops, wavelets)
    assert res.cycles == wavelets + hops * SPEC.hop_cycles + 2 * SPEC.ramp_cycles + 1


@pytest.mark.parametrize("hop, ramp", [(2, 2), (1, 4), (3, 1)])
def test_latencies_follow_the_spec(hop, ramp):
    spec = custom_spec(rows=8, cols=8, hop_cycles=hop, ramp_cycles=ramp)
    res = point_to_point(spec, 4, 9)
    assert res.cycles == 9 + 4 * hop + 2 * ramp + 1


def test_trace_shows_one_hop_per_cycle():
    res = point_to_point(SPEC, 3, 2, trace=True)
    links = [(e.cycle, e.pe, e.port) for e in res.trace.links() if e.value == 1.0]
    t0 = 1 + SPEC.ramp_cycles  # first wavelet reaches the source router
    assert links == [(t0, (0, 0), "E"), (t0 + 1, (0, 1), "E"), (t0 + 2, (0, 2), "E"),
                     (t0 + 3, (0, 3), "R")]


def test_multicast_fanout_copies_to_every_port():
    sim = CycleSim(SPEC, 3, 3)
    r, c = sim.coords
    sim.route(0, "R", "NESW", (1, 1))
    sim.route(0, "S", "R", (0, 1))
    sim.route(0, "W", "R", (1, 2))
    sim.route(0, "N", "R", (2, 1))
    sim.route(0, "E", "R", (1, 0))
    leaves = ((r - 1) ** 2 + (c - 1) ** 2) == 1
    sim.alloc("x", 4, init=np.arange(4))
    sim.alloc("y", 4)
    sim.task("send", [mov(FabOut(0), Mem("x"), 4)], where=(1, 1), entry=True)
    sim.task("recv", [mov(Mem("y"), FabIn(0), 4)], where=leaves, entry=True)
    res = sim.run()
    y = sim.read("y")
    np.testing.assert_array_equal(y[leaves], np.tile(np.arange(4), (4, 1)))
    assert res.cycles == 4 + 1 + 2 * SPEC.ramp_cycles + 1


def two_flows(late_start=0, wavelets=40, trace=False):
    """Flow A (colour 0) (0,0)->(0,3) and flow B (colour 1) (0,1)->(0,2) share link (0,1)-E."""
    sim = CycleSim(SPEC, 1, 4)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "E", (0, slice(1, 3)))
    sim.route(0, "W", "R", (0, 3))
    sim.route(1, "R", "E", (0, 1))
    sim.route(1, "W", "R", (0, 2))
    sim.alloc("x", wavelets, init=1.0)
    sim.alloc("y", wavelets)
    sim.alloc("busy", max(late_start, 1))
    sim.task("a_send", [mov(FabOut(0), Mem("x"), wavelets)], where=(0, 0), entry=True)
    sim.task("b_send", [mov(FabOut(1), Mem("x"), wavelets)], where=(0, 1), entry=True)
    sim.task("a_recv", [mov(Mem("y"), FabIn(0), wavelets)], where=(0, 3), entry=True)
    work = [fmac(Mem("busy"), Mem("busy"), Mem("busy"), Scalar(1.0), late_start)] \
        if late_start else []
    sim.task("b_recv", [*work, mov(Mem("y"), FabIn(1), wavelets)], where=(0, 2), entry=True)
    return sim, sim.run(trace=trace)


def test_colours_share_a_link_round_robin():
    sim, res = two_flows(trace=True)
    shared = [e.color for e in res.trace.links() if e.pe == (0, 1) and e.port == "E"]
    assert len(shared) == 80
    # while both have data the link alternates between the colours
    assert all(a != b for a, b in zip(shared[5:60], shared[6:61], strict=True))
    assert res.cycles == pytest.approx(2 * 40 + 8, abs=4)


def test_a_stalled_colour_does_not_block_another():
    _, free = two_flows()
    sim, res = two_flows(late_start=300, trace=True)
    a_done = max(e.cycle for e in res.trace.events if e.kind == "recv" and e.color == 0)
    # flow A finishes long before B's receiver starts reading at cycle ~300
    assert a_done < 120
    assert res.cycles > 300
    np.testing.assert_array_equal(sim.read("y")[0, 2], 1.0)


def test_backpressure_stalls_the_sender_without_losing_data():
    sim = CycleSim(SPEC, 1, 2)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    n = 64
    sim.alloc("x", n, init=np.arange(n))
    sim.alloc("y", n)
    sim.alloc("w", 200)
    sim.task("send", [mov(FabOut(0), Mem("x"), n, label="send")], where=(0, 0), entry=True)
    sim.task("recv", [fmac(Mem("w"), Mem("w"), Mem("w"), Scalar(1.0), 200),
                      mov(Mem("y"), FabIn(0), n)], where=(0, 1), entry=True)
    res = sim.run(trace=True)
    np.testing.assert_array_equal(sim.read("y")[0, 1], np.arange(n))
    send_end = [e.cycle for e in res.trace.events if e.kind == "end" and e.pe == (0, 0)]
    assert send_end[0] > 200            # the sender waited for the receiver to drain
    assert res.stats["fabric_stall"][0, 0] > 150
    assert res.cycles == 200 + n


def test_idle_cycles_are_fast_forwarded():
    spec = custom_spec(rows=4, cols=4, hop_cycles=5000)
    res = point_to_point(spec, 3, 2)
    assert res.cycles == 2 + 3 * 5000 + 2 * spec.ramp_cycles + 1
    assert res.wall_s < 2.0


def _outcome(run) -> list:
    res = run.result
    return [res.cycles, res.link_transfers, res.elements, run.output,
            *[res.stats[k] for k in sorted(res.stats)]]


@pytest.mark.parametrize("program", ["stencil", "allreduce", "multicast", "tree", "ktree",
                                     "stream", "gemv"])
def test_compiled_loops_match_numpy_bit_for_bit(monkeypatch, program):
    """The numba router loop (`cejit.router_step`) is the NumPy step compiled: same cycle count,
    state counters, link transfers and values on every program shape (multicast heads,
    several colours on a link, back-pressure, data tasks, several vector ops on one PE)."""
    from waferscale.fabric.cycle import runs
    from waferscale.fabric.cycle.gemv import run_gemv
    from waferscale.fabric.cycle.router import Router
    from waferscale.fabric.cycle.stencil import run_stencil

    spec = custom_spec(name="jit", rows=16, cols=16)
    make = {
        "stencil": lambda: run_stencil(spec, 9, 10, 6),
        "allreduce": lambda: runs.run_allreduce(spec, 7, 9, 5, "both", "chain"),
        "multicast": lambda: runs.run_multicast(spec, 6, 8, 4, "row", 3),
        "tree": lambda: runs.run_reduce(spec, 5, 11, 3, "row", "tree", "last"),
        "ktree": lambda: runs.run_ktree_reduce(spec, 4, 13, 5, "row", 2),
        "stream": lambda: runs.run_stream(spec, 10, 10, 5, (0, 0, 2, 3), (5, 6, 2, 3)),
        "gemv": lambda: run_gemv(spec, 4, 4, 6, 5),
    }[program]
    monkeypatch.setattr(Router, "compiled_from_pes", 0)
    fast = _outcome(make())
    monkeypatch.setattr(Router, "compiled_from_pes", None)
    slow = _outcome(make())
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
