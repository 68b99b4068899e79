"""Weight-streaming mode: every stage on the whole wafer, weights streamed from MemoryX.

Checks the timeline against hand-computed schedules, that a model in this mode computes
eager's values (forward) and eager's gradients (a training step through torch.compile),
that the training graphs' parameters are counted as streamed weights and their gradients
as streamed out, and the activation policy."""

from __future__ import annotations

import math

import pytest
import torch

import waferscale
from waferscale import backend
from waferscale.compiler.errors import CompileError
from waferscale.compiler.streaming import StreamPlan, StreamStage
from waferscale.errors import SpecError
from waferscale.hardware.spec import custom_spec, get_spec
from waferscale.hardware.system import CS2_SYSTEM, SystemSpec
from waferscale.report.training import train_estimate
from waferscale.runtime.weight_streaming import (
    activation_policy,
    recompute_bytes,
    recompute_plan,
    timeline,
    training_report,
)

SPEC = get_spec("wse2")
#: 1 GB/s each way, no SwarmX latency: schedules in round numbers.
SLOW = SystemSpec(stream_bits_per_s=8e9, swarmx_level_latency_s=1e-30,
                  memoryx_update_bytes_per_s=30e9)


def _stage(name: str, seconds: float, weights: float, grads: float = 0) -> StreamStage:
    return StreamStage(name, "gemm", "", seconds * SPEC.clock_hz, int(weights), int(grads),
                       True)


def _plan(*stages: StreamStage, saved: int = 0, working: int = 0) -> StreamPlan:
    return StreamPlan(tuple(stages), saved, working, SPEC.pes * SPEC.sram_bytes)


def test_weights_of_the_next_stage_load_during_this_one() -> None:
    """Three stages of 1 s compute and 1 GB (1 s) of weights: the first waits for its
    weights, the next ones' weights arrive while the previous one computes (double
    buffering): 1 + 3 x 1 s, compute-bound after the first."""
    t = timeline(_plan(*(_stage(f"s{i}", 1.0, 1e9) for i in range(3))), SPEC, SLOW)
    assert t.seconds == pytest.approx(4.0)
    assert [r["start_s"] for r in t.rows] == pytest.approx([1.0, 2.0, 3.0])


def test_weight_bound_stages_wait_for_their_weights() -> None:
    """2 GB of weights (2 s) per 0.5 s stage: the link is the bound, 3 x 2 s + 0.5 s."""
    t = timeline(_plan(*(_stage(f"s{i}", 0.5, 2e9) for i in range(3))), SPEC, SLOW)
    assert t.seconds == pytest.approx(6.5)
    assert t.bound == "weight I/O"
    assert [r["bound"] for r in t.rows] == ["weight I/O"] * 3


def test_double_buffer_holds_at_most_two_stages_of_weights() -> None:
    """A long stage blocks the weights of the stage two ahead (its buffer is still in use):
    s0 0.1 GB/10 s, s1 and s2 tiny compute with 1 GB each. s2's weights may only start
    once s0 ends (t = 10.1), so s2 starts at 11.1, not at 2.1."""
    t = timeline(_plan(_stage("s0", 10.0, 1e8), _stage("s1", 1e-3, 1e9),
                       _stage("s2", 1e-3, 1e9)), SPEC, SLOW)
    assert t.rows[2]["start_s"] == pytest.approx(10.1 + 1.0)


def test_gradients_stream_out_and_the_optimizer_overlaps() -> None:
    """Backward: each stage sends 1 GB of gradients (1 s) after it ends; MemoryX's AdamW
    step follows each stage's gradients (1 GB of 2-byte gradients = 5e8 parameters x 30 B
    at 30 GB/s = 0.5 s); the step ends after the last update."""
    t = timeline(_plan(_stage("b0", 1.0, 0, 1e9), _stage("b1", 1.0, 0, 1e9)), SPEC, SLOW)
    # compute ends at 2; gradients out: [1, 2], [2, 3]; updates [2, 2.5], [3, 3.5]
    assert t.seconds == pytest.approx(3.5)
    assert t.update_exposed_seconds == pytest.approx(0.5)


def test_activation_policy_keeps_what_fits_and_offloads_the_rest() -> None:
    wafer = SPEC.pes * SPEC.sram_bytes
    assert [p for p, _ in activation_policy(_plan(saved=wafer // 4, working=wafer // 2))] \
        == ["keep"]
    # no per-layer figures: recomputing cannot be sized, so offload is what is left
    assert [p for p, _ in activation_policy(_plan(saved=wafer // 2 + 1,
                                                  working=wafer // 2))] == ["offload"]


def _layered(saved_per_layer: int, input_per_layer: int, layers: int = 4,
             seconds: float = 1.0) -> tuple[StreamPlan, StreamPlan]:
    """A forward and a backward of ``layers`` layers, one stage each way per layer."""
    fw = StreamPlan(tuple(StreamStage(f"f{i}", "gemm", f"layer {i}", seconds * SPEC.clock_hz,
                                      int(1e6), 0, True) for i in range(layers)),
                    saved_per_layer * layers, 0, SPEC.pes * SPEC.sram_bytes,
                    tuple((f"layer {i}", saved_per_layer) for i in range(layers)),
                    tuple((f"layer {i}", input_per_layer) for i in range(layers)))
    bw = StreamPlan(tuple(StreamStage(f"b{i}", "gemm", f"layer {i}", 2 * seconds
                                      * SPEC.clock_hz, int(1e6), int(1e6), True)
                          for i in reversed(range(layers))), 0, 0, SPEC.pes * SPEC.sram_bytes)
    return fw, bw


def test_recompute_keeps_layer_inputs_and_reruns_each_layer_forward() -> None:
    """Too many activations for the wafer but each layer's input fits: the backward runs
    each layer's forward stage again right before the layer's own backward stage; the
    step takes one more forward's compute (4 x 10 ms here) and keeps 4 inputs + one
    layer."""
    wafer = SPEC.pes * SPEC.sram_bytes
    fw, bw = _layered(wafer // 3, wafer // 100, seconds=0.01)
    policies = [p for p, _ in activation_policy(fw, bw)]
    assert policies == ["recompute", "offload"]
    again = recompute_plan(fw, bw)
    assert [s.name for s in again.stages] == ["recompute f3", "b3", "recompute f2", "b2",
                                             "recompute f1", "b1", "recompute f0", "b0"]
    assert all(s.grad_bytes == 0 for s in again.stages if s.name.startswith("recompute"))
    assert recompute_bytes(fw) == 4 * (wafer // 100) + wafer // 3
    rep = training_report(fw, bw, SPEC, CS2_SYSTEM, batch=1, tokens=1)
    # offloading 4/3 of the wafer's SRAM takes ~0.36 s each way at 150 GB/s; recomputing
    # costs 4 x 10 ms of compute
    assert rep["activation_policy"] == "recompute"
    assert rep["backward_seconds"] == pytest.approx(4 * 0.03, rel=0.05)
    assert "offload" in rep["activation_policy_reason"]


def test_offload_when_even_one_layer_does_not_fit() -> None:
    wafer = SPEC.pes * SPEC.sram_bytes
    fw, bw = _layered(wafer, wafer // 100)
    assert [p for p, _ in activation_policy(fw, bw)] == ["offload"]
    assert training_report(fw, bw, SPEC, CS2_SYSTEM, batch=1, tokens=1)[
        "activation_policy"] == "offload"


def test_system_spec_checks_itself() -> None:
    with pytest.raises(SpecError, match="stream_bits_per_s"):
        SystemSpec(stream_bits_per_s=math.nan)
    with pytest.raises(SpecError, match="swarmx_fanout"):
        SystemSpec(swarmx_fanout=1)
    assert SystemSpec().tree_levels(1) == 1
    assert SystemSpec().tree_levels(16) == 2 and SystemSpec().tree_levels(17) == 3


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(32, 64)
        self.b = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.gelu(self.a(x)))


def test_forward_in_weight_streaming_mode_matches_eager() -> None:
    """The same kernels on the whole (capped) wafer: eager's values; every weight byte is
    streamed in once, and the report is the streaming timeline."""
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(24, 32)
    cm = waferscale.compile(m, (x,), mode="weight_streaming", max_side=16)
    assert cm.mode == "weight_streaming"
    assert float((cm(x) - m(x)).abs().max()) < 1e-4
    rep = cm.report()
    ws = rep["weight_streaming"]
    assert ws["samples_per_second"] > 0 and rep["samples_per_second"] == ws["samples_per_second"]
    params = sum(p.numel() for p in m.parameters())
    assert sum(r["weight_bytes"] for r in ws["forward"]["stages"]) == 4 * params


@pytest.mark.parametrize("mode", ["pipelined", "weight_streaming"])
def test_seconds_per_batch_is_the_reports(mode: str) -> None:
    """`CompiledModel.seconds_per_batch` (what a training step reads for its samples/s)
    is the report's time per batch, to the bit, before and after a run."""
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(24, 32)
    cm = waferscale.compile(m, (x,), mode=mode, max_side=16)
    for _ in range(2):
        rep = cm.report()
        ws = rep.get("weight_streaming")
        expected = ws["seconds_per_batch"] if ws else rep["period_cycles"] / rep["clock_hz"]
        assert cm.seconds_per_batch() == expected > 0
        cm(x)


def test_training_step_in_weight_streaming_mode_gives_eager_gradients() -> None:
    """torch.compile with options={"mode": "weight_streaming"}: the forward and backward
    graphs run on the wafer in this mode and the gradients are eager's."""
    torch.manual_seed(1)
    m, ref = MLP(), MLP()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(24, 32)
    torch._dynamo.reset()
    before = len(backend.COMPILED)
    step = torch.compile(m, backend="waferscale",
                         options={"mode": "weight_streaming", "max_side": 16})
    step(x).square().mean().backward()
    ref(x).square().mean().backward()
    modes = {c.program.mode for c in backend.COMPILED[before:]}
    torch._dynamo.reset()
    assert modes == {"weight_streaming"}
    for p, q in zip(m.parameters(), ref.parameters(), strict=True):
        assert float((p.grad - q.grad).abs().max()) < 1e-5


def test_training_estimate_counts_parameters_as_streamed_weights() -> None:
    """On meta weights: the forward streams every parameter in once, the backward streams
    the weights it needs and sends every parameter's gradient out once."""
    m = MLP().to("meta")
    x = torch.empty(24, 32, device="meta")

    class WithLoss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x).square().mean()

    rep = train_estimate(WithLoss(), {"x": x}, batch=24, tokens=24, grad_elem_bytes=4)
    params = sum(p.numel() for p in m.parameters())
    fw = rep["forward"]["stages"]
    assert sum(r["weight_bytes"] for r in fw) == 4 * params
    assert rep["gradient_bytes"] == 4 * params
    assert rep["samples_per_second"] > 0 and rep["activation_policy"] == "keep"
    assert rep["graphs"] == {"forward": 1, "backward": 1}


def test_unknown_backend_option_is_a_clear_error() -> None:
    with pytest.raises(CompileError, match="backend options"):
        backend._options({"modee": "weight_streaming"})
    with pytest.raises(CompileError, match="mode="):
        backend._options({"mode": "streaming"})


def test_a_stage_too_big_for_the_whole_wafer_is_a_typed_error() -> None:
    """A toy 2 x 2 wafer cannot hold one [256, 256] weight even alone."""
    m = torch.nn.Linear(256, 256)
    with pytest.raises(CompileError, match="weight-streaming mode either"):
        waferscale.compile(m, (torch.randn(8, 256),), spec=custom_spec(rows=2, cols=2),
                           mode="weight_streaming")


def test_meta_training_step_keeps_attention_and_its_backward_on_the_wafer() -> None:
    """A meta-device GPT-NeoX is traced on fake CPU tensors: SDPA stays the fused flash
    attention (the meta device would decompose it into a [heads x seq, seq] score matrix)
    and its backward runs on the attention-backward kernel, not on the host."""
    from waferscale.models import load_model

    m, example, _ = load_model("genslm-25m", seq=64, batch=1, meta=True, layers=1)
    ids = example["input_ids"].to("meta")
    rep = train_estimate(m, {"input_ids": ids, "labels": ids}, batch=1, tokens=64)
    kinds = {s["kind"] for g in ("forward", "backward") for s in rep[g]["stages"]}
    assert {"attention", "attention_backward"} <= kinds
    assert not any("attention" in f["op"] for f in rep["fallback_ops"])
    # every parameter's gradient leaves the wafer once (fp32 model: 4 bytes each)
    assert rep["gradient_bytes"] == 4 * rep["parameters"]


def test_systems_scale_the_streaming_figures_and_are_checked() -> None:
    """``systems=N`` (waferscale.compile and the backend's options): N systems data parallel
    on one SwarmX tree, the same step time plus the tree's latency."""
    torch.manual_seed(0)
    m = MLP().eval()
    x = torch.randn(24, 32)
    one = waferscale.compile(m, (x,), mode="weight_streaming", max_side=16).report()
    four = waferscale.compile(m, (x,), mode="weight_streaming", max_side=16,
                              systems=4).report()
    assert four["weight_streaming"]["systems"] == 4
    ratio = four["samples_per_second"] / one["samples_per_second"]
    assert 3.0 < ratio <= 4.0
    with pytest.raises(CompileError, match="systems=0"):
        waferscale.compile(m, (x,), mode="weight_streaming", max_side=16, systems=0)
    torch._dynamo.reset()
    before = len(backend.COMPILED)
    torch.compile(m, backend="waferscale",
                  options={"mode": "weight_streaming", "max_side": 16, "systems": 2})(x)
    assert backend.COMPILED[before].report()["weight_streaming"]["systems"] == 2
    torch._dynamo.reset()


def test_a_step_that_fits_no_wafer_names_the_longest_sequence_that_does() -> None:
    """Bad input: activations that do not fit even one stage at a time, with recompute or
    offload; the typed error names the stages, their bytes and the longest --seq that
    fits (found by planning shorter sequences)."""
    import dataclasses

    from waferscale.compiler.errors import FitError
    from waferscale.report.training import train_report

    tiny = dataclasses.replace(get_spec("wse2"), rows=24, cols=24, sram_bytes=8192,
                               name="tiny")
    with pytest.raises(FitError, match=r"--seq 2048.*longest --seq that fits is between "
                                       r"64 and 127 \(use --seq 64\)"):
        train_report("genslm-25m", seq=2048, batch=1, spec=tiny)  # type: ignore[arg-type]
    with pytest.raises(CompileError, match="on_error"):
        backend._options({"on_error": "ignore"})
