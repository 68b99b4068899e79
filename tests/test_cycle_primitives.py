"""Collectives as wavelet programs: values against NumPy, cycles against their closed forms."""

import math

import pytest

from waferscale.errors import ColorBudgetError
from waferscale.fabric.cycle.runs import (
    run_allreduce,
    run_multicast,
    run_reduce,
    run_shift,
    run_stream,
)
from waferscale.hardware import custom_spec

SPEC = custom_spec(rows=16, cols=16)
TR, HOP = SPEC.ramp_cycles, SPEC.hop_cycles


@pytest.mark.parametrize("direction", ["east", "west", "south", "north"])
@pytest.mark.parametrize("cyclic", [False, True])
def test_neighbour_shift(direction, cyclic):
    run = run_shift(SPEC, 4, 5, 6, direction, 1, cyclic)
    assert run.ok()
    length = 5 if direction in ("east", "west") else 4
    hops = length - 1 if cyclic else 1
    assert run.cycles == 6 + hops * HOP + 2 * TR + 1


@pytest.mark.parametrize("distance", [2, 3])
def test_shift_by_more_than_one_shares_links(distance):
    run = run_shift(SPEC, 2, 7, 10, "east", distance, True)
    assert run.ok()
    # d flows share every forward link, so each gets 1/d of it
    assert run.cycles >= distance * 10


def test_shift_colour_budget_is_enforced():
    with pytest.raises(ColorBudgetError, match="cyclic shift"):
        run_shift(SPEC, 1, 16, 1, "east", 9, True)


@pytest.mark.parametrize("axis", ["row", "col"])
@pytest.mark.parametrize("root", [0, 2, 5])
def test_multicast(axis, root):
    run = run_multicast(SPEC, 6, 6, 7, axis, root)
    assert run.ok()
    far = max(root, 5 - root)
    assert run.cycles == 7 + far * HOP + 2 * TR + 1


@pytest.mark.parametrize("axis", ["row", "col"])
@pytest.mark.parametrize("root", ["first", "last"])
@pytest.mark.parametrize("length", [2, 5, 8])
def test_chain_reduce_is_the_hpdc_formula(axis, root, length):
    rows, cols = (3, length) if axis == "row" else (length, 3)
    run = run_reduce(SPEC, rows, cols, 9, axis, "chain", root)
    assert run.ok()
    assert run.cycles == 9 + (2 * TR + HOP + 1) * (length - 1)


@pytest.mark.parametrize("length", [2, 5, 8, 13])
def test_tree_reduce(length):
    run = run_reduce(SPEC, 2, length, 4, "row", "tree", "first")
    assert run.ok()
    levels = math.ceil(math.log2(length))
    expected = sum(4 + 2 ** lv * HOP + 2 * TR + 1 for lv in range(levels))
    if length & (length - 1) == 0:
        assert run.cycles == expected
    else:
        assert run.cycles <= expected


@pytest.mark.parametrize("axis", ["row", "col", "both"])
@pytest.mark.parametrize("algorithm", ["chain", "tree"])
def test_allreduce(axis, algorithm):
    run = run_allreduce(SPEC, 5, 6, 3, axis, algorithm)
    assert run.ok()


def test_allreduce_both_is_four_phases():
    run = run_allreduce(SPEC, 4, 6, 5, "both", "chain")
    chain = lambda p: 5 + (2 * TR + HOP + 1) * (p - 1)  # noqa: E731
    bcast = lambda p: 5 + (p - 1) * HOP + 2 * TR + 1  # noqa: E731
    assert run.cycles == chain(6) + chain(4) + bcast(4) + bcast(6)


@pytest.mark.parametrize("src, dst", [
    ((0, 0, 1, 1), (3, 5, 1, 1)),
    ((2, 2, 2, 3), (2, 6, 2, 3)),
    ((5, 6, 2, 2), (1, 1, 2, 2)),
    ((0, 0, 3, 2), (4, 0, 3, 2)),
    ((1, 1, 2, 2), (2, 2, 2, 2)),   # overlapping rectangles
])
def test_stream_between_rectangles(src, dst):
    run = run_stream(SPEC, 8, 9, 6, src, dst)
    assert run.ok()


def test_single_stream_is_a_transfer():
    run = run_stream(SPEC, 8, 8, 20, (1, 1, 1, 1), (6, 4, 1, 1))
    assert run.cycles == 20 + 8 * HOP + 2 * TR + 1


@pytest.mark.parametrize("src, dst, share", [
    ((0, 0, 1, 4), (0, 6, 1, 4), 4),
    ((0, 0, 1, 3), (0, 3, 1, 3), 3),
    ((1, 8, 1, 4), (1, 1, 1, 4), 4),
    ((0, 0, 4, 1), (8, 0, 4, 1), 4),
])
def test_interleaved_flows_share_the_busiest_link(src, dst, share):
    run = run_stream(SPEC, 12, 12, 6, src, dst)
    hops = abs(dst[0] - src[0]) + abs(dst[1] - src[1])
    assert run.ok()
    assert run.cycles == share * 6 + hops * HOP + 2 * TR + 2 - share


@pytest.mark.parametrize("length, distance", [(8, 3), (16, 2), (4, 2)])
def test_shift_by_distance_formula(length, distance):
    run = run_shift(SPEC, 1, length, 16, "east", distance, False)
    share = min(distance, length - distance)
    assert run.cycles == share * 16 + distance * HOP + 2 * TR + 2 - share
