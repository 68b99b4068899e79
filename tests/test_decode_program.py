"""The decode program (`compiler.inference.decode_program`) is the plan's decode: its ops'
cycles are the plan's, their fabric runs equal their closed forms at any size; the KV
cache ring of a sliding window; grouped-query and sliding-window prefill in the plan."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from waferscale.compiler.inference import DecoderShape, decode_program, plan_inference
from waferscale.generate import fabric_check
from waferscale.hardware.spec import get_spec
from waferscale.kernels import kv_attention

SMALL = DecoderShape("small", "llama", layers=2, hidden=256, heads=8, kv_heads=2,
                     head_dim=32, ffn=512, vocab=1000, positions=512)


def test_the_plans_decode_is_the_programs():
    spec = get_spec("wse2")
    plan = plan_inference(SMALL, spec, grid="32x32", batch=2, prompt_len=40, new_tokens=8,
                          dtype="bf16")
    for context, cycles in plan.decode_steps:
        prog = decode_program(spec, SMALL, 2, context, 32, "bf16", "greedy")
        assert prog.cycles == pytest.approx(cycles)
    first = decode_program(spec, SMALL, 2, 41, 32, "bf16", "greedy")
    assert first.phase().cycles == pytest.approx(plan.decode_first.cycles)
    kinds = {o.name: o.kernel for o in first.ops}
    assert kinds["qkv"] == kinds["lm_head"] == "gemv" and kinds["attention"] == "kv_attention"


def test_every_kernel_op_runs_on_the_fabric_in_its_closed_form():
    prog = decode_program(get_spec("wse2"), SMALL, 2, 45, 32, "bf16", "greedy")
    runs = fabric_check(prog, "wse2")
    assert set(runs) == {"qkv", "o", "up", "down", "lm_head", "attention"}
    for fabric, closed in runs.values():
        assert fabric == closed


def test_a_window_cache_is_a_ring_of_its_slots():
    rng = np.random.default_rng(0)
    k, v = (rng.standard_normal((1, 2, 9, 4)).astype(np.float32) for _ in range(2))
    cache = kv_attention.KvCache(1, 2, 4, (2, 3), 5, "fp32")
    cache.append(k[:, :, :7], v[:, :, :7])
    got_k, got_v = cache.read()
    # slots hold positions 5, 6, 2, 3, 4: the last five, the oldest overwritten
    order = [5, 6, 2, 3, 4]
    assert np.array_equal(got_k, k[:, :, order]) and np.array_equal(got_v, v[:, :, order])
    assert cache.held == 5 and cache.bytes_per_pe == 2 * 1 * 3 * 3 * 4


def test_gqa_and_window_prefill_in_the_plan():
    """K/V enter prefill attention once per key/value head; a window much shorter than the
    prompt runs the attention in window chunks, faster than full causal."""
    mistral = DecoderShape("m", "llama", layers=4, hidden=1024, heads=16, kv_heads=4,
                           head_dim=64, ffn=2048, vocab=4000, positions=8192,
                           sliding_window=256)
    full = dataclasses.replace(mistral, sliding_window=None)
    kw = {"grid": "128x128", "prompt_len": 4096, "new_tokens": 4, "dtype": "bf16"}
    win, causal = plan_inference(mistral, "wse2", **kw), plan_inference(full, "wse2", **kw)
    assert "window chunks" in win.kernels["prefill_attention"]
    assert win.prefill.layer["attention"] < causal.prefill.layer["attention"]
    assert any("sliding window 256" in n for n in win.notes)
    # decode attends to the window only: its steps are those of a 256-position context
    assert win.decode_first.layer["attention"] < causal.decode_first.layer["attention"]
    mha = dataclasses.replace(full, kv_heads=16)
    assert causal.prefill.layer["attention_relayout"] \
        < plan_inference(mha, "wse2", **kw).prefill.layer["attention_relayout"]
