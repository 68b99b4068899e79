"""A training run on a GPU cluster: memory first (out of memory is a result, never a speed),
then the step time; the two named stacks' layouts (GenSLM's fixed recipe, the tuned search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waferscale.baselines.errors import GpuConfigError
from waferscale.baselines.gpu.config import GENSLM_2022, Parallel, Stack, check_layout
from waferscale.baselines.gpu.hardware import ClusterSpec
from waferscale.baselines.gpu.memory import MemoryReport, gpu_memory
from waferscale.baselines.gpu.shapes import TransformerShape
from waferscale.baselines.gpu.step import StepTime, step_time

#: Sequences per optimizer step the tuned search aims for (grown to dp x micro-batch when
#: the data-parallel degree alone exceeds it).
TUNED_GLOBAL_BATCH = 512


@dataclass
class GpuEstimate:
    """One layout of one model on one cluster: its memory and, when it fits, its speed."""

    shape: TransformerShape
    seq: int
    cluster: ClusterSpec
    stack: Stack
    layout: Parallel
    memory: MemoryReport
    step: StepTime | None

    @property
    def oom_reason(self) -> str | None:
        return self.memory.oom_reason()

    @property
    def fits(self) -> bool:
        return self.step is not None

    @property
    def seconds_per_step(self) -> float | None:
        return self.step.seconds if self.step else None

    @property
    def samples_per_second(self) -> float | None:
        return self.layout.global_batch / self.step.seconds if self.step else None

    @property
    def tokens_per_second(self) -> float | None:
        sps = self.samples_per_second
        return None if sps is None else sps * self.seq

    def tflops_per_gpu(self, convention: str = "megatron") -> float | None:
        """FLOP/s per GPU in TFLOP/s: ``megatron`` (Narayanan eq. 3: full recompute counted,
        full attention), ``model`` (no recompute, full attention: the MFU numerator) or
        ``executed`` (what the kernels really run: causal halves, recompute as done)."""
        if not self.step:
            return None
        tokens = self.layout.global_batch * self.seq
        gpus = self.cluster.gpus
        if convention == "megatron":
            flops = self.shape.megatron_flops_per_token(
                self.seq, self.layout.recompute == "full") * tokens / gpus
        elif convention == "model":
            flops = self.shape.model_flops_per_token(self.seq) * tokens / gpus
        elif convention == "executed":
            flops = self.step.executed_flops_per_gpu
        else:
            raise GpuConfigError(f"unknown FLOP convention {convention!r}")
        return flops / self.step.seconds / 1e12

    @property
    def mfu(self) -> float | None:
        tf = self.tflops_per_gpu("model")
        return None if tf is None else tf * 1e12 / self.cluster.gpu.peak_flops

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.shape.name, "seq": self.seq, "stack": self.stack.name,
            "gpu": self.cluster.gpu.name, "node": self.cluster.node.name,
            "nodes": self.cluster.nodes, "gpus": self.cluster.gpus,
            "layout": self.layout.to_dict(), "fits": self.fits,
            "oom_reason": self.oom_reason,
            "samples_per_second": self.samples_per_second,
            "tokens_per_second": self.tokens_per_second,
            "seconds_per_step": self.seconds_per_step,
            "tflops_per_gpu_megatron": self.tflops_per_gpu("megatron"),
            "tflops_per_gpu_executed": self.tflops_per_gpu("executed"),
            "mfu": self.mfu,
            "memory": self.memory.to_dict(),
            "time": self.step.to_dict() if self.step else None,
        }


def estimate(shape: TransformerShape, seq: int, cluster: ClusterSpec, stack: Stack,
             layout: Parallel) -> GpuEstimate:
    """Memory, then (only if it fits) the step time of ``layout``."""
    shape.check_seq(seq)
    check_layout(shape, cluster, layout)
    mem = gpu_memory(shape, seq, layout, stack, cluster.node)
    step = step_time(shape, seq, layout, stack, cluster) if mem.fits else None
    return GpuEstimate(shape, seq, cluster, stack, layout, mem, step)


def genslm_2022_layout(shape: TransformerShape, cluster: ClusterSpec) -> Parallel:
    """GenSLM's 2022 recipe (docs/gpu.md): every GPU a data-parallel rank with one sequence,
    ZeRO-3, activation checkpointing where the config asks for it, CPU offload of
    parameters and optimizer for the models whose recipe turns it on."""
    n = cluster.gpus
    offload = shape.name in GENSLM_2022.offload_models
    return Parallel(tp=1, pp=1, dp=n, micro_batch=1, global_batch=n, zero=3 if n > 1 else 0,
                    recompute=shape.recompute_hint, offload_optimizer=offload and n > 1,
                    offload_params=offload and n > 1)


def _divisors(n: int, limit: int) -> list[int]:
    return [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= limit and n % k == 0]


def tuned_candidates(shape: TransformerShape, cluster: ClusterSpec,
                     global_batch: int = TUNED_GLOBAL_BATCH) -> list[Parallel]:
    """The small search of the tuned stack: t inside a node (dividing the heads), p dividing
    the layers, micro-batch 1..8, selective or full recompute, distributed optimizer."""
    gpn, n = cluster.node.gpus_per_node, cluster.gpus
    out = []
    for t in _divisors(shape.heads, min(gpn, n)):
        if gpn % t:
            continue
        for p in _divisors(shape.layers, n // t):
            if n % (t * p):
                continue
            d = n // (t * p)
            for mb in (1, 2, 4, 8):
                per_step = d * mb
                batch = max(global_batch, per_step)
                batch = -(-batch // per_step) * per_step
                for rc in ("selective", "full"):
                    out.append(Parallel(tp=t, pp=p, dp=d, micro_batch=mb, global_batch=batch,
                                        zero=1 if d > 1 else 0, recompute=rc))
    return out


def tuned_estimate(shape: TransformerShape, seq: int, cluster: ClusterSpec, stack: Stack,
                   global_batch: int = TUNED_GLOBAL_BATCH) -> GpuEstimate:
    """The fastest fitting layout of the search; when none fits, the one needing the least
    memory (its OOM reason says why)."""
    best: GpuEstimate | None = None
    smallest: GpuEstimate | None = None
    for layout in tuned_candidates(shape, cluster, global_batch):
        est = estimate(shape, seq, cluster, stack, layout)
        if est.fits:
            if best is None or est.samples_per_second > best.samples_per_second:  # type: ignore[operator]
                best = est
        elif smallest is None or est.memory.total < smallest.memory.total:
            smallest = est
    result = best or smallest
    if result is None:
        raise GpuConfigError(f"no tuned layout exists for {shape.name} on {cluster.gpus} GPUs")
    return result


def run_stack(shape: TransformerShape, seq: int, cluster: ClusterSpec, stack: Stack,
              global_batch: int = TUNED_GLOBAL_BATCH) -> GpuEstimate:
    """The named stack's own layout: GenSLM's recipe, or the tuned search."""
    if stack.name == "genslm-2022":
        return estimate(shape, seq, cluster, stack, genslm_2022_layout(shape, cluster))
    if stack.name == "tuned":
        return tuned_estimate(shape, seq, cluster, stack, global_batch)
    raise GpuConfigError(f"stack {stack.name} has no layout rule of its own; give a layout "
                         f"(the validation cases do)")


__all__ = ["TUNED_GLOBAL_BATCH", "GpuEstimate", "estimate", "genslm_2022_layout",
           "run_stack", "tuned_candidates", "tuned_estimate"]
