"""The GPU-cluster model: config objects check themselves, memory formulas against hand
counts, the out-of-memory path, the time model's mechanisms, and the G1-G12 validation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from waferscale.baselines.errors import GpuConfigError
from waferscale.baselines.gpu import (
    ClusterSpec,
    Parallel,
    TransformerShape,
    estimate,
    get_gpu,
    get_node,
    get_stack,
    gpt,
    gpu_memory,
    layer_activations,
    model_shape,
    node_for,
    run_stack,
    validation_report,
)
from waferscale.baselines.gpu.hardware import A100_40GB, DGX_A100, POLARIS, GpuSpec, NodeSpec
from waferscale.baselines.gpu.memory import (
    backward_working_set,
    stored_per_layer,
    usable_bytes,
)
from waferscale.baselines.gpu.step import collective_time, flash_time, gemm_time, step_time
from waferscale.baselines.gpu.validate import GOAL, case_rows

GIB = 2**30
TUNED = get_stack("tuned")
GENSLM = get_stack("genslm-2022")
MEGATRON = get_stack("megatron-2021")


# -- config objects -----------------------------------------------------------------------
@pytest.mark.parametrize("change", [{"peak_flops": -1.0}, {"sms": 0}, {"gemm_efficiency": 1.5},
                                    {"flash_efficiency": ()},
                                    {"flash_efficiency": (("fa9", 0.5),)}, {"name": ""}])
def test_gpu_spec_checks_itself(change):
    with pytest.raises(GpuConfigError):
        replace(A100_40GB, **change)


@pytest.mark.parametrize("change", [{"gpus_per_node": 0}, {"nics_per_node": 1.5},
                                    {"nic_bandwidth": 0.0}, {"nvlink_efficiency": 0.0},
                                    {"collective_sms": 500}])
def test_node_spec_checks_itself(change):
    with pytest.raises(GpuConfigError):
        replace(POLARIS, **change)


def test_cluster_and_presets():
    with pytest.raises(GpuConfigError):
        ClusterSpec(POLARIS, 0)
    assert ClusterSpec(POLARIS, 3).gpus == 12
    with pytest.raises(GpuConfigError, match="unknown GPU"):
        get_gpu("v100")
    with pytest.raises(GpuConfigError, match="unknown node"):
        get_node("summit")
    assert node_for("a100-80gb").name == "dgx-a100"
    n = node_for("a100-40gb", gpus_per_node=8)
    assert n.gpus_per_node == 8 and n.nics_per_node == 4 and n.family == "polaris"
    assert node_for("h100", "polaris").gpu.name == "h100"


@pytest.mark.parametrize("kw", [
    dict(tp=0), dict(global_batch=5, dp=2), dict(zero=4), dict(recompute="some"),
    dict(zero=3, pp=2), dict(offload_params=True, zero=2)])
def test_parallel_checks_itself(kw):
    with pytest.raises(GpuConfigError):
        Parallel(**kw)


def test_layout_must_match_model_and_cluster():
    shape = gpt("g", 24, 2304, 24)
    cluster = ClusterSpec(DGX_A100, 1)
    with pytest.raises(GpuConfigError, match="uses 4 GPUs"):
        estimate(shape, 2048, cluster, MEGATRON, Parallel(tp=4))
    with pytest.raises(GpuConfigError, match="does not divide"):
        estimate(gpt("g", 20, 2304, 24), 2048, cluster, MEGATRON,
                 Parallel(pp=8, global_batch=8))
    with pytest.raises(GpuConfigError, match="heads"):
        estimate(gpt("g", 24, 2304, 18), 2048, cluster, MEGATRON, Parallel(tp=4, dp=2,
                                                                           global_batch=2))


def test_shapes_check_themselves():
    with pytest.raises(GpuConfigError, match="heads"):
        TransformerShape("x", layers=2, hidden=100, heads=3, ffn=400, vocab=10)
    with pytest.raises(GpuConfigError, match="positions"):
        gpt("g", 2, 64, 2, seq=1024).check_seq(2048)
    with pytest.raises(GpuConfigError):
        get_stack("nope")


def test_genslm_shapes_come_from_the_published_configs():
    assert model_shape("genslm-2.5b").params == 2_533_931_008
    assert model_shape("genslm-25m").params == 25_290_752
    big = model_shape("genslm-25b")
    assert big.hidden == 8192 and big.recompute_hint == "full"     # the workload's correction
    assert model_shape("genslm-2.5b").attention_dropout == 0.0    # *_prob keys are not NeoX's
    # Megatron's count 12 l h^2 (1 + 13/(12h) + (V + s)/(12 l h)) for the 175B of G7
    g = gpt("g", 96, 12288, 96)
    megatron = 12 * 96 * 12288**2 * (1 + 13 / (12 * 12288) + (51200 + 2048) / (12 * 96 * 12288))
    assert g.params == pytest.approx(megatron, rel=1e-3)


def test_megatron_flop_count_is_eq3():
    g = gpt("g", 24, 2304, 24)
    s, L, h, v = 2048, 24, 2304, 51200
    eq3 = 96 * s * L * h**2 * (1 + s / (6 * h) + v / (16 * L * h))
    assert g.megatron_flops_per_token(s, recompute=True) * s == pytest.approx(eq3)
    appendix = 72 * s * L * h**2 * (1 + s / (6 * h) + v / (12 * h * L))
    assert g.model_flops_per_token(s) * s == pytest.approx(appendix)


# -- memory formulas against hand counts -----------------------------------------------------
def test_korthikanti_activations_per_layer():
    g = gpt("g", 24, 2304, 24)              # ffn 4h, dropout on
    s, b, h, a = 2048, 1, 2304, 24
    sbh = s * b * h
    parts = layer_activations(g, s, b)
    assert parts["sbh"] == 34 * sbh
    assert parts["scores"] == 5 * a * s * s * b
    t = 8                                   # tensor parallel: sbh (10 + 24/t) + 5 a s^2 b / t
    parts = layer_activations(g, s, b, tp=t)
    assert parts["sbh"] == pytest.approx(sbh * (10 + 24 / t))
    assert parts["scores"] == pytest.approx(5 * a * s * s * b / t)
    parts = layer_activations(g, s, b, tp=t, sequence_parallel=True)
    assert parts["sbh"] == pytest.approx(34 * sbh / t)
    flash = layer_activations(g, s, b, tp=t, attention="flash")
    assert flash["scores"] == pytest.approx(4 * a * s * b / t)   # fp32 log-sum-exp only


def test_genslm_activations_count_the_real_ffn():
    g = model_shape("genslm-2.5b")          # h 3840, ffn 4096, 32 heads, no dropout
    s = 10240
    sbh, sbf = s * 3840, s * 4096
    parts = layer_activations(g, s, 1, attention="eager")
    # no dropout masks: QKV in 2, Q K 4, V 2, proj in 2, MLP in 2, fc1 + GeLU 4 sbf, LN 4
    assert parts["sbh"] == 16 * sbh + 4 * sbf == 796_917_760
    assert parts["scores"] == 2 * 32 * s * s == 6_710_886_400


def test_recompute_modes():
    g = gpt("g", 24, 2304, 24)
    s, b, h, a = 2048, 2, 2304, 24
    kw = dict(tp=1, sequence_parallel=False, attention="fused-softmax")
    assert stored_per_layer(g, s, b, recompute="full", **kw) == 2 * s * b * h
    assert stored_per_layer(g, s, b, recompute="selective", **kw) == 34 * s * b * h
    assert stored_per_layer(g, s, b, recompute="none", **kw) == 34 * s * b * h \
        + 5 * a * s * s * b
    # backward of a fully recomputed layer rebuilds it and holds two s x s gradients
    assert backward_working_set(g, s, b, recompute="full", **kw) == \
        34 * s * b * h + 5 * a * s * s * b + 4 * a * s * s * b


@pytest.mark.parametrize("zero, params, grads, optim", [
    (0, 2, 2, 12), (1, 2, 2, 3), (2, 2, 0.5, 3), (3, 0.5, 0.5, 3)])
def test_zero_stages_shard_model_states(zero, params, grads, optim):
    g = TransformerShape("tiny", layers=2, hidden=64, heads=2, ffn=256, vocab=100)
    psi = g.params
    mem = gpu_memory(g, 16, Parallel(dp=4, global_batch=4, zero=zero), GENSLM, POLARIS)
    terms = {t.name: t.bytes for t in mem.terms}
    assert terms["parameters (fp16)"] == pytest.approx(params * psi)
    assert terms["gradients (fp16)"] == pytest.approx(grads * psi)
    assert terms["optimizer states (fp32 master, momentum, variance)"] == pytest.approx(
        optim * psi)


def test_usable_memory_and_offload():
    assert usable_bytes(40 * GIB) == pytest.approx((40 - 1.5) * GIB * 0.95)
    g = model_shape("genslm-25b")
    par = Parallel(dp=4, global_batch=4, zero=3, recompute="full", offload_optimizer=True,
                   offload_params=True)
    mem = gpu_memory(g, 2048, par, GENSLM, POLARIS)
    terms = {t.name: t.bytes for t in mem.terms}
    assert terms["parameters (fp16)"] == 0 and terms[
        "optimizer states (fp32 master, momentum, variance)"] == 0
    assert mem.host_total == pytest.approx(18 * g.params, rel=1e-6)   # 16 + 2 bytes / param


# -- the out-of-memory path ---------------------------------------------------------------
def test_genslm_2022_runs_out_of_memory_at_10240_with_its_reason():
    est = run_stack(model_shape("genslm-2.5b"), 10240, ClusterSpec(POLARIS, 128), GENSLM)
    assert not est.fits and est.step is None
    assert est.samples_per_second is None and est.seconds_per_step is None
    assert est.tflops_per_gpu() is None
    reason = est.oom_reason
    assert reason.startswith("out of memory on a100-40gb")
    assert "activations (stored)" in reason and "10240 x 10240" in reason
    d = est.to_dict()
    assert d["samples_per_second"] is None and d["oom_reason"] == reason


def test_tuned_stack_fits_the_same_run():
    est = run_stack(model_shape("genslm-2.5b"), 10240, ClusterSpec(POLARIS, 128), TUNED)
    assert est.fits and est.oom_reason is None
    assert est.samples_per_second > 0 and est.memory.total <= est.memory.usable
    assert 0 < est.mfu < 1


def test_nothing_fits_reports_the_smallest_need():
    est = run_stack(model_shape("genslm-25b"), 10240, ClusterSpec(POLARIS, 1), TUNED)
    assert not est.fits and "out of memory" in est.oom_reason


def test_host_memory_can_break_offload():
    g = model_shape("genslm-25b")
    small = replace(POLARIS, host_memory_bytes=64e9)
    par = Parallel(dp=4, global_batch=4, zero=3, recompute="full", offload_optimizer=True,
                   offload_params=True)
    est = estimate(g, 512, ClusterSpec(small, 1), GENSLM, par)
    assert not est.fits and "host memory" in est.oom_reason


# -- time model mechanisms ----------------------------------------------------------------
def test_wave_quantization_and_small_gemms():
    gpu = A100_40GB
    full = gemm_time(gpu, 128 * 27, 128 * 4, 8192)        # 108 tiles: exactly one wave
    spill = gemm_time(gpu, 128 * 27 + 1, 128 * 4, 8192)   # 112 tiles: a second, idle wave
    assert spill / full == pytest.approx(216 / 112, rel=0.01)
    big = gemm_time(gpu, 8192, 8192, 8192)
    assert 2 * 8192**3 / big == pytest.approx(gpu.peak_flops * gpu.gemm_efficiency, rel=0.01)
    tiny = gemm_time(gpu, 64, 64, 64)
    assert tiny == gpu.min_kernel_seconds                 # launch-bound


def test_flash_pads_head_dim_in_first_generation():
    gpu = A100_40GB
    assert flash_time(gpu, 1e12, 96, "fa1") == pytest.approx(
        flash_time(gpu, 1e12, 128, "fa1") * 128 / 96)
    assert flash_time(gpu, 1e12, 96, "fa2") < flash_time(gpu, 1e12, 96, "fa1")
    assert gpu.flash_kernel("fa3") == "fa2"               # newest the A100 runs


def test_collectives():
    node = DGX_A100
    assert collective_time(node, "all_reduce", 1e9, 1, 8) == 0.0
    inside = collective_time(node, "all_reduce", 1e9, 8, 8)
    assert inside == pytest.approx(2 * 7 / 8 * 1e9 / node.nvlink_effective, rel=0.01)
    ring = collective_time(node, "all_gather", 1e9, 64, 8, "ring")
    per_gpu = collective_time(node, "all_gather", 1e9, 64, 8, "per-gpu")
    assert per_gpu / ring == pytest.approx(8, rel=0.05)   # one port vs the node's eight


def test_pipeline_bubble_shrinks_with_micro_batches():
    g = gpt("g", 24, 2304, 24, vocab=128)                 # no heavy logits on the last stage
    cluster = ClusterSpec(DGX_A100, 1)
    few = step_time(g, 2048, Parallel(tp=2, pp=4, global_batch=4), MEGATRON, cluster)
    many = step_time(g, 2048, Parallel(tp=2, pp=4, global_batch=64), MEGATRON, cluster)
    assert few.pipeline_bubble / few.seconds > 0.35
    assert many.pipeline_bubble / many.seconds < 0.06


def test_causal_flash_halves_attention_work():
    g = gpt("g", 4, 1024, 8, seq=65536)
    cluster = ClusterSpec(DGX_A100, 1)
    par = Parallel(tp=8, recompute="selective")
    causal = step_time(g, 65536, par, TUNED, cluster)
    full = step_time(g, 65536, par, replace(TUNED, name="x", causal_kernel=False), cluster)
    assert causal.executed_flops_per_gpu < 0.7 * full.executed_flops_per_gpu
    assert causal.seconds < full.seconds


def test_zero3_is_bound_by_its_gathers_at_scale():
    g = gpt("g", 96, 12288, 96)
    cluster = ClusterSpec(DGX_A100, 192)
    st = get_stack("deepspeed-zero3-2021")
    t = step_time(g, 2048, Parallel(dp=1536, global_batch=1536, zero=3, recompute="full"),
                  st, cluster)
    gather = 2 * g.params * 1535 / 1536 / (25e9 * 0.9)   # one port per GPU
    assert t.zero3_communication == pytest.approx(4 * gather, rel=0.02)
    assert t.seconds == pytest.approx(4 * gather, rel=0.05)


# -- validation ---------------------------------------------------------------------------
def test_validation_meets_its_goal_from_configuration_alone():
    rep = validation_report()
    s = rep["summary"]
    cases = {r["case"] for r in rep["rows"]}
    assert cases == {f"G{i}" for i in range(1, 13)}
    assert s["numeric_rows"] >= 20 and s["unpredicted"] == []
    assert s["within_goal"] == s["numeric_rows"], [
        (r["case"], r["metric"], r["error"]) for r in rep["rows"]
        if r["error"] is not None and abs(r["error"]) > GOAL]
    assert s["max_abs_error"] <= GOAL and s["median_abs_error"] < 0.06
    for r in rep["rows"]:
        if r["error"] is not None:
            assert math.isfinite(r["error"])
            assert r["error"] == pytest.approx(r["predicted"] / r["measured"] - 1)


def test_validation_rows_name_their_layout():
    for row in case_rows():
        assert row.note and row.unit
    g11 = [r for r in case_rows() if r.case == "G11" and r.unit == "verdict"]
    assert any(r.measured == "OOM" and r.predicted == "OOM" for r in g11)


def test_gpu_spec_is_frozen():
    with pytest.raises(AttributeError):
        A100_40GB.peak_flops = 1.0  # type: ignore[misc]
    assert isinstance(A100_40GB, GpuSpec) and isinstance(POLARIS, NodeSpec)
