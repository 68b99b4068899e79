"""Defect maps and the spare-core remap: statistics, remap invariants, files, errors."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from waferscale.errors import DefectError, DefectMapError, SparesExhaustedError
from waferscale.hardware import PRESETS, custom_spec
from waferscale.hardware.defects import (
    DIRECTIONS,
    DefectMap,
    Remap,
    generate_defects,
    physical_cols,
    physical_shape,
    spares_per_row,
)

WSE2 = PRESETS["wse2"]
WSE3 = PRESETS["wse3"]
#: 40 logical columns, 5 % spares -> 43 physical columns, 3 spares per row.
SMALL = custom_spec(name="small", rows=30, cols=40, spare_fraction=0.05)


def check_remap_invariants(remap: Remap, defective: np.ndarray) -> None:
    """Everything software relies on: healthy, distinct targets; order kept; |dv| <= 1."""
    l2p = remap.logical_to_physical
    rows, cols = remap.shape
    assert l2p.shape == (rows, cols, 2)
    assert (l2p[..., 0] == np.arange(rows)[:, None]).all()
    x = l2p[..., 1]
    assert (x >= 0).all() and (x < defective.shape[1]).all()
    assert not defective[l2p[..., 0], x].any(), "a logical PE sits on a defective core"
    assert (np.diff(x, axis=1) >= 1).all(), "row order broken (targets must be distinct)"
    assert (np.abs(np.diff(x, axis=0)) <= 1).all(), "vertical neighbours more than 1 apart"
    shift = x - np.arange(cols)
    assert shift.min() >= 0 and shift.max() <= remap.spares_per_row


# -- geometry -------------------------------------------------------------------------------

def test_physical_geometry_of_presets():
    assert physical_shape(WSE2) == (994, 767) and spares_per_row(WSE2) == 12
    assert physical_shape(WSE3) == (1174, 814) and spares_per_row(WSE3) == 59
    assert physical_cols(40, 0.0) == 40
    assert physical_cols(8, 0.2) == 10  # exact ratios do not round up by float noise
    with pytest.raises(DefectError, match="spare_fraction"):
        physical_cols(10, 1.0)


# -- generation -----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["poisson", "clustered"])
def test_generation_is_seeded_and_reproducible(model):
    a = generate_defects(SMALL, 0.5, model=model, seed=7)
    b = generate_defects(SMALL, 0.5, model=model, seed=7)
    c = generate_defects(SMALL, 0.5, model=model, seed=8)
    assert np.array_equal(a.defective, b.defective)
    assert not np.array_equal(a.defective, c.defective)
    assert a.seed == 7 and a.model == model and a.spec_name == "small"
    g1 = generate_defects(SMALL, 0.5, model=model, seed=np.random.default_rng(3))
    g2 = generate_defects(SMALL, 0.5, model=model, seed=np.random.default_rng(3))
    assert np.array_equal(g1.defective, g2.defective)


def test_poisson_counts_match_expectation():
    spec = custom_spec(name="stat", rows=200, cols=200, spare_fraction=0.05)
    density = 0.2                                   # per mm^2, 0.05 mm^2 cores
    p = -math.expm1(-density * spec.core_area_mm2)  # P(core defective)
    n = math.prod(physical_shape(spec))
    counts = np.array([generate_defects(spec, density, seed=s).n_defects for s in range(40)])
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    # The mean of 40 maps within 4 standard errors, and Poisson-like dispersion (~1).
    assert abs(counts.mean() - mean) < 4 * sd / math.sqrt(len(counts))
    assert 0.5 < counts.var(ddof=1) / (n * p * (1 - p)) < 1.7
    # Uniform: no row or column band is favoured.
    dmap = generate_defects(spec, density, seed=1)
    half = dmap.defective.shape[1] // 2
    left, right = dmap.defective[:, :half].sum(), dmap.defective[:, half:2 * half].sum()
    assert abs(int(left) - int(right)) < 5 * math.sqrt(left + right)


def test_clustered_counts_are_overdispersed():
    spec = custom_spec(name="stat", rows=200, cols=200, spare_fraction=0.05)
    density, block = 0.2, (10, 10)
    dmap = generate_defects(spec, density, model="clustered", alpha=1.0, seed=2,
                            cluster_shape=block)
    d = dmap.defective[:200, :200].reshape(20, 10, 20, 10).sum(axis=(1, 3)).ravel()
    lam = 100 * density * spec.core_area_mm2        # mean defects per 10 x 10 block
    assert abs(d.mean() - lam) < 0.25 * lam
    # Negative binomial: var = mean + mean^2/alpha = 2 * mean here; Poisson would be 1x.
    assert d.var(ddof=1) > 1.4 * d.mean()
    poisson = generate_defects(spec, density, seed=2).defective[:200, :200]
    dp = poisson.reshape(20, 10, 20, 10).sum(axis=(1, 3)).ravel()
    assert dp.var(ddof=1) < d.var(ddof=1)


def test_clustered_whole_wafer_factor_varies_between_wafers():
    counts = np.array([generate_defects(SMALL, 0.5, model="clustered", alpha=2.0, seed=s,
                                        cluster_shape=None).n_defects for s in range(60)])
    assert counts.var(ddof=1) > 2 * counts.mean()


@pytest.mark.parametrize("kwargs, field", [
    ({"density_per_mm2": -0.1}, "density_per_mm2"),
    ({"density_per_mm2": float("nan")}, "density_per_mm2"),
    ({"density_per_mm2": 0.1, "model": "uniform"}, "model"),
    ({"density_per_mm2": 0.1, "model": "clustered", "alpha": 0.0}, "alpha"),
    ({"density_per_mm2": 0.1, "model": "clustered", "cluster_shape": (0, 4)}, "cluster_shape"),
])
def test_generation_rejects_bad_parameters(kwargs, field):
    with pytest.raises(DefectError, match=field) as info:
        generate_defects(SMALL, **kwargs)
    assert "\n" not in str(info.value)


def test_zero_density_is_perfect():
    dmap = generate_defects(WSE2, 0.0, seed=0)
    assert dmap.n_defects == 0 and dmap.shape == (994, 767)


# -- remap ----------------------------------------------------------------------------------

def test_perfect_remap_is_identity():
    remap = Remap.perfect(5, 7)
    assert (remap.logical_to_physical[..., 1] == np.arange(7)).all()
    assert remap.n_defects == 0 and remap.n_remapped == 0
    extra = remap.link_extra_cycles(1)
    assert extra.shape == (4, 5, 7) and extra.dtype == np.float64 and not extra.any()
    assert len(DIRECTIONS) == 4
    with pytest.raises(DefectError, match="rows"):
        Remap.perfect(0, 7)


def test_clean_wafer_uses_no_spares():
    remap = Remap.from_defects(DefectMap.perfect(WSE2), WSE2)
    assert remap.shape == (994, 755) and remap.physical_shape == (994, 767)
    assert remap.n_remapped == 0 and not remap.link_extra_cycles(1).any()


def test_single_defect_shifts_the_rest_of_its_row_by_one():
    dmap = DefectMap.from_coords(SMALL, [(10, 5)])
    remap = Remap.from_defects(dmap, SMALL)
    x = remap.logical_to_physical[..., 1]
    assert (x[10, :5] == np.arange(5)).all() and (x[10, 5:] == np.arange(6, 41)).all()
    assert (np.delete(remap.shift, 10, axis=0) == 0).all()   # neighbours untouched
    assert remap.n_defects == 1 and remap.n_remapped == 40 - 5
    extra = remap.link_extra_cycles(hop_cycles=1)
    assert extra[0, 10, 4] == 1.0 and extra[1, 10, 5] == 1.0   # East of 4 = West of 5
    assert extra.sum() == 2.0                                  # vertical links stay 1 hop
    assert (remap.link_extra_cycles(hop_cycles=3) == 3 * extra).all()
    check_remap_invariants(remap, dmap.defective)


def test_detour_is_longer_when_rows_above_and_below_are_blocked():
    dmap = DefectMap.from_coords(SMALL, [(9, 5), (10, 5), (11, 5)])
    remap = Remap.from_defects(dmap, SMALL)
    hops = remap.link_extra_hops()[0]
    assert hops[10, 4] == 3        # two rows out and back: 4 hops instead of 1
    assert hops[9, 4] == 1 and hops[11, 4] == 1  # one diagonal detour each
    check_remap_invariants(remap, dmap.defective)


def test_neighbour_rows_follow_a_row_with_two_defects():
    dmap = DefectMap.from_coords(SMALL, [(10, 3), (10, 8)])
    remap = Remap.from_defects(dmap, SMALL)
    assert remap.shift[10, -1] == 2
    assert remap.shift[9, -1] == 1 and remap.shift[11, -1] == 1   # pulled along by one
    assert remap.shift[8, -1] == 0
    check_remap_invariants(remap, dmap.defective)
    # The pulled rows skip a healthy core: the link costs one extra hop, honestly.
    assert remap.link_extra_hops()[0, 9].sum() == 1


@pytest.mark.parametrize("density", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("model", ["poisson", "clustered"])
def test_remap_invariants_on_random_maps(density, model):
    for seed in range(5):
        dmap = generate_defects(SMALL, density, model=model, seed=seed)
        try:
            remap = Remap.from_defects(dmap, SMALL)
        except SparesExhaustedError:
            continue
        check_remap_invariants(remap, dmap.defective)
        extra = remap.link_extra_cycles(1)
        assert (extra >= 0).all()
        assert not extra[0, :, -1].any() and not extra[1, :, 0].any()  # off the rectangle
        assert not extra[2:].any()                                     # vertical: 1 hop
        assert (extra[0, :, :-1] == extra[1, :, 1:]).all()             # symmetric links


def test_full_wse2_remap_is_fast_and_valid():
    dmap = generate_defects(WSE2, 0.01, seed=0)
    start = time.perf_counter()
    remap = Remap.from_defects(dmap, WSE2)
    extra = remap.link_extra_cycles(WSE2.hop_cycles)
    elapsed = time.perf_counter() - start
    check_remap_invariants(remap, dmap.defective)
    assert elapsed < 2.0   # measured ~0.1 s; generous bound for a busy 2-core machine
    assert extra.shape == (4, 994, 755)
    summary = remap.summary()
    json.dumps(summary)
    assert summary["n_defects"] == dmap.n_defects > 0
    assert summary["max_shift"] <= 12 and summary["max_extra_hops"] >= 1
    p2l = remap.physical_to_logical()
    assert (p2l[dmap.defective] == -1).all()
    assert (p2l[5, remap.logical_to_physical[5, :, 1]] == np.arange(755)).all()


def test_spares_exhausted_names_row_defects_and_spares():
    coords = [(7, 2), (7, 9), (7, 20), (7, 30)]   # 4 defects, 3 spares
    with pytest.raises(SparesExhaustedError) as info:
        Remap.from_defects(DefectMap.from_coords(SMALL, coords), SMALL)
    err = info.value
    assert err.row == 7 and err.defects == [2, 9, 20, 30] and err.spares == 3
    msg = str(err)
    assert "row 7" in msg and "at most 3" in msg and "\n" not in msg


def test_spares_exhausted_by_neighbour_coupling():
    # Each row alone fits its 3 spares, but row 1 must stay within one column of row 0,
    # which is already shifted by 3; its own defects then need a 4th spare.
    coords = [(0, 0), (0, 1), (0, 2), (1, 6), (1, 7)]
    with pytest.raises(SparesExhaustedError, match="neighbours") as info:
        Remap.from_defects(DefectMap.from_coords(SMALL, coords), SMALL)
    assert info.value.row == 1 and info.value.spares == 3


def test_link_extra_cycles_rejects_negative_hop_cycles():
    with pytest.raises(DefectError, match="hop_cycles"):
        Remap.perfect(2, 2).link_extra_cycles(-1)


# -- files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    dmap = generate_defects(SMALL, 0.5, model="clustered", seed=4)
    path = dmap.save(tmp_path / f"map{suffix}")
    back = DefectMap.load(path, SMALL)
    assert np.array_equal(back.defective, dmap.defective)
    assert (back.spec_name, back.model, back.seed, back.alpha) == ("small", "clustered", 4, 2.0)
    assert back.density_per_mm2 == 0.5


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_load_rejects_other_spec_and_wrong_shape(tmp_path, suffix):
    path = generate_defects(SMALL, 0.5, seed=0).save(tmp_path / f"map{suffix}")
    other_name = custom_spec(name="other", rows=30, cols=40, spare_fraction=0.05)
    with pytest.raises(DefectMapError, match=r"field spec is 'small', expected 'other'"):
        DefectMap.load(path, other_name)
    other_shape = custom_spec(name="small", rows=31, cols=40, spare_fraction=0.05)
    with pytest.raises(DefectMapError, match=r"field shape is \[30, 43\], expected \[31, 43\]"):
        DefectMap.load(path, other_shape)
    dmap = DefectMap.load(path)                       # without a spec: no check
    with pytest.raises(DefectMapError, match="field spec"):
        Remap.from_defects(dmap, WSE2)


def test_load_rejects_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DefectMapError, match="field format"):
        DefectMap.load(foreign)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(DefectMapError, match="not a readable"):
        DefectMap.load(garbage)
    with pytest.raises(DefectMapError, match="does not exist"):
        DefectMap.load(tmp_path / "missing.npz")
    with pytest.raises(DefectMapError, match="suffix"):
        DefectMap.perfect(SMALL).save(tmp_path / "map.txt")
    bad = tmp_path / "bad.json"
    meta = DefectMap.perfect(SMALL).metadata() | {"defects": [[99, 0]]}
    bad.write_text(json.dumps(meta))
    with pytest.raises(DefectMapError, match="outside"):
        DefectMap.load(bad)


def test_from_coords_rejects_positions_outside():
    with pytest.raises(DefectMapError, match="outside"):
        DefectMap.from_coords(SMALL, [(30, 0)])
