"""GEMMs with too few rows for any grid to hold their [k, n] operand split K instead.

Why: a weight gradient is [out, tokens] x [tokens, in]; GenSLM-25B's lm_head gradient at
10,240 tokens is [69, 10240] x [10240, 8192], and MeshGEMM's q x q grid needs q <= 69,
which leaves 35 KB of the [k, n] operand per PE (times the ring's buffers): no grid fit
and the 25B training estimate failed. Cutting K into chunks on side-by-side groups (like
a bmm's entries) and summing the partial products across the groups fits it.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from waferscale.compiler.plan import size_stage
from waferscale.hardware.spec import get_spec
from waferscale.ir import Graph
from waferscale.kernels import gemm
from waferscale.kernels.family import ExecContext, Stage
from waferscale.kernels.gemm import GemmParams

#: a wafer with 6 KB per PE, so that small problems need the split
SMALL = dataclasses.replace(get_spec("wse2"), sram_bytes=6144)


def _mm(m: int, k: int, n: int, bias: bool = False) -> Stage:
    op = "addmm" if bias else "mm"
    return Stage(op, "gemm", (op,), "fp32", params=GemmParams(op, 1, m, k, n, bias=bias))


def _run(st: Stage, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
         timing_only: bool = False):
    return gemm.run_stage(ExecContext(SMALL, Graph(), {}, timing_only), st, a, b, bias)


@pytest.mark.parametrize(("m", "k", "n", "bounds", "bias"), [
    (6, 700, 40, (24, 24), False),
    (5, 613, 37, (30, 18), True),      # primes: a short last chunk, padded to the grid
    (6, 700, 40, None, False),
])
def test_ksplit_runs_what_it_costs(m: int, k: int, n: int, bounds, bias: bool) -> None:
    """The split is chosen only when no row split fits; values match torch; the fabric
    run's cycles equal the plan's cost (partial sums charged by `ksplit_cycles` in both)."""
    st = size_stage(SMALL, _mm(m, k, n, bias), 600.0, 24 if bounds is None else None,
                    bounds)
    assert st.fits and st.params.ksplit > 1
    assert "K split" in st.algorithm
    q, (gr, gc) = st.params.grid, st.params.tiling
    assert st.rect == (gr * q, gc * q)
    if bounds is not None:
        assert st.rect[0] <= bounds[0] and st.rect[1] <= bounds[1]
    torch.manual_seed(0)
    a, b = torch.randn(m, k), torch.randn(k, n)
    c = torch.randn(n) if bias else None
    out, run = _run(st, a, b, c)
    _, timed = _run(st, a, b, c, timing_only=True)
    want = a @ b + (c if bias else 0)
    assert out is not None
    assert float((out - want).abs().max()) < 1e-4 * float(want.abs().max())
    assert run.cycles == pytest.approx(st.cost_cycles)
    assert timed.cycles == pytest.approx(st.cost_cycles)


def test_row_split_still_preferred_when_it_fits() -> None:
    st = size_stage(get_spec("wse2"), _mm(256, 512, 128), 4096.0, None, (64, 64))
    assert st.params.ksplit == 1


def test_ksplit_partial_sums_cost_grows_with_the_groups() -> None:
    p = GemmParams("mm", 1, 64, 4096, 64, grid=8)
    one = gemm.ksplit_cycles(SMALL, dataclasses.replace(p, tiling=(1, 1), ksplit=1), 8)
    few = gemm.ksplit_cycles(SMALL, dataclasses.replace(p, tiling=(2, 1), ksplit=2), 8)
    many = gemm.ksplit_cycles(SMALL, dataclasses.replace(p, tiling=(8, 8), ksplit=64), 8)
    assert one == 0.0 and 0.0 < few < many


def test_genslm_25b_lm_head_gradient_fits_the_wafer() -> None:
    spec = get_spec("wse2")
    st = size_stage(spec, Stage("mm", "gemm", ("mm",), "fp16",
                                params=GemmParams("mm", 1, 69, 10240, 8192)),
                    float(spec.pes), None, (spec.rows, spec.cols))
    assert st.fits and st.params.ksplit > 1
    # no slower than the dense FLOP floor allows: the split keeps most of the wafer busy
    floor = 2 * 69 * 10240 * 8192 / (spec.pes * 2)
    assert st.cost_cycles < 3 * floor
