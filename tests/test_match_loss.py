"""The decomposed cross-entropy (transformers' ``labels=`` loss, F.cross_entropy) runs on
the wafer's loss kernel (`kernels.loss.fuse_cross_entropy`); integer ops on the labels alone
are host input preprocessing, not fallbacks.

Tolerance: 1e-5 absolute on an O(1) loss (fp32; the kernel sums exponentials in another
order than torch's log_softmax).
"""

from __future__ import annotations

import pytest
import torch

import waferscale
from waferscale.kernels.loss import CROSS_ENTROPY


class WithLabels(torch.nn.Module):
    """A causal LM called with ``labels=``: transformers computes the shifted loss."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
        torch.manual_seed(0)
        cfg = GPTNeoXConfig(vocab_size=69, hidden_size=64, num_hidden_layers=1,
                            num_attention_heads=4, intermediate_size=256, rotary_pct=0.25,
                            use_cache=False, max_position_embeddings=64)
        self.lm = GPTNeoXForCausalLM(cfg).eval()

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, labels=labels).loss


class Head(torch.nn.Module):
    """A linear classifier with a cross-entropy of the given reduction."""

    def __init__(self, reduction: str, also_logp: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(16, 40)
        self.reduction, self.also_logp = reduction, also_logp

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> object:
        z = self.fc(x)
        if self.also_logp:   # one log_softmax read by the loss and returned
            logp = torch.log_softmax(z, dim=-1)
            return torch.nn.functional.nll_loss(logp, y, reduction=self.reduction), logp
        return torch.nn.functional.cross_entropy(z, y, reduction=self.reduction)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 69, (2, 32))
    labels = ids.clone()
    labels[1, 20:] = -100                     # padding: ignored by the loss
    return ids, labels


def test_lm_loss_runs_on_the_loss_kernel() -> None:
    m = WithLabels()
    ids, labels = _batch()
    cm = waferscale.compile(m, (ids, labels), strict=True)   # no fallback left
    out = cm(ids, labels)
    with torch.no_grad():
        ref = m(ids, labels)
    assert out.shape == ref.shape == torch.Size([])
    assert abs(float(out) - float(ref)) < 1e-5
    report = cm.report()
    assert report["fallback_ops"] == []
    assert [f["op"] for f in report["host_input_ops"]] == ["aten.constant_pad_nd.default"]
    stage = next(s for s in cm.program.stages if s.kind == "cross_entropy")
    assert stage.params.reduction == "mean" and stage.params.tokens == 64
    # the plan's closed form is what the kernel measured on the stage's fabric
    assert cm.last_run["runs"][stage.name].cycles == pytest.approx(stage.cost_cycles)
    assert not any(n.short in ("_log_softmax", "gather") for n in cm.program.graph.calls())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_reductions(reduction: str) -> None:
    m = Head(reduction)
    x, y = torch.randn(24, 16), torch.randint(0, 40, (24,))
    y[::5] = -100
    cm = waferscale.compile(m, (x, y))
    assert [n.target for n in cm.program.graph.calls()].count(CROSS_ENTROPY) == 1
    with torch.no_grad():
        ref = m(x, y)
    assert float((cm(x, y) - ref).abs()) < 1e-5 * max(1.0, float(ref.abs()))


def test_log_softmax_with_another_user_is_left_alone() -> None:
    """The match needs every intermediate to be private: here the log-probabilities are
    an output too, so the ops stay as they were: the log-softmax on the softmax kernel,
    the gather on the host."""
    m = Head("mean", also_logp=True)
    x, y = torch.randn(8, 16), torch.randint(0, 40, (8,))
    cm = waferscale.compile(m, (x, y))
    assert CROSS_ENTROPY not in [n.target for n in cm.program.graph.calls()]
    fallen = [f["op"] for f in cm.report()["fallback_ops"]]
    assert "aten.gather.default" in fallen and "aten._log_softmax.default" not in fallen
    assert any(s.kind == "softmax" and s.params.log for s in cm.program.stages)
    loss, logp = cm(x, y)
    with torch.no_grad():
        ref_loss, ref_logp = m(x, y)
    assert loss.shape == ref_loss.shape == torch.Size([])   # a 0-d pointwise result stays 0-d
    assert torch.allclose(loss, ref_loss, atol=1e-5) and torch.allclose(logp, ref_logp,
                                                                         atol=1e-5)


def test_matched_on_meta_weights_in_estimate_mode() -> None:
    """Estimate mode captures on the meta device, where folded scalars have no values; the
    literals they were built from are kept so the pattern still matches."""
    from waferscale.workloads.genslm import build_genslm

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = build_genslm("genslm-25m", device="meta")

        def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=ids, labels=labels).loss

    ids = torch.randint(0, 69, (1, 256))
    cm = waferscale.compile(Loss(), (ids, ids.clone()), mode="estimate")
    report = cm.report()
    assert report["fallback_ops"] == []
    assert any(s["kind"] == "cross_entropy" for s in report["stages"])
