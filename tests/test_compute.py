"""Local compute: values against NumPy, cycles against SIMD widths, zero skipping."""

import numpy as np
import pytest

from waferscale.errors import DtypeError, ShapeError, SramOverflowError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import compute as cp
from waferscale.fabric.dtypes import round_bf16
from waferscale.fabric.tensor import count_nonzero_last
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=16, cols=16)
RNG = np.random.default_rng(1)


@pytest.mark.parametrize("dtype,width", [("fp32", 2), ("fp16", 4), ("bf16", 4)])
def test_add_uses_simd_width(dtype, width):
    f = Fabric(SPEC, 4, 4)
    x = RNG.standard_normal((8, 8, 16)).astype(np.float32)
    a = MeshTensor.from_numpy(f, x, dtype=dtype)
    b = MeshTensor.from_numpy(f, x, dtype=dtype)
    c = cp.elementwise(np.add, [a, b], "add")
    ref = a.to_numpy().astype(np.float32) * 2
    np.testing.assert_allclose(c.to_numpy().astype(np.float32), ref, rtol=1e-2)
    assert c.ready.max() == 2 * 2 * 16 / width   # 64 elements per PE


def test_bf16_rounds_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -3.14159], np.float32)
    y = round_bf16(x)
    assert y[0] == 1.0 and y[1] == 1.0 and y[2] == 1.015625
    assert abs(y[3] - -3.140625) < 1e-6


def test_fmac_skips_zeros_per_pe():
    f = Fabric(SPEC, 2, 2)
    x = np.ones((2, 2, 10), np.float32)
    x[0, 0, :] = 0          # PE (0,0) holds only zeros
    x[1, 1, 5:] = 0         # PE (1,1) holds 5 nonzeros
    a = MeshTensor.from_numpy(f, x)
    acc = MeshTensor.from_numpy(f, np.zeros_like(x))
    out = cp.fmac(acc, a, 3.0)
    np.testing.assert_array_equal(out.to_numpy(), 3 * x)
    np.testing.assert_array_equal(out.ready, [[0, 10], [10, 5]])   # fp32 FMAC: 1 per cycle


@pytest.mark.parametrize("skip", [None, "a", "b", "both"])
def test_local_matmul_values_and_fmacs(skip):
    f = Fabric(SPEC, 2, 3)
    a = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = RNG.standard_normal((2, 3, 5, 6)).astype(np.float32)
    a[a < 0.3] = 0
    b[b < -0.2] = 0
    ta = MeshTensor(f, f.full, (2, 3, 4, 5), "fp32", 0, 1, a[:, :, None, None])
    tb = MeshTensor(f, f.full, (2, 3, 5, 6), "fp32", 0, 1, b[:, :, None, None])
    out = cp.local_matmul(ta, tb, (2, 3, 4, 6), 0, 1, skip=skip)
    np.testing.assert_allclose(out.to_numpy(), a @ b, rtol=1e-5, atol=1e-6)
    expected = {
        None: np.full((2, 3), 4 * 5 * 6.0),
        "a": np.count_nonzero(a, axis=(2, 3)) * 6.0,
        "b": np.count_nonzero(b, axis=(2, 3)) * 4.0,
        "both": np.einsum("rcmk,rckn->rc", (a != 0) * 1.0, (b != 0) * 1.0),
    }[skip]
    np.testing.assert_allclose(out.ready, expected)


def test_mixed_precision_matmul_accumulates_fp32():
    f = Fabric(SPEC, 1, 1)
    a = RNG.standard_normal((1, 1, 8, 64)).astype(np.float16)
    b = RNG.standard_normal((1, 1, 64, 8)).astype(np.float16)
    ta = MeshTensor(f, f.full, (1, 1, 8, 64), "fp16", 0, 1, a[:, :, None, None])
    tb = MeshTensor(f, f.full, (1, 1, 64, 8), "fp16", 0, 1, b[:, :, None, None])
    out = cp.local_matmul(ta, tb, (1, 1, 8, 8), 0, 1, accumulate="fp32")
    assert out.dtype == "fp32"
    np.testing.assert_allclose(out.to_numpy(), a.astype(np.float32) @ b.astype(np.float32),
                               rtol=1e-4, atol=1e-4)
    assert out.ready.max() == 8 * 64 * 8 / SPEC.simd.mixed_fmac


def test_timing_only_advances_clocks_like_a_full_run():
    def program(timing_only):
        f = Fabric(SPEC, 3, 4, timing_only=timing_only)
        x = RNG.standard_normal((9, 13)).astype(np.float32)
        a = MeshTensor.from_numpy(f, x)
        b = cp.elementwise(np.multiply, [a, a], "mul")
        c = cp.elementwise(np.add, [a, b], "add")
        return f, c
    full, c_full = program(False)
    timed, c_timed = program(True)
    assert c_timed.tiles is None
    np.testing.assert_array_equal(full.ce_clock, timed.ce_clock)
    np.testing.assert_array_equal(c_full.ready, c_timed.ready)


def test_sram_overflow_names_pe_tensor_and_bytes():
    f = Fabric(SPEC, 2, 2)
    with pytest.raises(SramOverflowError, match=r"PE \(row 0, col 0\).*'big'.*needs 65536 B"):
        MeshTensor.from_numpy(f, np.zeros((2, 2, 16384), np.float32), name="big")
    assert f.sram.peak() == 0   # nothing half-allocated


def test_bad_operands():
    f = Fabric(SPEC, 2, 2)
    a = MeshTensor.from_numpy(f, np.ones((4, 4), np.float32))
    b = MeshTensor.from_numpy(f, np.ones((4, 6), np.float32))
    with pytest.raises(ShapeError):
        cp.elementwise(np.add, [a, b])
    with pytest.raises(DtypeError):
        MeshTensor.from_numpy(f, np.ones((4, 4)), dtype="int8")


@pytest.mark.parametrize("k", [1, 2, 7, 8, 9, 16, 300])
def test_count_nonzero_last_is_numpys(k):
    """The packed popcount gives `np.count_nonzero` per PE: zeros, -0.0 and NaN included."""
    x = np.random.default_rng(k).standard_normal((3, 5, k)).astype(np.float32)
    x[x < 0.3] = 0.0
    x.flat[::7] = -0.0
    x.flat[::11] = np.nan
    want = np.count_nonzero(x, axis=-1).astype(float)
    np.testing.assert_array_equal(count_nonzero_last(x), want)
    np.testing.assert_array_equal(count_nonzero_last(x.astype(np.float16)), want)


def test_sram_pending_uniform_charges_are_exact():
    """Uniform charges kept as a pending total give the usage, high-water mark and overflow
    errors of adding every charge at once, over overlapping and repeated rectangles."""
    from waferscale.fabric.sram import SramAllocator

    rng = np.random.default_rng(5)
    sram = SramAllocator(6, 7, capacity=400)
    used = np.zeros((6, 7), dtype=np.int64)
    high, live = 0, {}
    rects = [(0, 0, 6, 7), (1, 2, 3, 4), (0, 0, 6, 7), (2, 0, 4, 7)]
    for i in range(300):
        if live and rng.random() < 0.45:
            name = list(live)[int(rng.integers(len(live)))]
            r, c, h, w, b = live.pop(name)
            sram.free(name)
            used[r:r + h, c:c + w] -= b
        else:
            r, c, h, w = rects[int(rng.integers(len(rects)))]
            b = int(rng.integers(1, 60)) if rng.random() < 0.8 \
                else rng.integers(1, 60, (h, w)).astype(np.int64)
            after = used.copy()
            after[r:r + h, c:c + w] += b
            if after.max() > 400:
                with pytest.raises(SramOverflowError):
                    sram.alloc(f"t{i}", r, c, b, (h, w))
                continue
            sram.alloc(f"t{i}", r, c, b, (h, w))
            used, high = after, max(high, int(after[r:r + h, c:c + w].max()))
            live[f"t{i}"] = (r, c, h, w, b)
        assert sram.peak() == high
        if i % 7 == 0:
            np.testing.assert_array_equal(sram.used, used)
    np.testing.assert_array_equal(sram.used, used)
