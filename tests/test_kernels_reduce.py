"""The reduce_sum kernel (sums over rows or columns, what backward graphs need): values
against the NumPy oracle, fabric cycles against cost(), typed errors for bad layouts.

Tolerance: the sum is exact in fp32 up to summation order (1e-5 relative to the sum of
absolute values), then rounded once to the storage dtype (one unit of its roundoff).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waferscale.errors import KernelShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import to_storage
from waferscale.hardware import custom_spec
from waferscale.kernels import reduce as rd

SPEC = custom_spec(rows=32, cols=32)
RNG = np.random.default_rng(5)
#: relative roundoff of one rounding to the storage dtype
EPS = {"fp32": 1e-5, "fp16": 1e-3, "bf16": 8e-3}
#: [rows, cols] on PE rows x PE cols; odd ones pad edge tiles, 1 x 1 keeps it all local.
LAYOUTS = [((37, 23), 4, 5), ((64, 64), 8, 8), ((10, 3), 1, 1), ((5, 70), 5, 7),
           ((200, 96), 16, 1)]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sums_match_numpy(layout, axis, dtype):
    shape, rows, cols = layout
    f = Fabric(SPEC, rows, cols)
    x = MeshTensor.from_numpy(f, RNG.standard_normal(shape).astype(np.float32), dtype=dtype)
    got = rd.run(x, axis).to_numpy().astype(np.float32)
    held = x.to_numpy().astype(np.float32)         # the values as stored in the dtype
    ref = rd.reference(held, axis)
    scale = np.abs(held).sum(axis=axis, keepdims=True)
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= 1e-5 * scale + EPS[dtype] * np.abs(ref) + 1e-6)
    assert np.array_equal(got, to_storage(got, dtype).astype(np.float32))


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("layout", [((256, 512), 8, 16), ((1000, 64), 16, 4),
                                    ((64, 2048), 4, 32), ((10, 3), 1, 1)])
def test_cycles_match_cost(layout, axis):
    """Over rows the closed form is exact; over columns it uses `timing.allreduce_cycles`,
    which counts 2 cycles more than the reduce + multicast the fabric runs (the same
    residue as the softmax's row sums), so the agreement is to 1 %."""
    shape, rows, cols = layout
    f = Fabric(SPEC, rows, cols)
    rd.run(MeshTensor.from_numpy(f, RNG.standard_normal(shape).astype(np.float32)), axis)
    expected = rd.cost(SPEC, shape, (rows, cols), axis)
    if axis == 0:
        assert f.elapsed() == expected
    else:
        assert f.elapsed() == pytest.approx(expected, rel=0.01)


def test_timing_only_advances_the_same_clocks():
    shape, rows, cols = (300, 128), 8, 8
    full, timing = Fabric(SPEC, rows, cols), Fabric(SPEC, rows, cols, timing_only=True)
    rd.run(MeshTensor.from_numpy(full, RNG.standard_normal(shape).astype(np.float32)), 0)
    rd.run(MeshTensor.empty(timing, shape), 0)
    assert timing.elapsed() == full.elapsed() > 0


def test_bad_layouts_are_typed_errors():
    f = Fabric(SPEC, 2, 2)
    x = MeshTensor.from_numpy(f, np.ones((4, 4), np.float32))
    with pytest.raises(KernelShapeError, match="axis 0 or 1"):
        rd.run(x, 2)
    t = MeshTensor.from_numpy(f, np.ones((4, 4), np.float32), row_map=1, col_map=0)
    with pytest.raises(KernelShapeError, match="relayout"):
        rd.run(t, 0)
    with pytest.raises(KernelShapeError, match=r"\[rows, cols\]"):
        rd.cost(SPEC, (2, 3, 4), (2, 2), 0)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("layout", [((37, 23), 4, 5), ((10, 3), 1, 1)])
def test_means_match_numpy_and_cost(layout, axis, dtype):
    """A mean: the fp32 sum divided by the count before the one rounding (as PyTorch
    divides its fp32 accumulator), and one division pass per result in the clocks."""
    shape, rows, cols = layout
    count = shape[axis]
    f = Fabric(SPEC, rows, cols)
    x = MeshTensor.from_numpy(f, RNG.standard_normal(shape).astype(np.float32), dtype=dtype)
    got = rd.run(x, axis, count=count).to_numpy().astype(np.float32)
    held = x.to_numpy().astype(np.float32)
    ref = rd.reference(held, axis, count)
    scale = np.abs(held).sum(axis=axis, keepdims=True) / count
    assert np.all(np.abs(got - ref) <= 1e-5 * scale + EPS[dtype] * np.abs(ref) + 1e-6)
    expected = rd.cost(SPEC, shape, (rows, cols), axis, dtype=dtype, count=count)
    assert expected > rd.cost(SPEC, shape, (rows, cols), axis, dtype=dtype)
    assert f.elapsed() == pytest.approx(expected, rel=0.01)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@settings(max_examples=300, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 70), r=st.integers(1, 9),
       c=st.integers(1, 9), axis=st.sampled_from([0, 1]),
       dtype=st.sampled_from(["fp32", "fp16", "bf16"]), count=st.sampled_from([1, 3, 7]),
       seed=st.integers(0, 2**31 - 1), specials=st.booleans())
def test_values_are_the_fabric_runs_bits(rows, cols, r, c, axis, dtype, count, seed, specials):
    """`values` (the runtime's path once a stage's figures are remembered) returns what the
    fabric run returns, bit for bit: same sums in the same order, NaN payloads, signed
    zeros and infinities included."""
    r, c = min(r, rows), min(c, cols)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
    if specials:
        pick = rng.random((rows, cols))
        x[pick < 0.1] = -0.0
        x[(pick >= 0.1) & (pick < 0.13)] = np.inf
        x[(pick >= 0.13) & (pick < 0.15)] = np.nan
    fab = Fabric(SPEC, r, c)
    ran = rd.run(MeshTensor.from_numpy(fab, x, dtype=dtype), axis, count=count).to_numpy()
    got = rd.values(x, axis, (r, c), dtype, count)
    assert got.shape == ran.shape and got.dtype == np.float32
    assert np.array_equal(_bits(got), _bits(ran))


@pytest.mark.parametrize("shape,rect", [((256, 512), (3, 166)), ((256, 2048), (175, 31)),
                                        ((256, 1536), (9, 36)), ((1000, 2900), (250, 7))])
@pytest.mark.parametrize("axis", [0, 1])
def test_values_bits_on_training_shapes(shape, rect, axis):
    """The shapes and rectangles of GenSLM-25M's bias gradients (and a larger one), where
    NumPy's loops are long enough to block or buffer differently than on small tiles."""
    x = (RNG.standard_normal(shape) * 100).astype(np.float32)
    fab = Fabric(custom_spec(rows=256, cols=256), *rect)
    ran = rd.run(MeshTensor.from_numpy(fab, x), axis).to_numpy()
    assert np.array_equal(_bits(rd.values(x, axis, rect)), _bits(ran))
