"""Memory of one GPU: model states, activations, buffers; out-of-memory with its cause.

Formulas (docs/gpu.md, "Memory of one GPU"):

- Model states with mixed-precision Adam (Rajbhandari et al., ZeRO): fp16 parameters
  ``2 Psi``, fp16 gradients ``2 Psi``, fp32 master copy, momentum and variance ``12 Psi``;
  ZeRO stage 1/2/3 divides the optimizer / also the gradients / also the parameters by the
  data-parallel degree. ``Psi`` here is the parameters one GPU holds after tensor and
  pipeline splitting.
- Activations per layer (Korthikanti et al. 2022), 16-bit, counted from the real FFN width
  ``f``: attention block ``11 sbh + 5 a s^2 b`` (the s^2 part: scores ``2``, dropout mask
  ``1``, dropout output ``2`` bytes per score; only the scores without attention dropout),
  MLP ``3 sbh + 4 sbf`` (``19 sbh`` when f = 4h), layer norms ``4 sbh``. Tensor parallelism
  divides the parts inside the parallel region by t; sequence parallelism divides the rest
  too. Selective recompute drops the s^2 part; full recompute keeps only each layer's input
  ``2 sbh``. FlashAttention never stores the scores; it keeps the fp32 softmax statistics,
  ``4 a s b`` bytes.
- The backward pass of one layer needs a working set on top of what is stored: with full
  recompute that layer's activations are rebuilt; with selective recompute its scores are;
  and backward through materialised scores holds two more s x s tensors (the gradients of
  the probabilities and of the scores).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from waferscale.baselines.gpu.config import Parallel, Stack
from waferscale.baselines.gpu.hardware import GIB, NodeSpec
from waferscale.baselines.gpu.shapes import TransformerShape

#: Taken from every GPU before the model: CUDA context, cuBLAS workspaces, NCCL buffers.
RESERVED_BYTES = 1.5 * GIB
#: Share of the rest the caching allocator loses to fragmentation.
FRAGMENTATION = 0.05
#: Share of host memory an offloading run may use (the OS and the data loader keep the rest).
HOST_USABLE = 0.9
#: DeepSpeed's default bucket sizes (elements): reduce bucket and ZeRO-3 prefetch bucket.
DEEPSPEED_BUCKET = 5e8
#: DeepSpeed's stage3_max_live_parameters default (elements gathered at once).
DEEPSPEED_MAX_LIVE = 1e9


@dataclass(frozen=True)
class Term:
    name: str
    bytes: float
    note: str = ""


@dataclass
class MemoryReport:
    """Per-GPU memory of one layout: the terms, the usable capacity, and whether it fits."""

    gpu: str
    terms: list[Term]
    capacity: float
    usable: float
    host_terms: list[Term] = field(default_factory=list)
    host_usable: float = 0.0

    @property
    def total(self) -> float:
        return sum(t.bytes for t in self.terms)

    @property
    def host_total(self) -> float:
        return sum(t.bytes for t in self.host_terms)

    @property
    def fits(self) -> bool:
        return self.total <= self.usable and self.host_total <= self.host_usable

    @property
    def largest(self) -> Term:
        return max(self.terms, key=lambda t: t.bytes)

    def oom_reason(self) -> str | None:
        """None when it fits; otherwise one sentence: the need, the capacity, the term."""
        if self.total > self.usable:
            big = self.largest
            note = f" ({big.note})" if big.note else ""
            return (f"out of memory on {self.gpu}: needs {self.total / GIB:.1f} GiB per GPU, "
                    f"{self.usable / GIB:.1f} GiB usable; largest term {big.name} "
                    f"{big.bytes / GIB:.1f} GiB{note}")
        if self.host_total > self.host_usable:
            return (f"out of host memory: CPU offload needs {self.host_total / GIB:.0f} GiB per "
                    f"node, {self.host_usable / GIB:.0f} GiB usable")
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "total_bytes": self.total, "usable_bytes": self.usable,
                "capacity_bytes": self.capacity, "fits": self.fits,
                "oom_reason": self.oom_reason(),
                "terms": {t.name: t.bytes for t in self.terms},
                "host_total_bytes": self.host_total, "host_usable_bytes": self.host_usable}


def usable_bytes(capacity: float) -> float:
    return (capacity - RESERVED_BYTES) * (1 - FRAGMENTATION)


# -- activations --------------------------------------------------------------------------
def layer_activations(shape: TransformerShape, seq: int, batch: int, *, tp: int = 1,
                      sequence_parallel: bool = False, attention: str = "fused-softmax"
                      ) -> dict[str, float]:
    """Bytes one layer stores for its backward pass without recompute, by part:
    ``sbh`` (everything linear in the sequence) and ``scores`` (the s^2 part, or the
    FlashAttention statistics)."""
    h, f, a = shape.hidden, shape.ffn, shape.heads
    s, b, t = seq, batch, tp
    sbh = float(s * b * h)
    rep = t if sequence_parallel else 1          # replicated tensors shrink only with SP
    hid_mask = 1.0 if shape.hidden_dropout > 0 else 0.0
    linear = (
        2 * sbh / rep                            # QKV input (layer-norm output)
        + 4 * sbh / t + 2 * sbh / t              # Q and K, V
        + 2 * sbh / t                            # output-projection input
        + hid_mask * sbh / rep                   # attention-out dropout mask
        + 2 * sbh / rep                          # MLP input
        + 4.0 * s * b * f / t                    # fc1 output and GeLU output
        + hid_mask * sbh / rep                   # MLP-out dropout mask
        + 4 * sbh / rep                          # two layer-norm inputs
    )
    if attention == "flash":
        scores = 4.0 * a * s * b / t             # fp32 log-sum-exp per row and head
    else:
        per_score = 2.0 + (3.0 if shape.attention_dropout > 0 else 0.0)
        scores = per_score * a * s * s * b / t
    return {"sbh": linear, "scores": scores}


def stored_per_layer(shape: TransformerShape, seq: int, batch: int, *, tp: int,
                     sequence_parallel: bool, attention: str, recompute: str) -> float:
    """Bytes one layer keeps between its forward and backward passes."""
    if recompute == "full":
        return 2.0 * seq * batch * shape.hidden / (tp if sequence_parallel else 1)
    parts = layer_activations(shape, seq, batch, tp=tp, sequence_parallel=sequence_parallel,
                              attention=attention)
    if recompute == "selective" and attention != "flash":
        return parts["sbh"]
    return parts["sbh"] + parts["scores"]


def backward_working_set(shape: TransformerShape, seq: int, batch: int, *, tp: int,
                         sequence_parallel: bool, attention: str, recompute: str) -> float:
    """Extra bytes while one layer runs backward (see module doc)."""
    parts = layer_activations(shape, seq, batch, tp=tp, sequence_parallel=sequence_parallel,
                              attention=attention)
    extra = 0.0
    if recompute == "full":
        extra += parts["sbh"] + parts["scores"]
    elif recompute == "selective" and attention != "flash":
        extra += parts["scores"]
    if attention != "flash":
        extra += 4.0 * shape.heads * seq * seq * batch / tp
    return extra


# -- the whole GPU ------------------------------------------------------------------------
def stage_params(shape: TransformerShape, pp: int) -> float:
    """Parameters of the largest pipeline stage (the layers plus the embedding or the
    output projection it holds; a tied embedding is held by both ends, as in Megatron)."""
    layers = shape.layers // pp * shape.layer_params
    if pp == 1:
        return float(layers + shape.embedding_params)
    h, v = shape.hidden, shape.vocab
    pos = shape.max_positions * h if shape.positions == "learned" else 0
    return float(layers + max(v * h + pos, v * h + 2 * h))


def gpu_memory(shape: TransformerShape, seq: int, par: Parallel, stack: Stack,
               node: NodeSpec) -> MemoryReport:
    """Per-GPU memory of ``par`` (the worst pipeline stage) and the host memory offload
    needs."""
    gpu = node.gpu
    t, p, d, b = par.tp, par.pp, par.dp, par.micro_batch
    psi = stage_params(shape, p) / t
    zero = par.zero
    terms: list[Term] = []
    params = 0.0 if par.offload_params else 2 * psi / (d if zero >= 3 else 1)
    terms.append(Term("parameters (fp16)", params))
    terms.append(Term("gradients (fp16)", 2 * psi / (d if zero >= 2 else 1)))
    optim = 0.0 if par.offload_optimizer else 12 * psi / (d if zero >= 1 else 1)
    terms.append(Term("optimizer states (fp32 master, momentum, variance)", optim))
    if zero == 3 and d > 1:
        module = max(shape.layer_params, shape.vocab * shape.hidden) / t
        live = min(DEEPSPEED_MAX_LIVE, 2 * module)
        terms.append(Term("ZeRO-3 gathered parameters and gradient buffers",
                          2 * live + 2 * module,
                          "the layer in use and the prefetched one, plus one layer's "
                          "full gradient before its reduce-scatter"))
    if stack.deepspeed_buckets and d > 1:
        terms.append(Term("DeepSpeed communication buckets",
                          2 * min(DEEPSPEED_BUCKET, psi), "reduce bucket of 5e8 elements"))
    in_flight = min(p, par.micro_batches)
    per_layer = stored_per_layer(shape, seq, b, tp=t, sequence_parallel=stack.sequence_parallel,
                                 attention=stack.attention, recompute=par.recompute)
    scores_note = ""
    if stack.attention != "flash" and par.recompute == "none":
        per_score = 5 if shape.attention_dropout > 0 else 2
        scores_note = (f"{stack.attention} attention stores the {seq} x {seq} scores: "
                       f"{per_score} a s^2 b / t bytes per layer")
    terms.append(Term("activations (stored)", per_layer * shape.layers / p * in_flight,
                      scores_note or f"recompute={par.recompute}, "
                                     f"{in_flight} micro-batch(es) in flight"))
    work = backward_working_set(shape, seq, b, tp=t, sequence_parallel=stack.sequence_parallel,
                                attention=stack.attention, recompute=par.recompute)
    terms.append(Term("activations (one layer's backward working set)", work,
                      f"{stack.attention} attention backward holds s x s gradients"
                      if stack.attention != "flash" else "rebuilt layer during recompute"))
    terms.append(Term("logits and loss", 6.0 * seq * b * shape.vocab / t,
                      "fp16 logits and fp32 softmax on the last stage"))
    host: list[Term] = []
    if par.offload_optimizer or par.offload_params:
        share = psi / d
        per_gpu = (12 + 4) * share if par.offload_optimizer else 0.0   # + fp32 gradients
        per_gpu += 2 * share if par.offload_params else 0.0
        host.append(Term("offloaded states", per_gpu * node.gpus_per_node))
    return MemoryReport(gpu.name, terms, gpu.hbm_bytes, usable_bytes(gpu.hbm_bytes), host,
                        node.host_memory_bytes * HOST_USABLE)


__all__ = ["FRAGMENTATION", "RESERVED_BYTES", "MemoryReport", "Term", "backward_working_set",
           "gpu_memory", "layer_activations", "stage_params", "stored_per_layer",
           "usable_bytes"]
