"""Wafer maps: the floorplan (one colour per block, in pipeline order) beside the link-load
heat map, so a reader sees at once where kernels sit and where the fabric is hot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.collections import PatchCollection  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from waferscale.compiler.floorplan.objective import Geometry  # noqa: E402
from waferscale.compiler.floorplan.placer import FloorplanResult  # noqa: E402
from waferscale.compiler.floorplan.route import Routing  # noqa: E402


def _panels(ax_plan, ax_load, result: FloorplanResult, g: Geometry, routing: Routing | None,
            title: str) -> None:
    p = result.problem
    spec = p.spec
    n = p.n
    patches = [Rectangle((g.C[i], g.R[i]), g.W[i], g.H[i]) for i in range(n)]
    coll = PatchCollection(patches, cmap="viridis", edgecolor="k" if n <= 200 else "none",
                           linewidth=0.3)
    coll.set_array(np.arange(n) / max(n - 1, 1))
    ax_plan.add_collection(coll)
    for r in p.reserved:
        ax_plan.add_patch(Rectangle((r.col, r.row), r.cols, r.rows, facecolor="0.6",
                                    hatch="//", edgecolor="0.3"))
    ax_plan.set_xlim(0, spec.cols)
    ax_plan.set_ylim(spec.rows, 0)
    ax_plan.set_aspect("equal")
    ax_plan.set_title(f"{title}: blocks by pipeline index")
    if routing is not None:
        im = ax_load.imshow(routing.link_load.max(axis=0), cmap="inferno", origin="upper",
                            interpolation="nearest")
        plt.colorbar(im, ax=ax_load, fraction=0.046, label="wavelets / sample (busiest link)")
    ax_load.set_title(f"{title}: link load")


def plot_floorplan(result: FloorplanResult, path: str | Path, baseline: bool = False,
                   utilisation: tuple[float, float] | None = None) -> Path:
    """Two panels (floorplan, link load); with ``baseline`` a second row for the strips.

    ``utilisation``: (placed, strips) figures to print in the titles, e.g. the compiler's
    measured ones (kernels re-sized in their rectangles); by default the placer's own
    area-model figures (`Quality.utilisation`)."""
    rows = 2 if baseline and result.baseline_geometry is not None else 1
    fig, axes = plt.subplots(rows, 2, figsize=(12, 5.5 * rows), squeeze=False)
    placed_u = utilisation[0] if utilisation else result.quality.utilisation
    _panels(axes[0][0], axes[0][1], result, result.geometry, result.routing,
            f"placed (util {placed_u:.0%})")
    if rows == 2:
        assert result.baseline is not None and result.baseline_geometry is not None
        strips_u = utilisation[1] if utilisation else result.baseline.utilisation
        _panels(axes[1][0], axes[1][1], result, result.baseline_geometry,
                result.baseline_routing, f"strips (util {strips_u:.0%})")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
