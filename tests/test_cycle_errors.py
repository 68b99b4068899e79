"""Cycle simulator, bad input: typed errors that name the PE and the colour, never a hang."""

import numpy as np
import pytest

from waferscale.errors import (
    ColorBudgetError,
    CycleLimitError,
    DeadlockError,
    GridError,
    LivelockError,
    ProgramError,
    RouteError,
    SramOverflowError,
    WaferscaleError,
)
from waferscale.fabric.cycle import (
    Activate,
    CycleConfig,
    CycleSim,
    FabIn,
    FabOut,
    Mem,
    Scalar,
    mov,
    mul,
)
from waferscale.fabric.cycle.runs import run_stream
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=8, cols=8)


def test_route_that_loops():
    sim = CycleSim(SPEC, 2, 2)
    sim.route(0, "N", "E", (0, 0))   # (0,0) -> (0,1) -> (1,1) -> (1,0) -> (0,0)
    sim.route(0, "W", "S", (0, 1))
    sim.route(0, "N", "W", (1, 1))
    sim.route(0, "E", "N", (1, 0))
    sim.route(0, "S", "R", (0, 0), replace=True)
    sim.route(0, "S", "E", (0, 0), replace=True)
    with pytest.raises(RouteError, match=r"colour 0: route loops \(.*\) -> .* -> .*"):
        sim.run()


def test_route_off_the_edge():
    sim = CycleSim(SPEC, 1, 3)
    sim.route(2, "R", "E", (0, 2))
    with pytest.raises(RouteError, match=r"PE \(0,2\) colour 2: route sends E off the edge"):
        sim.run()


def test_route_that_drops_wavelets():
    sim = CycleSim(SPEC, 2, 2)
    sim.route(5, "R", "E", (1, 0))
    sim.route(5, "N", "R", (1, 1))
    with pytest.raises(RouteError, match=r"PE \(1,0\) colour 5: .*does not receive from W"):
        sim.run()


def test_route_conflict_needs_replace():
    sim = CycleSim(SPEC, 2, 2)
    sim.route(1, "R", "E", (0, 0))
    with pytest.raises(RouteError, match=r"PE \(0,0\) colour 1: already routed"):
        sim.route(1, "W", "R", None)


@pytest.mark.parametrize("color", [SPEC.routable_colors, SPEC.colors, -1])
def test_colour_outside_the_budget(color):
    sim = CycleSim(SPEC, 2, 2)
    with pytest.raises(ColorBudgetError, match=rf"colour {color} on PE \(1,1\)"):
        sim.route(color, "R", "R", (1, 1))


def test_stream_needing_too_many_colours():
    with pytest.raises(ColorBudgetError, match="needs .* colours"):
        run_stream(custom_spec(rows=4, cols=48), 1, 48, 1, (0, 0, 1, 19), (0, 20, 1, 19))


def test_task_bound_twice():
    sim = CycleSim(SPEC, 2, 2)
    sim.task("t", [mov(Mem("y"), Scalar(1.0), 1)], bind=3)
    with pytest.raises(ProgramError, match=r"PE \(0,0\) colour 4: task 't' is already bound"):
        sim.bind("t", 4)


def test_colour_bound_to_two_tasks():
    sim = CycleSim(SPEC, 2, 2)
    sim.task("t", [], bind=3, where=(1, 1))
    with pytest.raises(ProgramError, match=r"PE \(1,1\) colour 3: already bound to task 't'"):
        sim.task("u", [], bind=3)


def test_memory_never_allocated():
    sim = CycleSim(SPEC, 1, 2)
    sim.route(2, "R", "E", (0, 0))
    sim.route(2, "W", "R", (0, 1))
    sim.alloc("x", 4, where=(0, 0))
    sim.task("send", [mov(FabOut(2), Mem("x"), 4)], where=(0, 0), entry=True)
    sim.task("recv", [mov(Mem("y"), Arg_(), 1)], bind=2, where=(0, 1))
    with pytest.raises(ProgramError, match=r"PE \(0,1\) task 'recv' \(colour 2\): mov uses "
                                           r"array 'y', which this PE never allocated"):
        sim.run()


def Arg_():  # noqa: N802 - keeps the test body reading like a program
    from waferscale.fabric.cycle import Arg
    return Arg()


def test_memory_out_of_bounds_names_the_pe():
    sim = CycleSim(SPEC, 2, 2)
    sim.alloc("x", 4)
    sim.task("main", [mov(Mem("x", offset=np.array([[0, 0], [0, 1]])), Scalar(1.0), 4)],
             entry=True)
    with pytest.raises(ProgramError, match=r"PE \(1,1\) task 'main'.*x\[1:5:1\] outside"):
        sim.run()


def test_sram_overflow():
    sim = CycleSim(SPEC, 1, 1)
    with pytest.raises(SramOverflowError, match=r"PE \(0,0\)"):
        sim.alloc("big", SPEC.sram_bytes // 4 + 1)


def test_reading_a_colour_the_route_never_delivers():
    sim = CycleSim(SPEC, 1, 2)
    sim.route(1, "R", "E", (0, 0))
    sim.route(1, "W", "R", (0, 1))
    sim.alloc("x", 2)
    sim.task("main", [mov(Mem("x"), FabIn(1), 2)], where=(0, 0), entry=True)
    with pytest.raises(RouteError, match=r"PE \(0,0\) task 'main'.*colour 1.*tx lacks R"):
        sim.run()


def test_activating_a_data_task_is_an_error():
    sim = CycleSim(SPEC, 1, 1)
    sim.route(0, "R", "R")
    sim.task("d", [], bind=0)
    sim.task("main", [Activate(task="d")], entry=True)
    with pytest.raises(ProgramError, match="data task"):
        sim.run()


def test_unknown_task_reference():
    sim = CycleSim(SPEC, 1, 1)
    sim.task("main", [Activate(task="nope")], entry=True)
    with pytest.raises(ProgramError, match="unknown task 'nope'"):
        sim.run()


def test_deadlock_is_reported_with_pes_colours_and_queues():
    # both PEs send 64 wavelets synchronously before receiving: the queues fill up
    sim = CycleSim(SPEC, 1, 2)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "R", (0, 1))
    sim.route(1, "R", "W", (0, 1))
    sim.route(1, "E", "R", (0, 0))
    sim.alloc("x", 64, init=1.0)
    sim.alloc("y", 64)
    _, c = sim.coords
    send = np.where(c == 0, 0, 1)
    sim.task("main", [mov(FabOut(send), Mem("x"), 64), mov(Mem("y"), FabIn(1 - send), 64)],
             entry=True)
    with pytest.raises(DeadlockError) as info:
        sim.run()
    err = info.value
    assert err.pes == [(0, 0), (0, 1)]
    assert err.colors == [0, 1]
    text = "\n".join(err.details)
    assert "cannot send on colour 0" in text and "router queue PE (0,1) colour 1" in text
    assert "nobody reads" in text


def test_livelock_is_detected():
    sim = CycleSim(SPEC, 1, 1, config=CycleConfig(livelock_window=500))
    sim.task("spin", [Activate(task="spin")], entry=True)
    with pytest.raises(LivelockError, match=r"PE \(0,0\): running task 'spin'"):
        sim.run()


def test_cycle_limit_ends_a_runaway_program():
    sim = CycleSim(SPEC, 1, 1)
    sim.alloc("y", 1000)
    sim.task("main", [mul(Mem("y"), Mem("y"), Scalar(1.0), 1000)], entry=True)
    with pytest.raises(CycleLimitError) as info:
        sim.run(max_cycles=100)
    assert info.value.cycle == 100


def test_grid_too_big_for_the_spec():
    with pytest.raises(GridError):
        CycleSim(SPEC, 9, 2)


def test_all_errors_are_waferscale_errors():
    for cls in (RouteError, ColorBudgetError, ProgramError, DeadlockError, LivelockError,
                CycleLimitError):
        assert issubclass(cls, WaferscaleError)
