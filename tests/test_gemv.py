"""GEMV kernels and the line collectives under them: values, cost() against the fabric."""

import numpy as np
import pytest
import torch

from waferscale.errors import KernelDtypeError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric import timing as tm
from waferscale.hardware import custom_spec
from waferscale.kernels import gemv
from waferscale.kernels._lines import (
    chain_into,
    ktree_reduce,
    ktree_reduce_cycles,
    line_permute,
)
from waferscale.kernels.choose import choose_gemv

SPEC = custom_spec(rows=128, cols=32)
RNG = np.random.default_rng(11)
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {("fp32", "fp32"): 1e-5, ("fp16", "fp32"): 1e-5, ("bf16", "fp32"): 1e-5,
       ("fp16", "fp16"): 5e-3, ("bf16", "bf16"): 3e-2}


@pytest.mark.parametrize("algorithm", gemv.ALGORITHMS)
@pytest.mark.parametrize("dtype,acc", list(TOL))
def test_values_match_torch(algorithm, dtype, acc):
    x = RNG.standard_normal(300).astype(np.float32)
    w = RNG.standard_normal((300, 50)).astype(np.float32)
    r = gemv.run(x, w, algorithm=algorithm, grid=(10, 5), spec=SPEC, dtype=dtype,
                 accumulate=acc)
    ref = (torch.from_numpy(x).to(TORCH[dtype]).float()
           @ torch.from_numpy(w).to(TORCH[dtype]).float()).numpy()
    assert r.value.shape == (50,)
    err = np.abs(r.value.astype(np.float32) - ref).max() / np.abs(ref).max()
    assert err < TOL[(dtype, acc)]


SWEEP = [(algorithm, grid, shape, levels)
         for algorithm in gemv.ALGORITHMS
         for grid in ((1, 1), (2, 3), (7, 4), (16, 16), (31, 8), (100, 3))
         for shape in ((1, 100, 48), (4, 333, 65), (1, 128, 32))
         for levels in ((1, 2, 3) if algorithm == "ktree" else (2,))
         if grid[0] <= shape[1] and grid[1] <= shape[2]
         and gemv.sram_bytes(*shape, *grid, "fp32", "fp32") <= SPEC.sram_bytes]


@pytest.mark.parametrize("algorithm,grid,shape,levels", SWEEP)
def test_cost_equals_fabric_cycles(algorithm, grid, shape, levels):
    m, k, n = shape
    run = gemv.run((m, k), (k, n), algorithm=algorithm, grid=grid, spec=SPEC, levels=levels)
    est = gemv.cost(m, k, n, algorithm=algorithm, grid=grid, spec=SPEC, levels=levels)
    assert est.cycles == pytest.approx(run.cycles, rel=0.01)
    assert est.compute_cycles == run.compute_cycles


def test_ktree_beats_chain_on_long_columns():
    chain = gemv.cost(1, 16384, 16384, algorithm="chain", grid=(512, 755), spec="wse2")
    ktree = gemv.cost(1, 16384, 16384, algorithm="ktree", grid=(512, 755), spec="wse2")
    assert ktree.cycles < 0.5 * chain.cycles
    assert ktree.communication_fraction > 0.5   # GEMV is dominated by communication


def test_weight_sparsity_is_skipped_where_it_sits():
    x = RNG.standard_normal(64).astype(np.float32)
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    w[:, :] *= RNG.random((64, 32)) < 0.1          # 90% zeros
    dense = gemv.run(x, w, grid=(8, 4), spec=SPEC)
    sparse = gemv.run(x, w, grid=(8, 4), spec=SPEC, skip="b")
    np.testing.assert_allclose(sparse.value, x @ w, rtol=1e-5, atol=1e-5)
    assert sparse.compute_cycles < dense.compute_cycles
    nnz = (w.reshape(8, 8, 4, 8) != 0).sum(axis=(1, 3)).astype(float)
    timed = gemv.run((64,), (64, 32), grid=(8, 4), spec=SPEC, skip="b", w_nnz=nnz)
    assert timed.cycles == sparse.cycles
    # the slowest PE sets the pace: the compute share is the max over PEs, not the mean
    assert sparse.compute_cycles == nnz.max()


def test_activation_zero_skipping():
    x = np.maximum(RNG.standard_normal(64), 0).astype(np.float32)
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    dense = gemv.run(x, w, grid=(4, 4), spec=SPEC)
    skipped = gemv.run(x, w, grid=(4, 4), spec=SPEC, skip="a")
    np.testing.assert_allclose(skipped.value, x @ w, rtol=1e-5, atol=1e-5)
    assert skipped.compute_cycles < dense.compute_cycles
    assert gemv.cost(1, 64, 32, grid=(4, 4), spec=SPEC, skip="a", x_density=0.5).cycles \
        < dense.cycles


# ------------------------------------------------------------------ line collectives ----
def test_chain_into_contiguous_is_the_fabric_chain_reduce():
    for n in (2, 5, 9):
        a, b = Fabric(SPEC, n, 3), Fabric(SPEC, n, 3)
        x = RNG.standard_normal((n, 3, 4)).astype(np.float32)
        t = MeshTensor(a, a.full, (12,), "fp32", "partial", 0, x)
        ref = mv.reduce(t, "col", "chain", root="last")
        wav = np.full((3, n), 4.0)
        done = chain_into(b, b.full, "col", False, np.zeros((3, n)), wav, np.arange(n))
        np.testing.assert_array_equal(done, ref.ready[0])
        np.testing.assert_array_equal(a.ce_clock, b.ce_clock)
        np.testing.assert_array_equal(a.port_wavelets, b.port_wavelets)
        np.testing.assert_array_equal(a.port_clock, b.port_clock)


@pytest.mark.parametrize("direction", ["west", "north"])
def test_line_permute_by_a_rotation_is_the_cyclic_shift(direction):
    a, b = Fabric(SPEC, 6, 7), Fabric(SPEC, 6, 7)
    x = RNG.standard_normal((6, 7, 5)).astype(np.float32)
    ta, tb = MeshTensor.from_numpy(a, x), MeshTensor.from_numpy(b, x)
    axis = "row" if direction == "west" else "col"
    n = 7 if axis == "row" else 6
    shifted = mv.shift(ta, direction, 1, cyclic=True)
    permuted = line_permute(tb, axis, (np.arange(n) - 1) % n)
    np.testing.assert_array_equal(shifted.tiles, permuted.tiles)
    np.testing.assert_array_equal(shifted.ready, permuted.ready)
    np.testing.assert_array_equal(a.port_wavelets, b.port_wavelets)


@pytest.mark.parametrize("n", [1, 2, 3, 8, 27, 64, 100])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_ktree_reduce_sums_and_matches_its_closed_form(n, levels):
    f = Fabric(SPEC, n, 2)
    x = RNG.standard_normal((n, 2, 6)).astype(np.float32)
    t = MeshTensor(f, f.full, (12,), "fp32", "partial", 0, x)
    out, root = ktree_reduce(t, "col", levels)
    np.testing.assert_allclose(out.to_numpy(), x.sum(0).reshape(-1), rtol=1e-5, atol=1e-5)
    cycles, root2 = ktree_reduce_cycles(SPEC, 6, n, levels)
    assert out.ready.max() == cycles and root == root2
    if n > 8:
        # two-sided groups: well under the one-sided chain's (P - 1) stages
        assert cycles < tm.chain_reduce_cycles(SPEC, 6, n)


# --------------------------------------------------------------------------- errors -----
def test_bad_inputs_raise_typed_errors():
    with pytest.raises(KernelShapeError, match=r"gemv: x \[1,10\] and W \[12,4\]"):
        gemv.run(np.ones(10), np.ones((12, 4)), grid=(2, 2), spec=SPEC)
    with pytest.raises(KernelFitError, match=r"does not fit the 128x32 rectangle"):
        gemv.cost(1, 1000, 1000, grid=(200, 4), spec=SPEC)
    with pytest.raises(KernelFitError, match=r"over the 49152 B SRAM"):
        gemv.cost(1, 4096, 4096, grid=(2, 2), spec=SPEC)
    with pytest.raises(KernelDtypeError, match=r"dtype 'fp64'"):
        gemv.cost(1, 16, 16, grid=(2, 2), spec=SPEC, dtype="fp64")
    with pytest.raises(KernelShapeError, match=r"w_nnz must give one nonzero count per block"):
        gemv.run((16,), (16, 16), grid=(2, 2), spec=SPEC, skip="b", w_nnz=np.ones((4, 4)))
    with pytest.raises(KernelShapeError, match=r"levels >= 1"):
        gemv.cost(1, 16, 16, grid=(2, 2), spec=SPEC, levels=0)


def test_chooser_uses_every_column_and_searches_rows():
    plan = choose_gemv(1, 4096, 1024, spec=SPEC)
    assert plan.grid[1] == 32
    rows_best = min(gemv.cost(1, 4096, 1024, algorithm=a, grid=(r, 32), spec=SPEC).cycles
                    for a in gemv.ALGORITHMS for r in range(1, 129)
                    if gemv.sram_bytes(1, 4096, 1024, r, 32, "fp32", "fp32") <= SPEC.sram_bytes)
    assert plan.cycles == rows_best
    r = gemv.run(np.ones(4096, np.float32), np.ones((4096, 1024), np.float32), spec=SPEC,
                 algorithm=plan.algorithm, grid=plan.grid)
    assert r.grid == plan.grid


def test_weight_mask_zeroes_skips_and_counts_per_block():
    x = RNG.standard_normal(50).astype(np.float32)
    w = RNG.standard_normal((50, 20)).astype(np.float32)
    mask = RNG.random((50, 20)) < 0.3
    valued = gemv.run(x, w, grid=(6, 4), spec=SPEC, mask=mask)
    np.testing.assert_allclose(valued.value, x @ np.where(mask, w, 0), rtol=1e-5, atol=1e-5)
    timed = gemv.run((50,), (50, 20), grid=(6, 4), spec=SPEC, mask=mask)
    assert timed.cycles == valued.cycles
    with pytest.raises(KernelShapeError, match=r"mask of shape \(20, 50\)"):
        gemv.run(x, w, grid=(6, 4), spec=SPEC, mask=mask.T)


def test_timing_only_activation_nonzeros_per_block():
    x = np.maximum(RNG.standard_normal(64), 0).astype(np.float32)
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    valued = gemv.run(x, w, grid=(4, 4), spec=SPEC, skip="a")
    per_block = (x.reshape(4, 16) != 0).sum(axis=1)
    timed = gemv.run((64,), (64, 32), grid=(4, 4), spec=SPEC, skip="a", x_nnz=per_block)
    assert timed.cycles == valued.cycles
    with pytest.raises(KernelShapeError, match=r"x_nnz must give one nonzero count per x block"):
        gemv.run((64,), (64, 32), grid=(4, 4), spec=SPEC, skip="a", x_nnz=np.ones(3))
