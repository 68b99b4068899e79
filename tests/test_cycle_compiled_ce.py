"""The compiled run loop (`cycle.cejit`) against the NumPy reference, bit for bit.

`CycleSim.compiled_from_pes` picks the loop: 0 forces the compiled one on any grid, None
the reference (with the NumPy router too). Both must give the same cycle count, link
transfers, processed elements, per-PE state counters, output values and registers, and
the same errors.
"""

import numpy as np
import pytest

from waferscale.errors import CycleLimitError, DeadlockError, LivelockError, ProgramError
from waferscale.fabric.cycle import (
    CycleSim,
    FabIn,
    FabOut,
    Mem,
    isa,  # noqa: I001
    mov,
)
from waferscale.fabric.cycle.router import Router
from waferscale.hardware import custom_spec

SPEC = custom_spec(name="cejit", rows=16, cols=16)


def _outcome(run) -> list:
    res = run.result
    return [res.cycles, res.link_transfers, res.elements, run.output,
            *[res.stats[k] for k in sorted(res.stats)]]


def _both(monkeypatch, make):
    monkeypatch.setattr(CycleSim, "compiled_from_pes", 0)
    fast = make()
    monkeypatch.setattr(CycleSim, "compiled_from_pes", None)
    monkeypatch.setattr(Router, "compiled_from_pes", None)
    slow = make()
    return fast, slow


@pytest.mark.parametrize("program", ["stencil", "stencil_wide", "allreduce", "multicast",
                                     "tree", "ktree", "stream", "gemv", "shift"])
def test_compiled_loop_matches_numpy_bit_for_bit(monkeypatch, program):
    from waferscale.fabric.cycle import runs
    from waferscale.fabric.cycle.gemv import run_gemv
    from waferscale.fabric.cycle.stencil import run_stencil

    make = {
        "stencil": lambda: run_stencil(SPEC, 9, 10, 6),
        "stencil_wide": lambda: run_stencil(SPEC, 12, 7, 13, seed=3),
        "allreduce": lambda: runs.run_allreduce(SPEC, 7, 9, 5, "both", "chain"),
        "multicast": lambda: runs.run_multicast(SPEC, 6, 8, 4, "row", 3),
        "tree": lambda: runs.run_reduce(SPEC, 5, 11, 3, "row", "tree", "last"),
        "ktree": lambda: runs.run_ktree_reduce(SPEC, 4, 13, 5, "row", 2),
        "stream": lambda: runs.run_stream(SPEC, 10, 10, 5, (0, 0, 2, 3), (5, 6, 2, 3)),
        "gemv": lambda: run_gemv(SPEC, 4, 4, 6, 5),
        "shift": lambda: runs.run_shift(SPEC, 3, 8, 7),
    }[program]
    fast, slow = _both(monkeypatch, make)
    for a, b in zip(_outcome(fast), _outcome(slow), strict=True):
        np.testing.assert_array_equal(a, b)


def _failure(build):
    with pytest.raises(Exception) as info:
        build().run()
    err = info.value
    return type(err), str(err), getattr(err, "pes", None), getattr(err, "colors", None)


def _line(sends=1, receives=2, config=None):
    sim = CycleSim(SPEC, 1, 3, config=config)
    sim.route(0, "R", "E", (0, 0))
    sim.route(0, "W", "E", (0, 1))
    sim.route(0, "W", "R", (0, 2))
    sim.alloc("x", 4, init=1.0)
    sim.task("send", [mov(FabOut(0), Mem("x"), sends)], where=(0, 0), entry=True)
    sim.task("recv", [mov(Mem("x"), FabIn(0), receives)], where=(0, 2), entry=True)
    return sim


def _out_of_bounds():
    sim = _line(1, 1)
    sim.reg("k", 0)
    sim.task("late", [isa.SetReg(reg="k", value=3), mov(Mem("x", offset=isa.Reg("k")),
                                                         Mem("x"), 2)], entry=True)
    return sim


def _activates_data_task():
    sim = _line(1, 1)
    sim.task("on_data", [mov(Mem("x"), isa.Arg(), 1)], bind=0, where=(0, 2))
    sim.task("poke", [isa.Activate(task="on_data")], where=(0, 2), entry=True)
    return sim


def _spins():
    from waferscale.fabric.cycle.config import CycleConfig

    sim = CycleSim(SPEC, 2, 2, config=CycleConfig(livelock_window=40))
    sim.task("spin", [isa.Activate(task="spin")], entry=True)
    return sim


@pytest.mark.parametrize("build, error", [(_line, DeadlockError),
                                          (_out_of_bounds, ProgramError),
                                          (_activates_data_task, ProgramError),
                                          (_spins, LivelockError)])
def test_compiled_loop_fails_like_numpy(monkeypatch, build, error):
    fast, slow = _both(monkeypatch, lambda: _failure(build))
    assert fast == slow
    assert issubclass(fast[0], error)


def test_compiled_loop_hits_the_cycle_limit_like_numpy(monkeypatch):
    def stopped():
        with pytest.raises(CycleLimitError) as info:
            _line(2, 2).run(max_cycles=6)
        return str(info.value), info.value.details

    fast, slow = _both(monkeypatch, stopped)
    assert fast == slow
