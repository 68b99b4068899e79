"""`waferscale scaling` and `waferscale sweep`: clusters of systems on one SwarmX tree.

The main CLI calls `register(app)`. Both commands run under the main CLI's error contract
(`waferscale.cli_contract._guard`); the work is `report.scaling.scaling_report` and
`report.sweep.sweep`; this module parses options and prints (quiet under ``--json``: one
JSON document on stdout; the sweep's progress bar goes to stderr).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from waferscale.cli_contract import JsonOpt


def register(app: typer.Typer) -> None:
    """Add ``scaling`` and ``sweep`` to the main CLI's ``app``."""

    @app.command(name="scaling")
    def scaling(model: Annotated[str, typer.Argument(help="preset (genslm-25m, ...) or "
                                                          "file.py:factory")],
                systems: Annotated[str, typer.Option(
                    "--systems", help="cluster sizes, e.g. 1,2,4,8,16 (1 to 192)")]
                = "1,2,4,8,16",
                seq: Annotated[int, typer.Option("--seq", help="tokens per sample")] = 10240,
                batch: Annotated[int, typer.Option(
                    "--batch", help="samples per system (weak scaling)")] = 1,
                global_batch: Annotated[int | None, typer.Option(
                    "--global-batch", help="fixed global batch split over the systems "
                                           "(strong scaling; one capture per split)")]
                = None,
                dtype: Annotated[str, typer.Option("--dtype", help="fp16, bf16 or fp32")]
                = "fp16",
                optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd")]
                = "adamw",
                spec: Annotated[str, typer.Option("--spec", help="wse1, wse2, wse3 or .toml")]
                = "wse2",
                plot: Annotated[str | None, typer.Option(
                    "--plot", help="write samples/s and efficiency vs systems (PNG)")] = None,
                json_out: JsonOpt = False) -> None:
        """Samples/s and scaling efficiency of a training step on 1..N systems (SwarmX
        broadcast and reduction overlapped with compute); where scaling stops being linear
        and why."""
        from waferscale.cli_contract import _emit, _guard, console

        def body() -> None:
            from waferscale.report.scaling import parse_systems, plot_scaling, scaling_report

            parse_systems(systems)             # bad counts before the slow capture
            if plot is not None:
                from waferscale.report.compile import check_image_path

                check_image_path(plot, "--plot")
            rep = scaling_report(model, seq=seq, systems=systems, batch=batch,
                                 global_batch=global_batch, dtype=dtype, spec=spec,
                                 optimizer=optimizer)
            if plot is not None:
                rep["plot"] = str(plot_scaling(rep, plot))
            if json_out:
                _emit(rep)
                return
            _print_scaling(rep, console)

        _guard(body)

    @app.command(name="sweep")
    def sweep_cmd(models: Annotated[str, typer.Option(
                      "--models", help="comma-separated presets or file.py:factory")]
                  = "genslm-25m",
                  seq: Annotated[str, typer.Option("--seq", help="e.g. 256,1024,4096")]
                  = "1024",
                  systems: Annotated[str, typer.Option("--systems", help="e.g. 1,2,4,16")]
                  = "1,2,4,16",
                  spec: Annotated[str, typer.Option("--spec", help="e.g. wse2,wse3")] = "wse2",
                  batch: Annotated[int, typer.Option("--batch", help="samples per system")]
                  = 1,
                  dtype: Annotated[str, typer.Option("--dtype", help="fp16, bf16 or fp32")]
                  = "fp16",
                  optimizer: Annotated[str, typer.Option("--optimizer", help="adamw or sgd")]
                  = "adamw",
                  out: Annotated[str | None, typer.Option(
                      "--out", help="write the table here (CSV)")] = None,
                  address: Annotated[str | None, typer.Option(
                      "--address", help="join this Ray cluster (default: RAY_ADDRESS or a "
                                        "local Ray)")] = None,
                  json_out: JsonOpt = False) -> None:
        """A grid of training-step estimates (models x seq x spec x systems) as Ray tasks:
        one table (CSV) and JSON."""
        from waferscale.cli_contract import _emit, _guard, console

        def body() -> None:
            from rich.console import Console
            from rich.progress import Progress

            from waferscale.report.sweep import sweep, to_csv, write_table

            if out is not None and not out.lower().endswith(".csv"):
                from waferscale.errors import WaferscaleError

                raise WaferscaleError(f"--out {out}: the table is CSV; name it *.csv")
            bar = Progress(console=Console(stderr=True), transient=True)
            task = bar.add_task("sweep", total=None)

            def progress(done: int, total: int) -> None:
                if done == 0:
                    bar.start()
                bar.update(task, completed=done, total=total,
                           description=f"captured {done}/{total} points")

            try:
                rep = sweep(models, seq, systems, specs=spec, batch=batch, dtype=dtype,
                            optimizer=optimizer, address=address, on_progress=progress)
            finally:
                bar.stop()
            if out is not None:
                rep["table"] = str(write_table(rep["rows"], out))
            if json_out:
                _emit(rep)
                return
            if out is None:
                console.print(to_csv(rep["rows"]), end="", markup=False, highlight=False)
            console.print(f"{rep['configurations']} configurations ({rep['points_captured']} "
                          f"captures, {rep['failed']} failed) in {rep['wall_seconds']:.1f} s"
                          + (f"; table: {rep['table']}" if out else ""))

        _guard(body)


def _print_scaling(rep: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.print(f"[bold]{rep['model']}[/bold] seq {rep['seq']}, {rep['dtype']}, "
                  f"{rep['optimizer']}, {rep['spec']}: {rep['scaling']} scaling "
                  + (f"({rep['batch_per_system']} sample(s) per system)"
                     if rep["scaling"] == "weak" else f"(global batch {rep['global_batch']})"))
    table = Table("systems", "levels", "batch/system", "step ms", "samples/s", "speed-up",
                  "efficiency", "SwarmX exposed ms", "bound")
    for r in rep["rows"]:
        table.add_row(str(r["systems"]), str(r["tree_levels"]), str(r["batch_per_system"]),
                      f"{r['seconds_per_step'] * 1e3:,.3f}", f"{r['samples_per_second']:,.2f}",
                      f"{r['speedup']:.2f}", f"{100 * r['scaling_efficiency']:.1f} %",
                      f"{r['swarmx_exposed_seconds'] * 1e3:.3f}", r["bound"])
    console.print(table)
    lin = rep["linearity"]
    console.print(f"linear (>= {100 * lin['threshold']:.0f} %) up to {lin['linear_until']} "
                  f"systems: {lin['why']}")
    if "scan_linearity" in rep:
        s = rep["scan_linearity"]
        console.print(f"scan 1..192: linear up to {s['linear_until']}; {s['why']}")
    if rep.get("plot"):
        console.print(f"plot: {rep['plot']}")


__all__ = ["register"]
