"""Training on the simulated wafer: N steps give eager PyTorch's weights with the same
optimizer (MemoryX applies it), a resumed run continues bit for bit, and bad checkpoints
are clear errors that leave the file alone."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers

from waferscale.models import load_model
from waferscale.runtime.checkpoint import FILE, CheckpointError
from waferscale.runtime.memoryx import OptimizerConfig, OptimizerConfigError
from waferscale.train import Trainer


def _batches(vocab: int, seq: int, batch: int):  # noqa: ANN202 - a closure factory
    def make(i: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "labels": ids}
    return make


def _eager(model: torch.nn.Module, batches, config: OptimizerConfig, steps: int  # noqa: ANN001
           ) -> list[float]:
    opt = config.torch_optimizer(list(model.parameters()))
    model.train()
    losses = []
    for i in range(steps):
        loss = model(**batches(i)).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


def _tiny(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "genslm":
        m, _, _ = load_model("genslm-25m", seq=32, batch=1, layers=1)
        return m
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1,
                                      n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
                                      attn_pdrop=0.0, attn_implementation="sdpa")
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32,
                                   attn_implementation="sdpa", use_cache=False)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_memoryx_applies_torch_optim_bit_for_bit(optimizer: str) -> None:
    """Given the same gradients, MemoryX's update is torch.optim's, to the bit."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    ref = copy.deepcopy(model)
    config = OptimizerConfig(optimizer, lr=1e-2)
    from waferscale.runtime.memoryx import MemoryX

    mx, opt = MemoryX(model, config), config.torch_optimizer(list(ref.parameters()))
    for i in range(4):
        grads = [torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * i + k))
                 for k, p in enumerate(model.parameters())]
        for p, q, g in zip(model.parameters(), ref.parameters(), grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        mx.apply()
        opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name,mode,optimizer", [
    ("genslm", "weight_streaming", "sgd"), ("gpt2", "weight_streaming", "sgd"),
    ("llama", "weight_streaming", "sgd"), ("genslm", "pipelined", "sgd"),
    ("genslm", "weight_streaming", "adamw"), ("llama", "weight_streaming", "adamw")])
def test_steps_give_eager_weights(name: str, mode: str, optimizer: str) -> None:
    """Three steps on the wafer against eager PyTorch with the same optimizer. With SGD the
    weights agree to 1e-5 relative. AdamW divides each gradient by its running RMS, so an
    element whose gradient is near zero takes a step of about lr whatever its size: the
    wafer's fp32 sums (another order than PyTorch's, ~1e-8 apart) then move such elements
    differently. The losses still agree to 1e-5 and the weights' updates to within 5 % in
    norm (measured ~1 % on GenSLM)."""
    model = _tiny(name)
    ref, start = copy.deepcopy(model), copy.deepcopy(model)
    vocab = model.config.vocab_size
    batches = _batches(vocab, 16, 2)
    config = OptimizerConfig(optimizer, lr=1e-2)
    trainer = Trainer(model, batches, config, mode=mode, max_side=32)
    results = list(trainer.run(3))
    torch._dynamo.reset()
    eager = _eager(ref, batches, config, 3)
    assert [r.step for r in results] == [1, 2, 3]
    assert all(r.mode == mode and r.samples_per_second > 0 for r in results)
    assert [r.loss for r in results] == pytest.approx(eager, rel=1e-5)
    for (n, p), q, p0 in zip(model.named_parameters(), ref.parameters(), start.parameters(),
                             strict=True):
        if optimizer == "sgd":
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), n
        else:
            assert float((p - q).norm() / (q - p0).norm()) < 0.05, n


def test_resumed_run_continues_bit_for_bit(tmp_path: Path) -> None:
    batches = _batches(69, 16, 1)
    config = OptimizerConfig("adamw", lr=1e-2)
    straight = Trainer(_tiny("genslm"), batches, config, mode="weight_streaming", max_side=32)
    losses = [r.loss for r in straight.run(4)]
    torch._dynamo.reset()
    first = Trainer(_tiny("genslm"), batches, config, mode="weight_streaming", max_side=32)
    list(first.run(2))
    first.save(str(tmp_path), {"model": "genslm-25m"})
    torch._dynamo.reset()
    resumed = Trainer(_tiny("genslm"), batches, config, mode="weight_streaming", max_side=32)
    assert resumed.resume(str(tmp_path)) == {"model": "genslm-25m"}
    assert [r.loss for r in resumed.run(4)] == losses[2:]
    for p, q in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(p, q)
    torch._dynamo.reset()


def test_bad_checkpoints_are_clear_errors_and_stay_untouched(tmp_path: Path) -> None:
    trainer = Trainer(_tiny("genslm"), _batches(69, 16, 1), OptimizerConfig(),
                      mode="weight_streaming", max_side=32)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer.resume(str(tmp_path))
    (tmp_path / FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.resume(str(tmp_path))
    assert (tmp_path / FILE).read_bytes() == b"not a checkpoint"
    other = tmp_path / "other"
    Trainer(_tiny("gpt2"), _batches(64, 16, 1), OptimizerConfig(),
            mode="weight_streaming").save(str(other), {})
    before = (other / FILE).read_bytes()
    with pytest.raises(CheckpointError, match="does not match the model"):
        trainer.resume(str(other))
    assert (other / FILE).read_bytes() == before
    sgd = Trainer(_tiny("genslm"), _batches(69, 16, 1), OptimizerConfig("sgd"),
                  mode="weight_streaming")
    trainer.save(str(tmp_path / "adamw"), {})
    with pytest.raises(CheckpointError, match="optimizer"):
        sgd.resume(str(tmp_path / "adamw"))
    torch._dynamo.reset()


def test_optimizer_settings_are_checked() -> None:
    with pytest.raises(OptimizerConfigError, match="optimizer 'adam'"):
        OptimizerConfig("adam")
    with pytest.raises(OptimizerConfigError, match="beta2"):
        OptimizerConfig(betas=(0.9, 1.5))
    with pytest.raises(OptimizerConfigError, match="lr"):
        OptimizerConfig(lr=float("nan"))
