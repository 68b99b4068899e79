"""Dropout on the wafer: a seeded, layout-independent mask, the right scaling and gradient.

The masks are the wafer's own (a counter-based stream keyed by a seed drawn from torch's
generator), so a compiled training step is checked against the algebra of dropout with
*that* mask, and for reproducibility, not against eager's masks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from waferscale import backend
from waferscale.hardware.spec import get_spec
from waferscale.ir import Graph, Node, Ref
from waferscale.kernels import dropout
from waferscale.kernels.dropout import DropoutParams, keep_mask, reference
from waferscale.kernels.family import ExecContext, Stage
from waferscale.kernels.registry import family

SPEC = get_spec("wse2")


def test_mask_is_reproducible_and_drops_p() -> None:
    a, b = keep_mask(7, (300, 400), 0.25), keep_mask(7, (300, 400), 0.25)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, keep_mask(8, (300, 400), 0.25))
    assert abs(1.0 - a.mean() - 0.25) < 0.005
    # element i is the i-th value of the stream: a reshape does not change the mask
    assert np.array_equal(keep_mask(7, (120000,), 0.25), a.reshape(-1))


def test_reference_scales_kept_elements() -> None:
    x = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    out, mask = reference(x, 0.4, 3)
    assert np.allclose(out[mask], x[mask] / 0.6) and np.all(out[~mask] == 0)
    assert np.array_equal(reference(x, 0.0, 3)[0], x)
    assert np.all(reference(x, 1.0, 3)[0] == 0)


@pytest.mark.parametrize("rect", [(4, 4), (7, 3), (1, 1)])
def test_fabric_run_is_its_cost_and_layout_free(rect: tuple[int, int]) -> None:
    p = DropoutParams(37, 29, 0.3)
    st = Stage("d", "dropout", ("d",), "fp32", params=p)
    sized = Stage("d", "dropout", ("d",), "fp32", params=p,
                  sizing=family("dropout").size(SPEC, st, float(rect[0] * rect[1]), 1000,
                                                rect)[1])
    x = torch.randn(37, 29)
    ctx = ExecContext(SPEC, Graph(), {"x": x})
    node = Node("d", "call", target="aten.native_dropout.default", args=(Ref("x"), 0.3, True))
    torch.manual_seed(5)
    run = family("dropout").execute(ctx, sized, node)
    assert run.cycles == pytest.approx(sized.cost_cycles)
    assert run.cycles == pytest.approx(dropout.cost(SPEC, p, "fp32", sized.rect))
    out, mask = ctx.env["d"]
    torch.manual_seed(5)
    want, want_mask = reference(x.numpy(), 0.3, dropout.draw_seed())
    assert np.array_equal(mask.numpy(), want_mask)
    assert np.allclose(out.numpy(), want)


class _Drop(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 24)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.lin(x))


def _step(seed: int, model: _Drop, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    torch._dynamo.reset()
    before = len(backend.COMPILED)
    f = torch.compile(model, backend="waferscale", options={"mode": "pipelined"})
    xg = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = f(xg)
    out.sum().backward()
    # the forward draws on the wafer; (the backward's bool -> float cast of the mask is
    # still a host op)
    forward = backend.COMPILED[before].program.plan.stages
    assert {s.kind for s in forward} >= {"dropout"} and all(
        s.kind != "fallback" for s in forward)
    del backend.COMPILED[before:]
    torch._dynamo.reset()
    return out.detach(), xg.grad


def test_training_step_draws_on_the_wafer_reproducibly() -> None:
    torch.manual_seed(0)
    model = _Drop().train()
    x = torch.randn(32, 16)
    out1, g1 = _step(11, model, x)
    out2, g2 = _step(11, model, x)
    assert torch.equal(out1, out2) and torch.equal(g1, g2)
    out3, _ = _step(12, model, x)
    assert not torch.equal(out1, out3)
    kept = out1 != 0
    assert 0.55 < float(kept.float().mean()) < 0.85
    with torch.no_grad():
        lin = model.lin(x)
    assert torch.allclose(out1[kept], lin[kept] / 0.7, atol=1e-5)
    # the backward multiplies by the forward's mask: d(sum)/dx = (mask / 0.7) @ W
    want = (kept.float() / 0.7) @ model.lin.weight.detach()
    assert torch.allclose(g1, want, atol=1e-5)
