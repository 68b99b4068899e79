"""Yield: why a wafer-sized die needs spares, in numbers.

Two ways to sell silicon of area ``A`` with killer-defect density ``D0``:

* monolithic: the die must be perfect. Poisson: ``Y = exp(-A D0)``; negative binomial
  (defect density varying from die to die as Gamma(alpha, D0/alpha), Stapper's clustering
  model): ``Y = (1 + A D0 / alpha) ** -alpha``.
* redundant (wafer style): the die is a grid of small cores; each physical row of ``n``
  cores owns ``k`` spares, and the part is sellable when every row has at most ``k``
  defective cores. A core of area ``a`` is defective with probability
  ``q = 1 - exp(-D0 a)``, so a row's defective cores are Binomial(n, q) and
  ``Y = P(Binomial(n, q) <= k) ** rows``. With clustering the same Gamma factor scales the
  whole die: ``Y = E_G[P(Binomial(n, q(G)) <= k) ** rows]``, integrated numerically.

The per-row rule is the capacity bound of the remap in `waferscale.hardware.defects`; the
remap also keeps vertical neighbours within one column, which costs some yield at high
density (docs/defects.md quantifies it with `remap_yield_monte_carlo`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from waferscale.errors import DefectError, SparesExhaustedError
from waferscale.hardware.defects import (
    DEFAULT_ALPHA,
    Remap,
    check_alpha,
    check_density,
    generate_defects,
    physical_cols,
    physical_shape,
)
from waferscale.hardware.spec import PRESETS, WaferSpec

#: Yield models: ``poisson`` (uniform defects) and ``negbin`` (clustered, parameter alpha).
YIELD_MODELS = ("poisson", "negbin")
#: Die areas of the default table: GPU-sized die up to the full 215 x 215 mm wafer.
DEFAULT_AREAS_MM2 = (800.0, 2_000.0, 5_000.0, 10_000.0, 20_000.0, 46_225.0)
#: Killer-defect densities of the default table, per mm^2 (0.001 /mm^2 = 0.1 /cm^2).
DEFAULT_DENSITIES = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1)
#: Points of the log-spaced quadrature over the Gamma clustering factor.
_GAMMA_POINTS = 4001


def _check_area(area_mm2: float) -> float:
    if not isinstance(area_mm2, int | float | np.floating) or not area_mm2 > 0:
        raise DefectError(f"field area_mm2 must be a number > 0, got {area_mm2!r}")
    return float(area_mm2)


def _check_model(model: str) -> str:
    if model not in YIELD_MODELS:
        raise DefectError(f"field model is {model!r}, expected one of {', '.join(YIELD_MODELS)}")
    return model


# -- closed forms ---------------------------------------------------------------------------

def monolithic_yield(area_mm2: float, density_per_mm2: float, model: str = "poisson",
                     alpha: float = DEFAULT_ALPHA) -> float:
    """Fraction of perfect dies: ``exp(-A D0)`` or ``(1 + A D0 / alpha) ** -alpha``."""
    area = _check_area(area_mm2)
    density = check_density(density_per_mm2)
    if _check_model(model) == "poisson":
        return math.exp(-area * density)
    a = check_alpha(alpha)
    return (1.0 + area * density / a) ** -a


def binomial_cdf(k: int, n: float, q_log1m: np.ndarray | float) -> np.ndarray:
    """``P(Binomial(n, q) <= k)`` with ``log(1 - q)`` given, vectorised over it.

    Taking ``log(1 - q) = -D0 a`` directly keeps tiny per-core probabilities exact, and the
    sum runs in log space so ``(1 - q) ** n`` cannot underflow before the sum is formed.
    ``n`` may be fractional (a generalised binomial coefficient), for area-based geometry.
    """
    lm = np.asarray(q_log1m, dtype=np.float64)        # log(1 - q) <= 0
    lq = np.log(-np.expm1(np.minimum(lm, -1e-300)))   # log(q)
    total = np.zeros(np.broadcast(lm).shape)
    for j in range(0, int(min(k, math.floor(n))) + 1):
        log_c = math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
        total = total + np.exp(log_c + j * lq + (n - j) * lm)
    # j = 0 with q = 0 gives exp(0) = 1 exactly; clip rounding above 1.
    return np.minimum(total, 1.0)


def _gamma_grid(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``g`` and normalised weights of E[f(G)], G ~ Gamma(alpha, 1/alpha) (mean 1).

    Integrating over ``u = log g`` removes the ``g ** (alpha - 1)`` singularity at 0 for
    alpha < 1; the range covers all but ~1e-15 of the mass and the weights are renormalised.
    """
    lo = math.log(max(1e-300, (1e-15 * math.gamma(alpha + 1)) ** (1.0 / alpha) / alpha))
    hi = math.log((45.0 + 3.0 * alpha + 10.0 * math.sqrt(alpha)) / alpha)
    u = np.linspace(lo, hi, _GAMMA_POINTS)
    g = np.exp(u)
    logw = alpha * math.log(alpha) + alpha * u - alpha * g - math.lgamma(alpha)
    w = np.exp(logw)
    w[0] *= 0.5
    w[-1] *= 0.5
    return g, w / w.sum()


def pooled_yield(rows: float, row_cores: float, spares: int, core_area_mm2: float,
                 density_per_mm2: float, model: str = "poisson",
                 alpha: float = DEFAULT_ALPHA) -> float:
    """P(every one of ``rows`` rows of ``row_cores`` cores has <= ``spares`` defective).

    With ``spares = 0`` and ``rows * row_cores * core_area = A`` this is exactly the
    monolithic closed form, which the tests use as an anchor.
    """
    density = check_density(density_per_mm2)
    _check_model(model)
    if spares < 0 or rows <= 0 or row_cores <= 0 or core_area_mm2 <= 0:
        raise DefectError(f"fields rows, row_cores, core_area_mm2 must be > 0 and spares >= 0, "
                          f"got {rows!r}, {row_cores!r}, {core_area_mm2!r}, {spares!r}")
    lam = density * core_area_mm2
    if model == "poisson":
        cdf = float(binomial_cdf(spares, row_cores, -lam))
        return 0.0 if cdf <= 0.0 else math.exp(rows * math.log(cdf))
    g, w = _gamma_grid(check_alpha(alpha))
    cdf = binomial_cdf(spares, row_cores, -lam * g)
    with np.errstate(divide="ignore"):
        per_wafer = np.exp(rows * np.log(cdf))
    return float(np.dot(w, per_wafer))


@dataclass(frozen=True)
class RowGeometry:
    """How a die of a given area splits into rows with spares (a square die is assumed)."""

    rows: float          # physical rows (fractional for an area that is not a square number)
    row_cores: int       # physical cores per row
    spares: int          # spare cores per row
    physical_cores: float

    @property
    def enabled_fraction(self) -> float:
        """Share of a sellable part's cores that software can use."""
        return (self.row_cores - self.spares) / self.row_cores


def row_geometry(area_mm2: float, core_area_mm2: float, spare_fraction: float) -> RowGeometry:
    """Square die of ``area / core_area`` cores; each row reserves spares like the remap does.

    The logical row is ``floor(row_cores * (1 - f))`` cores, rounded like
    `physical_cols` (the remap's geometry), and the rest of the row is spares.
    """
    area = _check_area(area_mm2)
    if not core_area_mm2 > 0:
        raise DefectError(f"field core_area_mm2 must be > 0, got {core_area_mm2!r}")
    cores = area / core_area_mm2
    row_cores = max(1, round(math.sqrt(cores)))
    logical = row_cores
    while logical > 1 and physical_cols(logical, spare_fraction) > row_cores:
        logical -= 1
    return RowGeometry(rows=cores / row_cores, row_cores=row_cores,
                       spares=row_cores - logical, physical_cores=cores)


def redundant_yield(area_mm2: float, density_per_mm2: float, core_area_mm2: float,
                    spare_fraction: float, model: str = "poisson",
                    alpha: float = DEFAULT_ALPHA) -> float:
    """Fraction of sellable wafer-style dies: every row's defects fit its spares."""
    geo = row_geometry(area_mm2, core_area_mm2, spare_fraction)
    return pooled_yield(geo.rows, geo.row_cores, geo.spares, core_area_mm2, density_per_mm2,
                        model, alpha)


def spec_yield(spec: WaferSpec, density_per_mm2: float, model: str = "poisson",
               alpha: float = DEFAULT_ALPHA) -> float:
    """Per-row yield bound for ``spec``'s own physical array (rows x physical columns)."""
    rows, phys = physical_shape(spec)
    return pooled_yield(rows, phys, phys - spec.cols, spec.core_area_mm2, density_per_mm2,
                        model, alpha)


# -- Monte Carlo checks ---------------------------------------------------------------------

def monte_carlo_pooled_yield(rows: int, row_cores: int, spares: int, core_area_mm2: float,
                             density_per_mm2: float, *, model: str = "poisson",
                             alpha: float = DEFAULT_ALPHA, trials: int = 2000,
                             seed: int = 0) -> float:
    """Sample whole dies and count the sellable ones: the check on `pooled_yield`.

    Each trial draws every row's defective-core count (Binomial, with a per-die Gamma
    factor for ``negbin``), so it samples the model, not the closed form.
    """
    _check_model(model)
    rng = np.random.default_rng(seed)
    lam = check_density(density_per_mm2) * core_area_mm2
    if model == "poisson":
        factor = np.ones((trials, 1))
    else:
        a = check_alpha(alpha)
        factor = rng.gamma(a, 1.0 / a, size=(trials, 1))
    q = -np.expm1(-lam * factor)
    counts = rng.binomial(row_cores, np.broadcast_to(q, (trials, rows)))
    return float(np.mean((counts <= spares).all(axis=1)))


def remap_yield_monte_carlo(spec: WaferSpec, density_per_mm2: float, *, trials: int = 20,
                            model: str = "poisson", alpha: float = DEFAULT_ALPHA,
                            seed: int = 0) -> float:
    """Fraction of generated defect maps that `Remap` can hide (the real remap rule).

    ``negbin`` draws ``clustered`` maps with one Gamma factor per wafer, the same
    clustering the analytic model assumes.
    """
    _check_model(model)
    ok = 0
    gen_model = "poisson" if model == "poisson" else "clustered"
    for t in range(trials):
        dmap = generate_defects(spec, density_per_mm2, model=gen_model, alpha=alpha,
                                seed=seed + t, cluster_shape=None)
        try:
            Remap.from_defects(dmap, spec)
        except SparesExhaustedError:
            continue
        ok += 1
    return ok / trials


# -- the table and the plot -----------------------------------------------------------------

def yield_table(spec: WaferSpec | None = None, *,
                areas_mm2: Sequence[float] = DEFAULT_AREAS_MM2,
                densities: Sequence[float] = DEFAULT_DENSITIES,
                models: Sequence[str] = YIELD_MODELS, alpha: float = DEFAULT_ALPHA,
                core_area_mm2: float | None = None,
                spare_fraction: float | None = None) -> list[dict[str, Any]]:
    """Rows comparing a perfect monolithic die with a die that carries spares.

    Core area and spare fraction come from ``spec`` (default WSE-2) unless given. Keys:
    ``area_mm2, density_per_mm2, model, monolithic_yield, redundant_yield,
    active_fraction`` (expected share of all manufactured cores that end up enabled in a
    sellable redundant part = redundant_yield x enabled_fraction), plus ``alpha``,
    ``enabled_fraction``, ``spares_per_row``, ``row_cores``, ``core_area_mm2``,
    ``spare_fraction`` and ``spec`` so every number carries its assumptions.
    """
    if spec is None:
        spec = PRESETS["wse2"]
    core = spec.core_area_mm2 if core_area_mm2 is None else float(core_area_mm2)
    frac = spec.spare_fraction if spare_fraction is None else float(spare_fraction)
    alpha = check_alpha(alpha)
    rows: list[dict[str, Any]] = []
    for model in models:
        _check_model(model)
        for area in areas_mm2:
            geo = row_geometry(area, core, frac)
            for density in densities:
                mono = monolithic_yield(area, density, model, alpha)
                red = pooled_yield(geo.rows, geo.row_cores, geo.spares, core, density, model,
                                   alpha)
                rows.append({
                    "area_mm2": float(area),
                    "density_per_mm2": float(density),
                    "model": model,
                    "monolithic_yield": mono,
                    "redundant_yield": red,
                    "active_fraction": red * geo.enabled_fraction,
                    "enabled_fraction": geo.enabled_fraction,
                    "alpha": alpha if model == "negbin" else None,
                    "row_cores": geo.row_cores,
                    "spares_per_row": geo.spares,
                    "core_area_mm2": core,
                    "spare_fraction": frac,
                    "spec": spec.name,
                })
    return rows


def plot_yield(path: str | Path, spec: WaferSpec | None = None, *,
               densities: Sequence[float] = (0.0005, 0.001, 0.01, 0.1),
               alpha: float = DEFAULT_ALPHA, points: int = 60) -> Path:
    """Draw yield versus die area, monolithic (solid) against spares (dashed), to a PNG.

    One panel per model; uses the Agg canvas directly so no GUI backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if spec is None:
        spec = PRESETS["wse2"]
    path = Path(path)
    areas = np.geomspace(DEFAULT_AREAS_MM2[0], DEFAULT_AREAS_MM2[-1], points)
    fig = Figure(figsize=(11, 5.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for ax, model in zip(axes, YIELD_MODELS, strict=True):
        for colour, density in zip(colours, densities, strict=False):
            mono = [monolithic_yield(a, density, model, alpha) for a in areas]
            red = [redundant_yield(a, density, spec.core_area_mm2, spec.spare_fraction,
                                   model, alpha) for a in areas]
            ax.plot(areas, mono, color=colour, label=f"perfect die, D0={density:g}/mm²")
            ax.plot(areas, red, color=colour, linestyle="--",
                    label=f"with spares, D0={density:g}/mm²")
        title = "Poisson" if model == "poisson" else f"negative binomial (alpha={alpha:g})"
        ax.set_title(f"{title}; {spec.spare_fraction:.1%} spares, "
                     f"{spec.core_area_mm2:g} mm² cores")
        ax.set_xscale("log")
        ax.set_xlabel("die area (mm²)")
        ax.axvline(DEFAULT_AREAS_MM2[-1], color="grey", linewidth=0.8, linestyle=":")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("fraction of sellable parts")
    axes[0].set_ylim(-0.02, 1.02)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Yield vs. die area: a perfect die (solid) against rows with spares (dashed; "
                 "the saw-tooth is the integer spare count per row)", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    fig.savefig(path, dpi=120)
    return path
