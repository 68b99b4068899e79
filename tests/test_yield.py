"""Yield model: closed forms, Monte Carlo checks, the interview's claims, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from waferscale.cli_yield import yield_command
from waferscale.errors import DefectError, SparesExhaustedError, SpecError
from waferscale.hardware import PRESETS, custom_spec
from waferscale.hardware.defects import Remap, generate_defects, physical_shape
from waferscale.hardware.yield_model import (
    binomial_cdf,
    monolithic_yield,
    monte_carlo_pooled_yield,
    plot_yield,
    pooled_yield,
    redundant_yield,
    remap_yield_monte_carlo,
    row_geometry,
    spec_yield,
    yield_table,
)

WSE2 = PRESETS["wse2"]
WSE3 = PRESETS["wse3"]
WAFER_MM2 = 46_225.0
KEYS = {"area_mm2", "density_per_mm2", "model", "monolithic_yield", "redundant_yield",
        "active_fraction"}


# -- closed forms ---------------------------------------------------------------------------

@pytest.mark.parametrize("area, density", [(800, 0.001), (46_225, 0.0005), (2_000, 0.05)])
def test_monolithic_closed_forms(area, density):
    assert monolithic_yield(area, density) == pytest.approx(math.exp(-area * density))
    assert monolithic_yield(area, density, "negbin", 2.0) == pytest.approx(
        (1 + area * density / 2.0) ** -2.0)
    # alpha -> infinity is the Poisson limit; clustering always helps a perfect die.
    assert monolithic_yield(area, density, "negbin", 1e7) == pytest.approx(
        monolithic_yield(area, density), rel=1e-4)
    assert monolithic_yield(area, density, "negbin", 2.0) >= monolithic_yield(area, density)


@pytest.mark.parametrize("alpha", [0.3, 2.0, 50.0])
def test_no_spares_reduces_to_the_monolithic_formula(alpha):
    # 10 rows x 100 cores x 0.05 mm^2 = 50 mm^2 with no spare: a perfect die.
    for density in (0.001, 0.01, 0.3):
        assert pooled_yield(10, 100, 0, 0.05, density) == pytest.approx(
            monolithic_yield(50, density), rel=1e-12)
        assert pooled_yield(10, 100, 0, 0.05, density, "negbin", alpha) == pytest.approx(
            monolithic_yield(50, density, "negbin", alpha), rel=1e-6)


def test_binomial_cdf_matches_direct_sum():
    for n, k, q in [(20, 0, 0.1), (20, 3, 0.1), (50, 5, 0.02), (7, 7, 0.5)]:
        direct = sum(math.comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k + 1))
        assert float(binomial_cdf(k, n, math.log1p(-q))) == pytest.approx(direct, rel=1e-12)


@pytest.mark.parametrize("model", ["poisson", "negbin"])
def test_pooled_yield_matches_monte_carlo(model):
    args = (50, 40, 1, 0.05, 0.1)
    exact = pooled_yield(*args, model=model)
    trials = 6000
    mc = monte_carlo_pooled_yield(*args, model=model, trials=trials, seed=11)
    assert abs(mc - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)


def test_generated_maps_match_the_per_row_model():
    """The defect generator + per-row counting reproduces `spec_yield` (Poisson, exact)."""
    spec = custom_spec(name="mc", rows=30, cols=40, spare_fraction=0.05)  # 43 cores, 3 spares
    density, trials = 0.55, 600
    rows_ok = remap_ok = 0
    for seed in range(trials):
        dmap = generate_defects(spec, density, seed=seed)
        if (dmap.defects_per_row() <= 3).all():
            rows_ok += 1
            try:
                Remap.from_defects(dmap, spec)
                remap_ok += 1
            except SparesExhaustedError:
                pass
    exact = spec_yield(spec, density)
    assert 0.2 < exact < 0.8
    assert abs(rows_ok / trials - exact) < 4 * math.sqrt(exact * (1 - exact) / trials)
    # The real remap also keeps vertical neighbours within one column: never better.
    assert remap_ok <= rows_ok


# -- the interview's argument ---------------------------------------------------------------

def test_a_perfect_wafer_sized_die_essentially_never_yields():
    for density in (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1):
        assert monolithic_yield(WAFER_MM2, density) < 1e-9
    # Clustering concentrates defects on a few wafers, yet still under 1 % from 0.001 up.
    assert monolithic_yield(WAFER_MM2, 0.001, "negbin", 2.0) < 0.01


def test_with_one_and_a_half_percent_spares_nearly_every_wafer_yields():
    for model in ("poisson", "negbin"):
        assert redundant_yield(WAFER_MM2, 0.001, 0.05, 0.015, model) > 0.999
        assert redundant_yield(WAFER_MM2, 0.001, 0.05, 0.01, model) > 0.999
        assert spec_yield(WSE2, 0.001, model) > 0.999
    # ... and the real remap agrees on full WSE-2 maps at D0 = 0.001.
    assert remap_yield_monte_carlo(WSE2, 0.001, trials=3) == 1.0
    # A GPU-sized perfect die at the same density: under half are good.
    assert monolithic_yield(800, 0.001) < 0.5


def test_wse3_published_figures():
    # 900k enabled of ~970k physical: 92.8 % enabled; core 0.05 mm^2; D0 ~ 0.001 / mm^2.
    rows, phys = physical_shape(WSE3)
    enabled = WSE3.rows * WSE3.cols / (rows * phys)
    assert enabled == pytest.approx(900 / 970, abs=0.002)
    table = yield_table(WSE3, areas_mm2=[WAFER_MM2], densities=[0.001])
    for row in table:
        assert row["redundant_yield"] > 0.999
        assert row["active_fraction"] == pytest.approx(0.93, abs=0.006)
        assert row["monolithic_yield"] < 0.01


# -- table, geometry, errors ----------------------------------------------------------------

def test_yield_table_rows():
    rows = yield_table(WSE2)
    assert len(rows) == 6 * 6 * 2
    for row in rows:
        assert KEYS <= set(row)
        assert 0.0 <= row["monolithic_yield"] <= 1.0 and 0.0 <= row["redundant_yield"] <= 1.0
        assert row["redundant_yield"] >= row["monolithic_yield"] - 1e-12
        assert row["active_fraction"] <= row["redundant_yield"]
    json.dumps(rows, allow_nan=False)
    poisson = [r for r in rows if r["model"] == "poisson" and r["density_per_mm2"] == 0.001]
    mono = [r["monolithic_yield"] for r in poisson]
    assert mono == sorted(mono, reverse=True)


def test_row_geometry_follows_the_remap_rounding():
    geo = row_geometry(WAFER_MM2, 0.05, 0.015)
    assert geo.row_cores == 962 and geo.spares == 15
    assert geo.rows * geo.row_cores == pytest.approx(WAFER_MM2 / 0.05)
    assert row_geometry(800, 0.05, 0.0).spares == 0


@pytest.mark.parametrize("call, field", [
    (lambda: monolithic_yield(800, -0.001), "density_per_mm2"),
    (lambda: monolithic_yield(0, 0.001), "area_mm2"),
    (lambda: monolithic_yield(800, 0.001, "weibull"), "model"),
    (lambda: monolithic_yield(800, 0.001, "negbin", -1.0), "alpha"),
    (lambda: redundant_yield(800, -1.0, 0.05, 0.015), "density_per_mm2"),
])
def test_yield_errors_are_typed_and_name_the_field(call, field):
    with pytest.raises(DefectError, match=field):
        call()


def test_plot_writes_png(tmp_path):
    path = plot_yield(tmp_path / "yield.png", WSE2, points=12)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- CLI ------------------------------------------------------------------------------------

def test_cli_json_is_one_document(capsys, tmp_path):
    yield_command(json_out=True, plot=tmp_path / "y.png", spec="wse3")
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert isinstance(rows, list) and KEYS <= set(rows[0]) and rows[0]["spec"] == "wse3"
    assert "y.png" in err and (tmp_path / "y.png").is_file()


def test_cli_table_and_unknown_spec(capsys):
    yield_command(json_out=False, plot=None, spec="wse2")
    out, _ = capsys.readouterr()
    assert "46,225" in out and "poisson" in out
    with pytest.raises(SpecError):
        yield_command(json_out=True, plot=None, spec="wse9")
    assert np.isfinite([r["active_fraction"] for r in yield_table(WSE2)]).all()
