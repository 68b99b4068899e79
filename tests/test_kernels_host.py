"""The host fallback runs its op with PyTorch's deterministic algorithms and leaves the
setting as it found it (a training run repeats to the bit on a busy machine)."""

from __future__ import annotations

import pytest
import torch

from waferscale.ir import Graph, Node
from waferscale.kernels.family import ExecContext, Stage
from waferscale.kernels.host import HostParams, run_on_host


@pytest.mark.parametrize("before", [False, True])
def test_host_ops_run_deterministically_and_restore_the_setting(before: bool) -> None:
    seen: list[bool] = []

    def index_put(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.are_deterministic_algorithms_enabled())
        idx = torch.tensor([0, 2, 0, 0, 1])
        rows = torch.arange(20, dtype=torch.float32).reshape(5, 4) * 0.1
        return torch.index_put(x, (idx,), rows, accumulate=True)

    g = Graph()
    node = Node("out", "call", "aten.index_put.default", fn=index_put)
    ctx = ExecContext(spec=None, graph=g, env={"x": torch.zeros(3, 4)})  # type: ignore[arg-type]
    node.args = (torch.zeros(3, 4),)
    st = Stage("host_0", "fallback", ("out",), params=HostParams(0, node.target))
    prior = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(before)
    try:
        run_on_host(ctx, st, node)
        assert seen == [True]
        assert torch.are_deterministic_algorithms_enabled() == before
    finally:
        torch.use_deterministic_algorithms(prior)
    expected = torch.zeros(3, 4)
    for i, r in zip([0, 2, 0, 0, 1], range(5), strict=True):
        expected[i] += torch.arange(4, dtype=torch.float32) * 0.1 + r * 0.4
    assert torch.allclose(ctx.env["out"], expected)
