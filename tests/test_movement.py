"""Data movement: values against NumPy oracles, clocks against the closed forms."""

import numpy as np
import pytest

from waferscale.errors import GridError, ShapeError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric import timing as tm
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=32, cols=32)
RNG = np.random.default_rng(0)




@pytest.mark.parametrize("direction", ["east", "west", "south", "north"])
@pytest.mark.parametrize("cyclic", [False, True])
@pytest.mark.parametrize("distance", [1, 2, 3])
def test_shift_matches_roll_and_formula(direction, cyclic, distance):
    f = Fabric(SPEC, 5, 7)
    x = RNG.standard_normal((5, 7, 6)).astype(np.float32)
    t = MeshTensor.from_numpy(f, x)
    y = mv.shift(t, direction, distance, cyclic)
    axis = 1 if direction in ("east", "west") else 0
    sign = 1 if direction in ("east", "south") else -1
    ref = np.roll(x, sign * distance, axis=axis)
    if not cyclic:
        index = [slice(None)] * 3
        index[axis] = slice(0, distance) if sign > 0 else slice(-distance, None)
        ref[tuple(index)] = 0
    np.testing.assert_array_equal(y.to_numpy(), ref)
    length = x.shape[axis]
    assert y.ready.max() == tm.shift_cycles(SPEC, 6, length, distance, cyclic)


def test_shift_counts_link_traffic():
    f = Fabric(SPEC, 3, 8)
    t = MeshTensor.from_numpy(f, np.ones((3, 8, 10), np.float32))
    mv.shift(t, "east", 1)
    # every link but the last column's carries one 10-wavelet tile
    np.testing.assert_array_equal(f.port_wavelets[0][:, :7], 10)
    assert f.port_wavelets[0][:, 7].sum() == 0


def test_shift_contention_serialises():
    f = Fabric(SPEC, 1, 8)
    t = MeshTensor.from_numpy(f, np.ones((1, 8, 10), np.float32))
    first = mv.shift(t, "east", 1)
    second = mv.shift(t, "east", 1)
    # the second shift waits for the first one's link reservations
    assert second.ready.max() >= first.ready.max() + 10


def test_row_multicast_values_and_time():
    f = Fabric(SPEC, 4, 9)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    t = MeshTensor.from_numpy(f, x, f.rect(0, 0, 4, 1), row_map=0, col_map=None)
    y = mv.multicast(t, f.full, "row")
    assert y.col_map is None
    np.testing.assert_array_equal(y.to_numpy(), x)
    np.testing.assert_array_equal(y.tiles[:, :, 0], np.broadcast_to(x[:, None], (4, 9, 5)))
    assert y.ready.max() == tm.multicast_cycles(SPEC, 5, 9)


def test_multicast_from_middle_floods_both_ways():
    f = Fabric(SPEC, 9, 3)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    t = MeshTensor.from_numpy(f, x, f.rect(4, 0, 1, 3), row_map=None, col_map=0)
    y = mv.multicast(t, f.full, "col")
    np.testing.assert_array_equal(y.tiles[:, :, 0], np.broadcast_to(x[None], (9, 3, 4)))
    assert y.ready.max() == tm.multicast_cycles(SPEC, 4, 5)


@pytest.mark.parametrize("algorithm", ["chain", "tree"])
@pytest.mark.parametrize("axis", ["row", "col"])
@pytest.mark.parametrize("root", ["first", "last"])
@pytest.mark.parametrize("length", [1, 2, 5, 8, 13])
def test_reduce_sums_and_matches_formula(algorithm, axis, root, length):
    rows, cols = (3, length) if axis == "row" else (length, 3)
    f = Fabric(SPEC, rows, cols)
    x = RNG.standard_normal((rows, cols, 7)).astype(np.float32)
    row_map, col_map = (0, "partial") if axis == "row" else ("partial", 0)
    t = MeshTensor(f, f.full, (3, 7), "fp32", row_map, col_map, x[:, :, None])
    y = mv.reduce(t, axis, algorithm, root)
    np.testing.assert_allclose(y.to_numpy(), x.sum(axis=1 if axis == "row" else 0),
                               rtol=1e-5, atol=1e-5)
    expected = tm.reduce_cycles(SPEC, 7, length, algorithm)
    assert y.ready.max() == pytest.approx(expected)


def test_chain_reduce_is_hpdc_formula():
    f = Fabric(SPEC, 1, 16)
    x = np.ones((1, 16, 100), np.float32)
    t = MeshTensor(f, f.full, (100,), "fp32", None, "partial", x)
    y = mv.reduce(t, "row", "chain", "first")
    assert y.ready.max() == 100 + (2 * SPEC.ramp_cycles + 2) * 15
    np.testing.assert_array_equal(y.to_numpy(), np.full(100, 16.0))


@pytest.mark.parametrize("axis", ["row", "col", "both"])
def test_allreduce(axis):
    f = Fabric(SPEC, 6, 5)
    x = RNG.standard_normal((6, 5, 3)).astype(np.float32)
    row_map = "partial" if axis in ("col", "both") else None
    col_map = "partial" if axis in ("row", "both") else None
    t = MeshTensor(f, f.full, (3,), "fp32", row_map, col_map, x)
    y = mv.allreduce(t, axis)
    if axis == "row":
        ref = np.broadcast_to(x.sum(1, keepdims=True), x.shape)
    elif axis == "col":
        ref = np.broadcast_to(x.sum(0, keepdims=True), x.shape)
    else:
        ref = np.broadcast_to(x.sum((0, 1), keepdims=True), x.shape)
    np.testing.assert_allclose(y.tiles, ref, rtol=1e-5, atol=1e-5)
    if axis == "row":
        assert y.ready.max() == tm.allreduce_cycles(SPEC, 3, 5)


@pytest.mark.parametrize("offset", [(0, 4), (0, -3), (5, 0), (-2, 0), (3, 6), (2, 1)])
def test_stream_moves_tiles_xy(offset):
    f = Fabric(SPEC, 16, 16)
    src = f.rect(6, 6, 3, 4)
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    t = MeshTensor.from_numpy(f, x, rect=src)
    dst = f.rect(6 + offset[0], 6 + offset[1], 3, 4)
    y = mv.stream(t, dst)
    np.testing.assert_array_equal(y.to_numpy(), x)
    assert y.rect == dst
    expected = tm.stream_cycles(SPEC, 8, offset[0], offset[1], 3, 4)
    assert y.ready.max() == expected
    # the busiest link carries the serialised flows of one row or column
    assert f.port_wavelets[:4].max() == 8 * max(min(abs(offset[1]), 4), min(abs(offset[0]), 3))


def test_bad_movement_inputs_raise_typed_errors():
    f = Fabric(SPEC, 4, 4)
    t = MeshTensor.from_numpy(f, np.ones((4, 4, 2), np.float32))
    with pytest.raises(ShapeError):
        mv.shift(t, "up")
    with pytest.raises(GridError):
        mv.shift(t, "east", 4)
    with pytest.raises(ShapeError):
        mv.reduce(t, "row")  # blocked, not partial
    with pytest.raises(GridError):
        mv.stream(t, f.rect(0, 0, 2, 2))


def test_allreduce_max_and_no_sram_leak():
    f = Fabric(SPEC, 4, 6)
    x = RNG.standard_normal((4, 6, 3)).astype(np.float32)
    t = MeshTensor(f, f.full, (3,), "fp32", "partial", "partial", x)
    before = f.sram.used.copy()
    y = mv.allreduce(t, "both", op="max")
    np.testing.assert_array_equal(y.tiles, np.broadcast_to(x.max((0, 1), keepdims=True), x.shape))
    y.free()
    np.testing.assert_array_equal(f.sram.used, before)


def test_stream_pays_detours_on_its_path():
    extra = np.zeros((4, 16, 16))
    extra[0, 7, 9] = 2.0       # east link leaving PE (7, 9): on the horizontal segment of row 7
    extra[2, 7, 12] = 3.0      # south link leaving PE (7, 12): on a vertical segment
    f = Fabric(SPEC, 16, 16, link_extra=extra)
    g = Fabric(SPEC, 16, 16)
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    slow = mv.stream(MeshTensor.from_numpy(f, x, rect=f.rect(6, 6, 3, 4)), f.rect(8, 9, 3, 4))
    fast = mv.stream(MeshTensor.from_numpy(g, x, rect=g.rect(6, 6, 3, 4)), g.rect(8, 9, 3, 4))
    np.testing.assert_array_equal(slow.to_numpy(), fast.to_numpy())
    delta = slow.ready - fast.ready
    # row 7 (local row 1): flows from cols 7, 8, 9 cross the slow east link leaving col 9;
    # the flow from col 9 then turns south at col 12 and crosses the slow south link too
    np.testing.assert_array_equal(delta[1], [0, 2, 2, 5])
    # rows 6 and 7 turn south at col 12 above row 8, so their last flows cross it as well
    np.testing.assert_array_equal(delta[0], [0, 0, 0, 3])
    assert delta[2].max() == 0


@pytest.mark.parametrize("axis", ["row", "col", "both"])
def test_ktree_allreduce_sums_and_matches_the_closed_form(axis):
    """The K-tree allreduce: values as NumPy's sum, clocks as `allreduce_cycles('ktree')`
    (per line; rows then columns for 'both')."""
    f = Fabric(SPEC, 9, 13)
    x = RNG.standard_normal((9, 13, 3)).astype(np.float32)
    rm = "partial" if axis in ("col", "both") else None
    cm = "partial" if axis in ("row", "both") else None
    t = MeshTensor(f, f.full, (3,), "fp32", rm, cm, x)
    y = mv.allreduce(t, axis, "ktree")
    axes = {"row": (1,), "col": (0,), "both": (0, 1)}[axis]
    want = x.sum(axis=axes, keepdims=True)
    np.testing.assert_allclose(np.asarray(y.tiles), np.broadcast_to(want, x.shape),
                               rtol=1e-5, atol=1e-5)
    rows = tm.allreduce_cycles(SPEC, 3, 13, "ktree")
    cols = tm.allreduce_cycles(SPEC, 3, 9, "ktree")
    expected = {"row": rows, "col": cols, "both": rows + cols}[axis]
    assert y.ready.max() == expected


def test_ktree_allreduce_of_one_value_is_near_the_diameter():
    """A full-wafer allreduce of one wavelet: the chain adds at every PE (7 cycles a PE),
    the K-tree's upper level passes routers at one cycle a hop."""
    from waferscale.hardware import get_spec
    spec = get_spec("wse2")
    diameter = spec.rows + spec.cols - 2
    chain = tm.allreduce_cycles(spec, 1, spec.rows) + tm.allreduce_cycles(spec, 1, spec.cols)
    ktree = sum(tm.allreduce_cycles(spec, 1, n, "ktree") for n in (spec.rows, spec.cols))
    assert chain > 6 * diameter
    assert diameter < ktree < 1.3 * diameter


def _state(fabric: Fabric) -> list[np.ndarray]:
    return [fabric.ce_clock, fabric.port_clock, fabric.port_wavelets, fabric.busy,
            fabric.stalled, fabric.flops, fabric.mem_bytes, np.array([fabric.wavelet_hops])]


@pytest.mark.parametrize("direction", ["east", "west", "south", "north"])
@pytest.mark.parametrize("cyclic", [False, True])
@pytest.mark.parametrize("case", ["uniform", "uneven", "fractional", "zeros", "detours"])
def test_fast_shift_is_the_reference_bit_for_bit(direction, cyclic, case):
    """`shift` takes spans and scalars where `shift_reference` takes masks; every clock,
    counter and value must come out identical, on uneven tiles, fractional ready times,
    PEs that send nothing and a wafer with detours."""
    out = []
    for fn in (mv.shift, mv.shift_reference):
        extra = np.random.default_rng(7).integers(0, 3, (4, 5, 7)).astype(float) \
            if case == "detours" else None
        f = Fabric(SPEC, 5, 7, link_extra=extra)
        shape = (13, 17) if case == "uneven" else (10, 14)
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        ready = np.random.default_rng(2).integers(0, 30, (5, 7)).astype(float)
        if case == "fractional":
            ready += 0.1
        t = MeshTensor.from_numpy(f, x, ready=ready)
        if case == "zeros":
            t.valid = np.where(np.arange(7)[None, :] % 3 == 0, 0.0, np.broadcast_to(t.valid,
                                                                                  (5, 7)))
        f.port_clock[...] = np.random.default_rng(3).integers(0, 20, f.port_clock.shape)
        y = fn(t, direction, 1, cyclic)
        out.append(_state(f) + [y.ready, y.tiles])
    for a, b in zip(*out, strict=True):
        np.testing.assert_array_equal(a, b)
