"""`waferscale.compile_lm(model).generate(...)` gives transformers' tokens (greedy, and
sampled with the same seed) on tiny Llama, Mistral, Qwen2 and GPT-2 configs, with a
report of time to first token, prefill / decode tokens/s and SRAM per PE."""

from __future__ import annotations

import pytest
import torch

import waferscale
from waferscale.generate import GenerateError

VOCAB = 96


def tiny(kind: str) -> torch.nn.Module:
    """A 1-layer model of the family, weights from seed 0 (wide enough initialisation
    that greedy decoding does not settle on one token)."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64,
              "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "initializer_range": 0.2}
    torch.manual_seed(0)
    if kind == "llama":
        m = LlamaForCausalLM(LlamaConfig(**common, num_hidden_layers=1,
                                         rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                       "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 16
                                                       }))
    elif kind == "mistral":
        m = MistralForCausalLM(MistralConfig(**common, num_hidden_layers=1, sliding_window=32))
    elif kind == "qwen2":
        m = Qwen2ForCausalLM(Qwen2Config(**common, num_hidden_layers=1))
    else:
        m = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=1,
                                       n_head=4, initializer_range=0.2, bos_token_id=0,
                                       eos_token_id=0))
    m.config._attn_implementation = "sdpa"
    return m.eval()


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gpt2"])
def test_generate_equals_transformers(kind):
    m = tiny(kind)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    lm = waferscale.compile_lm(m)
    ref = m.generate(ids, max_new_tokens=5, do_sample=False)
    got = lm.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, ref)
    assert len(set(ref[:, 7:].flatten().tolist())) > 1       # not one repeated token
    # the forward ran whole on the wafer: RMS norm, rotary, SwiGLU, GQA attention, ...
    assert lm.program(2, 11).report()["fallback_ops"] == []
    rep = lm.report()
    assert rep["forward_runs"] == 5 and rep["tokens_generated"] == 5
    assert rep["sampling"] == "greedy" and rep["batch"] == 2 and rep["prompt_len"] == 7
    for key in ("ttft_seconds", "decode_tokens_per_second", "prefill_tokens_per_second",
                "weights_bytes_per_pe", "kv_cache_bytes_per_pe"):
        assert rep[key] > 0
    # sampled: the same seed gives the same draws (transformers' own multinomial)
    kw = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.9}
    torch.manual_seed(3)
    ref_s = m.generate(ids, max_new_tokens=5, **kw)
    torch.manual_seed(3)
    got_s = lm.generate(ids, max_new_tokens=5, **kw)
    assert torch.equal(got_s, ref_s)
    assert lm.report()["sampling"] == "sample"


def test_generate_refuses_what_it_cannot_serve():
    m = tiny("gpt2")
    lm = waferscale.compile_lm(m)
    ids = torch.randint(1, VOCAB, (1, 4))
    with pytest.raises(GenerateError, match="max_new_tokens"):
        lm.generate(ids)
    with pytest.raises(GenerateError, match="padding"):
        lm.generate(ids, max_new_tokens=2, attention_mask=torch.tensor([[0, 1, 1, 1]]))
    with pytest.raises(GenerateError, match="positions"):
        lm.generate(ids, max_new_tokens=64)
    with pytest.raises(GenerateError, match="generate"):
        lm.report()
    from waferscale.workloads.llm import build_llm

    meta = waferscale.compile_lm(build_llm("llama3-8b"))
    with pytest.raises(GenerateError, match="meta"):
        meta.generate(ids, max_new_tokens=2)
    assert meta.plan(1, 4096, 128).fits
