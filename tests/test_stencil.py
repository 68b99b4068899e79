"""The SC22 stencil: values against NumPy, cost() against the simulated cycles, scaling."""

import numpy as np
import pytest

from waferscale.errors import GridError, SramOverflowError
from waferscale.fabric import Fabric
from waferscale.hardware import custom_spec, get_spec
from waferscale.kernels import stencil as st

RNG = np.random.default_rng(3)


def _fields(y, x, z):
    u0 = RNG.standard_normal((y, x, z)).astype(np.float32)
    return u0, RNG.standard_normal((y, x, z)).astype(np.float32), \
        np.full((y, x, z), 0.04, np.float32)


@pytest.mark.parametrize("shape,steps", [((9, 9, 9), 1), ((12, 10, 37), 3), ((16, 20, 700), 2)])
def test_values_match_numpy_and_cycles_match_cost(shape, steps):
    spec = custom_spec(rows=32, cols=32)
    y, x, z = shape
    fabric = Fabric(spec, y, x)
    u0, up, vel = _fields(*shape)
    result = st.run(fabric, u0, up, vel, steps)
    ref = st.reference(u0, up, vel, steps)
    np.testing.assert_allclose(result.u, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
    # edge PEs finish early and pre-send, which hides up to one hop+ramp latency a step
    assert result.cycles == pytest.approx(st.cost(spec, x, y, z, steps), rel=1e-3)


def test_z_700_needs_two_chunks_and_fills_sram():
    spec = custom_spec(rows=32, cols=32)
    assert st.chunk_cells(spec, 700) < 700
    fabric = Fabric(spec, 10, 10, timing_only=True)
    st.run(fabric, None, None, None, 1, shape=(10, 10, 700))
    assert fabric.sram.peak() <= spec.sram_bytes


def test_timing_only_equals_full_run():
    spec = custom_spec(rows=32, cols=32)
    full = Fabric(spec, 11, 13)
    st.run(full, *_fields(11, 13, 50), 2)
    timed = Fabric(spec, 11, 13, timing_only=True)
    st.run(timed, None, None, None, 2, shape=(11, 13, 50))
    np.testing.assert_array_equal(full.ce_clock, timed.ce_clock)
    np.testing.assert_array_equal(full.port_wavelets, timed.port_wavelets)


def test_weak_scaling_is_flat():
    small = st.cost("wse2", 200, 200, 1000, 1000)
    large = st.cost("wse2", 755, 994, 1000, 1000)
    assert abs(large / small - 1) < 0.05


def test_simulated_per_step_is_grid_independent():
    spec = get_spec("wse2")
    cycles = []
    for x, y in ((20, 20), (60, 45)):
        fabric = Fabric(spec, y, x, timing_only=True)
        cycles.append(st.run(fabric, None, None, None, 2, shape=(y, x, 1000)).cycles)
    assert cycles[0] == cycles[1] == pytest.approx(st.cost(spec, 60, 45, 1000, 2), rel=1e-4)


def test_per_cell_counts_near_published():
    counts = st.cell_counts()
    assert counts["fabric_loads"] == st.PUBLISHED["fabric_loads"]
    assert abs(counts["flops"] / st.PUBLISHED["flops_executed"] - 1) < 0.1


def test_bad_grids():
    with pytest.raises(GridError, match="755x994"):
        st.cost("wse2", 800, 994, 10, 1)
    with pytest.raises(GridError, match="smaller than the stencil"):
        st.cost("wse2", 5, 50, 10, 1)
    with pytest.raises(SramOverflowError, match="z <="):
        st.chunk_cells(get_spec("wse2"), 4000)
