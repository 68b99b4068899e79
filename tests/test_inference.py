"""LLM inference: presets, the inference plan (prefill / decode, SRAM, grids, systems), the
decode-attention kernel's cost, the GEMV family in compiled graphs, and `waferscale
generate`'s contract. The token-for-token checks against transformers are in
tests/test_generate.py."""

from __future__ import annotations

import json

import pytest
import torch

from waferscale import cli
from waferscale.compiler.inference import (
    DecoderShape,
    InferencePlanError,
    parse_grid,
    plan_inference,
)
from waferscale.hardware import get_spec
from waferscale.kernels import gemv, kv_attention
from waferscale.workloads.llm import LLM_PRESETS, build_llm, llm_config

WSE2 = get_spec("wse2")


def shape(name: str) -> DecoderShape:
    return DecoderShape.from_config(llm_config(name), name)


# ------------------------------------------------------------------ presets -------------
@pytest.mark.parametrize("name", list(LLM_PRESETS))
def test_preset_shapes_count_the_published_parameters(name):
    assert shape(name).parameters() == LLM_PRESETS[name].params


def test_meta_builds_hold_the_counted_parameters():
    for name in ("llama3.1-70b", "qwen2-7b", "gpt2"):
        m = build_llm(name)
        assert next(m.parameters()).device.type == "meta"
        assert sum(p.numel() for p in m.parameters()) == LLM_PRESETS[name].params
    assert llm_config("llama3.1-8b").rope_scaling["rope_type"] == "llama3"


# ------------------------------------------------------------------ the plan --------------
@pytest.fixture(scope="module")
def llama_plans():
    sh = shape("llama3-8b")
    return {g: plan_inference(sh, WSE2, grid=g, prompt_len=4096, new_tokens=128)
            for g in (None, "720x720", "480x480")}


def test_llama3_8b_fits_the_wse2_with_one_copy_of_its_weights(llama_plans):
    p = llama_plans[None]
    r = p.report()
    assert r["fits"] and r["systems"] == 1 and r["grid"] == "755x755"
    # one copy of the bf16 weights over 755^2 PEs, the busiest PE holding whole padded
    # blocks: per layer qkv 6x9, o 6x6, gate+up 6x38, down 19x6 and two norms' 6; then the
    # embedding and the LM head 6x170 each and the final norm's 6
    assert r["weights_bytes_per_pe"] == 2 * (32 * (54 + 36 + 228 + 114 + 12) + 2 * 1020 + 6)
    assert r["weights_bytes_per_pe"] < 1.2 * 8_030_261_248 * 2 / 755 ** 2
    # 32 layers x K and V x 8 heads x 128 features x 4224 positions, over the grid
    assert r["kv_cache_bytes_per_pe"] == 32 * 2 * 6 * 2 * 2
    assert r["sram_per_pe"]["total"] <= WSE2.sram_bytes
    assert 0 < r["ttft_seconds"] < 1 and r["decode_tokens_per_second"] > 100
    assert r["prefill_tokens_per_second"] == pytest.approx(4096 / r["ttft_seconds"])
    assert r["decode_tokens_per_second"] == pytest.approx(1 / r["decode_seconds_per_token"])
    json.dumps(r, allow_nan=False)


def test_grid_moves_prefill_and_decode_in_opposite_directions(llama_plans):
    full, small = llama_plans[None].report(), llama_plans["720x720"].report()
    # prefill is compute-bound: fewer PEs, slower; decode is latency-bound: shorter lines
    # for every allreduce, faster
    assert small["prefill_tokens_per_second"] < full["prefill_tokens_per_second"]
    assert small["decode_tokens_per_second"] > full["decode_tokens_per_second"]
    assert small["weights_bytes_per_pe"] > full["weights_bytes_per_pe"]


def test_a_grid_too_small_says_what_it_would_need(llama_plans):
    r = llama_plans["480x480"].report()
    assert not r["fits"] and r["systems"] == 2
    assert r["needs"]["weights_bytes_per_pe_on_one_grid"] > WSE2.sram_bytes
    side = int(r["needs"]["smallest_square_grid"].split("x")[0])
    assert 480 < side <= 755
    assert plan_inference(shape("llama3-8b"), WSE2, grid=(side, side), prompt_len=4096,
                          new_tokens=128).fits
    assert not plan_inference(shape("llama3-8b"), WSE2, grid=(side - 1, side - 1),
                              prompt_len=4096, new_tokens=128).fits
    assert any("480x480" in n and "2 systems" in n for n in r["notes"])


def test_70b_is_split_over_systems_and_wse3_prefills_faster():
    r = plan_inference(shape("llama3.1-70b"), WSE2, prompt_len=4096, new_tokens=128).report()
    assert not r["fits"] and r["systems"] >= 4 and r["needs"]["smallest_square_grid"] is None
    assert r["sram_per_pe"]["total"] <= WSE2.sram_bytes
    sh = shape("llama3.1-8b")
    w2 = plan_inference(sh, "wse2", prompt_len=4096, new_tokens=128).report()
    w3 = plan_inference(sh, "wse3", prompt_len=4096, new_tokens=128).report()
    assert w3["prefill_tokens_per_second"] > 1.4 * w2["prefill_tokens_per_second"]


def test_decode_slows_as_the_cache_grows_and_batches_share_the_weights():
    sh = shape("gpt2")
    short = plan_inference(sh, WSE2, prompt_len=16, new_tokens=8, dtype="fp16")
    long = plan_inference(sh, WSE2, prompt_len=1000, new_tokens=8, dtype="fp16")
    assert long.seconds_per_token > short.seconds_per_token
    b8 = plan_inference(sh, WSE2, prompt_len=16, new_tokens=8, batch=8, dtype="fp16")
    assert b8.report()["decode_tokens_per_second"] > 4 * short.report()[
        "decode_tokens_per_second"]
    sampled = plan_inference(sh, WSE2, prompt_len=16, new_tokens=8, dtype="fp16",
                             sampling="sample")
    assert sampled.io_seconds["decode_step"] > 0 and sampled.decode_first.once["sample"] == 0


def test_plan_errors_are_typed():
    sh = shape("gpt2")
    with pytest.raises(InferencePlanError, match="positions"):
        plan_inference(sh, WSE2, prompt_len=1000, new_tokens=100)
    with pytest.raises(InferencePlanError, match="program rectangle"):
        parse_grid("2000x10", WSE2)
    with pytest.raises(InferencePlanError, match="720x720"):
        parse_grid("big", WSE2)
    assert parse_grid(None, WSE2) == (WSE2.rows, WSE2.cols)


# ------------------------------------------------------------------ decode attention ------
def test_kv_attention_cost_parts_and_layout():
    c = kv_attention.cost(WSE2, 1, 8, 4, 128, 4097, (755, 755), dtype="bf16")
    assert c.cycles == pytest.approx(sum(c.parts.values()))
    lay = c.layout
    assert (lay.dc, lay.cg, lay.ell) == (2, 64, 6)
    assert c.cache_bytes == 2 * 6 * 2 * 2
    longer = kv_attention.cost(WSE2, 1, 8, 4, 128, 40_000, (755, 755), dtype="bf16")
    assert longer.cycles > c.cycles
    with pytest.raises(kv_attention.KernelShapeError):
        kv_attention.cost(WSE2, 0, 8, 4, 128, 10, (4, 4))


@pytest.mark.parametrize("args", [
    (1, 8, 4, 128, 4097, (128, 128), "bf16"),     # Llama-3-8B's heads: dc 8, cg 16, ell 33
    (2, 2, 2, 16, 9, (8, 8), "fp32"),             # a head over 4 columns, context < rows
    (1, 8, 1, 8, 30, (16, 4), "fp16"),            # two whole heads per column (hc 2)
    (3, 2, 3, 32, 100, (12, 10), "bf16"),         # uneven last segment
])
def test_kv_attention_run_equals_cost(args):
    *sizes, dt = args
    r = kv_attention.run(WSE2, *sizes, dtype=dt)
    c = kv_attention.cost(WSE2, *sizes, dtype=dt)
    assert r.cycles == c.cycles and r.parts == c.parts


@pytest.mark.parametrize("dt,tol", [("fp32", 1e-6), ("bf16", 2e-2)])
def test_kv_attention_values_match_sdpa(dt, tol):
    g = torch.Generator().manual_seed(0)
    b, kvh, grp, d, n = 2, 2, 3, 16, 11
    q = torch.randn(b, kvh * grp, d, generator=g)
    k = torch.randn(b, kvh, n, d, generator=g)
    v = torch.randn(b, kvh, n, d, generator=g)
    r = kv_attention.run(WSE2, b, kvh, grp, d, n, (4, 8), dtype=dt,
                         q=(q / d ** 0.5).numpy(), k=k.numpy(), v=v.numpy())
    ref = torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1))[:, :, 0]
    assert abs(r.value.astype("float32") - ref.numpy()).max() < tol


# ------------------------------------------------------------------ the GEMV family -------
class _Proj(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(48, 40)
        self.b = torch.nn.Linear(40, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


@pytest.mark.parametrize("rows,kind", [(1, "gemv"), (3, "gemv"), (12, "gemm")])
def test_few_row_matmuls_run_as_gemv_with_cost_equal_to_the_fabric(rows, kind):
    import waferscale

    torch.manual_seed(0)
    m = _Proj().eval()
    x = torch.randn(rows, 48)
    cm = waferscale.compile(m, (x,))
    out = cm(x)
    assert (out - m(x)).abs().max() < 1e-5
    stages = [s for s in cm.report()["stages"] if s["kind"] in ("gemm", "gemv")]
    assert {s["kind"] for s in stages} == {kind}
    for s in stages:     # (the GEMM after the ReLU skips zeros: its clocks follow values)
        assert kind == "gemm" or s["cycles"] == s["cost_cycles"]


def test_gemv_stage_cost_adds_its_input_broadcast_and_bias():
    p = gemv.GemvParams(2, 100, 30, bias=True)
    grid = (10, 6)
    base = gemv.cost(2, 100, 30, grid=grid, spec=WSE2, dtype="fp32").cycles
    assert gemv.stage_cycles(WSE2, p, "fp32", grid) == pytest.approx(
        base + gemv.input_broadcast_cycles(WSE2, p, grid) + gemv.bias_cycles(WSE2, p, grid))


# ------------------------------------------------------------------ the command -----------
def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_estimate_json(capsys):
    rc, out, err = run_cli(capsys, "generate", "llama3-8b", "--prompt-len", "4096",
                           "--new-tokens", "128", "--estimate", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    for key in ("ttft_seconds", "decode_tokens_per_second", "prefill_tokens_per_second",
                "weights_bytes_per_pe", "kv_cache_bytes_per_pe"):
        assert doc[key] > 0
    assert doc["mode"] == "estimate" and doc["fits"]


@pytest.mark.parametrize("argv,words", [
    (["llama3-8b", "--grid", "2000x10"], "program rectangle"),
    (["llama3-8b", "--grid", "7"], "720x720"),
    (["llama3-8b", "--prompt-len", "0"], "positive integer"),
    (["llama3-8b", "--new-tokens", "x"], "positive integer"),
    (["gpt2", "--prompt-len", "1000", "--new-tokens", "100"], "positions"),
    (["no-such-model"], "preset"),
    (["llama3-8b", "--spec", "wse9"], "unknown spec"),
])
def test_generate_user_mistakes(capsys, argv, words):
    rc, out, err = run_cli(capsys, "generate", *argv, "--estimate", "--json")
    assert rc == 2
    doc = json.loads(out)
    assert words in doc["error"]["message"] and doc["error"]["exit_code"] == 2
    assert err.startswith("error: ") and err.count("\n") == 1


FACTORY = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel


def tiny():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2,
                     initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg).eval()
"""


def test_generate_simulates_a_small_factory_model(capsys, tmp_path):
    import importlib.util

    path = tmp_path / "tiny_lm.py"
    path.write_text(FACTORY)
    rc, out, err = run_cli(capsys, "generate", f"{path}:tiny", "--prompt-len", "5",
                           "--new-tokens", "3", "--batch", "2", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["mode"] == "simulated" and doc["forward_runs"] == 3
    spec = importlib.util.spec_from_file_location("tiny_lm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ids = torch.tensor(doc["prompt_ids"])
    ref = mod.tiny().generate(ids, max_new_tokens=3, do_sample=False)
    assert doc["tokens"] == ref[:, 5:].tolist()
