"""BiCGStab on the 7-point SpMV (kernels/bicgstab.py): iterates against the NumPy oracle,
convergence, fabric cycles against the closed form, the figures, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferscale import cli
from waferscale.errors import SramOverflowError
from waferscale.fabric import Fabric
from waferscale.kernels import bicgstab as bi
from waferscale.kernels import spmv7


@pytest.mark.parametrize("shape", [(5, 4, 9), (8, 7, 30), (12, 10, 64)])
def test_iterates_match_the_oracle(shape):
    nx, ny, nz = shape
    diags, b = spmv7.random_problem(nx, ny, nz, seed=2)
    run = bi.run(Fabric("wse2", ny, nx), diags, b, 6)
    ref = bi.reference(diags, b, 6)
    assert run.stop == ref.stop and len(run.iterates) == len(ref.iterates) == 6
    # the dots sum in another order (per PE, then across the wafer): fp32 rounding only
    np.testing.assert_allclose(run.residuals, ref.residuals, rtol=1e-3, atol=1e-7)
    for got, want in zip(run.iterates, ref.iterates, strict=True):
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                                   atol=4e-3, rtol=0)


def test_converges_on_a_diagonally_dominant_problem():
    diags, b = spmv7.random_problem(10, 9, 48, seed=5)
    run = bi.run(Fabric("wse2", 9, 10), diags, b, 30, tol=1e-4)
    assert run.stop == "converged" and run.residuals[-1] <= 1e-4
    assert len(run.iterates) < 15
    true = bi.true_residual(diags, b, run.x)
    assert true < 5e-3            # the fp16 solution's floor, about 1e-3
    # the oracle takes as many iterations
    assert bi.reference(diags, b, 30, tol=1e-4).stop == "converged"


@pytest.mark.parametrize("algorithm", ["chain", "tree", "ktree"])
@pytest.mark.parametrize("shape", [(5, 4, 9), (1, 1, 5), (2, 3, 16), (12, 10, 64)])
def test_cycles_match_cost(shape, algorithm):
    """Chain: equal. Tree / K-tree: the run is at most 2 % faster, never slower: the
    closed form starts each phase when its last PE may, the run lets the PEs the
    allreduce's broadcast reaches first start early."""
    nx, ny, nz = shape
    diags, b = spmv7.random_problem(nx, ny, nz, seed=1)
    run = bi.run(Fabric("wse2", ny, nx), diags, b, 4, algorithm=algorithm)
    cost = bi.cost("wse2", nx, ny, nz, len(run.iteration_cycles), algorithm)
    if algorithm == "chain":
        assert run.cycles == cost
    assert 0 <= cost - run.cycles <= 0.02 * cost


def test_timing_only_equals_full_run():
    diags, b = spmv7.random_problem(6, 5, 40, seed=0)
    full = bi.run(Fabric("wse2", 5, 6), diags, b, 3, tol=0.0)
    timing = bi.run(Fabric("wse2", 5, 6, timing_only=True), None, None, 3, shape=(5, 6, 40))
    assert timing.cycles == full.cycles


@settings(max_examples=10, deadline=None)
@given(nx=st.integers(1, 5), ny=st.integers(1, 5), nz=st.integers(1, 24),
       seed=st.integers(0, 50))
def test_small_grids_track_the_oracle(nx, ny, nz, seed):
    diags, b = spmv7.random_problem(nx, ny, nz, seed=seed)
    run = bi.run(Fabric("wse2", ny, nx), diags, b, 3, tol=1e-3)
    ref = bi.reference(diags, b, 3, tol=1e-3)
    n = min(len(run.residuals), len(ref.residuals))
    np.testing.assert_allclose(run.residuals[:n], ref.residuals[:n], rtol=1e-2, atol=1e-6)


def test_iteration_breakdown_and_figures():
    it = bi.iteration("wse1", 600, 595, 1536)
    assert it.allreduce == "ktree" == bi.best_allreduce("wse1", 600, 595)
    assert it.cycles == it.spmv + it.dots_allreduce + it.updates
    assert it.spmv == 2 * spmv7.cost("wse1", 600, 595, 1536, vectors=bi.VECTORS)
    assert bi.FLOPS_PER_CELL == 48
    assert it.flops == 48 * 600 * 595 * 1536
    assert it.pflops == pytest.approx(it.flops / (it.cycles / 0.85e9) / 1e15)
    # the K-tree beats the chain and the tree on the wafer
    per = {a: bi.allreduce_2d_cycles(it_spec(), 2, 600, 595, a) for a in bi.ALGORITHMS}
    assert per["ktree"] < per["tree"] < per["chain"]


def it_spec():
    from waferscale.hardware import get_spec
    return get_spec("wse1")


def test_a_column_that_does_not_fit_names_the_deepest():
    deepest = spmv7.max_z("wse2", bi.VECTORS)
    bi.iteration("wse2", 755, 994, deepest)
    with pytest.raises(SramOverflowError, match=f"bicgstab: .*use z <= {deepest}"):
        bi.iteration("wse2", 755, 994, deepest + 1)


# ---------------------------------------------------------------------------- CLI ---
def _cli(args, capsys):
    rc = cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_estimates_the_sc20_grid(capsys):
    rc, out, _ = _cli(["bicgstab", "--grid", "600 x 595 x 1536", "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["mode"] == "estimate" and doc["note"]
    assert doc["grid"] == [600, 595, 1536] and doc["spec"] == "wse1"
    assert doc["iteration"]["cycles"] == bi.iteration("wse1", 600, 595, 1536).cycles
    assert "no published" in doc["validation"]


def test_cli_runs_small_grids_with_residuals(capsys):
    rc, out, _ = _cli(["bicgstab", "--grid", "8x6x32", "--spec", "wse2", "--iters", "20",
                       "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["mode"] == "simulate" and doc["stop"] == "converged"
    assert doc["residuals"][0] == 1.0 and doc["residuals"][-1] <= 1e-4
    assert doc["max_residual_difference_vs_numpy"] < 1e-4
    assert 0 <= doc["cost_cycles"] - doc["cycles"] <= 0.02 * doc["cost_cycles"]
    rc, out, _ = _cli(["bicgstab", "--grid", "8x6x32", "--spec", "wse2", "--iters", "3"],
                      capsys)
    assert rc == 0 and "simulate" in out and "unvalidated" in out


def test_cli_refuses_a_slow_functional_run(capsys):
    rc, out, err = _cli(["bicgstab", "--grid", "600x595x1536", "--simulate"], capsys)
    assert rc == 2 and out == "" and err.startswith("error: a functional run")
    assert "--simulate" in err and len(err.strip().splitlines()) == 1
