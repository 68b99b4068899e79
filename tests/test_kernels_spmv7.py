"""The 7-point SpMV (kernels/spmv7.py): values against the NumPy oracle, fabric cycles
against the closed form, the SRAM limit, and the schedule's parts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferscale.errors import GridError, KernelShapeError, SramOverflowError
from waferscale.fabric import Fabric
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import move_wavelets
from waferscale.fabric.tensor import MeshTensor
from waferscale.fabric.timing import halo_cycles
from waferscale.kernels import spmv7


def _dense(diags: np.ndarray) -> np.ndarray:
    """The operator as a dense fp64 matrix (cells in [y, x, z] C order)."""
    _, ny, nx, nz = diags.shape
    n = ny * nx * nz
    a = np.zeros((n, n))
    idx = np.arange(n).reshape(ny, nx, nz)
    offs = ((0, 0, 0), (0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0))
    for k, (dy, dx, dz) in enumerate(offs):
        for j in range(ny):
            for i in range(nx):
                for m in range(nz):
                    jj, ii, mm = j + dy, i + dx, m + dz
                    if 0 <= jj < ny and 0 <= ii < nx and 0 <= mm < nz:
                        a[idx[j, i, m], idx[jj, ii, mm]] += float(diags[k, j, i, m])
    return a


@pytest.mark.parametrize("shape", [(5, 4, 9), (1, 1, 3), (2, 3, 40), (3, 3, 1), (7, 6, 2000)])
def test_values_match_oracle_and_cycles_match_cost(shape):
    nx, ny, nz = shape
    diags, x = spmv7.random_problem(nx, ny, nz, seed=3)
    fab = Fabric("wse2", ny, nx)
    r = spmv7.run(fab, diags, x)
    np.testing.assert_array_equal(r.y, spmv7.reference(diags, x))
    assert r.y.dtype == np.float16
    assert r.cycles == spmv7.cost("wse2", nx, ny, nz)


def test_oracle_is_the_operator():
    """The oracle is A x up to fp16 rounding, A built entry by entry."""
    diags, x = spmv7.random_problem(4, 3, 5, seed=1)
    exact = _dense(diags) @ x.astype(np.float64).ravel()
    got = spmv7.reference(diags, x).astype(np.float64).ravel()
    assert np.max(np.abs(got - exact)) <= 8e-3 * np.max(np.abs(exact))


@settings(max_examples=25, deadline=None)
@given(nx=st.integers(1, 6), ny=st.integers(1, 6), nz=st.integers(1, 40),
       spec=st.sampled_from(["wse1", "wse2", "wse3"]), seed=st.integers(0, 100))
def test_any_small_grid_agrees(nx, ny, nz, spec, seed):
    diags, x = spmv7.random_problem(nx, ny, nz, seed=seed)
    fab = Fabric(spec, ny, nx)
    r = spmv7.run(fab, diags, x)
    np.testing.assert_array_equal(r.y, spmv7.reference(diags, x))
    assert r.cycles == spmv7.cost(spec, nx, ny, nz)


def test_timing_only_equals_full_run():
    diags, x = spmv7.random_problem(6, 5, 300, seed=0)
    full = spmv7.run(Fabric("wse2", 5, 6), diags, x)
    timing = spmv7.run(Fabric("wse2", 5, 6, timing_only=True), None, None, shape=(5, 6, 300))
    assert timing.y is None and timing.cycles == full.cycles


def test_uneven_starts_wait_for_the_neighbours():
    """A late PE delays its neighbours' exchange (and only by its lateness)."""
    fab = Fabric("wse2", 5, 5)
    rect = fab.rect()
    ready = np.zeros((5, 5))
    ready[2, 2] = 100.0
    _, done = spmv7.apply(fab, rect, None, None, ready, 64)
    base = spmv7.cost("wse2", 5, 5, 64)
    assert done[2, 2] == base + 100
    assert done[2, 1] > done[0, 0]


def test_exchange_is_the_fabric_halo_primitive():
    """The closed form of the exchange equals `movement.halo_exchange` of a packed chunk."""
    for cells in (1, 7, 64, 768):
        fab = Fabric("wse2", 5, 5)
        t = MeshTensor.empty(fab, (5, 5, cells), fab.full, 0, 1, "fp16")
        view = t.like(t.tiles, t.ready, allocate=False)
        view.valid = move_wavelets(view.valid, "fp16", 32)
        out = mv.halo_exchange(view, 1)
        wav = float(move_wavelets(cells, "fp16", 32))
        assert out["west"][0].ready[2, 2] == halo_cycles(fab.spec, wav, 1)
        assert spmv7.chunk_times(fab.spec, cells, 4).exchange == halo_cycles(fab.spec, wav, 1)


def test_sram_limit_names_the_deepest_z():
    deepest = spmv7.max_z("wse2")
    assert spmv7.sram_bytes(deepest, 1) <= 48 * 1024 < spmv7.sram_bytes(deepest + 1, 1)
    spmv7.chunk_sizes("wse2", deepest)
    with pytest.raises(SramOverflowError, match=f"use z <= {deepest}"):
        spmv7.cost("wse2", 4, 4, deepest + 1)
    with pytest.raises(SramOverflowError, match=f"z <= {spmv7.max_z('wse2', 6)}"):
        spmv7.chunk_sizes("wse2", 2000, vectors=6)


def test_chunks_are_the_fewest_that_fit():
    assert spmv7.chunk_sizes("wse2", 1000) == (1000,)
    sizes = spmv7.chunk_sizes("wse1", 1536, vectors=6)
    assert sizes == (768, 768)
    assert spmv7.sram_bytes(1536, 768, 6) <= 48 * 1024
    assert spmv7.sram_bytes(1536, 1536, 6) > 48 * 1024


def test_sram_peak_is_what_the_columns_and_buffers_take():
    diags, x = spmv7.random_problem(3, 3, 500, seed=0)
    fab = Fabric("wse2", 3, 3)
    spmv7.run(fab, diags, x)
    assert fab.stats()["sram_peak_bytes"] == spmv7.sram_bytes(500, 500)


def test_bad_inputs_are_typed():
    with pytest.raises(GridError, match="must be positive"):
        spmv7.cost("wse2", 0, 4, 4)
    with pytest.raises(GridError, match="shrink the grid"):
        spmv7.cost("wse1", 700, 4, 4)
    diags, x = spmv7.random_problem(3, 3, 4)
    with pytest.raises(KernelShapeError):
        spmv7.run(Fabric("wse2", 3, 3), diags[:, :, :, :2], x)


def test_breakdown_adds_up_and_ports_bound_the_fmac():
    spec = "wse1"
    parts = spmv7.breakdown(spec, 600, 595, 1536, vectors=6)
    assert sum(parts.values()) == spmv7.cost(spec, 600, 595, 1536, vectors=6)
    from waferscale.hardware import get_spec
    s = get_spec(spec)
    # 3 fp16 reads of 2 B against 2 x 64-bit read ports: 0.375 cycles per element
    assert spmv7.fmac_cycles(s, 800) == 300
    assert spmv7.fmul_cycles(s, 800) == 200


def test_single_issue_variant_costs_more():
    a = spmv7.cost("wse2", 10, 10, 1000)
    b = spmv7.cost("wse2", 10, 10, 1000, assumptions=spmv7.Assumptions(single_issue=True))
    assert b > a
