"""Clusters on Ray: N systems give one system's weights, the reduction order is the SwarmX
tree's, a system killed mid-step is replaced and the run ends where it would have.

The tests start a local Ray themselves (CI has none running) and stop it at the end. The
model is a tiny MLP (its class lives in this file, so it also checks that a user's own
module reaches the Ray workers); every system compiles it with the waferscale backend in
its own process, which dominates the time (torch and dynamo imports per process).

What is compared (docs/clusters.md, "Functional equivalence"):
* bitwise: the cluster against the same systems' steps run one after another in this
  process and summed in the SwarmX tree's order (what the cluster computes, without Ray):
  processes, serialisation, the broadcast and MemoryX lose nothing, and a fault changes
  nothing;
* to a tolerance: the cluster against ONE system stepping the whole global batch. The
  sums differ in order (one system adds a weight gradient over all its rows at once; the
  cluster adds each system's rows, then the systems), so the gradients differ by fp32
  rounding (~1e-8); SGD keeps that at 1e-6 relative on the weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from waferscale.hardware.system import SystemSpec
from waferscale.runtime.cluster import (
    MemoryXActor,
    SystemActor,
    check_address,
    loss_weights,
    pickle_model,
    shard_batch,
)
from waferscale.runtime.memoryx import OptimizerConfig
from waferscale.runtime.swarmx import ClusterError, Tree, check_systems, split_batch, tree_sum
from waferscale.train import Trainer

STEPS = 3
PER_SYSTEM = 2


class TinyMLP(torch.nn.Module):
    """A user's model: keyword inputs, returns its loss."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(16, 32)
        self.b = torch.nn.Linear(32, 8)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self.b(torch.nn.functional.gelu(self.a(x))),
                                                 y)


def _batches(batch: int):  # noqa: ANN202 - a closure factory
    def make(i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {"x": torch.randn(batch, 16, generator=g),
                "y": torch.randint(0, 8, (batch,), generator=g)}
    return make


@pytest.fixture(scope="module")
def local_ray():  # noqa: ANN201 - a fixture
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    yield ray
    ray.shutdown()


def _one_system(model: torch.nn.Module, batch: int, config: OptimizerConfig) -> list[float]:
    trainer = Trainer(model, _batches(batch), config, mode="weight_streaming", max_side=8)
    losses = [r.loss for r in trainer.run(STEPS)]
    torch._dynamo.reset()
    return losses


def _emulated(model: torch.nn.Module, systems: int, config: OptimizerConfig
              ) -> list[torch.Tensor]:
    """The cluster's arithmetic in this process: each system's step in turn (the same
    `SystemActor` code), their gradients summed in the tree's order, MemoryX's update."""
    blob = pickle_model(model)
    system = SystemActor(blob, 0, "weight_streaming", "wse2", 8)
    mx = MemoryXActor(blob, config)
    weights = np.concatenate([w.reshape(-1).numpy() for w in mx.mx.master])
    batches = _batches(systems * PER_SYSTEM)
    for i in range(STEPS):
        shards = shard_batch(batches(i), systems)
        outs = [system.step(weights, s, w) for s, w in zip(shards, loss_weights(shards),
                                                            strict=True)]
        grad = tree_sum([g for _, g in outs], SystemSpec().swarmx_fanout)
        has = tuple(any(c) for c in zip(*(h for (_, h), _ in outs), strict=True))
        _, weights = mx.apply(grad, has)
    torch._dynamo.reset()
    return [p.detach().clone() for p in mx.mx.params]


@pytest.mark.parametrize("systems,optimizer,fault", [(2, "sgd", True), (4, "adamw", False)])
def test_n_systems_give_one_systems_weights(local_ray, systems: int, optimizer: str,
                                            fault: bool) -> None:
    """N systems x 2 samples for 3 steps: bitwise the tree-ordered emulation (through a
    fault on system 1 in step 2 when asked), and one system's weights on the same global
    batch within fp32 rounding (SGD: 1e-6 relative; AdamW: the losses to 1e-6 and the
    update to 1e-3 in norm, Adam's division by the RMS amplifies ~1e-8 differences on
    near-zero gradients: docs/weight-streaming.md)."""
    torch.manual_seed(0)
    start = TinyMLP()
    config = OptimizerConfig(optimizer, lr=0.1)
    single = copy.deepcopy(start)
    single_losses = _one_system(single, systems * PER_SYSTEM, config)
    reference = _emulated(copy.deepcopy(start), systems, config)

    model = copy.deepcopy(start)
    with Trainer(model, _batches(systems * PER_SYSTEM), config, mode="auto", max_side=8,
                 systems=systems) as trainer:
        if fault:
            trainer.inject_fault(step=2, system=1)
        results = list(trainer.run(STEPS))
        faults = trainer.faults
    assert [r.step for r in results] == [1, 2, 3]
    assert all(r.mode == f"weight_streaming x{systems}" and r.samples_per_second > 0
               for r in results)
    if fault:
        assert len(faults) == 1 and faults[0]["step"] == 2
        assert faults[0]["lost"] == ["system 1"]
    else:
        assert faults == []
    for p, q in zip(model.parameters(), reference, strict=True):
        assert torch.equal(p.detach(), q)
    assert [r.loss for r in results] == pytest.approx(single_losses, rel=1e-6)
    for p, q, p0 in zip(model.parameters(), single.parameters(), start.parameters(),
                        strict=True):
        if optimizer == "sgd":
            assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
        else:
            assert float((p - q).norm() / (q - p0).norm()) < 1e-3


def test_the_tree_fixes_the_order_of_the_sums() -> None:
    """Leaves in system order, each node adds its children left to right, levels up to
    one sum; the depth is `SystemSpec.tree_levels`."""
    spec = SystemSpec()
    for n in (1, 2, 4, 5, 16, 17, 64, 65, 192):
        assert Tree.build(n, 4).depth == spec.tree_levels(n), n
    assert Tree.build(6, 4).levels == (((0, 4), (4, 6)), ((0, 2),))
    rng = np.random.default_rng(0)
    v = [rng.standard_normal(1000).astype(np.float32) * 10.0 ** k for k in range(6)]
    kept = [x.copy() for x in v]
    expected = (((v[0] + v[1]) + v[2]) + v[3]) + (v[4] + v[5])
    assert np.array_equal(tree_sum(v, 4), expected)
    assert not np.array_equal(expected, ((((v[0] + v[5]) + v[1]) + v[4]) + v[2]) + v[3])
    assert all(np.array_equal(a, b) for a, b in zip(v, kept, strict=True))  # inputs intact


def test_the_global_loss_is_each_shards_mean_weighted() -> None:
    """Equal shards count 1/N each; with ignored positions (-100) a shard counts the
    positions a causal LM scores, so the weighted means are the global mean."""
    ids = torch.arange(16).view(4, 4)
    assert loss_weights(shard_batch({"input_ids": ids, "labels": ids}, 2)) == [0.5, 0.5]
    labels = ids.clone()
    labels[0, 2:] = -100
    w = loss_weights(shard_batch({"input_ids": ids, "labels": labels}, 2))
    assert w == [4 / 10, 6 / 10]


def test_bad_cluster_settings_are_one_line_errors_with_the_fix() -> None:
    with pytest.raises(ClusterError, match=r"--systems 0: a cluster needs at least 1 system"):
        check_systems(0)
    with pytest.raises(ClusterError, match="at most 192"):
        check_systems(193)
    with pytest.raises(ClusterError, match=r"--batch 2 cannot be split over 4 systems"):
        split_batch(2, 4)
    with pytest.raises(ClusterError, match=r"use a multiple of 4 \(4 or 8\)"):
        split_batch(6, 4)
    with pytest.raises(ClusterError, match="no Ray cluster answers there"):
        check_address(f"127.0.0.1:{_free_port()}")
    with pytest.raises(ClusterError, match="host:port"):
        check_address("nowhere")
    with pytest.raises(ClusterError, match="--systems 0"):
        Trainer(TinyMLP(), _batches(2), systems=0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TINY_LM = '''
import transformers


def tiny():
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=1,
                                  n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  attn_implementation="sdpa", use_cache=False)
    return transformers.GPT2LMHeadModel(cfg)
'''


def test_a_sweep_runs_as_ray_tasks_and_its_table_is_reproducible(local_ray, tmp_path) -> None:
    """A tiny GPT-2 on 1 and 4 systems as a Ray task: its rows equal the same point
    computed in this process (so the CSV is the same file run after run); a
    configuration that cannot be estimated is a row with its error. (The 72-configuration
    sweep of docs/clusters.md is the bigger check; one task keeps this test short.)"""
    from waferscale.report.sweep import COLUMNS, point_rows, sweep, to_csv

    path = tmp_path / "tiny.py"
    path.write_text(TINY_LM)
    model = f"{path}:tiny"
    seen: list[tuple[int, int]] = []
    rep = sweep([model], [8], [4, 1], specs=["wse2"],
                on_progress=lambda d, t: seen.append((d, t)))
    assert rep["configurations"] == 2 and rep["failed"] == 0 and seen == [(0, 1), (1, 1)]
    assert [r["systems"] for r in rep["rows"]] == [1, 4]
    here = [{c: r.get(c, "") for c in COLUMNS}
            for r in point_rows(model, 8, "wse2", 1, "fp16", "adamw", [1, 4])]
    assert to_csv(rep["rows"]) == to_csv(here)
    assert rep["rows"][1]["samples_per_second"] == pytest.approx(
        4 * rep["rows"][0]["samples_per_second"])
    bad = point_rows(model, 8, "wse2", 1, "fp8", "adamw", [1, 2])
    assert len(bad) == 2 and all("fp8" in r["error"] for r in bad)
    torch._dynamo.reset()
