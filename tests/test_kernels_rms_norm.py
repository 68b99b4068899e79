"""The RMS-norm kernel family (`kernels.rms_norm`): values against the NumPy oracle and
PyTorch, fabric cycles against ``cost()``, the graph rewrite that finds the decomposed norm
(and leaves near misses alone), and a tiny Llama that now runs with no host fallback.

Tolerances: the kernel computes in fp32 and rounds the output once, so against the fp32
oracle on the stored input it is within half a unit of the storage dtype's roundoff (plus
fp32 summation-order noise, 1e-5 relative). PyTorch evaluated op by op in a 16-bit dtype
rounds four times, so against it the bound is two units (as for the other kernels).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import waferscale
from waferscale.compiler import lower
from waferscale.compiler.capture import capture
from waferscale.errors import KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware import custom_spec
from waferscale.kernels import rms_norm as rn
from waferscale.kernels.elementwise import pad_mask

SPEC = custom_spec(rows=32, cols=32)
RNG = np.random.default_rng(7)
EPS = 1e-6
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: half a unit of roundoff of one rounding to the storage dtype (plus fp32 noise)
ONE_ROUNDING = {"fp32": 1e-5, "fp16": 2.0 ** -11 + 1e-5, "bf16": 2.0 ** -8 + 1e-5}
#: (rtol, atol) against PyTorch evaluated op by op in the dtype
OP_BY_OP = {"fp32": (1e-5, 1e-6), "fp16": (2e-3, 2e-3), "bf16": (1.6e-2, 1.6e-2)}
#: (shape, PE rows, PE cols, row_map, col_map): even splits, rows and hidden that do not
#: divide (padded edge tiles), one PE, a single PE column, whole rows per PE, a 3-D input.
LAYOUTS = [((8, 16), 2, 4, 0, 1), ((9, 69), 3, 8, 0, 1), ((33, 100), 4, 7, 0, 1),
           ((6, 12), 1, 1, 0, 1), ((20, 64), 6, 1, 0, 1), ((8, 20), 4, 1, 0, None),
           ((2, 5, 40), 2, 3, 1, 2)]


def _place(f: Fabric, x: np.ndarray, dtype: str, row_map: object, col_map: object
           ) -> MeshTensor:
    return MeshTensor.from_numpy(f, x, row_map=row_map, col_map=col_map, dtype=dtype)


# ------------------------------------------------------------------ the kernel ------------
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_values_match_oracle_and_torch(layout, dtype, weight):
    shape, rows, cols, row_map, col_map = layout
    f = Fabric(SPEC, rows, cols)
    x = _place(f, (RNG.standard_normal(shape) * 3).astype(np.float32), dtype, row_map, col_map)
    w = RNG.standard_normal(shape[-1]).astype(np.float32) if weight else None
    y = rn.run(x, w, eps=EPS)
    got = y.to_numpy().astype(np.float32)
    held = x.to_numpy().astype(np.float32)                   # the input as stored
    w_held = None if w is None else to_storage(w, dtype).astype(np.float32)
    ref = rn.reference(held, w_held, EPS)
    assert got.shape == ref.shape == shape
    assert np.all(np.abs(got - ref) <= ONE_ROUNDING[dtype] * np.abs(ref) + 1e-6)
    assert np.array_equal(got, to_storage(got, dtype).astype(np.float32))   # rounded once
    # PyTorch, op by op in the storage dtype (what the eager model computes)
    xt = torch.from_numpy(held).to(TORCH[dtype])
    want = xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + EPS)
    if w_held is not None:
        want = want * torch.from_numpy(w_held).to(TORCH[dtype])
    rtol, atol = OP_BY_OP[dtype]
    np.testing.assert_allclose(got, want.float().numpy(), rtol=rtol, atol=atol)
    mask = pad_mask(y)                                       # padding stays zero
    if mask is not None:
        assert not np.any(np.where(np.broadcast_to(mask, y.tiles.shape), 0, y.tiles))


@pytest.mark.parametrize("algorithm", ["chain", "tree"])
@pytest.mark.parametrize("weight", [True, False])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", LAYOUTS + [((64, 256), 8, 16, 0, 1), ((16, 64), 16, 32, 0, 1)])
def test_fabric_cycles_equal_cost(layout, dtype, weight, algorithm):
    """The closed form is exact: the same passes, and one allreduce that ends before the
    scaling passes start (no residue of the collective's closed form at the end)."""
    shape, rows, cols, row_map, col_map = layout
    f = Fabric(SPEC, rows, cols)
    x = _place(f, RNG.standard_normal(shape).astype(np.float32), dtype, row_map, col_map)
    rn.run(x, np.ones(shape[-1], np.float32) if weight else None, eps=EPS,
           algorithm=algorithm)
    assert f.elapsed() == rn.cost(SPEC, shape, (rows, cols), row_map=row_map,
                                  col_map=col_map, dtype=dtype, weight=weight,
                                  algorithm=algorithm) > 0


def test_timing_only_same_clocks_and_sram_within_the_plan():
    shape, rows, cols = (37, 90), 4, 6
    full, timing = Fabric(SPEC, rows, cols), Fabric(SPEC, rows, cols, timing_only=True)
    rn.run(MeshTensor.from_numpy(full, RNG.standard_normal(shape).astype(np.float32),
                                 dtype="bf16"), np.ones(90, np.float32), eps=EPS)
    rn.run(MeshTensor.empty(timing, shape, dtype="bf16"), np.ones(90, np.float32), eps=EPS)
    assert timing.elapsed() == full.elapsed() > 0
    p = rn.RmsNormParams(37, 90, weight=True, eps=EPS)
    assert full.sram.peak() <= rn.stage_sram_bytes(p, "bf16", rows, cols)


def test_bad_sizes_are_typed_errors():
    with pytest.raises(KernelShapeError, match="sizes must be >= 1"):
        rn.RmsNormParams(0, 64, weight=True, eps=EPS)
    with pytest.raises(KernelShapeError, match="eps"):
        rn.RmsNormParams(4, 64, weight=False, eps=-1.0)
    f = Fabric(SPEC, 2, 2)
    x = MeshTensor.from_numpy(f, np.ones((4, 8), np.float32))
    with pytest.raises(KernelShapeError, match="rms_norm: weight has shape"):
        rn.run(x, np.ones(7, np.float32), eps=EPS)


# ------------------------------------------------------------------ the graph rewrite ----
class Norm(torch.nn.Module):
    """transformers' LlamaRMSNorm in fp32, with variations the matcher must refuse."""

    def __init__(self, dim: int = -1, weight_input: bool = False,
                 expose_square: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(32))
        self.dim, self.weight_input, self.expose_square = dim, weight_input, expose_square

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None) -> object:
        sq = x.pow(2)
        y = x * torch.rsqrt(sq.mean(self.dim, keepdim=True) + 1e-6)
        y = (w if self.weight_input else self.weight) * y
        return (y, sq) if self.expose_square else y


def _targets(m: torch.nn.Module, *args: torch.Tensor) -> list[str]:
    g = capture(m, args)
    lower.lower(g)
    return [n.target for n in g.calls()]


def test_matcher_fuses_the_pattern_with_its_weight():
    x = torch.randn(4, 32)
    assert _targets(Norm(), x) == [rn.RMS_NORM]
    # torch.nn.RMSNorm exports the same ops (add.Scalar, mean over dim 1, weight on the
    # right of the multiply)
    assert _targets(torch.nn.RMSNorm(32, eps=1e-5), x) == [rn.RMS_NORM]


@pytest.mark.parametrize("variant", [{"dim": 0}, {"expose_square": True}])
def test_matcher_leaves_near_misses_alone(variant):
    """A mean over another axis is no RMS norm; a square read elsewhere cannot be dropped.
    Either way the ops stay as they were (and the mean falls back to the host)."""
    g = capture(Norm(**variant), (torch.randn(4, 32),))
    assert rn.fuse_rms_norm(g) == 0
    assert "aten.pow.Tensor_Scalar" in [n.target for n in g.calls()]


def test_weight_that_is_no_constant_stays_a_pointwise_multiply():
    m = Norm(weight_input=True)
    x, w = torch.randn(4, 32), torch.randn(32)
    assert _targets(m, x, w) == [rn.RMS_NORM, "aten.mul.Tensor"]
    cm = waferscale.compile(m, (x, w), strict=True)
    node = next(n for n in cm.program.graph.calls() if n.target == rn.RMS_NORM)
    assert node.args[1] is None and node.meta["kind"] == "rms_norm"
    with torch.no_grad():
        ref = m(x, w)
    torch.testing.assert_close(cm(x, w), ref, rtol=1e-5, atol=1e-6)
    # the host callable is the replaced ops, op for op (bitwise on the same inputs)
    assert torch.equal(rn.rms_norm(x, w, 1e-6), ref)


# ------------------------------------------------------------------ the must-show ---------
def _tiny_llama(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(cfg).eval().to(dtype)


def test_tiny_llama_runs_every_norm_on_the_wafer():
    """Before this family: ``aten.mean.dim`` x5 fell back to the host (one per norm)."""
    m = _tiny_llama()
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(1))
    cm = waferscale.compile(m, {"input_ids": ids})
    assert cm.report()["fallback_ops"] == []
    norms = [s for s in cm.program.stages if s.kind == "rms_norm"]
    assert len(norms) == 5                     # 2 layers x 2 + the final norm
    assert all(s.params == rn.RmsNormParams(16, 64, weight=True, eps=1e-6) for s in norms)
    assert not {"aten.mean.dim", "aten.rsqrt.default", "aten.pow.Tensor_Scalar"} & {
        n.target for n in cm.program.graph.calls()}
    out = cm(input_ids=ids).logits
    with torch.no_grad():
        ref = m(input_ids=ids).logits
    assert (out - ref).abs().max() < 1e-4
    runs = cm.last_run["runs"]
    for s in norms:                            # measured on the fabric == the plan's cost
        assert runs[s.name].cycles == s.cost_cycles
        assert runs[s.name].sram_peak <= s.sram_per_pe
    cm.time_only(input_ids=ids)                # clocks only: the same cycles
    assert all(cm.last_run["runs"][s.name].cycles == s.cost_cycles for s in norms)


def test_bf16_llama_norm_core_matched_between_its_casts():
    """In bf16, LlamaRMSNorm casts to fp32 and back: the matcher takes the fp32 core
    (unweighted: its user is the cast, not the weight multiply); the casts and the bf16
    weight multiply stay pointwise ops. Nothing falls back."""
    g = capture(_tiny_llama(torch.bfloat16), {"input_ids": torch.zeros(1, 8, dtype=torch.long)})
    lower.lower(g)
    norms = [n for n in g.calls() if n.target == rn.RMS_NORM]
    assert len(norms) == 5
    users = g.users()
    for n in norms:
        assert n.args[1] is None and n.meta["dtype"] == "float32"
        assert g.nodes[n.args[0].name].target == "aten._to_copy.default"
        (cast,) = users[n.name]
        assert g.nodes[cast].target == "aten._to_copy.default"
    assert not [n for n in g.calls() if n.meta["kind"] == "fallback"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_users_kept_incrementally_equal_a_fresh_count(dtype, monkeypatch):
    """`fuse_rms_norm` moves a rewritten node between its inputs' user lists instead of
    recounting them per norm: after every rewrite the lists equal `Graph.users()`, in
    order, and the fused graph is the same."""
    g = capture(_tiny_llama(dtype), {"input_ids": torch.zeros(1, 8, dtype=torch.long)})
    checked: list[int] = []
    real = rn._match

    def match(graph, node, users):
        assert users == graph.users()        # what the previous rewrite left is exact
        checked.append(1)
        return real(graph, node, users)

    monkeypatch.setattr(rn, "_match", match)
    assert rn.fuse_rms_norm(g) == 5 and len(checked) >= 5
