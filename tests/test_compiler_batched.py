"""Batched GEMMs run their entries side by side; pointwise stages take the rectangle's shape.

Why: a bmm's heads are independent GEMMs, so time-multiplexing them on one p x p grid
(p <= head_dim) left the attention bmm the pipeline's bound whatever the placement; and a
pointwise op laid out [tokens, last] on a [8192, 8] rotary tensor could use only 8 PE
columns, which made its inbound stream the bottleneck.
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
from waferscale.kernels.gemm import GemmParams, batched_tiling
from waferscale.kernels.norm import LayerNormParams
from waferscale.kernels.pointwise import PointwiseParams
from waferscale.kernels.pointwise import layout_of as pointwise_layout

SPEC = get_spec("wse2")


def _bmm(batch: int, m: int, k: int, n: int) -> Stage:
    return Stage("bmm", "gemm", ("bmm",), "fp32", params=GemmParams("bmm", batch, m, k, n))


def run_gemm(spec, st, a, b, bias, timing_only=False):
    """The GEMM family's fabric run of a stage, outside a compiled program."""
    return gemm.run_stage(ExecContext(spec, Graph(), {}, timing_only), st, a, b, bias)


@pytest.mark.parametrize("bounds", [(40, 130), (16, 200), (64, 64), (20, 20), None])
def test_bmm_groups_side_by_side(bounds: tuple[int, int] | None) -> None:
    """Groups tile the rectangle; cost() == the fabric's cycles; values match torch."""
    st = size_stage(SPEC, _bmm(6, 48, 16, 40), 3000.0, None, bounds)
    assert st.fits
    q, (gr, gc) = st.params.grid, st.params.tiling
    assert st.rect == (gr * q, gc * q)
    if bounds is not None:
        assert st.rect[0] <= bounds[0] and st.rect[1] <= bounds[1]
    rounds = -(-6 // (gr * gc))
    one = gemm.cost(48, 16, 40, grid=q, spec=SPEC, accumulate="fp32").cycles
    assert st.cost_cycles == pytest.approx(rounds * one)
    torch.manual_seed(0)
    a, b = torch.randn(6, 48, 16), torch.randn(6, 16, 40)
    out, run = run_gemm(SPEC, st, a, b, None)
    _, timed = run_gemm(SPEC, st, a, b, None, timing_only=True)
    assert out is not None
    assert float((out - torch.bmm(a, b)).abs().max()) < 1e-4
    assert run.cycles == pytest.approx(st.cost_cycles)
    assert timed.cycles == pytest.approx(st.cost_cycles)


def test_bmm_beats_time_multiplexing() -> None:
    """The GenSLM attention bmm ([1024,64]x[64,1024], 8 heads) on room for 8 grids takes
    one GEMM's time, not eight."""
    st = size_stage(SPEC, _bmm(8, 1024, 64, 1024), 0.0, None, (128, 256))
    assert st.params.tiling == (2, 4) and st.params.grid == 64
    one = gemm.cost(1024, 64, 1024, grid=64, spec=SPEC, accumulate="fp32").cycles
    assert st.cost_cycles == pytest.approx(one)
    small = size_stage(SPEC, _bmm(8, 1024, 64, 1024), 0.0, None, (64, 64))
    assert small.cost_cycles <= 8 * one


def test_batched_tiling_holds_batch() -> None:
    assert batched_tiling(8, 64, 128, 256) == (2, 4)
    assert batched_tiling(3, 10, 100, 100) in ((1, 3), (3, 1))
    assert batched_tiling(100, 10, 25, 35) == (2, 3)
    assert batched_tiling(1, 64, 10, 10) == (1, 1)


def test_pointwise_layout_follows_rectangle() -> None:
    assert pointwise_layout(8192, 8, 0.0, (200, 100), 10 ** 9) == (656, 100)
    assert pointwise_layout(8192, 512, 0.0, (200, 100), 10 ** 9) == (8192, 512)
    neg = Stage("neg", "pointwise", ("neg",), "fp32",
                params=PointwiseParams(8192, 8, ("neg",), 1))
    st = size_stage(SPEC, neg, 0.0, None, (128, 128))
    narrow = size_stage(SPEC, neg, 0.0, None, (128, 8))
    assert st.rect == (128, 128) and st.pes == 16 * narrow.pes
    assert st.cost_cycles < narrow.cost_cycles


def _mm(m: int, k: int, n: int, bias: bool) -> Stage:
    return Stage("mm", "gemm", ("mm",), "fp32",
                 params=GemmParams("addmm" if bias else "mm", 1, m, k, n, bias=bias))


@pytest.mark.parametrize("bounds", [(100, 24), (24, 100), (30, 30), None])
@pytest.mark.parametrize("bias", [False, True])
def test_mm_rows_split_over_groups(bounds: tuple[int, int] | None, bias: bool) -> None:
    """An mm/addmm in a long thin rectangle splits its tokens over side-by-side grids (each
    with a copy of the weights): it uses the long side, cost() == the fabric's cycles and
    the values match torch."""
    st = size_stage(SPEC, _mm(90, 20, 24, bias), 2000.0, None, bounds)
    assert st.fits
    q, (gr, gc) = st.params.grid, st.params.tiling
    assert st.rect == (gr * q, gc * q)
    if bounds is not None:
        assert st.rect[0] <= bounds[0] and st.rect[1] <= bounds[1]
    if bounds in ((100, 24), (24, 100)):
        assert st.params.msplit > 1
        square = size_stage(SPEC, _mm(90, 20, 24, bias), 0.0, None,
                            (min(bounds), min(bounds)))
        assert st.cost_cycles < square.cost_cycles
    torch.manual_seed(1)
    a, b, c = torch.randn(90, 20), torch.randn(20, 24), torch.randn(24)
    out, run = run_gemm(SPEC, st, a, b, c if bias else None)
    _, timed = run_gemm(SPEC, st, a, b, c if bias else None, timing_only=True)
    ref = torch.addmm(c, a, b) if bias else a @ b
    assert out is not None and out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-4
    assert run.cycles == pytest.approx(st.cost_cycles)
    assert timed.cycles == pytest.approx(st.cost_cycles)


@pytest.mark.parametrize("m,bounds", [(41, (40, 8)), (65, (64, 16))])
def test_short_last_row_chunk_is_padded_to_the_grid(m: int, bounds: tuple[int, int]) -> None:
    """41 rows in chunks of 9 leave 5 for the last 8 x 8 grid, fewer than its PE rows: the
    chunk is padded with zero rows (cropped after), so it runs instead of failing the
    GEMM's every-PE-has-a-block check; cost() is unchanged (a full chunk is slowest)."""
    st = size_stage(SPEC, _mm(m, 64, 64, True), 2000.0, None, bounds)
    q, mg, groups = st.params.grid, st.params.mrows, st.params.msplit
    assert m - (groups - 1) * mg < q
    torch.manual_seed(3)
    a, b, c = torch.randn(m, 64), torch.randn(64, 64), torch.randn(64)
    out, run = run_gemm(SPEC, st, a, b, c)
    assert out is not None and out.shape == (m, 64)
    assert float((out - torch.addmm(c, a, b)).abs().max()) < 1e-4
    assert run.cycles == pytest.approx(st.cost_cycles)


@pytest.mark.parametrize("prologue", [False, True])
def test_mm_rows_in_rounds_when_they_do_not_fit(prologue: bool) -> None:
    """4,096 token rows do not fit beside the weights on an 8 x 8 grid: the rows go in
    chunks that fit, the group takes them in rounds (weights stationary), cost() == the
    fabric's cycles (a fused layer norm's cycles included), the SRAM peak is the plan's
    and the values match torch."""
    st = _mm(4096, 64, 64, True)
    if prologue:
        st = dataclasses.replace(st, params=dataclasses.replace(
            st.params, prologue=LayerNormParams(4096, 64, True, True, 1e-5)))
    st = size_stage(SPEC, st, 0.0, None, (8, 8))
    assert st.fits and st.sram_per_pe <= SPEC.sram_bytes
    groups = st.params.tiling[0] * st.params.tiling[1]
    assert st.params.msplit > groups           # more chunks than groups: rounds
    torch.manual_seed(2)
    a, b, c = torch.randn(4096, 64), torch.randn(64, 64), torch.randn(64)
    out, run = run_gemm(SPEC, st, a, b, c)
    assert out is not None and float((out - torch.addmm(c, a, b)).abs().max()) < 1e-4
    assert run.cycles == pytest.approx(st.cost_cycles)
    assert run.sram_peak == st.sram_per_pe


def test_round_figures_kept_on_disk_give_what_the_fabric_does(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dense round's figures are written to the disk cache; a process that has not run
    the round (nothing remembered in memory) reads them and returns the fabric run's
    cycles, SRAM peak, busy share and values, bit for bit; a broken entry is a miss."""
    from waferscale.kernels import family

    monkeypatch.setenv("WAFERSCALE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("WAFERSCALE_NO_CACHE", raising=False)
    monkeypatch.setattr(family, "_FIGURES", {})
    st = size_stage(SPEC, _bmm(6, 48, 16, 40), 3000.0, None, (40, 130))
    torch.manual_seed(0)
    a, b = torch.randn(6, 48, 16), torch.randn(6, 16, 40)
    fresh_out, fresh = run_gemm(SPEC, st, a, b, None)
    entries = list((tmp_path / family.FIGURES_KIND).glob("*.pkl"))
    assert entries
    for broken in (False, True):
        if broken:
            for e in entries:
                e.write_bytes(b"not a pickle")
        family._FIGURES.clear()
        out, again = run_gemm(SPEC, st, a, b, None)
        assert torch.equal(out, fresh_out)
        assert (again.cycles, again.sram_peak, again.busy_fraction) == \
            (fresh.cycles, fresh.sram_peak, fresh.busy_fraction)
