"""`waferscale yield`: the yield argument for spares, as a table, JSON or a plot.

The main CLI registers `yield_command` as ``waferscale yield [--json] [--plot out.png]
[--spec NAME]``. With ``--json`` stdout carries exactly one JSON document (the list of
rows of `waferscale.hardware.yield_model.yield_table`), so it can be piped into other tools;
anything else (the note about a written plot) goes to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from waferscale.hardware.spec import get_spec
from waferscale.hardware.yield_model import plot_yield, yield_table


def _fmt(value: float) -> str:
    """Yields span 1 down to 1e-200: show small ones in scientific notation, not as 0.000."""
    if value == 0.0:
        return "0"
    if value >= 0.001:
        return f"{value:.4f}"
    return f"{value:.1e}"


def yield_command(json_out: bool = False, plot: Path | None = None, spec: str = "wse2") -> None:
    """Print the monolithic-versus-spares yield table for ``spec`` (a preset or TOML file).

    Raises `waferscale.errors.SpecError` for an unknown spec; the main CLI turns that
    into its one-line message.
    """
    wafer = get_spec(spec)
    rows = yield_table(wafer)
    if plot is not None:
        plot_yield(plot, wafer)
    if json_out:
        sys.stdout.write(json.dumps(rows, allow_nan=False) + "\n")
        if plot is not None:
            print(f"wrote {plot}", file=sys.stderr)
        return
    console = Console()
    table = Table(title=f"Yield: perfect die vs. {wafer.spare_fraction:.2%} spare cores "
                        f"({wafer.name}, {wafer.core_area_mm2:g} mm² per core)")
    for name in ("model", "area mm²", "D0/mm²", "perfect", "spares", "active", "spare/row"):
        table.add_column(name, justify="left" if name == "model" else "right", no_wrap=True)
    for row in rows:
        model = row["model"] if row["alpha"] is None else f"{row['model']} a={row['alpha']:g}"
        table.add_row(model, f"{row['area_mm2']:,.0f}", f"{row['density_per_mm2']:g}",
                      _fmt(row["monolithic_yield"]), _fmt(row["redundant_yield"]),
                      _fmt(row["active_fraction"]),
                      f"{row['spares_per_row']}/{row['row_cores']}")
    console.print(table)
    console.print("perfect: yield of a die where every core must work. spares: yield when "
                  "every row's defective cores fit its spares. active: expected share of all "
                  "cores made that end up enabled (spares yield x enabled fraction).")
    if plot is not None:
        console.print(f"wrote {plot}")
