"""`waferscale bicgstab`: the CS-1 BiCGStab (7-point operator) on a wafer, estimated or run.

The main CLI calls `register(app)`. The command runs under the main CLI's error contract
(`waferscale.cli_contract._guard`). Two modes, and the report says which ran:

* ``estimate``: the closed form (`kernels.bicgstab.iteration`), for any grid that fits;
* ``simulate``: the solver on the fast fabric model with values (a random diagonally
  dominant operator), its residuals, and a comparison with the NumPy oracle.

By default a grid whose run is predicted to take at most `SIMULATE_LIMIT_S` here is
simulated and anything larger estimated (with a note); ``--simulate`` on a grid predicted
to take longer is refused (a user mistake: exit 2) rather than left running for hours.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
import typer

from waferscale.cli_contract import JsonOpt
from waferscale.errors import WaferscaleError

#: Longest functional run the command starts by itself, or at all with --simulate (s).
SIMULATE_LIMIT_S = 60.0
#: Speed of `bicgstab.run` with values on the 2-core development machine (conservative):
#: a fixed cost per iteration (about 20 fabric phases) plus one per cell.
SECONDS_PER_ITERATION = 0.02
SECONDS_PER_CELL_ITERATION = 2e-6


def parse_grid(text: str) -> tuple[int, int, int]:
    """``600x595x1536`` or ``600 x 595 x 1536`` (quoted): x by y by z cells."""
    parts = "".join(text.split()).lower().split("x")
    try:
        x, y, z = (int(p) for p in parts)
    except ValueError:
        raise WaferscaleError(f"--grid {text!r} must look like 600x595x1536 (x by y by z "
                              f"cells)") from None
    return x, y, z


def predicted_seconds(x: int, y: int, z: int, iters: int) -> float:
    """Predicted wall time of a functional run here (see the rates above)."""
    return iters * (SECONDS_PER_ITERATION + SECONDS_PER_CELL_ITERATION * x * y * z)


def bicgstab_report(spec_name: str, grid: str, iters: int, mode: bool | None,
                    tol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """The figures of ``waferscale bicgstab`` (``mode``: True estimate, False simulate,
    None: simulate when quick, else estimate)."""
    from waferscale.fabric import Fabric
    from waferscale.hardware import get_spec
    from waferscale.kernels import bicgstab as bi
    from waferscale.kernels import spmv7

    spec = get_spec(spec_name)
    x, y, z = parse_grid(grid)
    if iters < 1:
        raise WaferscaleError(f"--iters {iters} must be at least 1")
    if not tol >= 0:
        raise WaferscaleError(f"--tol {tol} must be a number >= 0 (0: run every iteration)")
    bi.check(spec, x, y, z)
    predicted = predicted_seconds(x, y, z, iters)
    note = None
    if mode is False and predicted > SIMULATE_LIMIT_S:
        raise WaferscaleError(
            f"a functional run of {x}x{y}x{z} for {iters} iterations would take about "
            f"{predicted:,.0f} s here, over the {SIMULATE_LIMIT_S:.0f} s limit (drop "
            f"--simulate for the closed-form estimate, or use a smaller grid or fewer --iters)")
    if mode is None:
        mode = predicted > SIMULATE_LIMIT_S
        if mode:
            note = (f"a functional run of {x}x{y}x{z} would take about {predicted:,.0f} s "
                    f"here, so these figures are the closed form (which the tests check "
                    f"against runs of small grids)")
    it = bi.iteration(spec, x, y, z)
    report: dict[str, Any] = {
        "spec": spec.name, "grid": [x, y, z], "mode": "estimate" if mode else "simulate",
        "clock_hz": spec.clock_hz, "iterations_requested": iters,
        "allreduce_algorithm": it.allreduce,
        "allreduce_cycles_by_algorithm": {
            a: sum(bi.allreduce_2d_cycles(spec, w, x, y, a) for w in bi.ALLREDUCE_VALUES)
            for a in bi.ALGORITHMS},
        "iteration": it.as_dict(),
        "setup_cycles": bi.setup_cycles(spec, x, y, z),
        "spmv_breakdown": spmv7.breakdown(spec, x, y, z, vectors=bi.VECTORS),
        "z_chunks": list(spmv7.chunk_sizes(spec, z, bi.VECTORS)),
        "sram_bytes_per_pe": spmv7.sram_bytes(z, max(spmv7.chunk_sizes(spec, z, bi.VECTORS)),
                                              bi.VECTORS),
        "flops_convention": "per cell per iteration: 2 SpMVs x 13 (7 mul + 6 add), 5 dots x 2, "
                            "6 AXPYs x 2; allreduce adds and scalar ops not counted",
        "precision": "fp16 matrix and vectors (SpMV and updates); dots fp16 x fp16 -> fp32; "
                     "scalars fp32",
        "simulation_seconds_predicted": predicted, "note": note,
        "validation": "none: no published BiCGStab measurement is in the reference sheet",
    }
    if mode:
        cycles = bi.cost(spec, x, y, z, iters)
        report.update(iterations=iters, cycles=cycles, seconds=spec.seconds(cycles))
        return report
    t0 = time.perf_counter()
    diags, b = spmv7.random_problem(x, y, z, seed)
    fabric = Fabric(spec, y, x)
    solve = bi.run(fabric, diags, b, iters, tol)
    ref = bi.reference(diags, b, iters, tol)
    true = bi.true_residual(diags, b, solve.x)
    n = min(len(ref.residuals), len(solve.residuals))
    report.update(
        iterations=len(solve.iteration_cycles), cycles=solve.cycles,
        seconds=spec.seconds(solve.cycles), cycles_per_iteration=solve.iteration_cycles,
        cost_cycles=bi.cost(spec, x, y, z, len(solve.iteration_cycles)),
        residuals=solve.residuals, stop=solve.stop, true_relative_residual=true,
        oracle_residuals=ref.residuals, oracle_stop=ref.stop,
        max_residual_difference_vs_numpy=float(np.max(np.abs(
            np.subtract(solve.residuals[:n], ref.residuals[:n])))) if n else 0.0,
        wall_seconds=time.perf_counter() - t0)
    return report


def _print(r: dict[str, Any]) -> None:
    from rich.table import Table

    from waferscale.cli_contract import console

    it = r["iteration"]
    x, y, z = r["grid"]
    table = Table(title=f"BiCGStab 7-point, {x}x{y}x{z} on {r['spec']} ({r['mode']}, "
                        f"{r['clock_hz'] / 1e9:.2f} GHz)")
    table.add_column("per iteration")
    table.add_column("cycles", justify="right")
    table.add_column("share", justify="right")
    for name, key in (("2 SpMVs", "spmv"), ("5 dots + 3 allreduces + scalars",
                                               "dots_allreduce"),
                      ("6 vector updates", "updates"), ("total", "cycles")):
        table.add_row(name, f"{it[key]:,.0f}", f"{100 * it[key] / it['cycles']:.1f} %")
    console.print(table)
    console.print(f"allreduce: {it['allreduce_algorithm']} ({it['parts']['allreduces']:,.0f} "
                  f"cycles of the 3); {it['flops_per_cell']} FLOPs per cell per iteration: "
                  f"{it['pflop_per_s']:.4g} PFLOP/s, {1e6 * it['seconds']:.2f} us per iteration")
    console.print(f"{r['iterations']} iterations: {r['cycles']:,.0f} cycles, "
                  f"{1e3 * r['seconds']:.3f} ms (set-up included)")
    if r["mode"] == "simulate":
        res = ", ".join(f"{v:.2e}" for v in r["residuals"])
        console.print(f"relative residuals (recurrence): {res}; stop: {r['stop']}; true "
                      f"residual {r['true_relative_residual']:.2e}; vs the NumPy oracle: max "
                      f"difference {r['max_residual_difference_vs_numpy']:.1e}; closed form "
                      f"{r['cost_cycles']:,.0f} cycles")
    if r["note"]:
        console.print(f"note: {r['note']}")
    console.print("No published BiCGStab measurement is in the reference sheet: these "
                  "figures are unvalidated (docs/bicgstab.md).")


def register(app: typer.Typer) -> None:
    """Add ``bicgstab`` to the main CLI's ``app``."""

    @app.command(name="bicgstab")
    def bicgstab(grid: Annotated[str, typer.Option(
                     "--grid", help="x by y by z cells, e.g. 600x595x1536 (the SC20 CS-1 "
                                    "grid) or '600 x 595 x 1536'")] = "600x595x1536",
                 spec: Annotated[str, typer.Option(
                     "--spec", help="wse1, wse2, wse3 or a .toml")] = "wse1",
                 iters: Annotated[int, typer.Option("--iters", help="iterations")] = 10,
                 tol: Annotated[float, typer.Option(
                     "--tol", help="simulate: stop at this relative residual")] = 1e-4,
                 estimate: Annotated[bool, typer.Option(
                     "--estimate", help="closed form only")] = False,
                 simulate: Annotated[bool, typer.Option(
                     "--simulate", help="functional run with values (refused when predicted "
                                        "to take over a minute here)")] = False,
                 json_out: JsonOpt = False) -> None:
        """BiCGStab on the 7-point operator: cycles per iteration (SpMV / dots + allreduce /
        updates), PFLOP/s; a functional run with residuals on small grids."""
        from waferscale.cli_contract import _emit, _guard

        def body() -> None:
            if estimate and simulate:
                raise WaferscaleError("--estimate and --simulate contradict each other (give "
                                      "one, or neither to simulate only when it is quick)")
            r = bicgstab_report(spec, grid, iters,
                                True if estimate else (False if simulate else None), tol)
            if json_out:
                _emit(r)
            else:
                _print(r)

        _guard(body)


__all__ = ["bicgstab_report", "parse_grid", "predicted_seconds", "register"]
