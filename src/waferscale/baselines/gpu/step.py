"""Time of one training step on a GPU cluster, from the model's shapes and the layout.

Every operation of a layer is timed from its size (docs/gpu.md, "FLOPs and time"):

- A GEMM of ``m x n x k`` runs at ``gemm_efficiency`` of peak on the fraction of the GPU its
  output tiles keep busy (128 x 128 tiles spread over the SMs in waves: a last, partial wave
  idles the rest; NVIDIA's tile/wave quantization), and never faster than its operands can
  stream from HBM (roofline); no kernel takes less than ``min_kernel_seconds``. Small
  matrices are slow by these two mechanisms, not by a fitted curve.
- Softmax, layer norm, GeLU, dropout and residual adds are memory-bound: their bytes over
  ``memory_efficiency`` of HBM bandwidth. How many bytes depends on the stack (fused
  Megatron kernels read and write each tensor once; eager PyTorch runs one kernel per
  operation).
- FlashAttention runs the FLOPs it executes (half with a causal kernel; backward 2.5x the
  forward, as it recomputes the scores) at ``flash_efficiency`` of peak.
- Collectives are ring collectives: an all-reduce moves ``2 (n-1)/n`` of the buffer per
  rank, an all-gather or reduce-scatter ``(n-1)/n``, at NVLink speed inside a node and at
  the network share the group owns across nodes, plus a latency per ring step.
- 1F1B pipeline: a step takes ``(m - 1) x`` the slowest stage plus the sum of the stages
  (the bubble is ``(p - 1)`` stage times when stages are equal). ZeRO-3 gathers every layer's
  parameters in the forward pass, again in the recompute and in the backward pass, and
  reduce-scatters its gradients, per micro-batch (Rajbhandari et al. 2021, ZeRO-Infinity's
  volume analysis); with prefetch the gathers overlap the computation, the reduce-scatter
  only where the stack overlaps gradient reduction. A collective running beside computation
  holds some SMs (NCCL runs one thread block per channel), slowing the computation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from waferscale.baselines.gpu.config import Parallel, Stack
from waferscale.baselines.gpu.hardware import FLASH_HEAD_DIMS, ClusterSpec, GpuSpec, NodeSpec
from waferscale.baselines.gpu.memory import stage_params
from waferscale.baselines.gpu.shapes import TransformerShape

TILE = 128
#: FlashAttention's backward executes 2.5x the forward FLOPs (5 matmuls against 2).
FLASH_BACKWARD = 2.5
#: Bytes per element of each streaming operation (read + write + 1-byte masks).
SOFTMAX_BYTES = {"fused-softmax": (4.0, 6.0), "eager": (8.0, 10.0)}
DROPOUT_BYTES = (5.0, 5.0)
#: DeepSpeed's CPU Adam reaches about this share of the host's memory bandwidth.
HOST_ADAM_EFFICIENCY = 0.5
#: Bytes an Adam step streams per parameter: fp32 master, momentum, variance read and
#: written, the gradient read, the fp16 copy written.
ADAM_BYTES = 28.0


# -- one operation ------------------------------------------------------------------------
def gemm_time(gpu: GpuSpec, m: float, n: float, k: float, batch: float = 1) -> float:
    """Seconds of a (batched) ``m x k`` by ``k x n`` GEMM in 16-bit."""
    flops = 2.0 * m * n * k * batch
    tiles = math.ceil(m / TILE) * math.ceil(n / TILE) * batch
    waves = math.ceil(tiles / gpu.sms)
    busy = tiles / (waves * gpu.sms)
    compute = flops / (gpu.peak_flops * gpu.gemm_efficiency * busy)
    memory = 2.0 * (m * k + k * n + m * n) * batch / (gpu.hbm_bandwidth * gpu.memory_efficiency)
    return max(compute, memory, gpu.min_kernel_seconds)


def stream_time(gpu: GpuSpec, nbytes: float, kernels: int = 1) -> float:
    """Seconds of memory-bound kernels moving ``nbytes`` in all."""
    return max(nbytes / (gpu.hbm_bandwidth * gpu.memory_efficiency),
               kernels * gpu.min_kernel_seconds)


def flash_time(gpu: GpuSpec, flops: float, head_dim: int, kernel: str = "latest") -> float:
    """Seconds of FlashAttention executing ``flops``: a head dimension without its own kernel
    runs the next larger one, so the work grows by the padding."""
    generation = gpu.flash_kernel(kernel)
    dims = FLASH_HEAD_DIMS[generation]
    padded = next((d for d in dims if d >= head_dim), head_dim)
    work = flops * padded / head_dim
    return max(work / (gpu.peak_flops * gpu.flash(generation)), gpu.min_kernel_seconds)


def collective_time(node: NodeSpec, op: str, nbytes: float, group: int, ranks_per_node: int,
                    algorithm: str = "ring") -> float:
    """Seconds of one collective on a buffer of ``nbytes`` (the full, unsharded buffer) over
    ``group`` ranks, ``ranks_per_node`` of them in each node.

    Inside one node: NVLink. Across nodes, ``ring``: the ring enters each node once per
    channel, so the node-crossing traffic spreads over the ports owned by the group's GPUs
    in that node; ``per-gpu``: every rank is bounded by its own share of the ports.
    """
    if group <= 1 or nbytes <= 0:
        return 0.0
    share = (2.0 if op == "all_reduce" else 1.0) * (group - 1) / group
    traffic = share * nbytes
    per_node = max(1, min(ranks_per_node, group))
    nodes = math.ceil(group / per_node)
    steps = (2 if op == "all_reduce" else 1)
    if nodes == 1:
        bandwidth = node.nvlink_effective
        latency = steps * node.nvlink_latency * math.log2(group + 1)
    else:
        port_share = node.node_network_effective / node.gpus_per_node
        net = port_share * (per_node if algorithm == "ring" else 1)
        bandwidth = min(node.nvlink_effective, net)
        latency = steps * (node.nvlink_latency * math.log2(per_node + 1)
                           + node.network_latency * (nodes - 1))
    return latency + traffic / bandwidth


def overlapped(compute: float, comm: float, gpu: GpuSpec, node: NodeSpec) -> float:
    """Seconds of ``compute`` with ``comm`` running beside it. The collective's kernels
    hold ``node.collective_sms`` SMs while they run, so the computation proceeds at
    ``1 - collective_sms / sms`` of its speed until the collective ends."""
    if comm <= 0:
        return compute
    rate = 1.0 - node.collective_sms / gpu.sms
    done = comm * rate
    return comm if done >= compute else comm + (compute - done)


# -- one layer ----------------------------------------------------------------------------
@dataclass
class LayerCost:
    """Seconds of one layer for one micro-batch on one GPU, and its executed FLOPs."""

    forward: float
    backward: float
    attention_forward: float       # the attention core alone (what selective recompute redoes)
    flops_forward: float
    flops_backward: float
    flops_attention_forward: float
    tp_collective: float           # one all-reduce-sized collective of the activations
    parts: dict[str, float] = field(default_factory=dict)


def layer_cost(shape: TransformerShape, seq: int, par: Parallel, stack: Stack,
               node: NodeSpec) -> LayerCost:
    gpu = node.gpu
    t, b, s = par.tp, par.micro_batch, seq
    h, f, a, dh = shape.hidden, shape.ffn, shape.heads, shape.head_dim
    tokens = s * b
    rep = t if stack.sequence_parallel else 1
    # (m, n, k): output m x n, inner k. QKV, output projection, fc1, fc2.
    gemms = [(tokens, 3 * h / t, h), (tokens, h, h / t), (tokens, f / t, h), (tokens, h, f / t)]
    fwd_gemm = sum(gemm_time(gpu, m, n, k) for m, n, k in gemms)
    bwd_gemm = sum(gemm_time(gpu, m, k, n) + gemm_time(gpu, k, n, m) for m, n, k in gemms)
    gemm_flops = sum(2.0 * m * n * k for m, n, k in gemms)

    heads = b * a / t
    if stack.attention == "flash":
        att_flops = shape.attention_flops_per_token(s, causal=stack.causal_kernel) \
            * tokens / t
        att_fwd = flash_time(gpu, att_flops, dh, stack.flash_kernel)
        att_bwd = flash_time(gpu, FLASH_BACKWARD * att_flops, dh, stack.flash_kernel)
        att_bwd_flops = FLASH_BACKWARD * att_flops
    else:
        att_flops = 4.0 * s * s * dh * heads
        bmm_fwd = gemm_time(gpu, s, s, dh, heads) + gemm_time(gpu, s, dh, s, heads)
        bmm_bwd = gemm_time(gpu, s, s, dh, heads) + 3 * gemm_time(gpu, s, dh, s, heads)
        scores = heads * s * s
        sm_f, sm_b = SOFTMAX_BYTES[stack.attention]
        if shape.attention_dropout > 0:
            sm_f, sm_b = sm_f + DROPOUT_BYTES[0], sm_b + DROPOUT_BYTES[1]
        kernels = 1 if stack.attention == "fused-softmax" else 3
        att_fwd = bmm_fwd + stream_time(gpu, sm_f * scores, kernels)
        att_bwd = bmm_bwd + stream_time(gpu, sm_b * scores, kernels)
        att_bwd_flops = 2 * att_flops

    e = tokens * h / rep                       # hidden-sized elements this GPU touches
    ff = tokens * f / t                        # MLP-intermediate elements
    drop = shape.hidden_dropout > 0
    if stack.fused_elementwise:
        # two layer norms, two bias-dropout-add, one bias-GeLU
        ew_fwd = 2 * 4 * e + 2 * (7 if drop else 6) * e + 4 * ff
        ew_bwd = 2 * 8 * e + 2 * (5 if drop else 4) * e + 6 * ff
        kf, kb = 5, 5
    else:
        # one kernel per PyTorch op: dropout and residual add apart; gelu_fast as 4 passes
        ew_fwd = 2 * 4 * e + 2 * ((5 if drop else 0) + 6) * e + 16 * ff
        ew_bwd = 2 * 8 * e + 2 * ((5 if drop else 0) + 6) * e + 24 * ff
        kf, kb = 12, 18
    ew_f = stream_time(gpu, ew_fwd, kf)
    ew_b = stream_time(gpu, ew_bwd, kb)

    tp = collective_time(node, "all_reduce", 2.0 * tokens * h, t,
                         min(t, node.gpus_per_node), stack.collectives)
    return LayerCost(
        forward=fwd_gemm + att_fwd + ew_f,
        backward=bwd_gemm + att_bwd + ew_b,
        attention_forward=att_fwd,
        flops_forward=gemm_flops + att_flops,
        flops_backward=2 * gemm_flops + att_bwd_flops,
        flops_attention_forward=att_flops,
        tp_collective=tp,
        parts={"gemm_forward": fwd_gemm, "gemm_backward": bwd_gemm,
               "attention_forward": att_fwd, "attention_backward": att_bwd,
               "elementwise_forward": ew_f, "elementwise_backward": ew_b},
    )


# -- one step -----------------------------------------------------------------------------
@dataclass
class StepTime:
    """Seconds of one optimizer step and where they go (per GPU, critical path).
    ``pipeline_bubble`` is the 1F1B fill and drain plus the time faster stages wait for the
    slowest one (the last stage also computes the logits)."""

    seconds: float
    compute: float
    tp_communication: float
    pipeline_bubble: float
    dp_communication: float
    zero3_communication: float
    optimizer: float
    executed_flops_per_gpu: float
    layout: Parallel

    def to_dict(self) -> dict[str, Any]:
        return {"seconds_per_step": self.seconds, "compute": self.compute,
                "tp_communication": self.tp_communication,
                "pipeline_bubble_and_imbalance": self.pipeline_bubble,
                "dp_communication_exposed": self.dp_communication,
                "zero3_communication": self.zero3_communication, "optimizer": self.optimizer,
                "executed_flops_per_gpu": self.executed_flops_per_gpu}


def step_time(shape: TransformerShape, seq: int, par: Parallel, stack: Stack,
              cluster: ClusterSpec) -> StepTime:
    node = cluster.node
    gpu = node.gpu
    gpn = node.gpus_per_node
    t, p, d, b = par.tp, par.pp, par.dp, par.micro_batch
    m = par.micro_batches
    tokens = seq * b
    lc = layer_cost(shape, seq, par, stack, node)
    per_stage = shape.layers // p

    if par.recompute == "full":
        rc, rc_flops, tp_passes = lc.forward, lc.flops_forward, 6
    elif par.recompute == "selective" and stack.attention != "flash":
        rc, rc_flops, tp_passes = lc.attention_forward, lc.flops_attention_forward, 4
    else:
        rc, rc_flops, tp_passes = 0.0, 0.0, 4
    layer_compute = lc.forward + lc.backward + rc
    layer_flops = lc.flops_forward + lc.flops_backward + rc_flops
    tp_layer = tp_passes * lc.tp_collective

    # the ends of the pipeline: embedding on the first stage, logits and loss on the last
    v_local = shape.vocab / t
    logits = (gemm_time(gpu, tokens, v_local, shape.hidden)
              + gemm_time(gpu, tokens, shape.hidden, v_local)
              + gemm_time(gpu, shape.hidden, v_local, tokens)
              + stream_time(gpu, 12.0 * tokens * v_local, 3))
    logits_flops = 6.0 * tokens * v_local * shape.hidden
    embed = stream_time(gpu, 8.0 * tokens * shape.hidden, 2) + collective_time(
        node, "all_reduce", 2.0 * tokens * shape.hidden, t, min(t, gpn), stack.collectives)
    p2p = 0.0
    if p > 1:
        act = 2.0 * tokens * shape.hidden / t
        cross = t * p > gpn
        bw = (node.node_network_effective / gpn) if cross else node.nvlink_effective
        lat = node.network_latency if cross else node.nvlink_latency
        p2p = 2 * (lat + act / bw)

    body = per_stage * (layer_compute + tp_layer)
    if p == 1:
        stages = [body + embed + logits]
    else:
        stages = [body + embed + p2p] + [body + p2p] * (p - 2) + [body + logits + p2p]
    slowest = max(stages)
    compute_mb = per_stage * layer_compute + (logits if p == 1 else 0.0)
    tp_mb = per_stage * tp_layer

    psi = stage_params(shape, p) / t
    zero3 = 0.0
    if par.zero == 3 and d > 1:
        fetches = 3 if par.recompute == "full" else 2
        dp_per_node = max(1, gpn // (t * p))
        gather = collective_time(node, "all_gather", 2.0 * psi, d, dp_per_node,
                                 stack.collectives)
        scatter = collective_time(node, "reduce_scatter", 2.0 * psi, d, dp_per_node,
                                  stack.collectives)
        zero3 = fetches * gather + scatter
        if par.offload_params:
            zero3 += fetches * 2.0 * psi / d / node.pcie_bandwidth
        # prefetched gathers hide behind the computation; the gradient reduce-scatter does
        # only when the stack overlaps gradient reduction
        hidden = fetches * gather if stack.zero3_prefetch else 0.0
        exposed = zero3 - hidden
        if stack.overlap_dp:
            hidden, exposed = zero3, 0.0
        mb_time = overlapped(slowest, hidden, gpu, node) + exposed
        pipeline = m * mb_time
        zero3 *= m
        bubble = 0.0
    else:
        pipeline = (m - 1) * slowest + sum(stages)
        bubble = pipeline - m * sum(stages) / len(stages)

    dp = 0.0
    if par.zero < 3 and d > 1:
        dp_per_node = max(1, gpn // (t * p))
        dp = collective_time(node, "all_reduce", 2.0 * psi, d, dp_per_node, stack.collectives)
        if stack.overlap_dp:
            # the reduction of a bucket starts when its layers' backward is done: it hides
            # behind the last micro-batch's backward pass, slowing it while both run
            window = per_stage * (lc.backward + rc)
            dp = overlapped(window, dp, gpu, node) - window

    opt_params = psi / (d if par.zero >= 1 else 1)
    if par.offload_optimizer:
        host = gpn * opt_params * ADAM_BYTES / (node.host_memory_bandwidth
                                                * HOST_ADAM_EFFICIENCY)
        optimizer = host + 4.0 * opt_params / node.pcie_bandwidth
    else:
        optimizer = stream_time(gpu, ADAM_BYTES * opt_params, 4)

    seconds = pipeline + dp + optimizer
    flops = m * (per_stage * layer_flops + (logits_flops if p == 1 else logits_flops / p))
    return StepTime(seconds=seconds, compute=m * compute_mb, tp_communication=m * tp_mb,
                    pipeline_bubble=max(0.0, bubble), dp_communication=dp,
                    zero3_communication=zero3, optimizer=optimizer,
                    executed_flops_per_gpu=flops, layout=par)


__all__ = ["LayerCost", "StepTime", "collective_time", "gemm_time", "layer_cost", "step_time",
           "stream_time"]
