"""Sums in a captured graph run on the reduce kernel when they are over leading or
trailing dims (what bias gradients and norm backward need); other sums fall back."""

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


def test_sum_over_middle_dims_falls_back() -> None:
    m = Sums((1,), False)
    x = torch.randn(2, 12, 16)
    cm = waferscale.compile(m, (x,))
    assert [f["op"] for f in cm.report()["fallback_ops"]] == ["aten.sum.dim_IntList"]
    assert float((cm(x) - m(x).detach()).abs().max()) < 1e-4
    node = next(n for n in cm.program.graph.calls() if n.short == "sum")
    assert reduce_layout(node, cm.program.graph) is None
