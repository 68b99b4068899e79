"""The fabric's compact state: a program gives the same clocks, counters and values whether
its state arrays stay compact or are made full before every primitive."""

import numpy as np
import pytest

from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import compute as cp
from waferscale.fabric import movement as mv
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=32, cols=32)
STATE = ("ce_clock", "busy", "stalled", "memory_stalled", "flops", "mem_bytes",
         "port_clock", "port_wavelets")

PROGRAMS = {
    "east": [("shift", "east", True), ("fmac",)] * 3,
    "west, open": [("shift", "west", False), ("fmac",), ("shift", "west", True), ("add",)],
    "south then east": [("shift", "south", True), ("fmac",), ("shift", "east", True),
                        ("fmac",), ("shift", "north", False), ("fmac",)],
    "two hops": [("shift", "east", True), ("fmac",), ("shift2", "west", True), ("fmac",)],
    "sub-rectangle": [("shift", "east", True), ("fmac",), ("sub",), ("shift", "east", True),
                      ("fmac",)],
}


def run(program, *, full: bool, timing_only: bool, zeros: bool, ragged: bool):
    f = Fabric(SPEC, 6, 9, timing_only=timing_only)
    rng = np.random.default_rng(3)
    shape = (17, 25) if ragged else (6, 9, 3)
    x = rng.standard_normal(shape).astype(np.float32)
    if zeros:
        x[x < 0.2] = 0
    t = MeshTensor.from_numpy(f, x)
    acc = MeshTensor.from_numpy(f, np.zeros_like(x))
    kept = [t, acc]

    def touch():
        if full:        # reading the state through its attributes makes it full
            for name in STATE:
                getattr(f, name)
            for tensor in kept:
                _ = tensor.ready

    for op in program:
        touch()
        if op[0] == "shift":
            kept.append(mv.shift(t, op[1], 1, cyclic=op[2]))
        elif op[0] == "shift2":
            kept.append(mv.shift(t, op[1], 2, cyclic=op[2]))
        elif op[0] == "fmac":
            acc = cp.fmac(acc, kept[-1], 0.5)
            kept.append(acc)
        elif op[0] == "add":
            acc = cp.elementwise(np.add, [acc, kept[-1]], "add")
            kept.append(acc)
        elif op[0] == "sub":
            sub = f.rect(1, 1, 4, 5)
            y = MeshTensor.from_numpy(f, rng.standard_normal((4, 5, 2)).astype(np.float32),
                                      rect=sub)
            kept.append(cp.fmac(y, y, 2.0))
    return f, kept


@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("timing_only", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
def test_compact_state_matches_full(name, timing_only, zeros, ragged):
    compact, kept_c = run(PROGRAMS[name], full=False, timing_only=timing_only, zeros=zeros,
                          ragged=ragged)
    full, kept_f = run(PROGRAMS[name], full=True, timing_only=timing_only, zeros=zeros,
                       ragged=ragged)
    for attr in STATE:
        np.testing.assert_array_equal(getattr(compact, attr), getattr(full, attr), attr)
        assert getattr(compact, attr).shape == getattr(full, attr).shape
    assert compact.wavelet_hops == full.wavelet_hops
    assert compact.stats() == full.stats()
    for a, b in zip(kept_c, kept_f, strict=True):
        np.testing.assert_array_equal(a.ready, b.ready)
        assert a.ready.shape == b.ready.shape
        if a.tiles is not None:
            np.testing.assert_array_equal(a.tiles, b.tiles)


def test_whole_wafer_step_stays_compact():
    """A shift + FMAC over the whole fabric with uniform tiles touches no full array."""
    f = Fabric(SPEC, 6, 9)
    x = np.random.default_rng(0).standard_normal((6, 9, 2)).astype(np.float32)
    t = MeshTensor.from_numpy(f, x)
    acc = MeshTensor.from_numpy(f, np.zeros_like(x))
    for _ in range(3):
        acc = cp.fmac(acc, mv.shift(t, "east", 1, cyclic=True), 0.5)
    assert all(v.shape[0] == 1 for v in f._state.values())
    assert all(v.shape[0] == 1 for ports in f._ports.values() for v in ports)
    assert acc._ready.shape == (1, 9)
    elapsed = f.elapsed()
    assert acc.ready.shape == (6, 9) and f.ce_clock.shape == (6, 9)
    assert f.elapsed() == elapsed


def test_held_state_arrays_see_later_updates():
    """Once read, a state array is the fabric's own: later primitives update it in place."""
    f = Fabric(SPEC, 4, 5)
    t = MeshTensor.from_numpy(f, np.ones((4, 5, 2), np.float32))
    clock, ports = f.ce_clock, f.port_clock
    acc = cp.fmac(MeshTensor.from_numpy(f, np.zeros((4, 5, 2), np.float32)),
                  mv.shift(t, "east", 1, cyclic=True), 1.0)
    assert f.ce_clock is clock and f.port_clock is ports
    np.testing.assert_array_equal(clock, acc.ready)
    assert ports.max() > 0
