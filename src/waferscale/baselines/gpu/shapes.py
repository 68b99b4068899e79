"""The shape of a decoder-only transformer, as the GPU model needs it, and its FLOP counts.

Shapes come from the model's published configuration (GenSLM's GPT-NeoX JSONs shipped with
`waferscale.workloads`, GPT-2's defaults) or are given directly (the Megatron GPTs of the
validation cases). Nothing here looks at the wafer.

FLOP conventions (2 FLOPs per multiply-add; docs/gpu.md, "FLOPs"): per token and layer the
forward pass does ``2 (4 h^2 + 2 h f)`` in the dense matmuls and ``4 s h`` in attention
(full, non-causal: Megatron's convention); the logits add ``2 h V``. Training is three
forward passes; full recompute adds one more for the layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from waferscale.baselines.errors import BaselineError, GpuConfigError


@dataclass(frozen=True)
class TransformerShape:
    """A GPT-style decoder: ``layers`` blocks of attention (``heads`` heads over ``hidden``)
    and an MLP of width ``ffn``, a vocabulary of ``vocab`` tokens.

    ``positions`` is ``"rotary"`` (no table, any sequence length) or ``"learned"`` (a table
    of ``max_positions`` rows that bounds the sequence). ``attention_dropout`` and
    ``hidden_dropout`` are the probabilities the config declares: a dropout keeps a 1-byte
    mask per element for the backward pass. ``recompute_hint`` is ``"full"`` where the
    config asks for activation checkpointing (GenSLM-25B's ``use_deepspeed_checkpointing``).
    """

    name: str
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    positions: str = "rotary"
    max_positions: int = 0
    tied_embeddings: bool = False
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    recompute_hint: str = "none"

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "ffn", "vocab"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise GpuConfigError(f"model {self.name}: {name} must be a positive integer, "
                                     f"got {v!r}")
        if self.hidden % self.heads:
            raise GpuConfigError(f"model {self.name}: {self.heads} heads do not divide hidden "
                                 f"size {self.hidden}")
        if self.positions not in ("rotary", "learned"):
            raise GpuConfigError(f"model {self.name}: positions must be 'rotary' or "
                                 f"'learned', got {self.positions!r}")
        if self.positions == "learned" and self.max_positions < 1:
            raise GpuConfigError(f"model {self.name}: a learned position table needs "
                                 f"max_positions >= 1")
        for name in ("attention_dropout", "hidden_dropout"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise GpuConfigError(f"model {self.name}: {name} must be in [0, 1), got {v!r}")
        if self.recompute_hint not in ("none", "full"):
            raise GpuConfigError(f"model {self.name}: recompute_hint must be 'none' or 'full'")

    # -- sizes ------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Weights and biases of one block: QKV, output projection, the two MLP matmuls,
        two layer norms."""
        h, f = self.hidden, self.ffn
        return 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h

    @property
    def embedding_params(self) -> int:
        """Token embedding, output projection (unless tied), position table, final norm."""
        h = self.hidden
        out = 0 if self.tied_embeddings else self.vocab * h
        pos = self.max_positions * h if self.positions == "learned" else 0
        return self.vocab * h + out + pos + 2 * h

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params

    def check_seq(self, seq: int) -> None:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise GpuConfigError(f"sequence length must be a positive integer, got {seq!r}")
        if self.positions == "learned" and seq > self.max_positions:
            raise GpuConfigError(f"model {self.name} has a learned table of "
                                 f"{self.max_positions} positions; --seq {seq} does not fit")

    # -- FLOPs per token --------------------------------------------------------------------
    def dense_flops_per_token(self) -> float:
        """Forward FLOPs of one block's matmuls, per token."""
        h, f = self.hidden, self.ffn
        return 2.0 * (4 * h * h + 2 * h * f)

    def attention_flops_per_token(self, seq: int, causal: bool = False) -> float:
        """Forward FLOPs of one block's scores and context, per token: ``4 s h`` in full,
        half when a causal kernel skips the masked half."""
        return 4.0 * seq * self.hidden * (0.5 if causal else 1.0)

    def logits_flops_per_token(self) -> float:
        return 2.0 * self.hidden * self.vocab

    def model_flops_per_token(self, seq: int) -> float:
        """Training FLOPs per token without recompute, full attention (the MFU numerator;
        Korthikanti et al. appendix A)."""
        per_layer = self.dense_flops_per_token() + self.attention_flops_per_token(seq)
        return 3.0 * (self.layers * per_layer + self.logits_flops_per_token())

    def megatron_flops_per_token(self, seq: int, recompute: bool) -> float:
        """Training FLOPs per token as Megatron counts them (Narayanan et al. eq. 3 when
        ``recompute``): the layers 4x forward with full recompute, 3x without; logits 3x."""
        per_layer = self.dense_flops_per_token() + self.attention_flops_per_token(seq)
        return (4.0 if recompute else 3.0) * self.layers * per_layer \
            + 3.0 * self.logits_flops_per_token()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "layers": self.layers, "hidden": self.hidden,
                "heads": self.heads, "ffn": self.ffn, "vocab": self.vocab,
                "params": self.params, "positions": self.positions,
                "attention_dropout": self.attention_dropout,
                "hidden_dropout": self.hidden_dropout, "recompute_hint": self.recompute_hint}


def gpt(name: str, layers: int, hidden: int, heads: int, vocab: int = 51200, seq: int = 2048
        ) -> TransformerShape:
    """A Megatron GPT of the validation cases: FFN 4h, learned positions, tied embeddings,
    dropout 0.1 (Megatron-LM's defaults)."""
    return TransformerShape(name, layers=layers, hidden=hidden, heads=heads, ffn=4 * hidden,
                            vocab=vocab, positions="learned", max_positions=seq,
                            tied_embeddings=True, attention_dropout=0.1, hidden_dropout=0.1)


def from_neox_config(name: str, raw: dict[str, Any]) -> TransformerShape:
    """Shape of a GPT-NeoX (HuggingFace ``GPTNeoXConfig`` keys) configuration.

    Dropout is read from ``GPTNeoXConfig``'s own keys (``attention_dropout``,
    ``hidden_dropout``, default 0). GenSLM's files also carry ``attention_probs_dropout_prob``
    and ``hidden_dropout_prob``, which are not GPT-NeoX keys: transformers ignores them (the
    GPT-NeoX model of 2022 had no dropout at all), and so does this model.
    """
    try:
        hint = "full" if raw.get("use_deepspeed_checkpointing") else "none"
        return TransformerShape(
            name, layers=int(raw["num_hidden_layers"]), hidden=int(raw["hidden_size"]),
            heads=int(raw["num_attention_heads"]), ffn=int(raw["intermediate_size"]),
            vocab=int(raw["vocab_size"]), positions="rotary",
            max_positions=int(raw.get("max_position_embeddings", 0)),
            tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_dropout=float(raw.get("attention_dropout", 0.0)),
            hidden_dropout=float(raw.get("hidden_dropout", 0.0)),
            recompute_hint=hint)
    except KeyError as exc:
        raise BaselineError(f"model {name}: GPT-NeoX config lacks {exc.args[0]!r}") from None


def model_shape(model: str) -> TransformerShape:
    """Shape of a preset (``genslm-25m/250m/2.5b/25b``, ``gpt2``) or of a GPT-NeoX config
    JSON file. GenSLM presets take the published config plus the workload's corrections
    (GenSLM-25B is built with hidden size 8192; see docs/genslm.md)."""
    if model.endswith(".json"):
        try:
            with open(model, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as exc:
            raise BaselineError(f"model config {model}: cannot read it ({exc})") from None
        return from_neox_config(model, raw)
    if model == "gpt2":
        # transformers' GPT2Config() defaults: GPT-2 small
        return TransformerShape("gpt2", layers=12, hidden=768, heads=12, ffn=3072, vocab=50257,
                                positions="learned", max_positions=1024, tied_embeddings=True,
                                attention_dropout=0.1, hidden_dropout=0.1)
    from waferscale.workloads import GENSLM_PRESETS, data_path

    if model not in GENSLM_PRESETS:
        known = ", ".join([*GENSLM_PRESETS, "gpt2"])
        raise BaselineError(f"unknown model {model!r}; known: {known}, or a GPT-NeoX "
                            f"config.json")
    preset = GENSLM_PRESETS[model]
    raw = json.loads(data_path(preset.config).read_text(encoding="utf-8"))
    raw.update(preset.corrections)
    return from_neox_config(model, raw)


def with_layers(shape: TransformerShape, layers: int) -> TransformerShape:
    return replace(shape, layers=layers)


__all__ = ["TransformerShape", "from_neox_config", "gpt", "model_shape", "with_layers"]
