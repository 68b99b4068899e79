"""`waferscale.compile_lm(model).generate(...)` and `waferscale.compile(model, ...).generate`
give transformers' tokens (greedy, and sampled with the same seed) on tiny Llama, Mistral,
Qwen2 and GPT-2 configs, every decode step through the decode program's kernels on the
fabric (cycles equal to their closed forms) over a KV cache held in the PEs' layout, with
a report of time to first token, prefill / decode tokens/s and SRAM per PE."""

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


class _Logits(torch.nn.Module):
    """The model's forward as the compiler captures it: ids in, logits out, no cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2", "gpt2"])
def test_generate_equals_transformers(kind):
    m = tiny(kind)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    lm = waferscale.compile_lm(m)
    ref = m.generate(ids, max_new_tokens=5, do_sample=False)
    got = lm.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, ref)
    assert len(set(ref[:, 7:].flatten().tolist())) > 1       # not one repeated token
    # the forward compiles whole for the wafer: RMS norm, rotary, SwiGLU, GQA attention, ...
    assert waferscale.compile(_Logits(m), (ids,), mode="estimate").report()["fallback_ops"] == []
    rep = lm.report()
    assert rep["forward_runs"] == 5 and rep["tokens_generated"] == 5
    # 4 decode steps ran the program: its kernels' fabric cycles are their closed forms,
    # and the steps' cycles are the plan's
    run = rep["decode_run"]
    assert run["steps"] == 4 and run["fabric_cost_agreement"] == 1.0
    assert run["step_cycles"] == pytest.approx(run["program_step_cycles"])
    assert run["step_cycles"] == pytest.approx(run["plan_step_cycles"])
    plan = lm.plan(2, 7, 5)
    assert rep["decode_seconds_per_token"] == pytest.approx(plan.seconds_per_token)
    assert rep["kv_cache_bytes_per_pe"] == plan.sram["kv_cache"]
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


def test_compiled_model_generates_like_transformers():
    """`waferscale.compile(model, inputs).generate(...)`: the public API's own route."""
    m = tiny("llama")
    ids = torch.randint(1, VOCAB, (1, 6), generator=torch.Generator().manual_seed(4))
    cm = waferscale.compile(m, {"input_ids": ids, "use_cache": False}, mode="estimate")
    out = cm.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, m.generate(ids, max_new_tokens=4, do_sample=False))
    assert cm.last_generation["decode_run"]["steps"] == 3


def test_sliding_window_is_honoured_and_gqa_heads_are_shared():
    """Mistral with a window shorter than the context: the cache is a ring of the window's
    slots and the tokens are transformers' (which differ from full causal attention's); the
    cache holds the key/value heads only (grouped-query: 2 for 4 query heads)."""
    from transformers import MistralConfig, MistralForCausalLM

    def mistral(window):
        torch.manual_seed(0)
        m = MistralForCausalLM(MistralConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=2, max_position_embeddings=64,
            initializer_range=0.2, sliding_window=window))
        m.config._attn_implementation = "sdpa"
        return m.eval()

    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(2))
    windowed, full = mistral(3), mistral(None)
    ref = windowed.generate(ids, max_new_tokens=6, do_sample=False)
    assert not torch.equal(ref, full.generate(ids, max_new_tokens=6, do_sample=False))
    lm = waferscale.compile_lm(windowed)
    assert torch.equal(lm.generate(ids, max_new_tokens=6, do_sample=False), ref)
    rep = lm.report()
    # every step attends to the window's 3 positions: the same cycles each step
    assert len(set(rep["decode_run"]["step_cycles"])) == 1
    att = next(o for o in lm.decode_program(2, 14).ops if o.name == "attention")
    assert att.kv.context == 3 and att.kv.features == 2 * 8 and att.kv.group == 2
    assert rep["kv_cache_bytes_per_pe"] == 2 * (2 * 2 * 1 * att.kv.dc * 4)   # layers x K,V
