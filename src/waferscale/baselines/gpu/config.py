"""Software stacks and parallel layouts: what the framework does, and how the GPUs are split.

A `Stack` names the mechanisms a software generation has (which attention kernel, fused
elementwise kernels or not, sequence parallelism, how collectives are run, what overlaps),
never a speed factor. A `Parallel` is one layout: tensor (t), pipeline (p) and data (d)
parallel degrees, micro-batch and global batch, ZeRO stage, activation recompute, CPU
offload. Both check themselves on construction; `check_layout` checks a layout against a
model and a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from waferscale.baselines.errors import GpuConfigError
from waferscale.baselines.gpu.hardware import FLASH_KERNELS, ClusterSpec
from waferscale.baselines.gpu.shapes import TransformerShape

ATTENTION_KINDS = ("eager", "fused-softmax", "flash")
COLLECTIVES = ("ring", "per-gpu")
RECOMPUTE = ("none", "selective", "full")


@dataclass(frozen=True)
class Stack:
    """A software stack as a set of mechanisms.

    ``attention``: ``eager`` materialises the s x s scores with separate mask, softmax and
    dropout kernels (HuggingFace transformers of 2022); ``fused-softmax`` materialises them
    with one fused scale-mask-softmax kernel (Megatron-LM); ``flash`` keeps them on chip
    (FlashAttention of generation ``flash_kernel``: ``fa1``, ``fa2``, ``fa3`` or ``latest``,
    the newest the GPU runs), and with ``causal_kernel`` skips the masked half.
    ``fused_elementwise``: bias-GeLU and bias-dropout-add run as fused kernels (Megatron)
    rather than one kernel per PyTorch operation.
    ``collectives``: ``ring`` runs NCCL ring collectives whose node-crossing traffic spreads
    over all the node's ports that the group's GPUs own; ``per-gpu`` bounds every rank by its
    own port share (the behaviour measured for DeepSpeed ZeRO-3, docs/gpu.md).
    ``overlap_dp``: the data-parallel gradient reduction (all-reduce, or ZeRO's
    reduce-scatter) overlaps the backward pass (DeepSpeed's ``overlap_comm``, off by default).
    ``zero3_prefetch``: ZeRO-3 gathers overlap computation (DeepSpeed's prefetch).
    ``offload_models``: models for which the stack's published recipe offloads parameters
    and optimizer states to the CPU.
    """

    name: str
    description: str
    attention: str
    causal_kernel: bool
    fused_elementwise: bool
    sequence_parallel: bool
    collectives: str
    overlap_dp: bool
    zero3_prefetch: bool = True
    flash_kernel: str = "latest"
    offload_models: tuple[str, ...] = ()
    deepspeed_buckets: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise GpuConfigError(f"stack {self.name}: attention must be one of "
                                 f"{', '.join(ATTENTION_KINDS)}, got {self.attention!r}")
        if self.collectives not in COLLECTIVES:
            raise GpuConfigError(f"stack {self.name}: collectives must be one of "
                                 f"{', '.join(COLLECTIVES)}, got {self.collectives!r}")
        if self.flash_kernel not in (*FLASH_KERNELS, "latest"):
            raise GpuConfigError(f"stack {self.name}: flash_kernel must be one of "
                                 f"{', '.join(FLASH_KERNELS)}, latest; got {self.flash_kernel!r}")
        if self.causal_kernel and self.attention != "flash":
            raise GpuConfigError(f"stack {self.name}: only the flash kernel skips the causal "
                                 f"half (causal_kernel needs attention='flash')")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Parallel:
    """One parallel layout on ``tp * pp * dp`` GPUs.

    ``global_batch`` sequences per optimizer step, split into ``micro_batch``-sized pieces:
    each of the ``dp`` pipelines runs ``global_batch / (dp * micro_batch)`` micro-batches.
    ``zero`` is the ZeRO stage (0 = plain data parallel; 1 shards optimizer states, the
    distributed optimizer; 2 also gradients; 3 also parameters). TP groups are placed inside
    a node, pipeline stages next, data-parallel replicas outermost (Megatron's order).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 1
    global_batch: int = 1
    zero: int = 0
    recompute: str = "none"
    offload_optimizer: bool = False
    offload_params: bool = False

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "micro_batch", "global_batch"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GpuConfigError(f"parallel layout: {name} must be a positive integer, "
                                     f"got {v!r}")
        if self.zero not in (0, 1, 2, 3):
            raise GpuConfigError(f"parallel layout: zero stage must be 0..3, got {self.zero!r}")
        if self.recompute not in RECOMPUTE:
            raise GpuConfigError(f"parallel layout: recompute must be one of "
                                 f"{', '.join(RECOMPUTE)}, got {self.recompute!r}")
        if self.global_batch % (self.dp * self.micro_batch):
            raise GpuConfigError(f"parallel layout: global batch {self.global_batch} is not a "
                                 f"multiple of dp {self.dp} x micro-batch {self.micro_batch}")
        if self.zero == 3 and self.pp > 1:
            raise GpuConfigError("parallel layout: ZeRO-3 with pipeline parallelism is not a "
                                 "supported combination (DeepSpeed); use pp=1 or zero<=2")
        if self.offload_params and self.zero != 3:
            raise GpuConfigError("parallel layout: parameter offload needs ZeRO-3")

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        """Micro-batches each pipeline runs per step (m)."""
        return self.global_batch // (self.dp * self.micro_batch)

    def label(self) -> str:
        parts = [f"t{self.tp}", f"p{self.pp}", f"d{self.dp}", f"mb{self.micro_batch}",
                 f"B{self.global_batch}"]
        if self.zero:
            parts.append(f"zero{self.zero}")
        parts.append(f"recompute={self.recompute}")
        if self.offload_optimizer or self.offload_params:
            parts.append("offload=" + "+".join(
                x for x, on in (("optimizer", self.offload_optimizer),
                                ("params", self.offload_params)) if on))
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        d["micro_batches"] = self.micro_batches
        d["label"] = self.label()
        return d


def check_layout(shape: TransformerShape, cluster: ClusterSpec, par: Parallel) -> None:
    """A typed error naming the mismatch when ``par`` cannot run ``shape`` on ``cluster``."""
    if par.gpus != cluster.gpus:
        raise GpuConfigError(f"layout {par.label()} uses {par.gpus} GPUs but the cluster has "
                             f"{cluster.gpus} ({cluster.nodes} x {cluster.node.gpus_per_node})")
    if shape.heads % par.tp:
        raise GpuConfigError(f"tensor parallel {par.tp} does not divide {shape.name}'s "
                             f"{shape.heads} heads")
    if shape.layers % par.pp:
        raise GpuConfigError(f"pipeline parallel {par.pp} does not divide {shape.name}'s "
                             f"{shape.layers} layers")
    gpn = cluster.node.gpus_per_node
    if par.tp > gpn and par.tp % gpn:
        raise GpuConfigError(f"tensor parallel {par.tp} must be a multiple of the "
                             f"{gpn} GPUs per node when it spans nodes")
    if par.tp < gpn and gpn % par.tp:
        raise GpuConfigError(f"tensor parallel {par.tp} must divide the {gpn} GPUs per node")


MEGATRON_2021 = Stack(
    "megatron-2021", "Megatron-LM PTD-P as in Narayanan et al. SC21: fused softmax and "
    "elementwise kernels, no sequence parallelism, NCCL ring collectives, gradient all-reduce "
    "after the backward pass", attention="fused-softmax", causal_kernel=False,
    fused_elementwise=True, sequence_parallel=False, collectives="ring", overlap_dp=False)
DEEPSPEED_ZERO3_2021 = Stack(
    "deepspeed-zero3-2021", "DeepSpeed ZeRO-3 without model parallelism on Megatron's model "
    "(Narayanan et al. SC21, table 2): per-GPU-bound collectives, gathers prefetched",
    attention="fused-softmax", causal_kernel=False, fused_elementwise=True,
    sequence_parallel=False, collectives="per-gpu", overlap_dp=False, deepspeed_buckets=True)
MEGATRON_DEEPSPEED_2022 = Stack(
    "megatron-deepspeed-2022", "Megatron-DeepSpeed before the long-sequence work (GenSLM "
    "examples/long-sequences 'old'): fused softmax, no sequence parallelism",
    attention="fused-softmax", causal_kernel=False, fused_elementwise=True,
    sequence_parallel=False, collectives="ring", overlap_dp=False)
MEGATRON_DEEPSPEED_2023 = Stack(
    "megatron-deepspeed-2023", "Megatron-DeepSpeed with Megatron sequence parallelism and "
    "FlashAttention (GenSLM examples/long-sequences 'new'; FlashAttention 1, as FlashAttention "
    "2 was not yet released)", attention="flash", causal_kernel=True, fused_elementwise=True,
    sequence_parallel=True, collectives="ring", overlap_dp=False, flash_kernel="fa1")
GENSLM_2022 = Stack(
    "genslm-2022", "GenSLM's own 2022 stack: HF transformers 4.21 GPT-NeoX with eager "
    "attention, PyTorch Lightning + DeepSpeed ZeRO-3, fp16, micro-batch 1 per GPU, pure data "
    "parallel; activation checkpointing where the model config asks for it; CPU offload of "
    "parameters and optimizer for the 25B model", attention="eager", causal_kernel=False,
    fused_elementwise=False, sequence_parallel=False, collectives="per-gpu",
    overlap_dp=False, offload_models=("genslm-25b",), deepspeed_buckets=True)
TUNED = Stack(
    "tuned", "a well-tuned stack today: FlashAttention (causal), tensor + sequence "
    "parallelism inside a node, 1F1B pipeline, distributed optimizer (ZeRO-1), fused kernels, "
    "gradient reduction overlapped with the backward pass; layout searched over t, p, "
    "micro-batch and recompute", attention="flash", causal_kernel=True,
    fused_elementwise=True, sequence_parallel=True, collectives="ring", overlap_dp=True)

STACKS: dict[str, Stack] = {s.name: s for s in (GENSLM_2022, TUNED, MEGATRON_2021,
                                                DEEPSPEED_ZERO3_2021, MEGATRON_DEEPSPEED_2022,
                                                MEGATRON_DEEPSPEED_2023)}
#: The stacks `waferscale compare` offers; the others exist for the validation cases.
USER_STACKS = ("genslm-2022", "tuned")


def get_stack(name: str) -> Stack:
    try:
        return STACKS[name]
    except KeyError:
        raise GpuConfigError(f"unknown stack {name!r}; known: {', '.join(STACKS)}") from None


__all__ = ["DEEPSPEED_ZERO3_2021", "GENSLM_2022", "MEGATRON_2021", "MEGATRON_DEEPSPEED_2022",
           "MEGATRON_DEEPSPEED_2023", "STACKS", "TUNED", "USER_STACKS", "Parallel", "Stack",
           "check_layout", "get_stack"]
