"""Pointwise, softmax, layer norm, embedding and cross-entropy kernels: values against
PyTorch within per-dtype tolerances, and fabric cycles against each kernel's cost()."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from waferscale.errors import KernelDtypeError, KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.timing import vector_cycles
from waferscale.hardware import custom_spec
from waferscale.kernels import elementwise as ew
from waferscale.kernels import embedding as em
from waferscale.kernels import loss as ls
from waferscale.kernels import norm

SPEC = custom_spec(rows=32, cols=32)
RNG = np.random.default_rng(11)
DTYPES = ["fp32", "fp16", "bf16"]
#: (rtol, atol) per dtype: about two units of roundoff of the output dtype.
TOL = {"fp32": (1e-5, 1e-5), "fp16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}
#: [tokens, features] on rows x cols; the odd ones pad edge tiles.
LAYOUTS = [((8, 16), 2, 4), ((9, 69), 3, 8), ((7, 9), 2, 4), ((33, 100), 4, 7), ((6, 12), 1, 1)]


def rounded(x, dtype):
    return to_storage(x, dtype).astype(np.float32)


def close(got, ref, dtype):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=rtol, atol=atol)


def place(f, x, dtype, row_map=0, col_map=1):
    return MeshTensor.from_numpy(f, x, row_map=row_map, col_map=col_map, dtype=dtype)


# --------------------------------------------------------------------------- cost table ----
def test_transcendentals_cost_fmac_passes_from_one_table():
    n = 1000.0
    fmac = vector_cycles(SPEC, n, "fp32", "fmac")
    assert ew.op_cycles(SPEC, n, "fp32", "exp") == ew.OP_COSTS["exp"].passes * fmac
    assert ew.op_cycles(SPEC, n, "fp32", "add") == vector_cycles(SPEC, n, "fp32", "add")
    for op in ("exp", "log", "erf", "tanh", "reciprocal", "rsqrt"):
        assert ew.OP_COSTS[op].simd == "fmac" and ew.OP_COSTS[op].passes > 1
    with pytest.raises(KernelError, match="no cost entry"):
        ew.op_cycles(SPEC, n, "fp32", "cosh")


# ----------------------------------------------------------------------------- pointwise ---
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("layout", LAYOUTS[:3])
def test_gelu_exact_and_fast(layout, approximate, dtype):
    shape, rows, cols = layout
    f = Fabric(SPEC, rows, cols)
    x = place(f, RNG.standard_normal(shape).astype(np.float32) * 3, dtype)
    y = ew.gelu(x, approximate)
    ref = F.gelu(torch.from_numpy(x.to_numpy().astype(np.float32)), approximate=approximate)
    close(y.to_numpy(), ref.numpy(), dtype)
    assert f.elapsed() == pytest.approx(
        ew.gelu_cost(SPEC, shape, (rows, cols), approximate, dtype=dtype), rel=0.01)


def test_gelu_fast_is_transformers_fast_gelu():
    acts = pytest.importorskip("transformers.activations")
    f = Fabric(SPEC, 2, 2)
    x = place(f, RNG.standard_normal((6, 10)).astype(np.float32) * 4, "fp32")
    ref = acts.ACT2FN["gelu_fast"](torch.from_numpy(x.to_numpy())).numpy()
    np.testing.assert_allclose(ew.gelu(x, "tanh").to_numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,torch_fn", [
    ("exp", torch.exp), ("tanh", torch.tanh), ("relu", torch.relu), ("silu", F.silu),
    ("sigmoid", torch.sigmoid), ("neg", torch.neg), ("erf", torch.erf), ("sin", torch.sin),
    ("cos", torch.cos),
])
def test_unary_ops(op, torch_fn, dtype):
    f = Fabric(SPEC, 3, 4)
    shape = (7, 9)
    x = place(f, RNG.standard_normal(shape).astype(np.float32), dtype)
    y = ew.run(op, x)
    close(y.to_numpy(), torch_fn(torch.from_numpy(x.to_numpy().astype(np.float32))).numpy(),
          dtype)
    assert f.elapsed() == pytest.approx(ew.cost(SPEC, op, shape, (3, 4), dtype=dtype))
    assert (y.tiles[-1, -1, 1:] == 0).all()       # padding stays zero even where exp(0) = 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_add_and_broadcast_bias(dtype):
    f = Fabric(SPEC, 2, 4)
    a, b = (RNG.standard_normal((8, 12)).astype(np.float32) for _ in range(2))
    ta, tb = place(f, a, dtype), place(f, b, dtype)
    out = ew.residual_add(ta, tb)
    close(out.to_numpy(), rounded(a, dtype) + rounded(b, dtype), dtype)
    assert f.elapsed() == ew.cost(SPEC, "add", (8, 12), (2, 4), dtype=dtype)
    bias = MeshTensor.from_numpy(f, b[0], row_map=None, col_map=0, dtype=dtype)
    close(ew.run("mul", ta, bias).to_numpy(), rounded(a, dtype) * rounded(b[0], dtype), dtype)


def test_bad_pointwise_inputs():
    f = Fabric(SPEC, 2, 2)
    a = place(f, np.ones((4, 4), np.float32), "fp32")
    b = place(f, np.ones((4, 6), np.float32), "fp32")
    with pytest.raises(KernelShapeError, match="residual_add"):
        ew.residual_add(a, b)
    with pytest.raises(KernelShapeError, match="does not broadcast"):
        ew.run("add", a, b)
    with pytest.raises(KernelError, match="unknown op"):
        ew.run("cosh", a)
    with pytest.raises(KernelError, match="takes 2"):
        ew.run("add", a)
    with pytest.raises(KernelError, match="approximate"):
        ew.gelu(a, "sigmoid")
    with pytest.raises(KernelDtypeError, match="gelu: dtype 'fp64'"):
        ew.run("gelu", a, dtype="fp64")


# ------------------------------------------------------------------------------ softmax ----
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_softmax_split_over_columns(layout, dtype, log):
    """log=True: x - m - log(sum exp(x - m)), finite where the softmax underflows to 0
    (its inputs span 10x more)."""
    shape, rows, cols = layout
    f = Fabric(SPEC, rows, cols)
    # all-negative rows: a zero-padded edge tile must not win the row max
    x = place(f, RNG.standard_normal(shape).astype(np.float32) * (30 if log else 3) - 20,
              dtype)
    y = ew.softmax(x, log=log)
    fn = torch.log_softmax if log else torch.softmax
    close(y.to_numpy(), fn(torch.from_numpy(x.to_numpy().astype(np.float32)), -1).numpy(),
          dtype)
    assert np.isfinite(y.to_numpy()).all()
    assert f.elapsed() == pytest.approx(ew.softmax_cost(SPEC, shape, (rows, cols),
                                                        dtype=dtype, log=log), rel=0.01)


@pytest.mark.parametrize("maps", [(1, 0), (0, None), (None, 0)])
@pytest.mark.parametrize("algorithm", ["chain", "tree"])
def test_softmax_other_layouts(maps, algorithm):
    f = Fabric(SPEC, 3, 5)
    shape = (10, 17)
    x = MeshTensor.from_numpy(f, RNG.standard_normal(shape).astype(np.float32), None, *maps)
    y = ew.softmax(x, algorithm=algorithm)
    ref = torch.softmax(torch.from_numpy(x.to_numpy()), -1).numpy()
    np.testing.assert_allclose(y.to_numpy(), ref, rtol=1e-5, atol=1e-6)
    assert f.elapsed() == pytest.approx(ew.softmax_cost(
        SPEC, shape, (3, 5), row_map=maps[0], col_map=maps[1], algorithm=algorithm), rel=0.01)


def test_softmax_masked_scores():
    f = Fabric(SPEC, 2, 4)
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    x[:, 2:] = -np.inf                          # whole PEs hold only masked scores
    y = ew.softmax(place(f, x, "fp32"))
    np.testing.assert_allclose(y.to_numpy(), torch.softmax(torch.from_numpy(x), -1).numpy(),
                               rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- layer norm ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layer_norm_matches_torch_and_cost(layout, dtype):
    shape, rows, cols = layout
    f = Fabric(SPEC, rows, cols)
    n = shape[-1]
    x = place(f, RNG.standard_normal(shape).astype(np.float32) * 3 + 5, dtype)
    w, b = RNG.standard_normal(n).astype(np.float32), RNG.standard_normal(n).astype(np.float32)
    y = norm.run(x, w, b, eps=1e-5)
    ref = F.layer_norm(torch.from_numpy(x.to_numpy().astype(np.float32)), (n,),
                       torch.from_numpy(rounded(w, dtype)), torch.from_numpy(rounded(b, dtype)),
                       eps=1e-5).numpy()
    close(y.to_numpy(), ref, dtype)
    assert f.elapsed() == pytest.approx(norm.cost(SPEC, shape, (rows, cols), dtype=dtype),
                                        rel=0.01)


@pytest.mark.parametrize("weight,bias", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("algorithm", ["chain", "tree"])
def test_layer_norm_affine_options_and_tree(weight, bias, algorithm):
    f = Fabric(SPEC, 3, 6)
    shape = (12, 48)
    x = place(f, RNG.standard_normal(shape).astype(np.float32), "fp32")
    w = RNG.standard_normal(48).astype(np.float32) if weight else None
    b = RNG.standard_normal(48).astype(np.float32) if bias else None
    y = norm.run(x, w, b, algorithm=algorithm)
    ref = F.layer_norm(torch.from_numpy(x.to_numpy()), (48,),
                       None if w is None else torch.from_numpy(w),
                       None if b is None else torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(y.to_numpy(), ref, rtol=1e-5, atol=1e-5)
    assert f.elapsed() == pytest.approx(norm.cost(SPEC, shape, (3, 6), weight=weight, bias=bias,
                                                  algorithm=algorithm), rel=0.01)


def test_layer_norm_large_mean_is_stable():
    # mean 1000, std 0.1: E[x^2] - E[x]^2 in fp32 gives a variance of 0 or 0.06 here
    f = Fabric(SPEC, 2, 4)
    x = (RNG.standard_normal((4, 64)) * 0.1 + 1000).astype(np.float32)
    y = norm.run(place(f, x, "fp32")).to_numpy()
    exact = F.layer_norm(torch.from_numpy(x).double(), (64,)).numpy()
    torch_fp32 = F.layer_norm(torch.from_numpy(x), (64,)).numpy()
    assert np.abs(y - exact).max() <= 2 * np.abs(torch_fp32 - exact).max() + 1e-6


def test_layer_norm_local_rows_and_bad_params():
    f = Fabric(SPEC, 4, 1)
    x = MeshTensor.from_numpy(f, RNG.standard_normal((8, 20)).astype(np.float32), None, 0, None)
    y = norm.run(x)
    np.testing.assert_allclose(y.to_numpy(), F.layer_norm(torch.tensor(x.to_numpy()),
                                                          (20,)).numpy(), rtol=1e-5, atol=1e-5)
    assert f.elapsed() == norm.cost(SPEC, (8, 20), (4, 1), col_map=None, weight=False,
                                    bias=False)
    with pytest.raises(KernelShapeError, match="layer_norm: weight has shape"):
        norm.run(x, np.ones(7, np.float32))


# ---------------------------------------------------------------------------- embedding ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,vocab,hidden,rows,cols", [(10, 69, 16, 3, 4),
                                                           (64, 69, 512, 8, 8),
                                                           (7, 5, 9, 7, 2)])
def test_embedding_matches_torch(tokens, vocab, hidden, rows, cols, dtype):
    f = Fabric(SPEC, rows, cols)
    ids = RNG.integers(0, vocab, tokens)
    table = RNG.standard_normal((vocab, hidden)).astype(np.float32)
    y = em.run(f, ids, table, dtype=dtype)
    np.testing.assert_array_equal(y.to_numpy().astype(np.float32), rounded(table, dtype)[ids])
    ref = F.embedding(torch.from_numpy(ids), torch.from_numpy(rounded(table, dtype))).numpy()
    close(y.to_numpy(), ref, dtype)
    assert f.elapsed() == em.cost(SPEC, tokens, vocab, hidden, (rows, cols), dtype=dtype)
    assert f.sram.peak() == em.sram_bytes(tokens, vocab, hidden, (rows, cols), dtype)


def test_embedding_bad_ids_and_sizes():
    f = Fabric(SPEC, 2, 2)
    table = np.zeros((69, 8), np.float32)
    with pytest.raises(KernelError, match=r"embedding: token id 69 at position 3 .* 69"):
        em.run(f, np.array([0, 1, 2, 69]), table)
    with pytest.raises(KernelError, match="token id -1"):
        em.run(f, np.array([-1, 1]), table)
    with pytest.raises(KernelError, match="integers"):
        em.run(f, np.array([0.5, 1.0]), table)
    with pytest.raises(KernelDtypeError):
        em.run(f, np.array([0, 1]), table, dtype="int8")
    with pytest.raises(KernelFitError, match="at least 6 columns"):
        em.check(SPEC, 16, 2000, 32, (2, 2), "fp32")
    with pytest.raises(KernelFitError, match="shard it"):
        em.check(SPEC, 16, 50257, 4, (2, 4), "fp16")
    with pytest.raises(KernelFitError, match="at most 1 rows"):
        em.run(f, np.array([3]), table)
    assert f.sram.peak() == 0


# --------------------------------------------------------------------------- cross-entropy ----
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,vocab,rows,cols,maps", [
    (10, 69, 3, 4, (0, 1)), (64, 69, 8, 8, (0, 1)), (12, 30, 1, 3, (None, 1)),
    (12, 30, 4, 1, (0, None)), (9, 11, 1, 1, (0, 1)),
])
def test_cross_entropy_and_gradient_match_torch(tokens, vocab, rows, cols, maps, dtype):
    f = Fabric(SPEC, rows, cols)
    z = RNG.standard_normal((tokens, vocab)).astype(np.float32) * 2
    y = RNG.integers(0, vocab, tokens)
    y[1] = -100                                   # ignored, as transformers pads labels
    logits = MeshTensor.from_numpy(f, z, None, *maps, dtype)
    loss, grad = ls.run(logits, y)
    zt = torch.from_numpy(logits.to_numpy().astype(np.float32)).requires_grad_()
    ref = F.cross_entropy(zt, torch.from_numpy(y), ignore_index=-100)
    ref.backward()
    assert loss.to_numpy()[0] == pytest.approx(ref.item(), rel=1e-5)
    assert grad.dtype == dtype and grad.shape == (tokens, vocab)
    close(grad.to_numpy(), zt.grad.numpy(), dtype)
    assert loss.rect.rows == 1
    assert f.elapsed() == pytest.approx(ls.cost(SPEC, tokens, vocab, (rows, cols),
                                                row_map=maps[0], col_map=maps[1], dtype=dtype),
                                        rel=0.01)


def test_cross_entropy_bad_targets():
    f = Fabric(SPEC, 2, 2)
    logits = place(f, np.zeros((4, 69), np.float32), "fp32")
    with pytest.raises(KernelError, match=r"cross_entropy: target 69 at position 2"):
        ls.run(logits, np.array([0, 1, 69, 3]))
    with pytest.raises(KernelShapeError, match="3 targets for 4 rows"):
        ls.run(logits, np.array([0, 1, 2]))
    with pytest.raises(KernelError, match="ignore_index"):
        ls.run(logits, np.full(4, -100))
    with pytest.raises(KernelShapeError, match="must map tokens"):
        ls.cost(SPEC, 4, 69, (2, 2), row_map=1, col_map=0)


def test_timing_only_runs_take_the_same_cycles():
    def program(timing_only):
        f = Fabric(SPEC, 3, 4, timing_only=timing_only)
        x = place(f, RNG.standard_normal((10, 69)).astype(np.float32), "fp16")
        h = norm.run(x, np.ones(69, np.float32), np.zeros(69, np.float32))
        h = ew.gelu(h, "tanh")
        h = ew.residual_add(h, x)
        p = ew.softmax(h)
        loss, grad = ls.run(p, RNG.integers(0, 69, 10))
        em.run(f, RNG.integers(0, 69, 10), np.ones((69, 8), np.float32),
               rect=f.rect(0, 0, 3, 4), dtype="fp16")
        return f, loss, grad
    full, loss, _ = program(False)
    timed, loss_t, grad_t = program(True)
    assert loss_t.tiles is None and grad_t.tiles is None and np.isfinite(loss.to_numpy()).all()
    np.testing.assert_array_equal(full.ce_clock, timed.ce_clock)
    assert full.elapsed() == timed.elapsed()
    assert full.sram.peak() == timed.sram.peak()


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_one_count_costs_what_the_array_path_costs(dtype: str) -> None:
    """`op_cycles` / `vector_cycles` on one count (the plain-float path kernel sizing
    takes) give the array path's value and type, element by element, for every op."""
    counts = [0, 1, 3, 7.5, 1023, 2 ** 20 + 1, 3.3e9, float("inf")]
    for op in ew.OP_COSTS:
        arr = ew.op_cycles(SPEC, np.array(counts, dtype=float), dtype, op, reads=2)
        one = [ew.op_cycles(SPEC, c, dtype, op, reads=2) for c in counts]
        assert all(isinstance(x, np.float64) for x in one)
        assert np.array_equal(arr, np.array(one))
    assert vector_cycles(SPEC, 10.0, dtype, "add", reads=3, writes=1) == \
        vector_cycles(SPEC, np.array([10.0]), dtype, "add", reads=3, writes=1)[0]
