"""LLM inference on the wafer: prefill and decode with resident weights and a KV cache.

`plan_inference` lays a decoder-only transformer (`DecoderShape`, read from a transformers
config) onto a square p x p grid of PEs, the way WaferLLM (He et al., OSDI'25) runs LLMs
on a WSE-2, and times both phases with the kernels' closed-form ``cost()``:

* **weights resident, one copy**: every weight matrix of every layer is blocked over the
  whole grid, [K/p, N/p] per PE, and never moves between tokens. The layout is the GEMV's
  (K over rows, N over columns, every other matrix stored transposed so that each GEMV's
  allreduce leaves its output where the next one reads it); the embedding table is stored
  as [hidden over rows, vocabulary over columns], which serves both the lookup (a token's
  column multicasts its slice along the rows) and a tied LM head.
* **prefill** (the whole prompt, ``batch x prompt_len`` tokens): every projection is a
  MeshGEMM (`kernels.gemm`, Cannon on an interleaved ring: at most two hops per step) on
  the p x p grid with the token rows as A, so no PE ever holds a second copy of a weight
  block beyond MeshGEMM's one receive buffer. MeshGEMM wants its operands skewed; the
  weights are re-aligned before and after the product (charged), the activations once.
  Attention is the causal flash-attention kernel (`kernels.attention`, its fastest layout
  on the grid in the SRAM left over); its keys and values are then written into the KV
  cache layout (charged as a stream across the grid). The LM head runs on the last
  position only (a GEMV), and the first token is sampled.
* **decode** (one token per sequence per step): every projection is a MeshGEMV
  (`kernels.gemv`, K-tree allreduce) on the p x p grid, attention is
  `kernels.kv_attention` over the cache (positions over rows, (head, feature) over
  columns), norms reduce one word per sequence down the columns with the same K-tree,
  and greedy sampling is an argmax allreduce along the rows; sampling with temperature or
  top-k is host work (the logits cross the system I/O).
* **SRAM**: weights + the KV cache at its final length + the biggest kernel's working
  buffers must fit a PE's SRAM; each kernel is sized in what the resident data leaves. If
  they do not fit, the plan says what would: the smallest square grid on one wafer, or the
  number of systems (each running this grid) the layers must be split over, activations
  crossing the system I/O between them (reported as a pipeline of systems).

Everything here is closed form (no fabric run), so an 8B or 70B model plans in seconds;
`waferscale.generate` computes the tokens themselves. Formulas and sources: docs/inference.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from waferscale.compiler.errors import CompileError
from waferscale.errors import KernelError
from waferscale.fabric.dtypes import BYTES
from waferscale.fabric.timing import multicast_cycles, transfer_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import attention as attn
from waferscale.kernels import gemm, gemv, kv_attention, rms_norm, rotary
from waferscale.kernels import norm as layer_norm
from waferscale.kernels._common import blocks
from waferscale.kernels._lines import ktree_reduce_cycles
from waferscale.kernels.elementwise import WORK, op_cycles
from waferscale.kernels.pointwise import fused_cycles

#: Sampling modes: ``greedy`` is an argmax on the wafer; ``sample`` (temperature, top-k,
#: top-p) runs on the host, the logits crossing the system I/O.
SAMPLING = ("greedy", "sample")
#: fp32 words per wavelet (a wavelet carries 32 bits).
WAVELET_BYTES = 4


class InferencePlanError(CompileError):
    """The model or the request cannot be planned (unknown architecture, bad sizes)."""


# ------------------------------------------------------------------ the model's shape ----
@dataclass(frozen=True)
class DecoderShape:
    """What the inference plan needs of a decoder-only transformer.

    ``arch``: ``llama`` (Llama, Mistral, Qwen2: RMS norm, rotary, SwiGLU MLP, grouped-query
    attention) or ``gpt2`` (layer norm, learned positions, GELU MLP, biases everywhere).
    """

    name: str
    arch: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    positions: int
    tied: bool = False
    qkv_bias: bool = False
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "gpt2"):
            raise InferencePlanError(f"architecture {self.arch!r}: use llama or gpt2")
        for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab",
                  "positions"):
            if getattr(self, f) < 1:
                raise InferencePlanError(f"{self.name}: {f} must be >= 1")
        if self.heads % self.kv_heads:
            raise InferencePlanError(f"{self.name}: {self.heads} heads are not a multiple "
                                     f"of {self.kv_heads} key/value heads")

    @property
    def gated(self) -> bool:
        return self.arch == "llama"

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    @property
    def qkv_out(self) -> int:
        return (self.heads + 2 * self.kv_heads) * self.head_dim

    @property
    def biased(self) -> bool:
        """GPT-2 has a bias on every projection."""
        return self.arch == "gpt2"

    def matrices(self) -> list[tuple[str, int, int, bool]]:
        """(name, K, N, bias) of each layer's resident weight matrices as decode runs them
        (q, k, v fused; gate and up fused)."""
        up = 2 * self.ffn if self.gated else self.ffn
        return [("qkv", self.hidden, self.qkv_out, self.qkv_bias or self.biased),
                ("o", self.heads * self.head_dim, self.hidden, self.biased),
                ("up", self.hidden, up, self.biased),
                ("down", self.ffn, self.hidden, self.biased)]

    def parameters(self) -> int:
        """Parameters the shape holds (checked against the built model in the tests)."""
        n = 0
        for _, k, nn, bias in self.matrices():
            n += k * nn + (nn if bias else 0)
        norms = (4 if self.arch == "gpt2" else 2) * self.hidden
        n = self.layers * (n + norms)
        n += self.vocab * self.hidden * (1 if self.tied else 2)
        n += (2 if self.arch == "gpt2" else 1) * self.hidden
        if self.arch == "gpt2":
            n += self.positions * self.hidden
        return n

    @classmethod
    def from_config(cls, config: Any, name: str | None = None) -> DecoderShape:
        """From a transformers config (Llama, Mistral, Qwen2, GPT-2)."""
        mt = getattr(config, "model_type", "")
        name = name or getattr(config, "name_or_path", "") or mt or "model"
        if mt == "gpt2":
            h = config.n_embd
            return cls(name, "gpt2", config.n_layer, h, config.n_head, config.n_head,
                       h // config.n_head, config.n_inner or 4 * h, config.vocab_size,
                       config.n_positions, tied=bool(getattr(config, "tie_word_embeddings",
                                                               True)),
                       qkv_bias=True)
        if mt in ("llama", "mistral", "qwen2"):
            h = config.hidden_size
            heads = config.num_attention_heads
            kv = getattr(config, "num_key_value_heads", None) or heads
            hd = getattr(config, "head_dim", None) or h // heads
            window = getattr(config, "sliding_window", None)
            if mt == "qwen2" and not getattr(config, "use_sliding_window", False):
                window = None
            if getattr(config, "hidden_act", "silu") != "silu":
                raise InferencePlanError(f"{name}: hidden_act {config.hidden_act!r}: the "
                                         f"inference plan knows SwiGLU (silu)")
            return cls(name, "llama", config.num_hidden_layers, h, heads, kv, hd,
                       config.intermediate_size, config.vocab_size,
                       config.max_position_embeddings,
                       tied=bool(getattr(config, "tie_word_embeddings", False)),
                       qkv_bias=mt == "qwen2" or bool(getattr(config, "attention_bias",
                                                              False)),
                       sliding_window=window)
        raise InferencePlanError(f"model type {mt!r}: the inference plan knows llama, "
                                 f"mistral, qwen2 and gpt2 decoders")

    @classmethod
    def from_model(cls, model: Any, name: str | None = None) -> DecoderShape:
        config = getattr(model, "config", None)
        if config is None:
            raise InferencePlanError(f"{type(model).__name__} has no transformers config; "
                                     f"generation needs a causal LM from transformers")
        return cls.from_config(config, name)


# ------------------------------------------------------------------ helpers ---------------
def _wavelets(elements: float, dtype: str) -> float:
    return math.ceil(elements * BYTES[dtype] / WAVELET_BYTES)


@functools.lru_cache(maxsize=4096)
def _allreduce(spec: WaferSpec, wavelets: float, n: int) -> float:
    """K-tree (K = 2) reduce along a line of ``n`` PEs, then the flood from the root."""
    if n <= 1 or wavelets <= 0:
        return 0.0
    done, root = ktree_reduce_cycles(spec, wavelets, n, 2)
    return done + multicast_cycles(spec, wavelets, max(root, n - 1 - root) + 1)


def _relayout(spec: WaferSpec, elements: float, p: int, dtype: str) -> float:
    """Moving a tensor of ``elements`` from one blocked layout of the p x p grid to
    another: each PE's share crosses up to p - 1 hops, and half of the data crosses the
    grid's bisection (p links each way): the larger of the two."""
    share = _wavelets(elements / (p * p), dtype)
    bisection = _wavelets(elements / 2, dtype) / p
    return max(transfer_cycles(spec, share, max(1, p - 1)), bisection)


def _skew(spec: WaferSpec, wavelets: float, p: int) -> float:
    """One Cannon alignment of a blocked operand (row i shifts i ring positions): every
    block crosses at most p - 1 hops, the blocks of a line streaming one behind another."""
    return transfer_cycles(spec, wavelets, max(1, p - 1)) if p > 1 else 0.0


def _io_seconds(spec: WaferSpec, nbytes: float) -> float:
    return nbytes * 8 / spec.io_bits_per_s


# ------------------------------------------------------------------ the plan --------------
@dataclass(frozen=True)
class Phase:
    """Cycles of one phase: per-layer parts (summed over layers in ``total``) and the
    parts run once (embedding, LM head, sampling)."""

    layer: dict[str, float]
    once: dict[str, float]
    layers: int

    @property
    def layer_cycles(self) -> float:
        return float(sum(self.layer.values()))

    @property
    def cycles(self) -> float:
        return self.layers * self.layer_cycles + float(sum(self.once.values()))

    def to_json(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "layer_cycles": self.layer_cycles,
                "per_layer": dict(self.layer), "once": dict(self.once)}


@dataclass(frozen=True)
class InferencePlan:
    """`plan_inference`'s answer: the layout, the SRAM per PE, and the phases' cycles."""

    shape: DecoderShape
    spec: WaferSpec
    grid: tuple[int, int]
    requested_grid: tuple[int, int]
    dtype: str
    batch: int
    prompt_len: int
    new_tokens: int
    sampling: str
    systems: int
    sram: dict[str, int]
    prefill: Phase
    decode_steps: tuple[tuple[int, float], ...]   # (context length, cycles per step)
    decode_first: Phase
    io_seconds: dict[str, float]
    fits: bool
    why_not: str
    needs: dict[str, Any]
    notes: tuple[str, ...] = ()
    kernels: dict[str, str] = field(default_factory=dict)

    # -- figures
    @property
    def ttft_seconds(self) -> float:
        """Prompt in, first token out: the prefill, its first sampled token, the hops
        between systems."""
        return self.spec.seconds(self.prefill.cycles) + self.io_seconds["prefill"]

    @property
    def decode_seconds(self) -> float:
        """Every decode step after the first token (``new_tokens - 1`` of them)."""
        steps = sum(self.spec.seconds(c) for _, c in self.decode_steps)
        return steps + self.io_seconds["decode_step"] * len(self.decode_steps)

    @property
    def seconds_per_token(self) -> float:
        n = len(self.decode_steps)
        if n == 0:
            return self.spec.seconds(self.decode_first.cycles) + self.io_seconds["decode_step"]
        return self.decode_seconds / n

    def report(self) -> dict[str, Any]:
        """The figures a user reads (the CLI's ``--json``)."""
        s = self.spec
        per_token = self.seconds_per_token
        total = self.ttft_seconds + self.decode_seconds
        prefill_s = s.seconds(self.prefill.cycles)
        return {
            "model": self.shape.name, "spec": s.name, "clock_hz": s.clock_hz,
            "grid": f"{self.grid[0]}x{self.grid[1]}",
            "requested_grid": f"{self.requested_grid[0]}x{self.requested_grid[1]}",
            "pes": self.grid[0] * self.grid[1], "dtype": self.dtype, "batch": self.batch,
            "prompt_len": self.prompt_len, "new_tokens": self.new_tokens,
            "sampling": self.sampling, "parameters": self.shape.parameters(),
            "fits": self.fits, "why_not": self.why_not, "systems": self.systems,
            "needs": self.needs,
            "ttft_seconds": self.ttft_seconds,
            "prefill_seconds": prefill_s,
            "prefill_tokens_per_second": self.batch * self.prompt_len / self.ttft_seconds,
            "decode_seconds_per_token": per_token,
            "decode_tokens_per_second": self.batch / per_token,
            "total_seconds": total,
            "end_to_end_tokens_per_second": self.batch * self.new_tokens / total,
            "sram_per_pe": dict(self.sram),
            "weights_bytes_per_pe": self.sram["weights"],
            "kv_cache_bytes_per_pe": self.sram["kv_cache"],
            "prefill": self.prefill.to_json(),
            "decode": {**self.decode_first.to_json(),
                       "context_first": self.prompt_len + 1,
                       "context_last": max(self.prompt_len + 1,
                                           self.prompt_len + self.new_tokens - 1),
                       "mean_step_cycles": (sum(c for _, c in self.decode_steps)
                                            / len(self.decode_steps))
                       if self.decode_steps else self.decode_first.cycles},
            "io_seconds": dict(self.io_seconds),
            "kernels": dict(self.kernels),
            "measured": "cost() closed form",
            "notes": list(self.notes),
        }


def _layer_weight_elements(shape: DecoderShape, p: int) -> int:
    """Elements of one layer's weights on the busiest PE of a p x p grid."""
    n = 0
    for _, k, nn, bias in shape.matrices():
        n += blocks(k, min(p, k)) * blocks(nn, min(p, nn))
        if bias:
            n += blocks(nn, min(p, nn))
    hb = blocks(shape.hidden, min(p, shape.hidden))
    n += (4 if shape.arch == "gpt2" else 2) * hb          # norm weights, replicated by row
    return n


def _end_weight_elements(shape: DecoderShape, p: int, first: bool, last: bool) -> int:
    """Embedding / positions on the first system, the LM head (when not tied) and the
    final norm on the last one."""
    hb, vb = blocks(shape.hidden, min(p, shape.hidden)), blocks(shape.vocab, min(p, shape.vocab))
    n = 0
    if first or (last and shape.tied):
        n += hb * vb
    if first and shape.arch == "gpt2":
        n += hb * blocks(shape.positions, min(p, shape.positions))
    if last:
        n += (0 if shape.tied else hb * vb) + (2 if shape.arch == "gpt2" else 1) * hb
    return n


def _kv_layout(shape: DecoderShape, batch: int, context: int, p: int, dtype: str
               ) -> kv_attention.KvLayout:
    ctx = min(context, shape.sliding_window) if shape.sliding_window else context
    return kv_attention.layout(batch, shape.kv_heads, shape.group, shape.head_dim, ctx,
                               (p, p), dtype)


def _split_layers(layers: int, systems: int) -> list[int]:
    base, extra = divmod(layers, systems)
    return [base + (1 if i < extra else 0) for i in range(systems)]


def _resident(shape: DecoderShape, p: int, systems: int, batch: int, context: int,
              dtype: str) -> tuple[int, int]:
    """(weights, KV cache) bytes on the busiest PE of the busiest system."""
    eb = BYTES[dtype]
    lay = _kv_layout(shape, batch, context, p, dtype)
    per_layer_w = _layer_weight_elements(shape, p) * eb
    per_layer_kv = lay.cache_bytes()
    worst_w, worst_kv = 0, 0
    split = _split_layers(shape.layers, systems)
    for i, n in enumerate(split):
        w = n * per_layer_w + _end_weight_elements(shape, p, i == 0, i == systems - 1) * eb
        if w + n * per_layer_kv > worst_w + worst_kv:
            worst_w, worst_kv = w, n * per_layer_kv
    return worst_w, worst_kv


def _free_spec(spec: WaferSpec, resident: int) -> WaferSpec | None:
    """The spec a kernel sees: the SRAM the resident data leaves (None when none is)."""
    free = (spec.sram_bytes - resident) // spec.sram_banks * spec.sram_banks
    return spec.replace(sram_bytes=int(free)) if free > 0 else None


def _norm_prefill(spec: WaferSpec, shape: DecoderShape, tokens: int, p: int, dtype: str
                  ) -> float:
    rect = (min(p, tokens), min(p, shape.hidden))
    if shape.arch == "gpt2":
        return min(layer_norm.cost(spec, [tokens, shape.hidden], rect, dtype=dtype,
                                   algorithm=a) for a in ("chain", "tree"))
    return min(rms_norm.cost(spec, [tokens, shape.hidden], rect, dtype=dtype, algorithm=a)
               for a in ("chain", "tree"))


def _norm_decode(spec: WaferSpec, shape: DecoderShape, batch: int, p: int, dtype: str
                 ) -> float:
    """A norm of ``batch`` vectors held [hidden over rows, replicated along the rows]: the
    passes of `rms_norm.cost` (two statistics for the layer norm, `norm.cost`), each
    statistic reduced down the column by the K-tree instead of a chain."""
    n = batch * blocks(shape.hidden, min(p, shape.hidden))
    rows = min(p, shape.hidden)
    acc = "fp32" if dtype != "fp32" else None
    red = _allreduce(spec, batch, rows)
    if shape.arch == "gpt2":
        t = float(op_cycles(spec, n, dtype, "add", writes=0, accumulate=acc)) + red
        t += float(op_cycles(spec, batch, WORK, "mul") + op_cycles(spec, n, dtype, "sub",
                                                                    writes=0))
        t += float(op_cycles(spec, n, dtype, "fmac", writes=0, accumulate=acc)) + red
        t += float(op_cycles(spec, batch, WORK, "fmac") + op_cycles(spec, batch, WORK, "rsqrt")
                   + op_cycles(spec, batch, WORK, "mul"))
        return t + float(op_cycles(spec, n, dtype, "fmac")
                         + op_cycles(spec, n, dtype, "fmac", reads=3))
    t = float(op_cycles(spec, n, dtype, "fmac", writes=0, accumulate=acc)) + red
    t += float(op_cycles(spec, batch, WORK, "fmac") + op_cycles(spec, batch, WORK, "rsqrt"))
    return t + float(op_cycles(spec, n, dtype, "mul") + op_cycles(spec, n, dtype, "mul",
                                                                   reads=2))


def _gemv_work(m: int, k: int, n: int, p: int, dtype: str) -> int:
    grid = (min(p, k), min(p, n))
    kb, nb = blocks(k, grid[0]), blocks(n, grid[1])
    return gemv.sram_bytes(m, k, n, *grid, dtype, "fp32") - kb * nb * BYTES[dtype]


def _gemm(spec: WaferSpec, m: int, k: int, n: int, p: int, dtype: str, bias: bool
          ) -> tuple[float, int]:
    """A resident-weight MeshGEMM on the p x p grid: the token rows padded to at least p
    (padded rows are computed, as the kernel does); the skews of A and of the weight (in
    and back out) added. Returns (cycles, working bytes per PE beyond the weight block)."""
    q = min(p, k, n)
    mm = max(m, q)
    c = gemm.cost(mm, k, n, algorithm="meshgemm", grid=q, spec=spec, dtype=dtype,
                  accumulate="fp32")
    mb, kb, nb = blocks(mm, q), blocks(k, q), blocks(n, q)
    cyc = c.cycles + _skew(spec, _wavelets(mb * kb, dtype), q) \
        + 2 * _skew(spec, _wavelets(kb * nb, dtype), q)
    if bias:
        cyc += float(op_cycles(spec, mb * nb, "fp32", "add", reads=2))
    return cyc, c.sram_bytes - kb * nb * BYTES[dtype]


def _sample_cycles(spec: WaferSpec, shape: DecoderShape, batch: int, p: int, sampling: str
                   ) -> float:
    """Greedy: a local argmax over the PE's logits, then an allreduce of (value, index)
    along the row. Sampling runs on the host (the I/O is charged apart)."""
    if sampling != "greedy":
        return 0.0
    vb = blocks(shape.vocab, min(p, shape.vocab))
    return float(op_cycles(spec, batch * vb, WORK, "max")) \
        + _allreduce(spec, 2 * batch, min(p, shape.vocab))


def _lookup_cycles(spec: WaferSpec, shape: DecoderShape, tokens: int, p: int, dtype: str
                   ) -> float:
    """Each token's column of the [hidden, vocab] table floods its slice along the rows;
    the tokens' floods follow each other."""
    hb = blocks(shape.hidden, min(p, shape.hidden))
    return multicast_cycles(spec, _wavelets(tokens * hb, dtype), min(p, shape.vocab))


def _prefill_attention(spec: WaferSpec, shape: DecoderShape, batch: int, prompt: int, p: int,
                       dtype: str) -> tuple[attn.Layout, int]:
    """The prefill's flash attention (its fastest layout in ``spec``'s SRAM) and the number
    of window chunks it runs as (1: causal over the whole prompt).

    Grouped-query: one attention group per (sequence, query head); a group's K/V blocks are
    its key/value head's, read where they are (the relayout sends each K/V head once,
    multicast to its query heads' bands). With a sliding window ``w`` shorter than the
    prompt, the prompt is cut into ``c = ceil(P / w)`` chunks and chunk j's queries attend
    over chunks j-1 and j (2w tokens, the band of the window inside them), each chunk one
    more group: ``c`` causal attentions of 2w tokens instead of one of P, taken when it is
    faster."""
    groups = batch * shape.heads
    full = attn.choose_layout(spec, groups, prompt, shape.head_dim, max_rows=p, max_cols=p,
                              dtype=dtype, rotary_pct=0.0)
    w = shape.sliding_window
    if not w or prompt <= 2 * w:
        return full, 1
    chunks = -(-prompt // w)
    try:
        chunked = attn.choose_layout(spec, groups * chunks, 2 * w, shape.head_dim,
                                     max_rows=p, max_cols=p, dtype=dtype, rotary_pct=0.0)
    except KernelError:
        return full, 1
    return (chunked, chunks) if chunked.cycles < full.cycles else (full, 1)


def _prefill(spec: WaferSpec, shape: DecoderShape, batch: int, prompt: int, p: int,
             dtype: str, sampling: str, resident: int) -> tuple[Phase, int, str]:
    """Prefill cycles, the largest working set (bytes per PE) and the attention layout."""
    t = batch * prompt
    eb = BYTES[dtype]
    hb = blocks(shape.hidden, min(p, shape.hidden))
    mb = blocks(t, min(p, t))
    act = 2 * mb * hb * eb                               # residual stream + one activation
    layer: dict[str, float] = {}
    works = [act]
    layer["norm"] = _norm_prefill(spec, shape, t, p, dtype)
    for name, k, n, bias in shape.matrices():
        cyc, work = _gemm(spec, t, k, n, p, dtype, bias)
        layer[name] = cyc
        works.append(work + act)
        if name == "qkv":
            rot = mb * blocks((shape.heads + shape.kv_heads) * shape.head_dim, p)
            if shape.arch == "llama":
                layer["rotary"] = rotary.pass_cycles(spec, rot, dtype) + float(
                    op_cycles(spec, rot / 2, WORK, "sin") + op_cycles(spec, rot / 2, WORK,
                                                                       "cos"))
            kept = min(prompt, shape.sliding_window or prompt)    # a window keeps its last
            kv_elems = 2.0 * batch * kept * shape.kv_heads * shape.head_dim
            layer["kv_cache_write"] = _relayout(spec, kv_elems, p, dtype)
            free = _free_spec(spec, resident + act)
            if free is None:
                raise InferencePlanError("no SRAM left for attention beside the resident "
                                         "weights and KV cache")
            lay, chunks = _prefill_attention(free, shape, batch, prompt, p, dtype)
            # into the attention layout: Q per query head; K and V once per key/value head
            # (multicast to the bands of its query heads), and with window chunks once more
            # for the next chunk
            kv_copies = 2 if chunks > 1 else 1
            into = t * (shape.heads + 2 * kv_copies * shape.kv_heads) * shape.head_dim
            layer["attention_relayout"] = _relayout(spec, into, p, dtype) \
                + _relayout(spec, t * shape.heads * shape.head_dim, p, dtype)
            layer["attention"] = lay.cycles
            att = (f"{lay.rows}x{lay.cols}, fold {lay.fold}, kv {lay.kv}, split {lay.split}"
                   + (f", {chunks} window chunks of {2 * shape.sliding_window} tokens"
                      if chunks > 1 else ""))
            layer["residual"] = fused_cycles(spec, mb * hb, dtype, ("add",), 2)
        elif name == "o":
            layer["norm2"] = _norm_prefill(spec, shape, t, p, dtype)
        elif name == "up":
            fb = mb * blocks(shape.ffn, min(p, shape.ffn))
            layer["activation"] = fused_cycles(spec, fb, dtype, ("silu", "mul"), 2) \
                if shape.gated else fused_cycles(spec, fb, dtype, ("gelu_fast",), 1)
        elif name == "down":
            layer["residual2"] = fused_cycles(spec, mb * hb, dtype, ("add",), 2)
    once = {"embedding": _lookup_cycles(spec, shape, t, p, dtype)
            + _relayout(spec, t * shape.hidden, p, dtype)}
    if shape.arch == "gpt2":
        once["positions"] = once["embedding"] + fused_cycles(spec, mb * hb, dtype, ("add",), 2)
    once["final_norm"] = _norm_decode(spec, shape, batch, p, dtype)
    once["lm_head"] = _gemv_op(spec, "lm_head", batch, shape.hidden, shape.vocab, p,
                               dtype, False).cycles
    once["sample"] = _sample_cycles(spec, shape, batch, p, sampling)
    return Phase(layer, once, shape.layers), max(works), att


@dataclass(frozen=True)
class Op:
    """One pass of a decode step, in the order the step runs it.

    ``kernel`` says what runs it: ``gemv`` (`kernels.gemv` on ``grid``, ``gemv = (m, k,
    n)``, its weight resident), ``kv_attention`` (`kernels.kv_attention` on ``kv``, the
    layer's cache resident) or ``local`` (norms, rotary, bias and residual adds, the
    activation, the embedding lookup, sampling: local passes and line reductions priced by
    the elementwise kernels' closed forms). ``per_layer``: once per layer, with that
    layer's weights and cache; else once per step. ``cycles`` is the closed form; running
    the program (`waferscale.generate`) checks it against the fabric's count for the
    ``gemv`` and ``kv_attention`` ops."""

    name: str
    kernel: str
    cycles: float
    per_layer: bool
    gemv: tuple[int, int, int] | None = None
    grid: tuple[int, int] | None = None
    kv: kv_attention.KvLayout | None = None


@dataclass(frozen=True)
class DecodeProgram:
    """A decode step at ``context`` positions (the new token included) as the ops the
    wafer runs: the plan's decode cycles are its ops' cycles, and `waferscale.generate`
    executes exactly these ops to produce the tokens."""

    ops: tuple[Op, ...]
    layers: int
    context: int
    work_bytes: int
    dtype: str

    @property
    def cycles(self) -> float:
        return float(sum(o.cycles * (self.layers if o.per_layer else 1) for o in self.ops))

    def phase(self) -> Phase:
        layer: dict[str, float] = {}
        once: dict[str, float] = {}
        for o in self.ops:
            part = layer if o.per_layer else once
            part[o.name] = part.get(o.name, 0.0) + o.cycles
        return Phase(layer, once, self.layers)


def _gemv_op(spec: WaferSpec, name: str, m: int, k: int, n: int, p: int, dtype: str,
             per_layer: bool = True) -> Op:
    grid = (min(p, k), min(p, n))
    c = gemv.cost(m, k, n, algorithm="ktree", grid=grid, spec=spec, dtype=dtype,
                  accumulate="fp32").cycles
    return Op(name, "gemv", c, per_layer, (m, k, n), grid)


@functools.lru_cache(maxsize=1024)
def decode_program(spec: WaferSpec, shape: DecoderShape, batch: int, context: int, p: int,
                   dtype: str, sampling: str) -> DecodeProgram:
    """The ops of one decode step at ``context`` positions on the p x p grid (`Op`)."""
    hb = blocks(shape.hidden, min(p, shape.hidden))
    ops: list[Op] = [Op("embedding", "local", _lookup_cycles(spec, shape, batch, p, dtype),
                        False)]
    if shape.arch == "gpt2":
        ops.append(Op("positions", "local", ops[0].cycles + float(
            op_cycles(spec, batch * hb, dtype, "add", reads=2)), False))
    ops.append(Op("norm", "local", _norm_decode(spec, shape, batch, p, dtype), True))
    works = []
    for name, k, n, bias in shape.matrices():
        op = _gemv_op(spec, name, batch, k, n, p, dtype)
        ops.append(op)
        works.append(_gemv_work(batch, k, n, p, dtype))
        if bias:
            ops.append(Op(f"{name}_bias", "local", float(op_cycles(
                spec, batch * blocks(n, op.grid[1]), "fp32", "add", reads=2)), True))
        if name == "qkv":
            lay = _kv_layout(shape, batch, context, p, dtype)
            if shape.arch == "llama":
                rot = batch * (shape.group + 1) * lay.dc
                ops.append(Op("rotary", "local", rotary.pass_cycles(spec, rot, dtype) + float(
                    op_cycles(spec, lay.dc / 2, WORK, "sin")
                    + op_cycles(spec, lay.dc / 2, WORK, "cos")), True))
            att = kv_attention._cost(spec, lay)
            ops.append(Op("attention", "kv_attention", att.cycles, True, kv=lay))
            works.append(att.work_bytes)
        elif name == "o":
            ops.append(Op("residual", "local",
                          float(op_cycles(spec, batch * hb, dtype, "add", reads=2)), True))
            ops.append(Op("norm2", "local", _norm_decode(spec, shape, batch, p, dtype), True))
        elif name == "up":
            fb = batch * blocks(shape.ffn, min(p, shape.ffn))
            ops.append(Op("activation", "local",
                          fused_cycles(spec, fb, dtype, ("silu", "mul"), 2) if shape.gated
                          else fused_cycles(spec, fb, dtype, ("gelu_fast",), 1), True))
        elif name == "down":
            ops.append(Op("residual2", "local",
                          float(op_cycles(spec, batch * hb, dtype, "add", reads=2)), True))
    ops.append(Op("final_norm", "local", _norm_decode(spec, shape, batch, p, dtype), False))
    ops.append(_gemv_op(spec, "lm_head", batch, shape.hidden, shape.vocab, p, dtype, False))
    works.append(_gemv_work(batch, shape.hidden, shape.vocab, p, dtype))
    ops.append(Op("sample", "local", _sample_cycles(spec, shape, batch, p, sampling), False))
    return DecodeProgram(tuple(ops), shape.layers, context, max(works), dtype)


def _decode(spec: WaferSpec, shape: DecoderShape, batch: int, context: int, p: int,
            dtype: str, sampling: str) -> tuple[Phase, int]:
    """One decode step at ``context`` positions (the new token included)."""
    prog = decode_program(spec, shape, batch, context, p, dtype, sampling)
    return prog.phase(), prog.work_bytes


def parse_grid(text: str | tuple[int, int] | None, spec: WaferSpec) -> tuple[int, int]:
    """``RxC`` (or a pair) inside the spec's program rectangle; default: the rectangle."""
    if text is None:
        return spec.rows, spec.cols
    if isinstance(text, str):
        try:
            r, c = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise InferencePlanError(f"--grid {text!r} must look like 720x720 (rows x "
                                     f"columns)") from None
    else:
        r, c = (int(v) for v in text)
    if r < 1 or c < 1:
        raise InferencePlanError(f"grid {r}x{c}: rows and columns must be >= 1")
    if r > spec.rows or c > spec.cols:
        raise InferencePlanError(f"grid {r}x{c} does not fit {spec.name}'s "
                                 f"{spec.rows}x{spec.cols} program rectangle; use at most "
                                 f"{spec.rows}x{spec.cols}")
    return r, c


def _phases(spec: WaferSpec, shape: DecoderShape, p: int, systems: int, batch: int,
            prompt_len: int, context: int, dtype: str, sampling: str
            ) -> tuple[Phase, Phase, int, int, int, str]:
    """(prefill, first decode step, weights, KV cache, working bytes per PE, attention
    layout) of the plan on ``systems`` systems of p x p; `InferencePlanError` (or the
    kernels' `KernelError`) when the resident data and the kernels' buffers do not fit."""
    weights, kv = _resident(shape, p, systems, batch, context, dtype)
    resident = weights + kv
    if resident >= spec.sram_bytes:
        raise InferencePlanError(f"weights ({weights} B) + KV cache ({kv} B) per PE on "
                                 f"{p}x{p} exceed the {spec.sram_bytes} B SRAM")
    prefill, pwork, att = _prefill(spec, shape, batch, prompt_len, p, dtype, sampling,
                                   resident)
    first, dwork = _decode(spec, shape, batch, prompt_len + 1, p, dtype, sampling)
    dwork = max(dwork, _kv_layout(shape, batch, context, p, dtype).work_bytes())
    work = max(pwork, dwork)
    if resident + work > spec.sram_bytes:
        raise InferencePlanError(
            f"weights ({weights} B) + KV cache ({kv} B) + the kernels' buffers ({work} B) per "
            f"PE on {p}x{p} exceed the {spec.sram_bytes} B SRAM")
    return prefill, first, weights, kv, work, att


def _smallest_grid(spec: WaferSpec, shape: DecoderShape, start: int, batch: int,
                   prompt_len: int, context: int, dtype: str, sampling: str) -> int | None:
    """The smallest square side in [start, the spec's] on which the whole model fits one
    system, or None. Blocks are padded to whole tiles, so the bytes per PE do not fall
    monotonically with the side (4096 over 640 PEs is 7 per PE, over 720 it is 6): every
    side is tried, the cheap resident check first."""
    for q in range(start, min(spec.rows, spec.cols, shape.hidden) + 1):
        w, kv = _resident(shape, q, 1, batch, context, dtype)
        if w + kv >= spec.sram_bytes:
            continue
        try:
            _phases(spec, shape, q, 1, batch, prompt_len, context, dtype, sampling)
        except (InferencePlanError, KernelError):
            continue
        return q
    return None


def plan_inference(shape: DecoderShape, spec: WaferSpec | str | None = "wse2", *,
                   grid: str | tuple[int, int] | None = None, batch: int = 1,
                   prompt_len: int = 128, new_tokens: int = 32, dtype: str = "bf16",
                   sampling: str = "greedy", max_systems: int = 64) -> InferencePlan:
    """Plan and time prefill + decode of ``shape`` on a square grid of ``spec`` (the
    largest square in ``grid``, default the program rectangle; capped at the hidden size,
    beyond which PEs would hold no block of the hidden axis).

    When weights and KV cache do not fit one grid's SRAM, the layers are split over the
    fewest systems (each running the same grid) that hold them, activations crossing the
    system I/O; ``fits`` is then False and ``needs`` says what one system would need.
    """
    spec = get_spec(spec)
    if sampling not in SAMPLING:
        raise InferencePlanError(f"sampling {sampling!r}: use one of {', '.join(SAMPLING)}")
    for name, v in (("batch", batch), ("prompt_len", prompt_len), ("new_tokens", new_tokens)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise InferencePlanError(f"{name} must be a positive integer, got {v!r}")
    if dtype not in BYTES:
        raise InferencePlanError(f"dtype {dtype!r}: use fp32, fp16 or bf16")
    context = prompt_len + new_tokens
    if context > shape.positions:
        raise InferencePlanError(f"{shape.name}: prompt {prompt_len} + {new_tokens} new "
                                 f"tokens exceed its {shape.positions} positions")
    req = parse_grid(grid, spec)
    p = max(1, min(req[0], req[1], shape.hidden))
    notes: list[str] = []
    if req[0] != req[1] or p < min(req):
        whose = "asked for" if grid is not None else f"program rectangle of {spec.name}"
        why = ("MeshGEMM's Cannon steps need a square" if p == min(req) else
               f"capped at the hidden size {shape.hidden}")
        notes.append(f"the kernels run on a square grid ({why}): {p}x{p} of the "
                     f"{req[0]}x{req[1]} {whose}; the other PEs are idle")
    # systems: the fewest whose busiest PE holds its layers' weights, its cache and the
    # kernels' buffers (layers split evenly; embedding on the first, LM head on the last)
    why_not = ""
    kernels: dict[str, str] = {}
    systems = 0
    for s in range(1, max_systems + 1):
        w, kv = _resident(shape, p, s, batch, context, dtype)
        if w + kv >= spec.sram_bytes:
            continue
        try:
            prefill, decode_first, weights, kv, work, att = _phases(
                spec, shape, p, s, batch, prompt_len, context, dtype, sampling)
        except (InferencePlanError, KernelError) as exc:
            if s == 1:
                why_not = str(exc)
            continue
        systems = s
        break
    if not systems:
        raise InferencePlanError(f"{shape.name} on {p}x{p} PEs of {spec.name}: even "
                                 f"{max_systems} systems cannot hold its weights, KV cache "
                                 f"and kernel buffers ({why_not or 'SRAM'})")
    if systems > 1 and not why_not:
        w, kv1 = _resident(shape, p, 1, batch, context, dtype)
        why_not = (f"weights ({w} B) + KV cache ({kv1} B) per PE on {p}x{p} exceed the "
                   f"{spec.sram_bytes} B SRAM")
    kernels["prefill_projections"] = f"MeshGEMM on {min(p, shape.hidden)}x{min(p, shape.hidden)}"
    kernels["prefill_attention"] = f"flash attention (causal), layout {att}"
    kernels["decode_projections"] = f"MeshGEMV (K-tree allreduce) on {p}x{p}"
    kl = _kv_layout(shape, batch, context, p, dtype)
    kernels["decode_attention"] = (f"KV cache over {kl.rows_used} rows x {kl.cols_used} "
                                   f"columns ({kl.dc} features x up to {kl.ell} positions "
                                   f"per PE), K-tree allreduces")
    # decode steps (the first token comes out of the prefill): cycles depend on the context
    # only through the cache rows in use and the positions per PE
    steps: list[tuple[int, float]] = []
    cache: dict[tuple[int, int], float] = {}
    for c in range(prompt_len + 1, context):      # token i (1..N-1) sees P + i positions
        lay = _kv_layout(shape, batch, c, p, dtype)
        key = (lay.rows_used, lay.ell)
        if key not in cache:
            cache[key] = _decode(spec, shape, batch, c, p, dtype, sampling)[0].cycles
        steps.append((c, cache[key]))
    eb = BYTES[dtype]
    hops = systems - 1
    host = 0.0
    if sampling != "greedy":
        host = _io_seconds(spec, batch * shape.vocab * 4)
        notes.append("sampling with temperature / top-k / top-p runs on the host: the logits "
                     "(fp32) cross the system I/O each token (charged); the host's own time is "
                     "not modelled")
    io = {"prefill": hops * _io_seconds(spec, batch * prompt_len * shape.hidden * eb) + host
          + _io_seconds(spec, batch * prompt_len * 4),
          "decode_step": hops * _io_seconds(spec, batch * shape.hidden * eb) + host}
    fits = systems == 1
    needs: dict[str, Any] = {}
    if not fits:
        one, one_kv = _resident(shape, p, 1, batch, context, dtype)
        smallest = _smallest_grid(spec, shape, p + 1, batch, prompt_len, context, dtype,
                                  sampling)
        needs = {"weights_bytes_per_pe_on_one_grid": one,
                 "kv_cache_bytes_per_pe_on_one_grid": one_kv,
                 "sram_bytes_per_pe": spec.sram_bytes,
                 "smallest_square_grid": f"{smallest}x{smallest}" if smallest else None,
                 "systems_of_this_grid": systems}
        where = (f"a grid of at least {smallest}x{smallest} on one {spec.name}" if smallest
                 else f"more than one {spec.name}")
        notes.append(f"does not fit one {p}x{p} grid: {why_not}; it would need {where}, or "
                     f"its layers split over {systems} systems of {p}x{p} (the figures: that "
                     f"pipeline of systems, activations crossing the "
                     f"{spec.io_bits_per_s / 1e12:g} Tb/s system I/O between them, "
                     f"bandwidth only: the link latency is not modelled)")
    if shape.sliding_window and context > shape.sliding_window:
        w = shape.sliding_window
        how = ("in window chunks (each chunk's queries over it and the chunk before: "
               f"{2 * w} tokens per chunk)" if "window chunks" in att else
               "causal over the whole prompt, the window masked inside it (chunking is not "
               "faster here)")
        notes.append(f"sliding window {w}: decode attends to the last {w} positions (the "
                     f"cache is a ring of {w} slots); prefill attention runs {how}")
    if shape.group > 1:
        notes.append(f"grouped-query attention ({shape.group} query heads per key/value "
                     f"head): the KV cache holds the {shape.kv_heads} key/value heads and "
                     f"the decode kernel reads each for its {shape.group} query heads; in "
                     f"prefill each K/V head is sent once into the attention layout, "
                     f"multicast to its query heads' bands (no expanded copies)")
    notes.append("weights stored once, blocked over the grid in the GEMV layout; MeshGEMM's "
                 "skews of the weights before and after each prefill product are charged")
    sram = {"weights": weights, "kv_cache": kv, "working": work,
            "total": weights + kv + work, "capacity": spec.sram_bytes}
    return InferencePlan(shape, spec, (p, p), req, dtype, batch, prompt_len, new_tokens,
                         sampling, systems, sram, prefill, tuple(steps), decode_first, io,
                         fits, "" if fits else why_not, needs, tuple(notes), kernels)


__all__ = ["DecodeProgram", "DecoderShape", "InferencePlan", "InferencePlanError", "Op",
           "Phase", "SAMPLING", "decode_program", "parse_grid", "plan_inference"]
