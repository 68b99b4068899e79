"""Zero weights through the compiler: a pruned model's GEMM stages count the weight's
nonzeros, skip them where that is faster, and the fabric run charges each PE its block's
nonzeros while the values stay equal to eager."""

import numpy as np
import pytest
import torch
from torch.nn.utils import prune

import waferscale
from waferscale.kernels import gemm
from waferscale.kernels._common import densest_block


def fc(sparsity: float, layers: int = 3, width: int = 256) -> torch.nn.Module:
    torch.manual_seed(0)
    mods: list[torch.nn.Module] = []
    for _ in range(layers):
        lin = torch.nn.Linear(width, width)
        if sparsity:
            prune.l1_unstructured(lin, "weight", amount=sparsity)
            prune.remove(lin, "weight")
        mods += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*mods).eval()


def compiled(sparsity: float):
    model = fc(sparsity)
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    cm = waferscale.compile(model, (x,))
    with torch.no_grad():
        err = float((cm(x) - model(x)).abs().max())
    return cm, err


def test_pruned_weights_are_counted_skipped_and_faster() -> None:
    # 97 % zeros: fp32 nonzeros travel as (value, index) pairs, and at this size the dense
    # steps are short (MeshGEMM's forwarding), so skipping pays off clearly only this sparse
    dense, err_dense = compiled(0.0)
    sparse, err_sparse = compiled(0.97)
    assert err_dense < 1e-4 and err_sparse < 1e-4
    gemms = [st for st in sparse.program.stages if st.kind == "gemm"]
    assert all(st.params.b_density == pytest.approx(0.03, abs=1e-3) for st in gemms)
    assert all(st.params.skip_weights for st in gemms)
    assert not any(st.params.skip_weights for st in dense.program.stages if st.kind == "gemm")
    assert sparse.report()["period_cycles"] < dense.report()["period_cycles"]
    # the plan's period and the measured one stay close (the plan takes the densest block)
    planned = max(s["cost_cycles"] for s in sparse.report()["stages"])
    assert planned == pytest.approx(sparse.report()["period_cycles"], rel=0.3)


def test_moderate_sparsity_is_not_skipped_when_the_pairs_cost_more() -> None:
    # fp32 nonzeros travel as (value, index): at 50 % zeros that is no fewer wavelets
    cm, err = compiled(0.5)
    assert err < 1e-4
    assert not any(st.params.skip_weights for st in cm.program.stages if st.kind == "gemm")


def test_meta_weights_count_as_dense() -> None:
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
    cm = waferscale.compile(model, (torch.randn(16, 64, device="meta"),))
    assert all(st.params.b_density == 1.0 for st in cm.program.stages if st.kind == "gemm")


def test_densest_block_bounds_a_binomial_mask() -> None:
    rng = np.random.default_rng(0)
    block, count, d = 64, 1024, 0.2
    counts = rng.binomial(block, d, size=count)
    est = densest_block(d, block, count)
    assert d < est < 1.0
    assert est * block == pytest.approx(counts.max(), rel=0.2)
    assert densest_block(d, block, 1) == d and densest_block(1.0, block, count) == 1.0


def test_step_time_follows_the_densest_block() -> None:
    # a ring step holds every block at once: the run equals cost() at the max density
    p, m, k, n = 4, 16, 32, 32
    rng = np.random.default_rng(2)
    b = rng.standard_normal((k, n)).astype(np.float32)
    keep = np.zeros((k, n), dtype=bool)
    keep[:, :8] = True                       # block column 0: half full, the rest empty
    b = np.where(keep, b, 0).astype(np.float32)
    a = rng.standard_normal((m, k)).astype(np.float32)
    r = gemm.run(a, b, grid=p, spec="wse2", skip="b")
    np.testing.assert_allclose(r.value, a @ b, rtol=1e-5, atol=1e-4)
    at_max = gemm.cost(m, k, n, grid=p, spec="wse2", skip="b", b_density=1.0)
    assert r.cycles <= at_max.cycles * 1.01


def meta_fc(layers: int = 3, width: int = 256) -> torch.nn.Module:
    with torch.device("meta"):
        return fc(0.0, layers, width)


def test_stated_density_prices_an_estimate_like_counted_weights() -> None:
    # the same network's estimate: pruned weights counted from values, or meta weights at
    # a stated density equal to the count; the plans price the same sparse kernels
    x = torch.randn(64, 256)
    counted = waferscale.compile(fc(0.97), (x,), mode="estimate")
    stated = waferscale.compile(meta_fc(), (x.to("meta"),), mode="estimate",
                                density=waferscale.Density(weights=0.03))
    dense = waferscale.compile(meta_fc(), (x.to("meta"),), mode="estimate")
    gemms = [st for st in stated.program.stages if st.kind == "gemm"]
    assert gemms and all(st.params.b_density == 0.03 and st.params.skip_weights
                         for st in gemms)
    assert stated.report()["period_cycles"] == pytest.approx(
        counted.report()["period_cycles"], rel=0.02)
    assert stated.report()["period_cycles"] < dense.report()["period_cycles"]
    assert any("stated nonzero fractions" in n for n in stated.report()["notes"])


def test_stated_activation_density_replaces_the_relu_default() -> None:
    x = torch.randn(64, 256, device="meta")
    sparse = waferscale.compile(meta_fc(), (x,), mode="estimate",
                                density={"activations": 0.05})
    default = waferscale.compile(meta_fc(), (x,), mode="estimate")
    fed = [st for st in sparse.program.stages if st.kind == "gemm" and st.params.skip]
    assert fed and all(st.params.a_density == 0.05 for st in fed)
    assert all(st.params.a_density == gemm.RELU_DENSITY
               for st in default.program.stages if st.kind == "gemm")
    assert sparse.report()["period_cycles"] <= default.report()["period_cycles"]


@pytest.mark.parametrize("density", [{"weights": 0.0}, {"weights": 1.5},
                                     {"activations": float("nan")}, {"weight": 0.1},
                                     {"weights": True}])
def test_bad_stated_density_is_a_compile_error(density: dict) -> None:
    with pytest.raises(waferscale.WaferscaleError, match="density"):
        waferscale.compile(meta_fc(1, 16), (torch.randn(4, 16, device="meta"),),
                           mode="estimate", density=density)


def test_stated_density_needs_estimate_mode() -> None:
    with pytest.raises(waferscale.WaferscaleError, match="mode='estimate'"):
        waferscale.compile(fc(0.0, 1, 16), (torch.randn(4, 16),), density={"weights": 0.5})
