"""Differential fuzzing of `waferscale.compile` (fast profile) and what it found, pinned.

`test_random_graphs_match_eager` draws random small modules (tests/fuzz_graphs.py: the
generator, the op set and the tolerances), compiles each pipelined, runs it on the
simulated wafer and compares with eager PyTorch, and compiles it in estimate mode; both
reports must be strict JSON. Hypothesis is derandomized (the same examples on every run)
and shrinks a failure to a minimal reproducer (a `Case` that prints as code). The long
profile is benchmarks/bench_fuzz.py (thousands of cases, cases/s, mismatches, crashes).

The tests after it are the failures the fuzzer (and issue 18) found, each at its cause.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fuzz_graphs import (
    Case,
    FuzzModule,
    check_case,
    compare,
    hypothesis_strategy,
    inputs,
    sensitivity,
)
from hypothesis import HealthCheck, given, settings

import waferscale
from waferscale.compiler.errors import CaptureError

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                print_blob=True)


@FAST
@given(hypothesis_strategy(max_ops=4))
def test_random_graphs_match_eager(case: Case) -> None:
    out = check_case(case)
    assert out.status == "ok", f"{out.status}: {out.detail}\n{case!r}"


def _strict(report: dict) -> None:
    json.dumps(report, allow_nan=False, default=str)


def _same(cm: waferscale.CompiledModel, model: torch.nn.Module, *args: torch.Tensor) -> None:
    got, want = cm(*args), model(*args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ nothing to place --------
class _Moves(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(1, 0).reshape(-1)[2:9]
        return torch.cat([y, y.flip(0)[:3]]).unsqueeze(0).expand(2, -1)


class _HostOnly(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, -1).transpose(0, 1)


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("cls", [_Moves, _HostOnly, _Identity])
def test_graph_without_wafer_kernel_runs(cls: type[torch.nn.Module]) -> None:
    """Was: "placement problem has no blocks; give at least one kernel" (the floorplanner
    refuses an empty problem), so the model went to weight streaming or failed. Nothing
    to place is a valid program: it compiles pipelined and runs (layout ops, host ops)."""
    m = cls().eval()
    x = torch.randn(3, 4)
    cm = waferscale.compile(m, (x,))
    assert cm.mode == "pipelined"
    _same(cm, m, x)
    rep = cm.report()
    _strict(rep)
    assert "nothing to place" in rep["placement_note"]
    assert waferscale.compile(m, (x,), mode="estimate").mode == "pipelined (estimate)"


def test_nothing_to_place_still_checks_pins_and_reserved_areas() -> None:
    from waferscale.compiler.floorplan import ConstraintError

    x = torch.randn(3, 4)
    with pytest.raises(ConstraintError, match="no on-wafer stage"):
        waferscale.compile(_Moves(), (x,), pin={"mm": (0, 0, 4, 4)})
    with pytest.raises(ConstraintError, match="leaves the"):
        waferscale.compile(_Moves(), (x,), reserve=[(5000, 0, 4, 4)])


# ------------------------------------------------------------------ GEMM of zeros -----------
class _LinearRelu(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l(torch.relu(x))


def test_sparse_gemm_of_all_zero_activations() -> None:
    """Was: ZeroDivisionError in gemm.run (``ideal_cycles / cycles``): a ReLU-fed GEMM
    skips zero activations, so all-zero ones take 0 cycles."""
    m = _LinearRelu().eval()
    x = -torch.rand(4, 8) - 0.1
    cm = waferscale.compile(m, (x,))
    _same(cm, m, x)
    _strict(cm.report())


def test_gemm_run_efficiency_of_zero_cycles() -> None:
    from waferscale.fabric import Fabric
    from waferscale.hardware import custom_spec
    from waferscale.kernels import gemm

    spec = custom_spec(rows=8, cols=8)   # one PE: nothing to send, every product skipped
    res = gemm.run(np.zeros((4, 8), np.float32), np.ones((8, 5), np.float32), grid=1,
                   fabric=Fabric(spec, 8, 8), dtype="fp32", accumulate="fp32", skip="a")
    assert res.cycles == 0.0 and res.efficiency == 0.0 and not res.value.any()


# ------------------------------------------------------------------ clamp ------------------
class _Clamps(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (torch.clamp(x, -0.5, 0.5) + torch.clamp(x, max=0.1) + torch.clamp(x, min=0.2)
                + torch.clamp(x, y * 0.1, y[0] * 0.2) + torch.clamp_max(x, y)
                + F.hardtanh(x) + x.clamp(1, -1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_clamp_is_pointwise(dtype: torch.dtype) -> None:
    """Was: ``clamp`` (and hardtanh, clamp_max) fell back to the host; it is two
    compare-and-keep passes, fused with its neighbours."""
    m = _Clamps()
    x, y = torch.randn(3, 4, dtype=dtype), torch.randn(3, 4, dtype=dtype)
    cm = waferscale.compile(m, (x, y))
    assert cm.report()["fallback_ops"] == []
    assert torch.equal(cm(x, y), m(x, y))
    algos = "".join(s["algorithm"] for s in cm.report()["stages"])
    assert algos.count("max") == 11   # a pass per bound: two-sided clamps cost two


# ------------------------------------------------------------------ 0-d bf16 values --------
@pytest.mark.parametrize(("dtype", "op"), [("bfloat16", "neg"), ("bfloat16", "gelu_tanh"),
                                         ("float32", "gelu"), ("bfloat16", "gelu")])
def test_scalar_through_a_pointwise_op(dtype: str, op: str) -> None:
    """Was: "cannot broadcast a non-scalar to a scalar array": `round_bf16` (any op in
    bf16) and `elementwise._erf` (GELU in any dtype) return a 0-d value with shape (1,)
    (np.ascontiguousarray's ndim >= 1), so a sum to a scalar followed by such an op
    failed; `pointwise.node_value` gives values their node's shape back."""
    case = Case(dtype, (13,), (("sum", 0, (0,), False), ("unary", 1, op)), (2,))
    assert check_case(case).status == "ok"


# ------------------------------------------------------------------ typed capture errors ---
class _Mask(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[x > 0]


class _Nonzero(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x)


@pytest.mark.parametrize(("cls", "op"), [(_Mask, "aten.index.Tensor"),
                                         (_Nonzero, "aten.nonzero")])
def test_data_dependent_shape_is_a_capture_error(cls: type[torch.nn.Module], op: str) -> None:
    """Was: torch's GuardOnDataDependentSymNode from ir.tensor_meta."""
    with pytest.raises(CaptureError, match="shape depends on the values") as info:
        waferscale.compile(cls(), (torch.randn(3, 4),))
    assert op in str(info.value) and "test_fuzz_compile.py" in str(info.value)


# ------------------------------------------------------------------ train mode --------------
class _Drop(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = torch.nn.Linear(4, 3)
        self.d = torch.nn.Dropout(0.5)
        self.head = torch.nn.Sequential(torch.nn.Linear(3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.d(self.l(x)))


def test_train_mode_is_said_not_silently_changed() -> None:
    """Was: a model in train mode was compiled as in eval mode with nothing said. Now a
    warning and a report note name the modules whose behaviour changes; every module's
    own training flag is restored exactly."""
    m = _Drop().train()
    m.head.eval()
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match="train mode") as rec:
        cm = waferscale.compile(m, (x,))
    ours = [w for w in rec if "train mode" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__   # the caller, not the library
    notes = cm.report()["notes"]
    assert any("train mode" in n and ": d behave" in n for n in notes)
    assert m.training and m.d.training and not m.head.training
    torch.testing.assert_close(cm(x), m.eval()(x))


def test_train_mode_without_dropout_is_a_note_only() -> None:
    m = _LinearRelu().train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cm = waferscale.compile(m, (torch.randn(2, 8),))
    assert any("changes nothing here" in n for n in cm.report()["notes"])
    cm = waferscale.compile(m.eval(), (torch.randn(2, 8),))
    assert not any("train mode" in n for n in cm.report()["notes"])


# ------------------------------------------------------------------ specs, JSON ------------
@pytest.mark.parametrize("field", ["clock_hz", "max_clock_hz", "io_bits_per_s", "power_w",
                                   "core_area_mm2", "energy_pj_per_flop", "spare_fraction"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_spec_rejects_non_finite_fields(field: str, value: float) -> None:
    """Was: ``clock_hz = nan`` passed every ``<= 0`` test and NaN flowed into every figure
    with exit 0."""
    from waferscale.errors import SpecError
    from waferscale.hardware import custom_spec

    with pytest.raises(SpecError, match=field):
        custom_spec(**{field: value})


def test_spec_toml_rejects_nan_and_odd_types(tmp_path) -> None:
    from waferscale.errors import SpecError
    from waferscale.hardware.spec import spec_from_toml

    for text, match in (("clock_hz = nan", "clock_hz"), ('base = "wse2"\nio_bits_per_s = inf',
                                                         "io_bits_per_s"),
                        ("base = [1]", "not a preset"), ("name = 3", "name"),
                        ('base = "wse2"\nsimd = {fp16_fmac = true}', "fp16_fmac")):
        p = tmp_path / "s.toml"
        p.write_text(text + "\n")
        with pytest.raises(SpecError, match=match):
            spec_from_toml(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(SpecError, match="cannot be read"):
        spec_from_toml(p)


def test_placement_figures_are_strict_json() -> None:
    """Was: ``baseline_bottleneck_cycles`` (and the placed period) printed as Infinity
    when a kernel does not fit its strip: now null, with the reason beside it."""
    from waferscale.compiler import place

    assert place._finite(math.inf) is None and place._finite(3.0) == 3.0
    m = _LinearRelu().eval()
    rep = waferscale.compile(m, (torch.randn(4, 8),)).report()
    _strict(rep)


def test_program_dumps_is_strict_json() -> None:
    """Was: ``Program.dumps`` wrote ``Infinity``/``NaN`` (any non-finite figure or meta
    value), which strict parsers reject. Now null, with the path and what it was under
    ``non_finite``."""
    cm = waferscale.compile(_LinearRelu().eval(), (torch.randn(4, 8),))
    node = next(iter(cm.program.graph.nodes.values()))
    node.meta["probe_inf"], node.meta["probe_nan"] = math.inf, math.nan
    text = cm.program.dumps()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the document"))
    assert doc["nodes"][0]["meta"]["probe_inf"] is None
    assert doc["non_finite"]["nodes[0].meta.probe_inf"].startswith("Infinity")
    assert doc["non_finite"]["nodes[0].meta.probe_nan"].startswith("NaN")


# ------------------------------------------------------------------ the tolerance ----------
def test_compare_accepts_ill_conditioned_bf16_and_catches_wrong_values() -> None:
    """A layer norm over a softmax row in bf16 amplifies rounding noise (rows nearly
    uniform: the standard deviation is tiny), so wafer and eager differ by more than
    bf16's resolution while both are as close to float64; a wrong value is not."""
    case = Case("bfloat16", (4, 11), (("softmax", 0, -1, False), ("layer_norm", 1, False)),
                (2,), seed=3)
    m = FuzzModule(case)
    args = inputs(case)
    eager = m(*args)
    r = FuzzModule(case).double()
    r.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    ref = r(*(a.double() for a in args))
    assert compare(case, eager, eager, ref)[0]
    assert not compare(case, eager + 0.5, eager, ref)[0]


def test_bf16_log_softmax_is_correctly_rounded() -> None:
    """Why bf16 graphs mixing log-softmax and layer norm differed from eager by more than
    bf16's tolerance: PyTorch's CPU bf16 log-softmax rounds an intermediate (the row's
    log-sum-exp) to bf16 before subtracting, so some outputs are one ulp off the correctly
    rounded value (0.03 at magnitude 4 to 8); a layer norm after it divides that by the
    row's spread and the next GEMM adds it up. The wafer's log-softmax rounds once: never
    further from float64 than eager, often closer. Not a wafer bug: the fuzzer's
    tolerance compares with float64 where wafer and eager disagree (`compare`)."""
    torch.manual_seed(0)
    x = torch.randn(11, 13).to(torch.bfloat16)

    class LogSoftmax(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log_softmax(x, -1)

    m = LogSoftmax()
    got, eager = waferscale.compile(m, (x,))(x).double(), m(x).double()
    exact = torch.log_softmax(x.double(), -1)
    rounded = exact.to(torch.bfloat16).double()     # the correctly rounded result
    assert torch.equal(got, rounded)
    assert not torch.equal(eager, rounded)
    assert (got - exact).abs().max() <= (eager - exact).abs().max()


# ------------------------------------------------------------------ SDPA shapes -------------
class _Sdpa(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("shape", [(1, 5, 1), (3, 7, 4), (2, 3, 5, 4), (2, 2, 1, 6, 3)])
def test_sdpa_with_any_leading_dims_runs_on_the_wafer(shape: tuple[int, ...]) -> None:
    """Was: ValueError from `Attention.describe`, which unpacked a 4-D query; SDPA takes
    any leading dims ([batch, seq, d] is one head per batch entry)."""
    q, k, v = (torch.randn(shape) for _ in range(3))
    cm = waferscale.compile(_Sdpa(), (q, k, v))
    assert cm.report()["fallback_ops"] == []
    assert [s["kind"] for s in cm.report()["stages"]] == ["attention"]
    _same(cm, _Sdpa(), q, k, v)
    case = Case("float32", shape, (("sdpa", 0, 0, 0, True),), (1,))
    assert check_case(case).status == "ok"


def test_sdpa_of_differing_shapes_falls_back() -> None:
    """Cross-attention (k, v longer than q) is not the kernel's: a host fallback that
    says so, not a wrong answer."""
    q, k = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    cm = waferscale.compile(_Sdpa(), (q, k, k))
    assert "differ in shape" in cm.report()["fallback_ops"][0]["reason"]
    _same(cm, _Sdpa(), q, k, k)


# ------------------------------------------------------------------ leaky ReLU ------------
class _Leaky(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, 0.1) + F.leaky_relu(x) + F.leaky_relu(x, 2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_leaky_relu_is_pointwise(dtype: torch.dtype) -> None:
    """Was a host fallback: a multiply by the slope and a select by sign, fused (a slope
    above 1 too, where ``max(x, a x)`` would be wrong)."""
    x = torch.randn(5, 7, dtype=dtype)
    cm = waferscale.compile(_Leaky(), (x,))
    assert cm.report()["fallback_ops"] == []
    assert torch.equal(cm(x), _Leaky()(x))
    assert cm.report()["stages"][0]["algorithm"].count("mul+max") == 3


# ------------------------------------------------------------------ complex operands -------
class _ComplexAbs(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.complex(x, 2 * x).abs() + torch.fft.rfft(x).abs().sum()


def test_float_result_of_a_complex_operand_is_not_pointwise() -> None:
    """Was a wrong answer (no error): ``abs`` of a complex tensor has a float result, so it
    was taken as a wafer pointwise op and computed on the real part alone (NumPy's
    complex-to-float cast drops the imaginary part). The PEs hold no complex values: it
    runs on the host."""
    x = torch.randn(3, 4)
    cm = waferscale.compile(_ComplexAbs(), (x,))
    assert "aten.abs.default" in [f["op"] for f in cm.report()["fallback_ops"]]
    _same(cm, _ComplexAbs(), x)


# ------------------------------------------------------------------ folded causal masks ----
class _MaskedSdpa(torch.nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        s = q.shape[-2]
        keep = torch.ones(s, s, dtype=torch.bool).tril()
        if self.how == "band":              # not causal: the host's
            keep = keep & torch.ones(s, s, dtype=torch.bool).triu(-1)
        mask = keep if self.how != "float" else \
            torch.zeros(s, s).masked_fill(~keep, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None])


@pytest.mark.parametrize("how", ["bool", "float"])
def test_folded_causal_mask_is_not_kept(how: str) -> None:
    """Was: a folded causal mask stayed a constant of the program for its whole life
    (GenSLM-25M at 10,240 tokens: a [1, 1, seq, seq] fp32 table, 0.42 GB per sample)
    though the kernel masks by position. The SDPA becomes ``is_causal=True`` and the
    mask leaves the graph."""
    q, k, v = (torch.randn(2, 3, 7, 4) for _ in range(3))
    m = _MaskedSdpa(how)
    cm = waferscale.compile(m, (q, k, v))
    g = cm.program.graph
    assert [s.kind for s in cm.program.stages] == ["attention"]
    assert not any(list(t.shape[-2:]) == [7, 7] for t in g.constants.values()
                   if isinstance(t, torch.Tensor))
    node = next(n for n in g.calls() if n.short == "scaled_dot_product_attention")
    assert node.kwargs == {"is_causal": True} and len(node.args) == 3
    _same(cm, m, q, k, v)


def test_non_causal_folded_mask_is_kept_for_the_host() -> None:
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    m = _MaskedSdpa("band")
    cm = waferscale.compile(m, (q, k, v))
    assert "non-causal" in cm.report()["fallback_ops"][0]["reason"]
    _same(cm, m, q, k, v)


# ------------------------------------------------------------------ non-causal SDPA -------
class _Full(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=0.3) * 2


@pytest.mark.parametrize(("q_shape", "kv_shape", "dtype"), [
    ((2, 3, 5, 4), (2, 3, 5, 4), torch.float32),
    ((3, 7, 4), (3, 7, 4), torch.bfloat16),
    ((2, 1, 3, 4), (2, 1, 6, 4), torch.float32),     # cross-attention: other key length
    ((1, 1, 1), (1, 1, 1), torch.float32),
])
def test_non_causal_sdpa_runs_on_gemm_and_softmax(q_shape, kv_shape, dtype) -> None:
    """Was a host fallback: the flash kernel is causal by construction, so an SDPA without
    mask or causal flag went to the host. It is now the ops of its definition (two batched
    GEMMs, a scale and a softmax), which the wafer's kernels run."""
    q = torch.randn(q_shape, dtype=dtype)
    k, v = (torch.randn(kv_shape, dtype=dtype) for _ in range(2))
    cm = waferscale.compile(_Full(), (q, k, v))
    assert cm.report()["fallback_ops"] == []
    kinds = [s.kind for s in cm.program.stages]
    assert kinds.count("gemm") == 2 and "softmax" in kinds and "attention" not in kinds
    got, want = cm(q, k, v), _Full()(q, k, v)
    tol = 1e-5 if dtype == torch.float32 else 2 ** -5
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    case = Case(str(dtype).split(".")[1], q_shape, (("sdpa", 0, 0, 0, False),), (1,))
    assert check_case(case).status == "ok"


# -------------------------------------------- findings of the 10,000-case run (seeds 200000+)
def test_bf16_non_causal_sdpa_keeps_its_scores_in_fp32() -> None:
    """Fuzz seeds 206504 and 207203: q = k = v holding a masked_fill of -30 give logits in
    the thousands; rounded to bf16 between the scores GEMM and the softmax (ulp 8-16 there)
    they flipped near-one-hot rows (error 1.2-2.6 against eager's 0.08). The decomposition
    now computes the scores and softmax in fp32, as SDPA does, and casts the
    probabilities back."""
    case = Case("bfloat16", (3, 7, 8, 8), (("causal_mask", 0), ("sdpa", 1, 1, 1, False)),
                (2,), seed=29325)
    assert check_case(case, estimate=False).status == "ok"
    cm = waferscale.compile(FuzzModule(case).eval(), inputs(case))
    g = cm.program.graph
    scores, out = [n for n in g.calls() if n.short == "bmm"]
    assert scores.meta["dtype"] == "float32" and out.meta["dtype"] == "bfloat16"
    assert [n.meta["dtype"] for n in g.calls() if n.short == "_softmax"] == ["float32"]


def test_rounding_chaos_is_not_a_mismatch_but_wrong_values_are() -> None:
    """Fuzz seed 207155: log-softmax over 2 values, a division, then two layer norms over
    those 2 values: the first snaps to +-1 by the sign of a one-ulp difference, so the
    wafer's (correctly rounded) log-softmax gave the opposite sign to eager's in one row
    (error 2), where eager happened to match float64. `compare` now measures how far one
    ulp of input moves eager's own output (`sensitivity`) and allows that, element by
    element; a wrong value where rounding moves nothing is still caught."""
    case = Case("bfloat16", (13, 8, 3, 3), (
        ("permute", 0, (0, 1, 2, 3)), ("slice", 1, 3, 0, 2), ("softmax", 2, -1, True),
        ("binary", 3, 2, "div_safe"), ("layer_norm", 4, True), ("layer_norm", 5, False)),
        (6,), seed=16005)
    assert check_case(case, estimate=False).status == "ok"
    m = FuzzModule(case).eval()
    args = inputs(case)
    with torch.no_grad():
        eager = m(*args)
        spread = sensitivity(m, args)
        r = FuzzModule(case).double().eval()
        r.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
        ref = r(*(a.double() for a in args))
    assert float(spread[0].max()) > 1.0            # some rows flip under one ulp of input
    wrong = eager.clone()
    calm = int(spread[0].flatten().argmin())
    wrong.view(-1)[calm] += 0.5
    assert not compare(case, wrong, eager, ref, spread)[0]
