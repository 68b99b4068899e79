"""GEMM kernels: values against PyTorch, cost() against the fabric, sparsity, bad input."""

import numpy as np
import pytest
import torch

from waferscale.errors import (
    DtypeError,
    KernelDtypeError,
    KernelError,
    KernelFitError,
    KernelShapeError,
)
from waferscale.hardware import custom_spec, get_spec
from waferscale.kernels import gemm
from waferscale.kernels.choose import choose_gemm

SPEC = custom_spec(rows=24, cols=24)
RNG = np.random.default_rng(7)
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Normwise tolerance (max |error| / max |reference|) against PyTorch on the inputs rounded
#: to the dtype and accumulated in fp32 (docs/kernels-gemm.md, "Tolerances").
TOL = {("fp32", "fp32"): 1e-5, ("fp16", "fp32"): 1e-5, ("bf16", "fp32"): 1e-5,
       ("fp16", "fp16"): 5e-3, ("bf16", "bf16"): 3e-2}


def reference(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    ta = torch.from_numpy(a).to(TORCH[dtype]).float()
    tb = torch.from_numpy(b).to(TORCH[dtype]).float()
    return (ta @ tb).numpy()


def normwise(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x.astype(np.float32) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("algorithm", gemm.ALGORITHMS)
@pytest.mark.parametrize("dtype,acc", list(TOL))
def test_values_match_torch(algorithm, dtype, acc):
    a = RNG.standard_normal((37, 64)).astype(np.float32)
    b = RNG.standard_normal((64, 29)).astype(np.float32)
    r = gemm.run(a, b, algorithm=algorithm, grid=4, spec=SPEC, dtype=dtype, accumulate=acc)
    assert r.value.shape == (37, 29)
    assert normwise(r.value, reference(a, b, dtype)) < TOL[(dtype, acc)]


SWEEP = [(algorithm, p, shape, dtype, acc)
         for algorithm in gemm.ALGORITHMS
         for p in (1, 2, 3, 5, 8, 13)
         for shape in ((8, 8, 8), (40, 24, 56), (13, 29, 17), (96, 96, 96))
         for dtype, acc in (("fp32", "fp32"), ("fp16", "fp32"), ("fp16", "fp16"))
         if p <= min(shape)
         and gemm.sram_bytes(*shape, p, dtype, acc, algorithm) <= SPEC.sram_bytes]


@pytest.mark.parametrize("algorithm,p,shape,dtype,acc", SWEEP)
def test_cost_equals_fabric_cycles(algorithm, p, shape, dtype, acc):
    m, k, n = shape
    run = gemm.run((m, k), (k, n), algorithm=algorithm, grid=p, spec=SPEC, dtype=dtype,
                   accumulate=acc)
    est = gemm.cost(m, k, n, algorithm=algorithm, grid=p, spec=SPEC, dtype=dtype,
                    accumulate=acc)
    assert est.cycles == pytest.approx(run.cycles, rel=0.01)
    assert run.fabric.elapsed() <= run.cycles
    assert est.efficiency == pytest.approx(run.efficiency, rel=0.01)


def test_meshgemm_forwarding_hides_the_delivery_at_720():
    # WaferLLM 7.2: a 2K GEMM keeps > 70 % efficiency at 720^2. Its 3x3x3 fp16 tiles take
    # 14 cycles of FMACs; both blocks leaving together at each step boundary would take 18
    # to arrive (one ramp, 10 wavelets): forwarding each block as it arrives overlaps them
    spec = get_spec("wse2").replace(clock_hz=1.1e9)
    c = gemm.cost(2048, 2048, 2048, algorithm="meshgemm", grid=720, spec=spec,
                  dtype="fp16", accumulate="fp32")
    assert c.latency_cycles > c.compute_cycles
    assert c.cycles == pytest.approx(c.latency_cycles + 719 * c.compute_cycles, abs=1.0)
    assert c.efficiency > 0.70
    assert gemm.sram_bytes(64, 64, 64, 4, "fp32", "fp32", "meshgemm") \
        > gemm.sram_bytes(64, 64, 64, 4, "fp32", "fp32", "cannon")


def test_timing_only_run_advances_clocks_like_a_valued_run():
    a = RNG.standard_normal((20, 30)).astype(np.float32)
    b = RNG.standard_normal((30, 10)).astype(np.float32)
    for algorithm in gemm.ALGORITHMS:
        valued = gemm.run(a, b, algorithm=algorithm, grid=5, spec=SPEC)
        timed = gemm.run((20, 30), (30, 10), algorithm=algorithm, grid=5, spec=SPEC)
        assert timed.value is None
        np.testing.assert_array_equal(valued.fabric.ce_clock, timed.fabric.ce_clock)


def test_interleaved_ring_is_one_cycle_with_at_most_two_hops():
    for p in range(2, 40):
        dest = gemm.ring_dest(p)
        assert sorted(dest) == list(range(p))
        assert np.abs(dest - np.arange(p)).max() <= 2
        seen, pos = set(), 0
        for _ in range(p):   # following dest visits every PE once: a single ring
            seen.add(pos)
            pos = dest[pos]
        assert len(seen) == p and pos == 0


def test_meshgemm_keeps_efficiency_as_cannon_and_summa_lose_it():
    # a 2K GEMM from 360x360 to 720x720 PEs: wrap and flood latencies grow with p,
    # MeshGEMM's two-hop steps do not (WaferLLM section 7.2)
    small = {a: gemm.cost(2048, 2048, 2048, algorithm=a, grid=360, spec="wse2")
             for a in gemm.ALGORITHMS}
    large = {a: gemm.cost(2048, 2048, 2048, algorithm=a, grid=720, spec="wse2")
             for a in gemm.ALGORITHMS}
    assert large["meshgemm"].cycles < small["meshgemm"].cycles
    for a in ("cannon", "summa"):
        assert large[a].cycles > small[a].cycles
        assert large[a].efficiency < 0.5 < large["meshgemm"].efficiency
    assert large["meshgemm"].latency_cycles < large["summa"].latency_cycles


# ------------------------------------------------------------------------- sparsity -----
def block_mask(k: int, n: int, p: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    """A mask with exactly ``keep`` nonzeros in every (k/p, n/p) block (same count per PE)."""
    kb, nb = k // p, n // p
    mask = np.zeros((k, n), dtype=bool)
    for i in range(p):
        for j in range(p):
            flat = rng.choice(kb * nb, size=keep, replace=False)
            block = np.zeros(kb * nb, dtype=bool)
            block[flat] = True
            mask[i * kb:(i + 1) * kb, j * nb:(j + 1) * nb] = block.reshape(kb, nb)
    return mask


@pytest.mark.parametrize("algorithm", gemm.ALGORITHMS)
def test_weight_sparse_cycles_follow_nonzeros(algorithm):
    p, m, k, n = 4, 16, 32, 32
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((k, n)).astype(np.float32)
    mask = block_mask(k, n, p, keep=16, rng=RNG)     # 75% zeros in every block
    bs = np.where(mask, b, 0).astype(np.float32)
    dense = gemm.run(a, b, algorithm=algorithm, grid=p, spec=SPEC)
    sparse = gemm.run(a, bs, algorithm=algorithm, grid=p, spec=SPEC, skip="b")
    np.testing.assert_allclose(sparse.value, a @ bs, rtol=1e-5, atol=1e-4)
    assert sparse.cycles < dense.cycles
    est = gemm.cost(m, k, n, algorithm=algorithm, grid=p, spec=SPEC, skip="b", b_density=0.25)
    assert est.cycles == pytest.approx(sparse.cycles, rel=0.01)
    # nonzeros are what travels: fewer link wavelets than the dense run
    assert sparse.stats["link_wavelets"] < dense.stats["link_wavelets"]


def test_load_imbalance_shows():
    p, m, k, n = 4, 16, 32, 32
    even = np.full((p, p), 16.0)              # 75% sparse everywhere
    skewed = np.zeros((p, p))
    skewed[np.arange(p), (np.arange(p) * 3) % p] = 64.0   # a dense block per row, the same
                                                           # total nonzeros
    assert skewed.sum() == even.sum()
    runs = {name: gemm.run((m, k), (k, n), algorithm="meshgemm", grid=p, spec=SPEC,
                           skip="b", b_nnz=nnz) for name, nnz in (("even", even),
                                                                   ("skewed", skewed))}
    assert runs["skewed"].cycles > runs["even"].cycles


def test_timing_only_nnz_matches_valued_sparse_run():
    p, m, k, n = 4, 16, 32, 32
    b = RNG.standard_normal((k, n)).astype(np.float32)
    b[RNG.random((k, n)) < 0.8] = 0
    a = RNG.standard_normal((m, k)).astype(np.float32)
    per_block = (b.reshape(p, k // p, p, n // p) != 0).sum(axis=(1, 3)).astype(float)
    for algorithm in gemm.ALGORITHMS:
        valued = gemm.run(a, b, algorithm=algorithm, grid=p, spec=SPEC, skip="b")
        timed = gemm.run((m, k), (k, n), algorithm=algorithm, grid=p, spec=SPEC, skip="b",
                         b_nnz=per_block)
        assert timed.cycles == valued.cycles


def test_activation_zero_skipping_after_relu():
    p, m, k, n = 4, 32, 32, 16
    a = np.maximum(RNG.standard_normal((m, k)), 0).astype(np.float32)   # ~50% zeros
    b = RNG.standard_normal((k, n)).astype(np.float32)
    dense = gemm.run(a, b, algorithm="meshgemm", grid=p, spec=SPEC)
    skipped = gemm.run(a, b, algorithm="meshgemm", grid=p, spec=SPEC, skip="a")
    np.testing.assert_allclose(skipped.value, a @ b, rtol=1e-5, atol=1e-4)
    assert skipped.cycles < dense.cycles


# --------------------------------------------------------------------------- errors -----
def test_bad_inputs_raise_typed_errors_that_say_what_fits():
    a, b = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
    with pytest.raises(KernelShapeError, match=r"gemm: A \[8,8\] and B \[7,8\]"):
        gemm.run(a, np.ones((7, 8)), grid=2, spec=SPEC)
    with pytest.raises(KernelFitError, match=r"at most 24"):
        gemm.run((64, 64), (64, 64), grid=32, spec=SPEC)
    with pytest.raises(KernelFitError, match=r"every dimension"):
        gemm.run((4, 64), (64, 64), grid=8, spec=SPEC)
    with pytest.raises(KernelDtypeError, match=r"dtype 'int8'") as info:
        gemm.run(a, b, grid=2, spec=SPEC, dtype="int8")
    assert isinstance(info.value, DtypeError) and isinstance(info.value, KernelError)
    with pytest.raises(KernelDtypeError, match=r"fp32 inputs cannot accumulate in 'fp16'"):
        gemm.cost(8, 8, 8, grid=2, spec=SPEC, dtype="fp32", accumulate="fp16")
    with pytest.raises(KernelShapeError, match=r"b_nnz must give one nonzero count per block"):
        gemm.run((8, 8), (8, 8), grid=2, spec=SPEC, skip="b", b_nnz=np.ones((3, 3)))
    with pytest.raises(KernelShapeError, match=r"algorithm 'strassen'"):
        gemm.cost(8, 8, 8, grid=2, spec=SPEC, algorithm="strassen")
    with pytest.raises(KernelShapeError, match=r"skip="):
        gemm.cost(8, 8, 8, grid=2, spec=SPEC, skip="c")


def test_sram_overflow_names_the_grid_that_would_fit():
    with pytest.raises(KernelFitError, match=r"over the 49152 B SRAM; use a grid of at least"):
        gemm.cost(2048, 2048, 2048, grid=16, spec="wse2", algorithm="cannon")


def test_chooser_picks_a_fitting_grid_and_run_uses_it():
    plan = choose_gemm(64, 64, 64, spec=SPEC, dtype="fp32")
    assert plan.sram_bytes <= SPEC.sram_bytes and plan.grid <= 24
    best = min(gemm.cost(64, 64, 64, algorithm=a, grid=q, spec=SPEC).cycles
               for a in gemm.ALGORITHMS for q in range(1, 25)
               if gemm.sram_bytes(64, 64, 64, q, "fp32", "fp32", a) <= SPEC.sram_bytes)
    assert plan.cycles == best
    a = RNG.standard_normal((64, 64)).astype(np.float32)
    pick = choose_gemm(64, 64, 64, spec=SPEC, algorithms=(plan.algorithm,))
    assert pick.grid == plan.grid
    r = gemm.run(a, a, algorithm=plan.algorithm, grid=pick.grid, spec=SPEC)
    assert r.grid == plan.grid and r.cycles == plan.cycles
    with pytest.raises(KernelFitError, match=r"no square grid"):
        choose_gemm(4096, 4096, 4096, spec=SPEC, rect=(8, 8))


def test_weight_mask_zeroes_skips_and_counts_per_block():
    p, m, k, n = 4, 16, 30, 26            # blocks do not divide: the padded edge is counted
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((k, n)).astype(np.float32)
    mask = RNG.random((k, n)) < 0.2
    valued = gemm.run(a, b, grid=p, spec=SPEC, mask=mask)
    np.testing.assert_allclose(valued.value, a @ np.where(mask, b, 0), rtol=1e-5, atol=1e-4)
    timed = gemm.run((m, k), (k, n), grid=p, spec=SPEC, mask=mask)
    assert timed.cycles == valued.cycles
    assert valued.cycles < gemm.run(a, b, grid=p, spec=SPEC).cycles
    with pytest.raises(KernelShapeError, match=r"mask of shape \(26, 30\) does not match the "
                                               r"weight \[30,26\]"):
        gemm.run(a, b, grid=p, spec=SPEC, mask=mask.T)


def test_runs_on_a_rectangle_of_a_shared_fabric():
    from waferscale.fabric import Fabric

    f = Fabric(SPEC, 12, 12)
    a = RNG.standard_normal((20, 20)).astype(np.float32)
    alone = gemm.run(a, a, algorithm="cannon", grid=5, spec=SPEC)
    placed = gemm.run(a, a, algorithm="cannon", grid=5, fabric=f, origin=(3, 6))
    np.testing.assert_allclose(placed.value, a @ a, rtol=1e-5, atol=1e-4)
    assert placed.cycles == alone.cycles
    assert f.ce_clock[:3].max() == 0 and f.ce_clock[:, :6].max() == 0
    with pytest.raises(KernelFitError, match=r"does not fit the 9x6 rectangle"):
        gemm.run(a, a, grid=7, fabric=f, origin=(3, 6))


def test_16_bit_blocks_travel_two_per_wavelet():
    """A block moved memory to memory is sent as 32-bit words: 16-bit values pack two per
    wavelet, so an fp16 GEMM's links carry half an fp32 GEMM's wavelets (and cost() and
    the fabric agree on it: test_cost_equals_fabric_cycles)."""
    counts = {}
    for dtype in ("fp32", "fp16"):
        r = gemm.run((96, 96), (96, 96), algorithm="meshgemm", grid=8, spec=SPEC,
                     dtype=dtype, accumulate="fp32")
        counts[dtype] = r.stats["link_wavelets"]
    assert counts["fp16"] == pytest.approx(counts["fp32"] / 2)
