"""Sums and means in a captured graph run on the reduce kernel: over leading or trailing
dims as they are (what bias gradients and norm backward need), over other dims after a
relayout into [kept, reduced] rows; a mean is the sum divided in fp32. A softmax over
another axis than the last is the softmax kernel on rows gathered the same way."""

from __future__ import annotations

import pytest
import torch

import waferscale
from waferscale.kernels.reduce import reduce_layout


class Sums(torch.nn.Module):
    def __init__(self, dims: object, keepdim: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 24)
        self.dims, self.keepdim = dims, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)                                  # [batch, tokens, 24]
        if self.dims is None:
            return h.sum() * 1.0
        return h.sum(self.dims, keepdim=self.keepdim) * 1.0


@pytest.mark.parametrize("dims,keepdim,layout", [
    ((-1,), True, (2 * 12, 24, 1)),      # over the hidden axis: layer-norm backward
    ((0, 1), False, (2 * 12, 24, 0)),    # over tokens: a bias gradient
    ((0,), True, (2, 12 * 24, 0)),
    (None, False, (2 * 12 * 24, 1, 0)),  # everything: a scalar
])
def test_sums_run_on_the_reduce_kernel(dims, keepdim, layout) -> None:
    m = Sums(dims, keepdim)
    x = torch.randn(2, 12, 16)
    cm = waferscale.compile(m, (x,), strict=True)
    out = cm(x)
    ref = m(x).detach()
    assert out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-4
    stage = next(s for s in cm.program.stages if s.kind == "reduce")
    assert (stage.params.rows, stage.params.cols, stage.params.axis) == layout
    # the plan's closed form; over columns it counts the 2 cycles more of
    # `timing.allreduce_cycles` (tests/test_kernels_reduce.py)
    assert abs(cm.last_run["runs"][stage.name].cycles - stage.cost_cycles) <= 2


class Reduction(torch.nn.Module):
    def __init__(self, how: str, dims: object, keepdim: bool) -> None:
        super().__init__()
        self.how, self.dims, self.keepdim = how, dims, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "softmax":
            return torch.softmax(x, self.dims)
        if self.how == "log_softmax":
            return torch.log_softmax(x, self.dims)
        fn = torch.sum if self.how == "sum" else torch.mean
        return fn(x, self.dims, keepdim=self.keepdim)


def _on_wafer(m: torch.nn.Module, x: torch.Tensor, kind: str) -> waferscale.CompiledModel:
    cm = waferscale.compile(m, (x,), strict=True)
    assert [s.kind for s in cm.program.stages] == [kind]
    got, want = cm(x), m(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-5 if x.dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    # the stage's measured clocks against its closed form (allreduce residue: 2 cycles)
    stage = cm.program.stages[0]
    assert abs(cm.last_run["runs"][stage.name].cycles - stage.cost_cycles) <= 2
    return cm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("how", "dims", "keepdim", "moved"), [
    ("sum", (1,), False, (1,)),            # was a host fallback: a middle dim
    ("sum", (0, 2), True, (0, 2)),         # leading and trailing, not contiguous
    ("sum", (1, 2), False, None),
    ("mean", (-1,), True, None),           # was a host fallback: aten.mean.dim
    ("mean", (0,), False, None),
    ("mean", (1,), True, (1,)),
    ("mean", None, False, None),
])
def test_sums_and_means_over_any_dims(how, dims, keepdim, moved, dtype) -> None:
    """Were host fallbacks: sums over middle dims, and every standalone ``aten.mean``."""
    x = torch.randn(3, 5, 7, dtype=dtype)
    m = Reduction(how, dims, keepdim)
    cm = _on_wafer(m, x, "reduce")
    p = cm.program.stages[0].params
    assert p.moved == moved
    assert p.count == (1 if how == "sum" else x.numel() // m(x).numel())
    assert ("relayout" in cm.report()["stages"][0]["algorithm"]) == (moved is not None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("how", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_over_any_axis(how, dim, dtype) -> None:
    """Was a host fallback: a softmax over another axis than the last."""
    x = torch.randn(3, 5, 7, dtype=dtype) * 3
    cm = _on_wafer(Reduction(how, dim, False), x, "softmax")
    p = cm.program.stages[0].params
    assert p.dim == (None if dim == -1 else dim)
    assert (p.tokens, p.hidden) == (x.numel() // x.shape[dim], x.shape[dim])


def test_relayout_is_charged() -> None:
    """A middle-dim reduction costs what the same sum over the trailing dim costs plus one
    relayout of its input (a softmax: one in, one out)."""
    from waferscale.kernels.elementwise import relayout_cycles
    from waferscale.kernels.reduce import FAMILY, ReduceParams

    spec = waferscale.hardware.get_spec("wse2")
    plain, moved = ReduceParams(35, 3, 1), ReduceParams(35, 3, 1, moved=(1,))
    extra = FAMILY.cycles(spec, moved, "fp32", (5, 3)) - FAMILY.cycles(spec, plain, "fp32",
                                                                      (5, 3))
    assert extra == relayout_cycles(spec, 105, (5, 3)) > 0


def test_sum_with_a_dtype_falls_back() -> None:
    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.sum(1, dtype=torch.float64).float()

    x = torch.randn(2, 12, 16)
    cm = waferscale.compile(M(), (x,))
    assert float((cm(x) - M()(x)).abs().max()) < 1e-4
    node = next(n for n in cm.program.graph.calls() if n.short == "sum")
    assert node.meta["kind"] == "fallback"
    assert reduce_layout(node, cm.program.graph) is None


class SumsAndPointwise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(x) * 3.0 + x                       # a pointwise stage
        return h.sum((0, 1)) + h.mean(1).sum(0) * 0.5   # leading, middle and leading dims


def test_remembered_figures_and_values_equal_a_fresh_run(monkeypatch) -> None:
    """A second call reads the reduce and pointwise stages' figures from
    `family._FIGURES` and computes their values without the fabric: every stage figure
    and every output bit equal those of a run that simulated them afresh."""
    from waferscale.kernels import family
    monkeypatch.setattr(family, "_FIGURES", {})
    monkeypatch.setenv("WAFERSCALE_NO_CACHE", "1")   # the fresh run below simulates afresh
    m = SumsAndPointwise()
    x = torch.randn(3, 40, 24)
    cm = waferscale.compile(m, (x,), strict=True)
    kinds = {s.kind for s in cm.program.stages}
    assert {"reduce", "pointwise"} <= kinds
    first, first_runs = cm(x), dict(cm.last_run["runs"])
    assert len(family._FIGURES) >= 3
    y = torch.randn(3, 40, 24) * 5
    again, again_runs = cm(y), dict(cm.last_run["runs"])
    family._FIGURES.clear()
    fresh, fresh_runs = cm(y), dict(cm.last_run["runs"])
    assert first_runs == again_runs == fresh_runs
    assert torch.equal(again.view(torch.int32), fresh.view(torch.int32))
    assert not torch.equal(first, again)
