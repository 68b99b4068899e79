"""Programs on a defective wafer: same values as on a perfect one, never fewer cycles."""

import numpy as np
import pytest

from waferscale.errors import SparesExhaustedError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.defective import defective_fabric, fabric_from_defects
from waferscale.hardware import DefectMap, custom_spec
from waferscale.kernels import stencil

#: 10 % spares so that a dense map (0.5 /mm^2, ~30 defects) still remaps.
SPEC = custom_spec(rows=32, cols=32, spare_fraction=0.1)
ROWS, COLS = 16, 16


def _pair(rows=ROWS, cols=COLS, density=0.5, seed=0):
    perfect = Fabric(SPEC, rows, cols)
    flawed, remap = defective_fabric(SPEC, rows, cols, density, seed)
    return perfect, flawed, remap


def test_defective_fabric_builds_link_extra_from_remap():
    fabric, remap = defective_fabric(SPEC, ROWS, COLS, 0.5, 0)
    assert remap.n_defects > 5
    np.testing.assert_array_equal(
        fabric.link_extra, remap.link_extra_cycles(SPEC.hop_cycles)[:, :ROWS, :COLS])
    assert fabric.link_extra.sum() > 0
    clean, remap0 = defective_fabric(SPEC, ROWS, COLS, 0.0, 0)
    assert remap0.n_defects == 0 and not clean.link_extra.any()


def test_defective_fabric_defaults_to_the_whole_rectangle_and_timing_only():
    fabric, _ = defective_fabric(SPEC, density_per_mm2=0.1, seed=1, timing_only=True)
    assert (fabric.rows, fabric.cols) == (SPEC.rows, SPEC.cols) and fabric.timing_only


def test_spares_exhausted_is_raised():
    with pytest.raises(SparesExhaustedError):
        defective_fabric(custom_spec(rows=32, cols=32), ROWS, COLS, 1.0, 0)


def test_stencil_same_values_more_cycles():
    rng = np.random.default_rng(0)
    shape = (ROWS, COLS, 8)
    u0, up = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    vel = (0.01 * rng.random(shape)).astype(np.float32)
    perfect, flawed, _ = _pair()
    a = stencil.run(perfect, u0, up, vel, 3)
    b = stencil.run(flawed, u0, up, vel, 3)
    assert np.array_equal(a.u, b.u)
    assert b.cycles > a.cycles


def test_single_defect_on_the_path_costs_cycles():
    # physical (3, 5): logical PEs (3, 5..) slide right; the link (3,4)->(3,5) skips a core
    dmap = DefectMap.from_coords(SPEC, [(3, 5)])
    flawed, remap = fabric_from_defects(SPEC, dmap, 8, 8)
    assert flawed.link_extra[0, 3, 4] == SPEC.hop_cycles
    x = np.arange(8 * 8 * 4, dtype=np.float32).reshape(8, 8, 4)
    a = mv.shift(MeshTensor.from_numpy(Fabric(SPEC, 8, 8), x), "east", 2)
    b = mv.shift(MeshTensor.from_numpy(flawed, x), "east", 2)
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    assert b.ready[3, 5] == a.ready[3, 5] + SPEC.hop_cycles
    assert b.ready[3, 6] == a.ready[3, 6] + SPEC.hop_cycles
    assert b.ready[3, 7] == a.ready[3, 7]       # its path (3,5)->(3,7) avoids the gap
    np.testing.assert_array_equal(np.delete(b.ready, 3, axis=0), np.delete(a.ready, 3, axis=0))


@pytest.mark.parametrize("direction", ["east", "west", "south", "north"])
@pytest.mark.parametrize("cyclic", [False, True])
def test_shift_same_values(direction, cyclic):
    perfect, flawed, _ = _pair()
    x = np.random.default_rng(1).standard_normal((ROWS, COLS, 5)).astype(np.float32)
    a = mv.shift(MeshTensor.from_numpy(perfect, x), direction, 2, cyclic)
    b = mv.shift(MeshTensor.from_numpy(flawed, x), direction, 2, cyclic)
    assert np.array_equal(a.to_numpy(), b.to_numpy())
    if direction in ("east", "west"):   # only horizontal links detour (docs/defects.md)
        assert (b.ready >= a.ready).all() and (b.ready > a.ready).any()
    else:
        assert np.array_equal(b.ready, a.ready)


@pytest.mark.parametrize("axis", ["row", "col"])
def test_multicast_same_values(axis):
    perfect, flawed, _ = _pair()
    x = np.random.default_rng(2).standard_normal((ROWS, 1, 6) if axis == "row"
                                                 else (1, COLS, 6)).astype(np.float32)
    out = []
    for fabric in (perfect, flawed):
        if axis == "row":
            t = MeshTensor.from_numpy(fabric, x[:, 0], fabric.rect(0, 0, ROWS, 1), 0, None)
        else:
            t = MeshTensor.from_numpy(fabric, x[0], fabric.rect(0, 0, 1, COLS), None, 0)
        out.append(mv.multicast(t, fabric.full, axis))
    assert np.array_equal(out[0].to_numpy(), out[1].to_numpy())
    assert (out[1].ready >= out[0].ready).all()
    assert (out[1].ready > out[0].ready).any() == (axis == "row")


@pytest.mark.parametrize("axis", ["row", "col", "both"])
@pytest.mark.parametrize("algorithm", ["chain", "tree"])
def test_allreduce_same_values(axis, algorithm):
    perfect, flawed, _ = _pair()
    x = np.random.default_rng(3).standard_normal((ROWS, COLS, 4)).astype(np.float32)
    row_map = "partial" if axis in ("col", "both") else None
    col_map = "partial" if axis in ("row", "both") else None
    a, b = (mv.allreduce(MeshTensor(f, f.full, (4,), "fp32", row_map, col_map, x), axis,
                         algorithm) for f in (perfect, flawed))
    assert np.array_equal(a.tiles, b.tiles)
    assert (b.ready >= a.ready).all()
    assert (b.ready > a.ready).any() == (axis != "col")   # vertical links never detour
