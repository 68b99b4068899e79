"""Causal attention and rotary: values against PyTorch / transformers, cycles against cost()."""

import itertools
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from waferscale.errors import (
    KernelDtypeError,
    KernelError,
    KernelFitError,
    KernelShapeError,
    ShapeError,
)
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


# ------------------------------------------------------------------------- folded chain -----
FOLDED = [  # groups, seq, head_dim, rows, cols, fold, rotary_pct, dtype
    (2, 16, 8, 4, 4, 2, 0.0, "fp32"),      # even R: the snake turns at the bottom row
    (3, 37, 16, 5, 6, 3, 0.25, "fp32"),    # odd R, 3 groups on 2 bands, padded blocks
    (3, 37, 16, 5, 6, 3, 0.25, "bf16"),
    (5, 50, 8, 3, 9, 3, 0.5, "fp16"),      # 5 groups over 3 bands: the last band pads
    (3, 41, 16, 4, 4, 2, 0.25, "bf16"),    # 3 groups over 2 bands of 2
    (2, 10, 4, 5, 2, 2, 0.5, "fp32"),      # one token per block: the stream paces the chain
    (4, 30, 8, 1, 4, 2, 0.0, "fp32"),      # one row: every hop is a turn east
    (1, 40, 8, 3, 3, 3, 0.0, "fp16"),
]


@pytest.mark.parametrize("case", FOLDED)
def test_folded_attention_matches_torch_and_cost(case):
    groups, seq, d, rows, cols, fold, pct, dtype = case
    f = Fabric(SPEC, rows + 2, cols + 1)
    q, k, v = (RNG.standard_normal((groups, seq, d)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v, rect=f.rect(1, 1, rows, cols), dtype=dtype, rotary_pct=pct,
                 fold=fold)
    assert isinstance(out, at.FoldedOutput) and out.rect == f.rect(1, 1, rows, cols)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(out.to_numpy(), attention_reference(q, k, v, dtype, pct),
                               rtol=rtol, atol=atol)
    assert f.elapsed() == at.cost(SPEC, groups, seq, d, (rows, cols), dtype=dtype,
                                  rotary_pct=pct, fold=fold)
    p = at.plan(SPEC, groups, seq, d, (rows, cols), dtype=dtype, rotary_pct=pct, fold=fold)
    assert p.chain == rows * fold and p.tq == -(-seq // (rows * fold))
    assert f.sram.peak() == p.sram()["peak"]
    assert f.sram.used.sum() == out.bytes_per_pe().sum()      # only the output is left


@pytest.mark.parametrize("rows,cols,fold,seq", [(6, 6, 3, 50), (7, 4, 2, 60), (3, 8, 4, 24),
                                                (16, 2, 2, 100), (2, 6, 6, 30)])
def test_folded_cost_equals_fabric_over_a_sweep_timing_only(rows, cols, fold, seq):
    for dtype in ("fp32", "bf16"):
        f = Fabric(SPEC, rows, cols, timing_only=True)
        groups = cols // fold * 2 - 1                        # the last band is short
        z = np.broadcast_to(np.float32(0), (groups, seq, 16))
        at.run(f, z, z, z, dtype=dtype, rotary_pct=0.25, fold=fold)
        assert f.elapsed() == at.cost(SPEC, groups, seq, 16, (rows, cols), dtype=dtype,
                                      rotary_pct=0.25, fold=fold)


def test_snake_hops_are_single_links():
    """Consecutive chain positions are neighbours; turns go east on the end rows only."""
    for rows, cols, fold in ((5, 6, 3), (4, 8, 4), (1, 4, 2), (3, 3, 1)):
        sn = at._snake(rows, cols, fold)
        dr, dc = np.diff(sn.row)[:, None], np.diff(sn.col, axis=0)
        assert np.all(np.abs(dr) + np.abs(dc) == 1)
        for b in range(rows * fold - 1):
            _, hr, hc = at._HOPS[sn.hop[sn.row[b], sn.col[b, 0]]]
            assert (hr, hc) == (dr[b, 0], dc[b, 0])
        assert sorted(sn.block.ravel()) == sorted(np.repeat(np.arange(rows * fold),
                                                            cols // fold))
    f = Fabric(SPEC, 5, 6, timing_only=True)
    z = np.broadcast_to(np.float32(0), (2, 45, 8))
    at.run(f, z, z, z, fold=3)
    east = f.port_wavelets[0]
    assert east[[0, 4]].sum() > 0 and east[1:4].sum() == 0   # turns only on the end rows
    assert east[:, [2, 5]].sum() == 0                        # never across a band boundary


def test_fold_one_is_the_default_layout():
    f1, f2 = Fabric(SPEC, 6, 2), Fabric(SPEC, 6, 2)
    q = RNG.standard_normal((4, 30, 16)).astype(np.float32)
    a = at.run(f1, q, q, q, dtype="fp16", rotary_pct=0.25)
    b = at.run(f2, q, q, q, dtype="fp16", rotary_pct=0.25, fold=1)
    assert type(b) is type(a) and b.shape == (4, 30, 16)
    np.testing.assert_array_equal(a.tiles, b.tiles)
    np.testing.assert_array_equal(f1.port_clock, f2.port_clock)


def test_folding_beats_the_unfolded_chain_on_genslm():
    spec = get_spec("wse2")
    unfolded = at.cost(spec, 8, 10240, 64, (931, 8), dtype="fp16", rotary_pct=0.25)
    folded = at.cost(spec, 8, 10240, 64, (640, 64), dtype="fp16", rotary_pct=0.25, fold=8)
    assert folded < unfolded / 3


# -------------------------------------------------------------------- K/V stream, split -----
WIDE = custom_spec(rows=64, cols=64)
STREAM = [  # groups, seq, head_dim, rows, cols, fold, split, dtype
    (2, 16, 8, 4, 2, 1, 1, "fp32"),        # one chain per group, no split
    (3, 37, 16, 5, 6, 3, 1, "fp16"),       # odd R folded, 3 groups on 2 bands, padded blocks
    (3, 37, 16, 5, 12, 3, 2, "bf16"),
    (5, 50, 8, 3, 9, 3, 3, "fp16"),        # a 3-level snake split 3 ways, 5 groups per PE
    (3, 41, 16, 4, 12, 2, 3, "bf16"),      # 3 groups over 2 bands of 3 sub-bands
    (2, 10, 4, 5, 8, 2, 4, "fp32"),        # one token per block
    (9, 40, 8, 4, 12, 1, 4, "fp32"),       # 9 groups over 3 bands: the last band pads
    (2, 33, 8, 5, 6, 1, 3, "fp16"),        # seq 33 over 5 blocks of 7
    (2, 12, 4, 3, 12, 2, 6, "fp32"),       # split = chain: one block per sub-band
    (1, 16, 4, 4, 60, 4, 15, "fp32"),      # sub-band 14's late queries make it finish last
]


@pytest.mark.parametrize("case", STREAM)
def test_stream_attention_matches_torch_and_cost(case):
    groups, seq, d, rows, cols, fold, split, dtype = case
    f = Fabric(WIDE, rows + 2, cols + 1)
    rect = f.rect(1, 1, rows, cols)
    q, k, v = (RNG.standard_normal((groups, seq, d)).astype(np.float32) for _ in range(3))
    out = at.run(f, q, k, v, rect=rect, dtype=dtype, fold=fold, kv="stream", split=split)
    assert out.rect == rect
    assert isinstance(out, at.FoldedOutput) == (fold > 1 or split > 1)
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(out.to_numpy().astype(np.float32),
                               attention_reference(q, k, v, dtype), rtol=rtol, atol=atol)
    kw = {"dtype": dtype, "fold": fold, "kv": "stream", "split": split}
    assert f.elapsed() == at.cost(WIDE, groups, seq, d, (rows, cols), **kw)
    p = at.plan(WIDE, groups, seq, d, (rows, cols), **kw)
    assert p.steps == -(-rows * fold // split)
    assert f.sram.peak() == p.sram()["peak"]
    assert f.busy[rect.slices].mean() == pytest.approx(at.mean_busy_cycles(WIDE, p), rel=1e-12)
    assert f.sram.used.sum() == out.bytes_per_pe().sum()      # only the output is left
    sub = (np.arange(cols) // fold) % split                    # it lives on sub-band 0
    assert np.all(f.sram.used[rect.slices][:, sub > 0] == 0)


#: A CE 16x wider than WSE-2's: a step computes faster than its block streams in (W < B).
FAST = custom_spec(rows=16, cols=16, simd={"fp32_fmac": 16, "fp32_mul": 16, "fp32_add": 16,
                                            "mixed_fmac": 16},
                   mem_reads_per_cycle=64, mem_writes_per_cycle=64)


@pytest.mark.parametrize("spec,groups,seq,d,rows,cols,fold,split", [
    (SPEC, 3, 100, 16, 10, 12, 2, 3), (SPEC, 5, 64, 8, 16, 16, 1, 8),
    (SPEC, 3, 90, 8, 9, 15, 1, 5), (WIDE, 1, 30, 4, 10, 63, 3, 21),
    (FAST, 2, 16, 32, 8, 4, 1, 2), (FAST, 1, 30, 64, 10, 3, 1, 3), (FAST, 1, 30, 64, 10, 1, 1, 1)])
def test_stream_cost_equals_fabric_over_a_sweep_timing_only(spec, groups, seq, d, rows, cols,
                                                            fold, split):
    for dtype in ("fp32", "bf16"):
        f = Fabric(spec, rows, cols, timing_only=True)
        z = np.broadcast_to(np.float32(0), (groups, seq, d))
        at.run(f, z, z, z, dtype=dtype, fold=fold, kv="stream", split=split)
        assert f.elapsed() == at.cost(spec, groups, seq, d, (rows, cols), dtype=dtype,
                                      fold=fold, kv="stream", split=split)


def test_stream_traffic_copies_each_position_only_the_blocks_it_needs():
    """Every snake link carries all L blocks; position l's ramp takes blocks 0..l."""
    rows, fold, seq, d = 3, 2, 12, 4
    f = Fabric(SPEC, rows, fold, timing_only=True)
    z = np.broadcast_to(np.float32(0), (1, seq, d))
    at.run(f, z, z, z, fold=fold, kv="stream")
    block, chain = 2 * (seq // (rows * fold)) * d, rows * fold
    sn = at._snake(rows, fold, fold)
    np.testing.assert_array_equal(f.port_wavelets[4], (sn.block + 1) * block)   # ramp in
    assert f.port_wavelets[5].sum() == 0                    # the stream enters from outside
    assert f.port_wavelets[:4].sum() == (chain - 1) * chain * block
    assert f.wavelet_hops == (chain - 1) * chain * block


def test_stream_options_are_checked():
    with pytest.raises(KernelShapeError, match="kv 'ring'"):
        at.plan(SPEC, 2, 16, 8, (4, 2), kv="ring")
    with pytest.raises(KernelShapeError, match="split 2 needs kv='stream'"):
        at.plan(SPEC, 2, 16, 8, (4, 4), split=2)
    with pytest.raises(KernelShapeError, match="takes K already rotated"):
        at.plan(SPEC, 2, 16, 8, (4, 2), kv="stream", rotary_pct=0.5)
    with pytest.raises(KernelShapeError, match="split must be a positive integer"):
        at.plan(SPEC, 2, 16, 8, (4, 2), kv="stream", split=0)
    with pytest.raises(KernelShapeError, match="multiple of 6"):
        at.plan(SPEC, 2, 16, 8, (4, 8), kv="stream", fold=2, split=3)
    with pytest.raises(KernelFitError, match="use at most 12 columns"):
        at.plan(SPEC, 2, 16, 8, (4, 18), kv="stream", fold=2, split=3)
    with pytest.raises(KernelFitError, match="use a split of at most 4"):
        at.plan(SPEC, 2, 16, 8, (4, 10), kv="stream", split=5)
    with pytest.raises(KernelFitError, match=r"\(kv stream, split 4\).*query blocks of at most"):
        at.plan("wse2", 8, 10240, 64, (64, 32), kv="stream", split=4)


def test_stream_on_a_defective_wafer_is_slower_with_the_same_values():
    rows, cols, fold, split = 5, 12, 2, 3
    extra = np.random.default_rng(2).integers(0, 3, size=(4, rows, cols)).astype(float)
    q, k, v = (RNG.standard_normal((2, 40, 8)).astype(np.float32) for _ in range(3))
    f0, f1 = Fabric(SPEC, rows, cols), Fabric(SPEC, rows, cols, link_extra=extra)
    a = at.run(f0, q, k, v, fold=fold, kv="stream", split=split)
    b = at.run(f1, q, k, v, fold=fold, kv="stream", split=split)
    assert f1.elapsed() > f0.elapsed() == at.cost(SPEC, 2, 40, 8, (rows, cols), fold=fold,
                                                  kv="stream", split=split)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_the_vectorised_transfer_is_the_documented_formula():
    from waferscale.fabric.timing import transfer_cycles
    for wav, hops, share in ((1, 0, 1), (128, 1, 1), (66, 24, 3), (700, 5, 11)):
        assert at._transfer(SPEC, np.array([wav]), hops, share)[0] == \
            transfer_cycles(SPEC, wav, hops, share)


@pytest.mark.parametrize("case,cycles", [
    ((3, 37, 16, (5, 6), "fp32", 0.25, 3), 12876.0), ((2, 16, 8, (4, 2), "fp16", 0.0, 1), 1252.0),
    ((5, 50, 8, (3, 9), "bf16", 0.5, 3), 11484.0), ((4, 30, 8, (1, 4), "fp32", 0.0, 2), 22245.0),
    ((2, 10, 4, (10, 1), "fp32", 0.5, 1), 565.0)])
def test_the_shift_is_still_the_default_and_unchanged(case, cycles):
    """Cycles of the shift measured before the stream existed; defaults are the shift."""
    groups, seq, d, shape, dtype, pct, fold = case
    assert at.cost(SPEC, groups, seq, d, shape, dtype=dtype, rotary_pct=pct, fold=fold) == \
        cycles == at.cost(SPEC, groups, seq, d, shape, dtype=dtype, rotary_pct=pct, fold=fold,
                          kv="shift", split=1)
    f = Fabric(SPEC, *shape, timing_only=True)
    z = np.broadcast_to(np.float32(0), (groups, seq, d))
    at.run(f, z, z, z, dtype=dtype, rotary_pct=pct, fold=fold)
    assert f.elapsed() == cycles


def _recurrence(t0, w0, w, x, steps):
    """The step recurrence `last_step_end` solves, step by step (what cost() used to loop)."""
    arrive, done_prev2, done = t0, 0, t0 + w0
    for _ in range(1, steps):
        arrive = max(arrive, done_prev2) + x
        done_prev2, done = done, max(done, arrive) + w
    return done


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(1, 10 ** 6), st.integers(1, 10 ** 6),
       st.integers(1, 10 ** 6), st.integers(1, 400))
def test_closed_form_equals_the_recurrence(t0, w0, w, x, steps):
    assert at.last_step_end(t0, w0, w, x, steps) == _recurrence(t0, w0, w, x, steps)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1e4), st.floats(0.5, 1e4), st.floats(0.5, 1e4), st.floats(0.5, 1e4),
       st.integers(1, 200))
def test_closed_form_equals_the_recurrence_on_reals(t0, w0, w, x, steps):
    assert float(at.last_step_end(t0, w0, w, x, steps)) == pytest.approx(
        _recurrence(t0, w0, w, x, steps), rel=1e-9)


def test_cost_is_cached_and_takes_lists():
    at._cost.cache_clear()
    a = at.cost(SPEC, 8, 64, 16, [8, 8])
    assert at.cost(SPEC, 8, 64, 16, (8, 8)) == a and at._cost.cache_info().hits == 1


SMALL = custom_spec(rows=24, cols=12, sram_bytes=4096)


def _brute_force(spec, groups, seq, d, max_rows, max_cols, dtype, pct):
    """Every (rows, cols, fold, kv, split) within the bounds: the fastest that fits by cost(),
    with choose_layout's tie-breaks (fewer PEs, less folding, the shift, smaller split)."""
    best = None
    for rows, fold in itertools.product(range(1, max_rows + 1), range(1, max_cols + 1)):
        for split, kv in itertools.product(range(1, max_cols // fold + 1), at.KV_MODES):
            for bands in range(1, max_cols // (fold * split) + 1):
                cols = bands * fold * split
                try:
                    c = at.cost(spec, groups, seq, d, (rows, cols), dtype=dtype, rotary_pct=pct,
                                fold=fold, kv=kv, split=split)
                except KernelError:
                    continue
                key = (c, rows * cols, fold, kv == "stream", split)
                best = key if best is None else min(best, key)
    return best


@pytest.mark.parametrize("groups,seq,d,max_rows,max_cols,dtype,pct", [
    (3, 40, 8, 6, 9, "fp32", 0.0), (4, 100, 16, 24, 12, "bf16", 0.25),
    (2, 9, 4, 12, 12, "fp32", 0.5), (5, 300, 16, 24, 12, "fp16", 0.25),
    (4, 100, 16, 24, 12, "bf16", 0.0), (5, 300, 16, 24, 12, "fp16", 0.0),
    (1, 64, 8, 24, 12, "fp32", 0.0), (8, 50, 4, 10, 12, "fp32", 0.0)])
def test_choose_layout_is_the_fastest_that_fits(groups, seq, d, max_rows, max_cols, dtype, pct):
    lay = at.choose_layout(SMALL, groups, seq, d, max_rows=max_rows, max_cols=max_cols,
                           dtype=dtype, rotary_pct=pct)
    assert lay.rows <= max_rows and lay.cols <= max_cols
    assert lay.cols % (lay.fold * lay.split) == 0 and lay.kv in at.KV_MODES
    assert lay.cycles == at.cost(SMALL, groups, seq, d, (lay.rows, lay.cols), dtype=dtype,
                                 rotary_pct=pct, fold=lay.fold, kv=lay.kv, split=lay.split)
    assert (lay.cycles, lay.rows * lay.cols, lay.fold, lay.kv == "stream", lay.split) == \
        _brute_force(SMALL, groups, seq, d, max_rows, max_cols, dtype, pct)
    if pct:
        assert lay.kv == "shift"                 # the stream takes K already rotated


def test_choose_layout_unfolded_within_a_narrow_rectangle_and_refuses_what_cannot_fit():
    spec = get_spec("wse2")
    lay = at.choose_layout(spec, 8, 10240, 64, max_rows=994, max_cols=8, dtype="fp16",
                           rotary_pct=0.25)
    assert (lay.cols, lay.fold, lay.kv, lay.split) == (8, 1, "shift", 1) and lay.rows <= 994
    lay = at.choose_layout(spec, 8, 10240, 64, max_rows=994, max_cols=64, dtype="fp16",
                           rotary_pct=0.25)
    assert lay.fold > 1 and lay.cycles < at.cost(spec, 8, 10240, 64, (931, 8), dtype="fp16",
                                                 rotary_pct=0.25) / 3
    with pytest.raises(KernelFitError, match=r"at least \d+ PE rows at fold \d+"):
        at.choose_layout(spec, 8, 10240, 64, max_rows=16, max_cols=16, dtype="fp16")
    with pytest.raises(KernelShapeError, match="max_cols must be a positive integer"):
        at.choose_layout(spec, 8, 1024, 64, max_rows=16, max_cols=0)


@pytest.mark.parametrize("seq,shift_cycles", [(1024, 213062.0), (10240, 2129990.0)])
def test_split_streams_beat_the_shift_on_the_whole_wafer(seq, shift_cycles):
    """GenSLM-25M's attention (8 heads x 64, fp32) within 994 x 755: the shift's best
    (docs/kernels-transformer.md) uses at most 8 x seq PEs; split streams use the wafer."""
    spec = get_spec("wse2")
    lay = at.choose_layout(spec, 8, seq, 64, max_rows=994, max_cols=755)
    assert lay.kv == "stream" and lay.split > 8 and lay.rows * lay.cols > 8 * seq
    assert lay.cycles < shift_cycles / 10
    best_shift = at.cost(spec, 8, seq, 64, (512, 16) if seq == 1024 else (640, 128),
                         fold=2 if seq == 1024 else 16)
    assert best_shift == shift_cycles


@pytest.mark.parametrize("fold,rows", [(1, 64), (4, 16)])
def test_the_suggested_rows_fit(fold, rows):
    """The fit error's "at least N PE rows" is a layout that fits (two K/V buffers)."""
    with pytest.raises(KernelFitError, match=r"at least (\d+) PE rows") as err:
        at.plan("wse2", 8, 10240, 64, (rows, 8 * fold), dtype="fp16", rotary_pct=0.25,
                fold=fold)
    rows = int(re.search(r"at least (\d+) PE rows", str(err.value)).group(1))
    at.plan("wse2", 8, 10240, 64, (rows, 8 * fold), dtype="fp16", rotary_pct=0.25, fold=fold)
    with pytest.raises(KernelFitError):
        at.plan("wse2", 8, 10240, 64, (rows - 1, 8 * fold), dtype="fp16", rotary_pct=0.25,
                fold=fold)


def test_bad_folds():
    with pytest.raises(KernelShapeError, match="multiple of 2"):
        at.plan(SPEC, 4, 32, 8, (4, 3), fold=2)
    with pytest.raises(KernelShapeError, match="fold must be a positive integer"):
        at.plan(SPEC, 4, 32, 8, (4, 4), fold=0)
    with pytest.raises(KernelFitError, match="at most 4 columns"):
        at.plan(SPEC, 2, 32, 8, (4, 6), fold=2)
    with pytest.raises(KernelFitError, match="at most 5 PE rows at fold 2"):
        at.plan(SPEC, 2, 10, 8, (6, 2), fold=2)
    with pytest.raises(KernelFitError, match=r"needs \d+ B per PE.*at fold 2"):
        at.plan("wse2", 8, 10240, 64, (64, 16), dtype="fp16", fold=2)
    f = Fabric(SPEC, 4, 4, timing_only=True)
    z = np.broadcast_to(np.float32(0), (2, 16, 8))
    with pytest.raises(ShapeError, match="timing-only"):
        at.run(f, z, z, z, fold=2).to_numpy()


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
