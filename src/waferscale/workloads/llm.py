"""Decoder-only LLM presets for inference: published transformers configs, meta weights.

Each preset is the ``config.json`` its publisher put on the Hugging Face Hub (the URL is
in ``source``), written out here key by key, so nothing is downloaded: the model is built
from the config on the meta device (shapes, no weights), which is all the inference
estimate needs (`waferscale.compiler.inference`). ``params`` is the count the config
builds (tests check it against the built model); the published model card names the
same size (8B, 70B, 7B ...).

Only keys that change the shapes, the arithmetic or the generation defaults are kept
(sizes, heads, vocabulary, positions, rotary base and scaling, norm epsilon, bias flags,
tied embeddings, special tokens, dtype); initialiser ranges and the like are left at
transformers' defaults, which do not matter for meta weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from waferscale.errors import WorkloadError


@dataclass(frozen=True)
class LlmPreset:
    """One published decoder-only model: ``model_type`` picks the transformers config and
    model class; ``config`` is the published ``config.json`` (shape keys); ``source`` the
    file it was copied from; ``params`` the parameters it builds; ``dtype`` the published
    ``torch_dtype`` (what the weights are stored in)."""

    name: str
    model_type: str
    config: Mapping[str, Any]
    source: str
    params: int
    dtype: str
    note: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


_LLAMA3_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "rope_scaling": None, "attention_bias": False,
    "tie_word_embeddings": False, "bos_token_id": 128000, "eos_token_id": 128001,
}
#: Llama 3.1's rotary scaling ("llama3" rope type), as published in its config.json.
LLAMA31_ROPE_SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192, "rope_type": "llama3"}
_LLAMA31_8B = {**_LLAMA3_8B, "max_position_embeddings": 131072,
               "rope_scaling": dict(LLAMA31_ROPE_SCALING)}
_LLAMA31_70B = {**_LLAMA31_8B, "hidden_size": 8192, "intermediate_size": 28672,
                "num_hidden_layers": 80, "num_attention_heads": 64}
_MISTRAL_7B = {
    "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}
_QWEN2_7B = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
    "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 131072,
    "max_window_layers": 28, "tie_word_embeddings": False,
    "bos_token_id": 151643, "eos_token_id": 151643,
}
_GPT2 = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
         "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
         "tie_word_embeddings": True, "bos_token_id": 50256, "eos_token_id": 50256}

_HUB = "https://huggingface.co/{}/blob/main/config.json"

LLM_PRESETS: Mapping[str, LlmPreset] = MappingProxyType({
    "llama3-8b": LlmPreset("llama3-8b", "llama", _LLAMA3_8B,
                           _HUB.format("meta-llama/Meta-Llama-3-8B"), 8_030_261_248, "bf16"),
    "llama3.1-8b": LlmPreset("llama3.1-8b", "llama", _LLAMA31_8B,
                             _HUB.format("meta-llama/Llama-3.1-8B"), 8_030_261_248, "bf16"),
    "llama3.1-70b": LlmPreset("llama3.1-70b", "llama", _LLAMA31_70B,
                              _HUB.format("meta-llama/Llama-3.1-70B"), 70_553_706_496,
                              "bf16"),
    "mistral-7b": LlmPreset("mistral-7b", "mistral", _MISTRAL_7B,
                            _HUB.format("mistralai/Mistral-7B-v0.1"), 7_241_732_096, "bf16",
                            note="v0.1 (32,000 tokens, 4,096-token sliding window)"),
    "qwen2-7b": LlmPreset("qwen2-7b", "qwen2", _QWEN2_7B, _HUB.format("Qwen/Qwen2-7B"),
                          7_615_616_512, "bf16", note="q/k/v projections carry biases"),
    "gpt2": LlmPreset("gpt2", "gpt2", _GPT2, _HUB.format("openai-community/gpt2"),
                      124_439_808, "fp32"),
    "gpt2-medium": LlmPreset("gpt2-medium", "gpt2",
                             {**_GPT2, "n_embd": 1024, "n_layer": 24, "n_head": 16},
                             _HUB.format("openai-community/gpt2-medium"), 354_823_168, "fp32"),
    "gpt2-large": LlmPreset("gpt2-large", "gpt2",
                            {**_GPT2, "n_embd": 1280, "n_layer": 36, "n_head": 20},
                            _HUB.format("openai-community/gpt2-large"), 774_030_080, "fp32"),
    "gpt2-xl": LlmPreset("gpt2-xl", "gpt2",
                         {**_GPT2, "n_embd": 1600, "n_layer": 48, "n_head": 25},
                         _HUB.format("openai-community/gpt2-xl"), 1_557_611_200, "fp32"),
})

#: The preset names, in table order.
LLM_NAMES: tuple[str, ...] = tuple(LLM_PRESETS)

_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def llm_preset(name: str) -> LlmPreset:
    """The preset called ``name``; a `WorkloadError` naming the known ones otherwise."""
    try:
        return LLM_PRESETS[name]
    except KeyError:
        raise WorkloadError(f"unknown LLM preset {name!r}; known: {', '.join(LLM_NAMES)}") \
            from None


def llm_config(name: str, *, layers: int | None = None, attn_implementation: str = "sdpa",
               **overrides: Any) -> Any:
    """The transformers config of a preset (``use_cache=False``, as the compiler captures
    models; generation turns the cache on itself), with ``layers`` decoder layers if given
    and any ``overrides`` (config keys)."""
    from transformers import AutoConfig

    preset = llm_preset(name)
    raw = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in preset.config.items()}
    raw.update(overrides)
    if layers is not None:
        if layers < 1:
            raise WorkloadError(f"layers must be positive, got {layers}")
        raw["n_layer" if preset.model_type == "gpt2" else "num_hidden_layers"] = layers
    raw["use_cache"] = False
    config = AutoConfig.for_model(preset.model_type, **raw)
    config._attn_implementation = attn_implementation
    return config


def build_llm(name: str, *, device: str | torch.device | None = "meta",
              layers: int | None = None, dtype: str | None = None, seed: int = 0,
              **overrides: Any) -> torch.nn.Module:
    """The preset's causal-LM model (eval mode), on the meta device by default (no weights
    allocated: a 70B model builds in seconds). ``dtype`` defaults to the published one.
    With another device the weights are random (``seed``), which only small presets and
    truncated ones (``layers``) can afford here."""
    from transformers import AutoModelForCausalLM

    preset = llm_preset(name)
    config = llm_config(name, layers=layers, **overrides)
    tdtype = _TORCH_DTYPES[dtype or preset.dtype]
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return model.to(dtype=tdtype).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(device=device, dtype=tdtype).eval()


__all__ = ["LLAMA31_ROPE_SCALING", "LLM_NAMES", "LLM_PRESETS", "LlmPreset", "build_llm",
           "llm_config", "llm_preset"]
