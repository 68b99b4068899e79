"""The attention backward family: its closed form against the step recurrence written out,
its layout search against a brute force, and its values against PyTorch's backward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from waferscale.hardware.spec import custom_spec, get_spec
from waferscale.ir import Graph
from waferscale.kernels import attention_backward as ab
from waferscale.kernels.attention import _transfer
from waferscale.kernels.elementwise import WORK, op_cycles
from waferscale.kernels.family import ExecContext, Sizing, Stage

SPEC = get_spec("wse2")


def _recurrence(spec, geo, dtype):  # noqa: ANN001, ANN202 - the oracle, written plainly
    """The schedule step by step: A_s when block s has arrived (its shift starts when the
    previous one has and the receiver's spare buffer is free), E_s when step s ends."""
    blk = geo.g * geo.tq * geo.head_dim
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    x = _transfer(spec, 4 * blk, 1, 1)
    w0, w = ab.step_cycles(spec, geo, dtype, True), ab.step_cycles(spec, geo, dtype, False)
    ends: list[float] = [t0 + w0]
    arrive = t0
    for s in range(1, geo.chain):
        arrive = max(arrive, ends[s - 2] if s >= 2 else 0.0) + x
        ends.append(max(ends[s - 1], arrive) + w)
    return ends[-1] + 2 * float(op_cycles(spec, blk, WORK, "mul"))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("groups,seq,head_dim,rect,fold",
                         [(8, 64, 16, (4, 8), 1), (3, 100, 8, (5, 6), 2), (1, 7, 4, (7, 1), 1),
                          (16, 1024, 64, (16, 64), 8), (2, 33, 5, (1, 2), 1)])
def test_cost_is_the_step_recurrence(groups, seq, head_dim, rect, fold, dtype) -> None:
    geo = ab.check(groups, seq, head_dim, rect, fold)
    assert ab.cost(SPEC, groups, seq, head_dim, rect, dtype=dtype, fold=fold) == \
        pytest.approx(_recurrence(SPEC, geo, dtype))


def test_a_step_costs_five_block_products() -> None:
    """The backward's step is dominated by its five [tq, tq] x D products: more than twice
    the forward's two, and the hop carries K, V, dK and dV."""
    from waferscale.kernels import attention

    geo = ab.check(8, 1024, 64, (32, 8), 1)
    fwd = attention._step_cycles(SPEC, geo.g, geo.tq, 64, "fp32", False)
    assert 2.0 < ab.step_cycles(SPEC, geo, "fp32", False) / fwd < 3.5


def _stream_oracle(spec, geo, dtype):  # noqa: ANN001, ANN202 - every position written out
    """Every (sub-band j, position l): done at G_j + l hops + B + T_R + (K - 1) M + W',
    K its blocks (j, j + S, ... <= l), W' the diagonal step when its last block is its
    own; the latest of them, then the drain, the dQ merges, D and the final scaling."""
    blk = geo.g * geo.tq * geo.head_dim
    w0 = ab._stream_step(spec, geo, dtype, True)
    w = ab._stream_step(spec, geo, dtype, False)
    m, b = max(w, 2 * blk), 2 * blk
    latest = 0.0
    for j in range(geo.split):
        gate = 0.0 if j == 0 else float(_transfer(spec, 2 * geo.g * geo.tq * (geo.head_dim + 1),
                                                  j * geo.fold, geo.fold))
        for pos in range(geo.chain):
            blocks = [s for s in range(j, pos + 1, geo.split)]
            if not blocks:
                continue
            last = w0 if blocks[-1] == pos else w
            latest = max(latest, gate + pos * spec.hop_cycles + b + spec.ramp_cycles
                         + (len(blocks) - 1) * m + last)
    levels = (geo.split - 1).bit_length()
    merge = sum(float(_transfer(spec, blk, 2 ** k * geo.fold, geo.fold))
                + float(op_cycles(spec, blk, WORK, "add", reads=2)) for k in range(levels))
    t0 = float(op_cycles(spec, blk, dtype, "fmac", reads=2, accumulate=WORK))
    return (t0 + latest + 2 * blk + geo.split * ab._hop_latency(spec) + merge
            + 2 * float(op_cycles(spec, blk, WORK, "mul")))


@pytest.mark.parametrize("groups,seq,head_dim,rect,fold,split",
                         [(8, 64, 16, (4, 16), 1, 2), (3, 100, 8, (5, 12), 2, 2),
                          (4, 300, 16, (9, 16), 1, 4), (16, 1024, 64, (16, 64), 2, 4),
                          (2, 33, 5, (3, 2), 1, 1)])
def test_stream_cost_is_every_position_written_out(groups, seq, head_dim, rect, fold,
                                                   split) -> None:
    geo = ab.check(groups, seq, head_dim, rect, fold, "stream", split)
    assert ab.cost(SPEC, groups, seq, head_dim, rect, fold=fold, kv="stream",
                   split=split) == pytest.approx(_stream_oracle(SPEC, geo, "fp32"))


def test_layout_search_matches_brute_force() -> None:
    spec = custom_spec(rows=24, cols=16)
    geo, cyc = ab.choose_layout(spec, 4, 96, 16, max_rows=24, max_cols=16, dtype="fp32")
    best = math.inf
    for kv, splits in (("shift", (1,)), ("stream", (1, 2, 4, 8, 16))):
        for split in splits:
            for fold in (1, 2, 4, 8, 16):
                for cols in range(fold * split, 17, fold * split):
                    for rows in range(1, 25):
                        try:
                            g = ab.check(4, 96, 16, (rows, cols), fold, kv, split)
                        except Exception:  # noqa: BLE001 - an illegal layout
                            continue
                        if ab.sram_bytes(g, "fp32", spec) <= spec.sram_bytes:
                            best = min(best, ab.cost(spec, 4, 96, 16, (rows, cols), fold=fold,
                                                     kv=kv, split=split))
    assert cyc == pytest.approx(best)
    assert ab.sram_bytes(geo, "fp32", spec) <= spec.sram_bytes


def test_no_layout_is_a_typed_error() -> None:
    with pytest.raises(ab.KernelFitError, match="fits no layout"):
        ab.choose_layout(custom_spec(rows=2, cols=2), 8, 4096, 128, max_rows=2, max_cols=2,
                         dtype="fp32")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_values_are_the_backward_of_causal_attention(dtype, tol) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    d_out = torch.randn_like(out)
    ref = torch.autograd.grad(out, (q, k, v), d_out)
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.detach().float(), k.detach().float(), v.detach().float(), 0.0, True)
    st = Stage("bw", ab.KERNEL, ("bw",), "fp32" if dtype == torch.float32 else "bf16",
               params=ab.AttentionBackwardParams(2, 16, 8), sizing=Sizing((4, 2)))
    g = Graph()
    from waferscale.ir import Node, Ref

    for name in ("do", "q", "k", "v", "o", "lse"):
        g.add(Node(name, "input"))
    node = g.add(Node("bw", "call", args=tuple(Ref(n) for n in ("do", "q", "k", "v", "o",
                                                                "lse")) + (0.0, True)))
    env = {"do": d_out, "q": q.detach(), "k": k.detach(), "v": v.detach(),
           "o": o.to(dtype), "lse": lse}
    ctx = ExecContext(SPEC, g, env)
    run = ab.FAMILY.execute(ctx, st, node)
    for got, want in zip(env["bw"], ref, strict=True):
        assert float((got.float() - want.float()).abs().max()) < tol
    assert run.cycles == ab.cost(SPEC, 2, 16, 8, (4, 2), dtype=st.dtype)
    assert 0 < run.busy_fraction <= 1 and np.isfinite(run.sram_peak)
