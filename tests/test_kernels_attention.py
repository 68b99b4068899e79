"""Causal attention and rotary: values against PyTorch / transformers, cycles against cost()."""

import numpy as np
import pytest
import torch

from waferscale.errors import KernelDtypeError, KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware import custom_spec, get_spec
from waferscale.kernels import attention as at
from waferscale.kernels import rotary

SPEC = custom_spec(rows=64, cols=16)
RNG = np.random.default_rng(7)
#: (rtol, atol) per dtype: about two units of roundoff of the output dtype.
TOL = {"fp32": (1e-5, 1e-5), "fp16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _rounded(x, dtype):
    return to_storage(x, dtype).astype(np.float32)


def neox_rotary_reference(x, rot, base, dtype):
    """GPT-NeoX's rotary, written independently in torch (transformers' convention)."""
    xt = torch.from_numpy(x).to(TORCH[dtype])
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    pos = torch.arange(x.shape[-2]).float()
    freqs = (inv_freq[:, None] @ pos[None, :]).T
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(xt.dtype), emb.sin().to(xt.dtype)
    x_rot, x_pass = xt[..., :rot], xt[..., rot:]
    half = torch.cat((-x_rot[..., rot // 2:], x_rot[..., : rot // 2]), dim=-1)
    return torch.cat([x_rot * cos + half * sin, x_pass], dim=-1).float().numpy()


def attention_reference(q, k, v, dtype, rotary_pct=0.0):
    q, k, v = (_rounded(a, dtype) for a in (q, k, v))
    rot = int(q.shape[-1] * rotary_pct)
    if rot:
        q = _rounded(neox_rotary_reference(q, rot, 10000.0, dtype), dtype)
        k = _rounded(neox_rotary_reference(k, rot, 10000.0, dtype), dtype)
    out = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True)
    return out.numpy()


CASES = [  # groups, seq, head_dim, rows, cols, rotary_pct
    (2, 16, 8, 4, 2, 0.0),
    (3, 37, 16, 5, 2, 0.25),      # nothing divides: padded blocks and groups
    (8, 64, 64, 8, 8, 0.25),      # GenSLM head shape
    (2, 10, 4, 10, 1, 0.5),       # one token per block: the K/V stream paces the rows
    (4, 30, 32, 1, 4, 0.0),       # one row: no streaming at all
]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_torch_and_cost(case, dtype):
    groups, seq, d, rows, cols, pct = case
    f = Fabric(SPEC, rows, cols)
    q, k, v = (RNG.standard_normal((groups, seq, d)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v, dtype=dtype, rotary_pct=pct)
    assert out.shape == (groups, seq, d) and out.dtype == dtype
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(out.to_numpy().astype(np.float32),
                               attention_reference(q, k, v, dtype, pct), rtol=rtol, atol=atol)
    expected = at.cost(SPEC, groups, seq, d, (rows, cols), dtype=dtype, rotary_pct=pct)
    assert f.elapsed() == pytest.approx(expected, rel=0.01)
    assert f.sram.peak() == at.plan(SPEC, groups, seq, d, (rows, cols), dtype=dtype,
                                    rotary_pct=pct).sram()["peak"]


def test_attention_takes_batch_and_heads():
    f = Fabric(SPEC, 4, 4)
    q, k, v = (RNG.standard_normal((2, 3, 12, 8)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True).numpy()
    np.testing.assert_allclose(out.to_numpy().reshape(2, 3, 12, 8), ref, rtol=1e-5, atol=1e-5)


def test_custom_scale():
    f = Fabric(SPEC, 3, 1)
    q, k, v = (RNG.standard_normal((1, 9, 4)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v, scale=0.3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), is_causal=True, scale=0.3).numpy()
    np.testing.assert_allclose(out.to_numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,cols,seq", [(2, 1, 6), (6, 3, 50), (12, 2, 24), (20, 4, 100),
                                           (16, 1, 160)])
def test_cost_equals_fabric_over_a_sweep_timing_only(rows, cols, seq):
    for dtype in ("fp32", "fp16"):
        f = Fabric(SPEC, rows, cols, timing_only=True)
        z = np.broadcast_to(np.float32(0), (cols * 2, seq, 16))
        at.run(f, z, z, z, dtype=dtype, rotary_pct=0.25)
        expected = at.cost(SPEC, cols * 2, seq, 16, (rows, cols), dtype=dtype, rotary_pct=0.25)
        assert f.elapsed() == pytest.approx(expected, rel=0.01)


def test_timing_only_clocks_equal_a_valued_run():
    def go(timing_only):
        f = Fabric(SPEC, 6, 2, timing_only=timing_only)
        q = RNG.standard_normal((4, 30, 16)).astype(np.float32)
        at.run(f, q, q, q, dtype="fp16", rotary_pct=0.25)
        return f
    a, b = go(False), go(True)
    np.testing.assert_array_equal(a.ce_clock, b.ce_clock)
    assert a.sram.peak() == b.sram.peak()


def test_genslm_10240_tokens_fit_and_never_hold_the_score_matrix():
    spec = get_spec("wse2")
    rows = 640
    f = Fabric(spec, rows, 8, timing_only=True)
    z = np.broadcast_to(np.float32(0), (8, 10240, 64))
    at.run(f, z, z, z, dtype="fp16", rotary_pct=0.25)
    p = at.plan(spec, 8, 10240, 64, (rows, 8), dtype="fp16", rotary_pct=0.25)
    assert f.sram.peak() == p.sram()["peak"] <= spec.sram_bytes
    assert p.sram()["scores_fp32"] == 16 * 16 * 4        # one 16 x 16 block per PE
    assert f.elapsed() == pytest.approx(at.cost(spec, 8, 10240, 64, (rows, 8), dtype="fp16",
                                                rotary_pct=0.25), rel=0.01)


def test_sram_overflow_says_what_fits():
    with pytest.raises(KernelFitError, match=r"attention: .*10240 tokens.*needs \d+ B per PE"
                                             r".*at least \d+ PE rows"):
        at.plan("wse2", 8, 10240, 64, (64, 8), dtype="fp16", rotary_pct=0.25)
    f = Fabric(SPEC, 2, 1)
    q = np.zeros((1, 400, 64), np.float32)
    with pytest.raises(KernelFitError, match="query blocks of at most"):
        at.run(f, q, q, q)
    assert f.sram.peak() == 0                     # refused before anything was placed


def test_bad_attention_inputs():
    f = Fabric(SPEC, 4, 4)
    q = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(KernelFitError, match="at most 2 columns"):
        at.run(f, q, q, q)
    with pytest.raises(KernelFitError, match="at most 3 PE rows"):
        at.plan(SPEC, 4, 3, 8, (4, 4))
    with pytest.raises(KernelDtypeError, match="attention: dtype 'int8'"):
        at.plan(SPEC, 4, 8, 8, (2, 2), dtype="int8")
    with pytest.raises(KernelShapeError, match="must match"):
        at.run(Fabric(SPEC, 2, 2), q, q[:, :4], q)
    with pytest.raises(KernelShapeError):
        at.run(Fabric(SPEC, 2, 2), q[0], q[0], q[0])
    with pytest.raises(KernelError, match="only causal"):
        at.run(Fabric(SPEC, 2, 2), q, q, q, causal=False)
    with pytest.raises(KernelShapeError, match="even"):
        at.plan(SPEC, 2, 8, 6, (2, 2), rotary_pct=0.5)


# ------------------------------------------------------------------------------ rotary ------
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape,rows,cols,pct", [((8, 40, 64), 4, 4, 0.25),
                                                 ((3, 11, 8), 3, 2, 1.0),
                                                 ((5, 16), 4, 1, 0.5)])
def test_rotary_matches_neox_and_cost(shape, rows, cols, pct, dtype):
    f = Fabric(SPEC, rows, cols)
    x = RNG.standard_normal(shape).astype(np.float32)
    row_map, col_map = (len(shape) - 2, 0 if len(shape) == 3 else None)
    from waferscale.fabric import MeshTensor
    t = MeshTensor.from_numpy(f, x, row_map=row_map, col_map=col_map, dtype=dtype)
    y = rotary.run(t, rotary_pct=pct)
    rot = int(shape[-1] * pct)
    ref = neox_rotary_reference(t.to_numpy().astype(np.float32), rot, 10000.0, dtype)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(y.to_numpy().astype(np.float32), ref, rtol=rtol, atol=atol)
    expected = rotary.cost(SPEC, shape, (rows, cols), row_map=row_map, col_map=col_map,
                           dtype=dtype, rotary_pct=pct)
    assert f.elapsed() == pytest.approx(expected, rel=0.01)


def test_rotary_equals_transformers_gpt_neox():
    tf = pytest.importorskip("transformers.models.gpt_neox.modeling_gpt_neox")
    from transformers import GPTNeoXConfig

    cfg = GPTNeoXConfig(hidden_size=512, num_attention_heads=8, rotary_pct=0.25,
                        max_position_embeddings=64)
    emb = tf.GPTNeoXRotaryEmbedding(cfg)
    x = RNG.standard_normal((1, 8, 48, 64)).astype(np.float32)
    xt = torch.from_numpy(x)
    cos, sin = emb(xt, torch.arange(48)[None])
    ref, _ = tf.apply_rotary_pos_emb(xt, xt, cos, sin)
    from waferscale.fabric import MeshTensor
    f = Fabric(SPEC, 4, 4)
    t = MeshTensor.from_numpy(f, x[0], row_map=1, col_map=0)
    y = rotary.run(t, rotary_pct=0.25)
    np.testing.assert_allclose(y.to_numpy(), ref[0].numpy(), rtol=1e-5, atol=1e-5)


def test_rotary_refuses_split_heads():
    from waferscale.fabric import MeshTensor
    f = Fabric(SPEC, 2, 2)
    t = MeshTensor.from_numpy(f, np.zeros((4, 8), np.float32))
    with pytest.raises(KernelShapeError, match="rotary: head_dim .* is split"):
        rotary.run(t)


def test_attention_on_an_offset_rectangle_frees_its_buffers():
    f = Fabric(SPEC, 12, 7)
    q, k, v = (RNG.standard_normal((4, 20, 8)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v, rect=f.rect(3, 2, 5, 2), rotary_pct=0.5)
    assert out.rect == f.rect(3, 2, 5, 2)
    np.testing.assert_allclose(out.to_numpy(), attention_reference(q, k, v, "fp32", 0.5),
                               rtol=1e-5, atol=1e-5)
    assert f.elapsed() == pytest.approx(at.cost(SPEC, 4, 20, 8, (5, 2), rotary_pct=0.5))
    assert f.sram.used.sum() == out.bytes_per_pe().sum()      # only the output is left
