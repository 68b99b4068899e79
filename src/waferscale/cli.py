"""The `waferscale` command. Every result command takes --json: one JSON document on stdout.

The error contract, for every command (`main` and `_guard`; tests/test_cli_errors.py walks
a table of bad inputs through it):

* a user mistake (a typed `WaferscaleError`, or a usage error: an unknown option, a missing
  argument, a value of the wrong type) prints one line ``error: <what> (<how to fix>)`` on
  stderr and exits with status 2, never a traceback;
* an internal error (any other exception: a bug) prints one line ``error: internal error:
  ...`` with a pointer to ``--debug`` and exits with status 1; ``--debug`` (anywhere on
  the command line, or ``WAFERSCALE_DEBUG=1``) prints the traceback as well;
* with ``--json`` stdout carries exactly one JSON document even then:
  ``{"error": {"message": ..., "type": ..., "exit_code": ...}}``; every document is strict
  JSON (a non-finite number is ``null``, named under ``"non_finite"`` with the reason);
* nothing runs for long without saying so: ``stencil`` simulates only when the simulation
  is predicted to take at most `STENCIL_SIMULATE_LIMIT_S` here, otherwise it reports the
  closed-form cost and says so (``--simulate`` runs it anyway, announcing how long).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from waferscale.cli_contract import (
    DEBUG,
    JsonOpt,
    _cx,
    _emit,
    _fail,
    _guard,
    _one_line,
    console,
)
from waferscale.errors import WaferscaleError
from waferscale.hardware import get_spec

# torch.export's own use of a pytree API it deprecates; nothing the user can act on
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`",
                        category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="A wafer-scale AI engine in software.")

SpecOpt = Annotated[str, typer.Option("--spec", help="Preset (wse1, wse2, wse3) or a .toml file.")]


DEBUG.on = bool(os.environ.get("WAFERSCALE_DEBUG"))


@app.callback()
def _root(debug: Annotated[bool, typer.Option(
        "--debug", help="On an error, print the traceback too (also accepted after the "
                        "command).")] = False) -> None:
    """A wafer-scale AI engine in software."""
    DEBUG.on = DEBUG.on or debug


def _parse_grid(grid: str) -> tuple[int, int, int]:
    try:
        x, y, z = (int(v) for v in grid.lower().split("x"))
    except ValueError:
        raise WaferscaleError(f"--grid {grid!r} must look like 755x994x1000 (x by y by z)") \
            from None
    return x, y, z


def parse_rect(text: str) -> tuple[int, int, int, int]:
    """``r,c,h,w`` (row, column, rows, columns) from the command line."""
    parts = [p.strip() for p in text.split(",")]
    try:
        r, c, h, w = (int(p) for p in parts)
    except ValueError as exc:
        raise WaferscaleError(f"--reserve {text!r}: expected r,c,h,w (four integers: row, "
                              f"column, rows, columns)") from exc
    return r, c, h, w


# ------------------------------------------------------------------------------ info -----
@app.command()
def info(spec: SpecOpt = "wse2", json_out: JsonOpt = False) -> None:
    """Print a spec and its derived peak FLOP/s, memory and fabric bandwidth."""
    def body() -> None:
        s = get_spec(spec)
        derived = {
            "pes": s.pes,
            "peak_fp16_flops": s.peak_flops("fp16"),
            "peak_fp32_flops": s.peak_flops("fp32"),
            "peak_fp16_flops_all_cores_max_clock": 2 * s.simd.fp16_fmac * s.cores
            * s.max_clock_hz,
            "memory_bandwidth_bytes_per_s": s.memory_bandwidth_bytes_per_s,
            "fabric_bandwidth_bits_per_s": s.fabric_bandwidth_bits_per_s,
            "total_sram_bytes": s.total_sram_bytes,
            "routable_colors": s.routable_colors,
        }
        if json_out:
            _emit({"spec": s.to_dict(), "derived": derived})
            return
        table = Table(title=f"WaferSpec {s.name}")
        table.add_column("field")
        table.add_column("value", justify="right")
        for key, value in s.to_dict().items():
            table.add_row(key, str(value))
        console.print(table)
        out = Table(title="derived (program rectangle at clock_hz unless noted)")
        out.add_column("figure")
        out.add_column("value", justify="right")
        out.add_row("PEs", f"{s.pes:,}")
        out.add_row("peak FP16 (dense)", f"{derived['peak_fp16_flops'] / 1e15:.2f} PFLOP/s")
        out.add_row("peak FP16, all cores at max clock",
                    f"{derived['peak_fp16_flops_all_cores_max_clock'] / 1e15:.2f} PFLOP/s")
        out.add_row("peak FP32", f"{derived['peak_fp32_flops'] / 1e15:.2f} PFLOP/s")
        out.add_row("SRAM bandwidth", f"{s.memory_bandwidth_bytes_per_s / 1e15:.2f} PB/s")
        out.add_row("fabric bandwidth", f"{s.fabric_bandwidth_bits_per_s / 1e15:.1f} Pb/s")
        out.add_row("total SRAM", f"{s.total_sram_bytes / 2**30:.1f} GiB")
        console.print(out)
    _guard(body)


# --------------------------------------------------------------------------- stencil -----
#: `waferscale stencil` without --estimate or --simulate simulates only when that is
#: predicted to take at most this long here; otherwise it reports the closed-form cost.
STENCIL_SIMULATE_LIMIT_S = 60.0
#: Simulation speed measured on the 2-core development machine (conservative): cell-steps
#: per second with values (grids up to 2**30 bytes of state), PE-steps per second timing
#: only. The full wafer (755x994, 1,000 steps) is about an hour timing only.
STENCIL_VALUE_RATE = 4e6
STENCIL_TIMING_RATE = 2e5


def stencil_seconds(x: int, y: int, z: int, steps: int) -> float:
    """Predicted wall time of simulating the stencil here (see the rates above)."""
    if x * y * z * 4 * 8 <= 2**30:
        return x * y * z * steps / STENCIL_VALUE_RATE
    return x * y * steps / STENCIL_TIMING_RATE


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def stencil_report(spec_name: str, grid: str, steps: int, estimate: bool | None,
                   seed: int = 0) -> dict[str, Any]:
    """Run (or estimate) the SC22 stencil and compute the figures the paper reports.

    ``estimate``: True for the closed-form cost, False to simulate (announcing on stderr
    how long that should take when it is over `STENCIL_SIMULATE_LIMIT_S`), None to
    simulate only when it takes at most that long and otherwise estimate, saying so
    (``note`` in the report)."""
    from waferscale.fabric import Fabric
    from waferscale.kernels import stencil as st

    spec = get_spec(spec_name)
    x, y, z = _parse_grid(grid)
    if steps < 1:
        raise WaferscaleError(f"--steps {steps} must be at least 1")
    st.check_grid(spec, x, y, z)
    st.chunk_cells(spec, z)  # a z-column that does not fit a PE's SRAM: a typed error now
    predicted = stencil_seconds(x, y, z, steps)
    note = None
    if estimate is None and predicted > STENCIL_SIMULATE_LIMIT_S:
        estimate = True
        note = (f"simulating {x}x{y}x{z} for {steps} steps would take about "
                f"{_duration(predicted)} here, so these figures are the closed-form cost "
                f"(equal to the simulated cycles in the tests); add --simulate to run the "
                f"simulation")
    elif not estimate and predicted > STENCIL_SIMULATE_LIMIT_S:
        typer.echo(f"note: simulating {x}x{y}x{z} for {steps} steps; this should take "
                   f"about {_duration(predicted)} here (--estimate gives the closed-form "
                   f"cost at once)", err=True)
    t0 = time.perf_counter()
    mode = "estimate"
    max_error = None
    plan = st.schedule(spec, z)
    if estimate:
        cycles = st.cost(spec, x, y, z, steps)
        shares = plan.shares
    else:
        full_values = x * y * z * 4 * 8 <= 2**30
        fabric = Fabric(spec, y, x, timing_only=not full_values)
        if full_values:
            rng = np.random.default_rng(seed)
            u0 = rng.standard_normal((y, x, z)).astype(np.float32)
            u_prev = u0.copy()
            vel = np.full((y, x, z), 0.05, np.float32)
            result = st.run(fabric, u0, u_prev, vel, steps)
            mode = "simulate"
            ref = st.reference(u0, u_prev, vel, steps)
            max_error = float(np.max(np.abs(result.u - ref)) / max(np.max(np.abs(ref)), 1e-30))
        else:
            result = st.run(fabric, None, None, None, steps, shape=(y, x, z))
            mode = "simulate-timing-only"
        cycles = result.cycles
        stats = fabric.stats()
        shares = {"busy": stats["busy_fraction"], "memory_stall": stats["memory_stall_fraction"],
                  "fabric_wait": 1.0 - stats["busy_fraction"] - stats["memory_stall_fraction"]}
    wall = time.perf_counter() - t0
    seconds = spec.seconds(cycles)
    counts = st.cell_counts()
    cells = x * y * z * steps
    counted = st.COUNTED_FLOPS_PER_CELL
    return {
        "spec": spec.name, "grid": [x, y, z], "steps": steps, "mode": mode,
        "clock_hz": spec.clock_hz, "cycles": cycles, "seconds": seconds,
        "gcell_per_s": cells / seconds / 1e9,
        "tflop_per_s": cells * counted / seconds / 1e12,
        "mflop_per_s_per_pe": cells * counted / seconds / (x * y) / 1e6,
        "cycles_per_cell_step": cycles / (z * steps),
        "busy_fraction": shares["busy"],
        "memory_stall_fraction": shares["memory_stall"],
        "fabric_wait_fraction": shares["fabric_wait"],
        "flops_per_cell_step_executed": counts["flops"],
        "flops_per_cell_step_counted": counted,
        "memory_accesses_per_cell_step": counts["memory_accesses"],
        "fabric_loads_per_cell_step": counts["fabric_loads"],
        "wavelets_received_per_cell_step": counts["wavelets_received"],
        "wavelets_sent_per_cell_step": counts["wavelets_sent"],
        "z_chunk_cells": st.chunk_cells(spec, z),
        "schedule": plan.as_dict(),
        "max_relative_error_vs_numpy": max_error,
        "wall_seconds": wall,
        "simulation_seconds_predicted": predicted,
        "note": note,
        "published": st.PUBLISHED,
    }


@app.command()
def stencil(grid: Annotated[str, typer.Option(help="x by y by z cells, e.g. 755x994x1000")]
            = "755x994x1000",
            steps: Annotated[int, typer.Option(help="time steps")] = 1000,
            estimate: Annotated[bool, typer.Option("--estimate",
                                                   help="closed-form cost, no simulation")]
            = False,
            simulate: Annotated[bool, typer.Option(
                "--simulate", help="simulate even when that takes long (the full wafer: "
                                   "about an hour); by default a long simulation is "
                                   "replaced by the closed-form cost, with a note")] = False,
            spec: SpecOpt = "wse2", json_out: JsonOpt = False) -> None:
    """The SC22 25-point stencil: seconds, Gcell/s, TFLOP/s, busy %, per-cell counts."""
    def body() -> None:
        if estimate and simulate:
            raise WaferscaleError("--estimate and --simulate contradict each other (give one, "
                                  "or neither to simulate only when it is quick)")
        report = stencil_report(spec, grid, steps, True if estimate else
                                (False if simulate else None))
        if json_out:
            _emit(report)
        else:
            _print_stencil(report)
    _guard(body)


def _print_stencil(r: dict[str, Any]) -> None:
    pub = r["published"]
    table = Table(title=f"25-point stencil {'x'.join(map(str, r['grid']))}, {r['steps']} steps, "
                        f"{r['spec']} at {r['clock_hz'] / 1e9:.2f} GHz ({r['mode']})")
    table.add_column("figure")
    table.add_column("ours", justify="right")
    table.add_column("SC22 (755x994x1000)", justify="right")
    table.add_row("seconds", f"{r['seconds']:.4f}", f"{pub['seconds']}")
    table.add_row("Gcell/s", f"{r['gcell_per_s']:,.1f}", f"{pub['gcell_per_s']:,}")
    table.add_row("TFLOP/s", f"{r['tflop_per_s']:.0f}", f"{pub['tflop_per_s']}")
    table.add_row("MFLOP/s per PE", f"{r['mflop_per_s_per_pe']:.1f}",
                  f"{pub['mflop_per_s_per_pe']}")
    table.add_row("cycles per cell-step", f"{r['cycles_per_cell_step']:.1f}",
                  f"{pub['seconds'] * r['clock_hz'] / (pub['steps'] * pub['grid'][2]):.1f}")
    table.add_row("busy %", f"{100 * r['busy_fraction']:.1f}",
                  f"{100 * pub['busy_fraction']:.1f}")
    table.add_row("memory stall %", f"{100 * r['memory_stall_fraction']:.1f}",
                  f"{100 * pub['memory_stall_fraction']:.1f}")
    table.add_row("fabric wait % (other idle)", f"{100 * r['fabric_wait_fraction']:.1f}",
                  f"{100 * pub['fabric_wait_fraction']:.1f}")
    table.add_row("FLOPs per cell-step (executed)", f"{r['flops_per_cell_step_executed']:.0f}",
                  f"{pub['flops_executed']}")
    table.add_row("memory accesses per cell-step", f"{r['memory_accesses_per_cell_step']:.0f}",
                  f"{pub['memory_accesses']}")
    table.add_row("fabric loads per cell-step (SC22's count)",
                  f"{r['fabric_loads_per_cell_step']:.0f}", f"{pub['fabric_loads']}")
    table.add_row("wavelets received / sent per cell-step",
                  f"{r['wavelets_received_per_cell_step']:.0f} / "
                  f"{r['wavelets_sent_per_cell_step']:.0f}", "")
    console.print(table)
    sch = r["schedule"]
    console.print(f"schedule ([R0], SDK examples v0.4.0): {len(sch['chunks'])} z-chunks of "
                  f"{max(sch['chunks'])} cells, {sch['task_activations_per_step']} task "
                  f"activations and {sch['dsd_setups_per_step']} DSD set-ups per step, switch "
                  f"hand-off {sch['handoff_cycles']:.0f} cycles; docs/stencil.md has the "
                  f"assumptions")
    if r["max_relative_error_vs_numpy"] is not None:
        console.print(f"values vs NumPy reference: max relative error "
                      f"{r['max_relative_error_vs_numpy']:.2e}")
    console.print(f"simulation wall time {r['wall_seconds']:.2f} s")
    if r.get("note"):
        console.print(f"note: {r['note']}")


# --------------------------------------------------------------------- compile / run -----
ModelArg = Annotated[str, typer.Argument(help="preset (genslm-25m, genslm-250m, genslm-2.5b, "
                                              "genslm-25b, gpt2) or path/file.py:factory")]


def _print_compiled(r: dict[str, Any], limit: int = 12) -> None:
    table = Table(title=f"{r.get('model', 'model')} on {r['spec']}: {r['mode']} "
                        f"({r['measured']})")
    for c in ("stage", "kind", "rect", "sram/PE", "cycles", "cost()", "util"):
        table.add_column(c, justify="right" if c not in ("stage", "kind") else "left")
    stages = sorted(r["stages"], key=lambda s: -s["stage_cycles"])
    for s in stages[:limit]:
        table.add_row(s["stage"], s["kind"], s["rect"], f"{s['sram_per_pe']:,}",
                      f"{s['cycles']:,.0f}", f"{s['cost_cycles']:,.0f}",
                      f"{s['utilisation']:.2f}")
    console.print(table)
    if len(stages) > limit:
        console.print(f"({len(stages) - limit} more stages; --json lists all)")
    if "weight_streaming" in r:
        ws = r["weight_streaming"]
        console.print(f"weight streaming: samples/s {ws['samples_per_second']:,.2f}   tokens/s "
                      f"{ws['tokens_per_second']:,.0f}   {ws['seconds_per_batch'] * 1e3:,.2f} "
                      f"ms per batch ({ws['bound']}-bound)")
    else:
        console.print(f"samples/s {r['samples_per_second']:,.1f}   tokens/s "
                      f"{r['tokens_per_second']:,.0f}   bottleneck {r['bottleneck']} "
                      f"({r['bottleneck_kind']})   pipeline fill "
                      f"{r['pipeline_fill_seconds'] * 1e6:,.1f} us")
    console.print(f"SRAM {r['sram_bytes'] / 1e6:,.1f} MB of {r['wafer_sram_bytes'] / 1e9:.1f} GB"
                  f" (weights {r['weight_bytes'] / 1e6:,.1f} MB), {r['pes_used']:,} PEs; "
                  f"compiled in {r['compile_seconds']:.1f} s")
    for note in r.get("notes", []):
        console.print(f"note: {note}")
    for f in r.get("fallback_ops", []):
        console.print(f"host fallback: {f['op']} x{f['count']} at {'; '.join(f['sources'])}")


def _print_training(t: dict[str, Any]) -> None:
    console.print(f"[bold]{t['model']}[/bold] training step, seq {t['seq']}, batch "
                  f"{t['batch']}, {t['dtype']}: weight streaming on {t['spec']} + "
                  f"{t['system']}")
    table = Table("graph", "layer", "stages", "compute ms", "weights in ms", "grads out ms",
                  "bound")
    for row in t["layers"]:
        table.add_row(row["graph"], row["layer"] or "-", str(row["stages"]),
                      f"{row['compute_s'] * 1e3:,.3f}", f"{row['weight_in_s'] * 1e3:,.3f}",
                      f"{row['grad_out_s'] * 1e3:,.3f}", row["bound"])
    console.print(table)
    console.print(f"samples/s {t['samples_per_second']:,.3f}   step "
                  f"{t['seconds_per_step'] * 1e3:,.2f} ms (forward "
                  f"{t['forward_seconds'] * 1e3:,.2f}, backward "
                  f"{t['backward_seconds'] * 1e3:,.2f})   {t['bound']}-bound")
    console.print(f"activations: {t['activation_policy']} ({t['activation_policy_reason']})")
    for note in t.get("notes", []):
        console.print(f"note: {note}")
    for f in t.get("fallback_ops", []):
        console.print(f"host fallback: {f['op']} x{f['count']}")


@app.command(name="compile")
def compile_(model: ModelArg,
             seq: Annotated[int | None, typer.Option(
                 "--seq", help="tokens per sample [default: 2048, or the model's position "
                               "table when shorter]")] = None,
             batch: Annotated[int, typer.Option("--batch", help="samples per batch")] = 1,
             estimate: Annotated[bool, typer.Option(
                 "--estimate", help="plan and time only (meta device, no weights)")] = False,
             strict: Annotated[bool, typer.Option(
                 "--strict", help="an op without a wafer kernel is an error")] = False,
             reserve: Annotated[list[str] | None, typer.Option(
                 "--reserve", help="r,c,h,w: a rectangle no kernel may use (repeatable)")] = None,
             map_out: Annotated[str | None, typer.Option(
                 "--map", help="write the wafer map (kernels, link load) to this PNG")] = None,
             train: Annotated[bool, typer.Option(
                 "--train", help="a training step (forward + backward) in weight-streaming "
                                 "mode; needs --estimate")] = False,
             dtype: Annotated[str, typer.Option(
                 "--dtype", help="with --train: fp16, bf16 or fp32")] = "fp16",
             systems: Annotated[int, typer.Option(
                 "--systems", help="with --train: N systems, --batch samples each")] = 1,
             weight_density: Annotated[float | None, typer.Option(
                 "--weight-density", help="with --estimate: nonzero fraction of every "
                                          "weight matrix, e.g. 0.1 (zero weights skipped)")
             ] = None,
             activation_density: Annotated[float | None, typer.Option(
                 "--activation-density", help="with --estimate: nonzero fraction of ReLU "
                                              "outputs (default 0.5)")] = None,
             json_out: JsonOpt = False, spec: SpecOpt = "wse2") -> None:
    """Compile a PyTorch model for the wafer and report its plan and throughput."""
    def body() -> None:
        from waferscale.models import default_seq
        from waferscale.report.compile import compile_report
        n = default_seq(model) if seq is None else seq
        stated = (weight_density, activation_density)
        if stated != (None, None) and (not estimate or train):
            raise WaferscaleError("--weight-density/--activation-density state what an "
                                  "estimate cannot count: add --estimate (and drop --train), "
                                  "or prune the model's weights instead")
        if train:
            from waferscale.report.training import train_report
            if not estimate:
                raise WaferscaleError("--train times a training step on meta weights: add "
                                      "--estimate (functional training is not a command yet)")
            t = train_report(model, seq=n, batch=batch, dtype=dtype, spec=spec,
                             systems=systems)
            if json_out:
                _emit(t)
            else:
                _print_training(t)
            return
        r = compile_report(model, seq=n, batch=batch, estimate=estimate, strict=strict,
                           spec=spec, reserve=[parse_rect(x) for x in reserve or []],
                           map_path=map_out,
                           density=None if stated == (None, None) else
                           {"weights": weight_density, "activations": activation_density})
        if json_out:
            _emit(r)
            return
        _print_compiled(r)
    _guard(body)


@app.command()
def run(model: ModelArg,
        fasta: Annotated[str, typer.Option("--fasta", help="genomes (FASTA) to read")],
        seq: Annotated[int, typer.Option("--seq", help="tokens per sample")] = 64,
        batch: Annotated[int, typer.Option("--batch", help="samples per batch")] = 2,
        json_out: JsonOpt = False, spec: SpecOpt = "wse2") -> None:
    """Forward + loss on the simulated wafer (values from the fabric), eager loss beside it."""
    def body() -> None:
        from waferscale.report.compile import run_report
        r = run_report(model, fasta, seq=seq, batch=batch, spec=spec)
        if json_out:
            _emit(r)
            return
        _print_run(r)
    _guard(body)


def _print_run(r: dict[str, Any]) -> None:
    _print_compiled(r)
    console.print(f"loss on the wafer {r['loss']:.6f}   eager PyTorch {r['eager_loss']:.6f}   "
                  f"|diff| {r['loss_abs_error']:.2e}   max logit error "
                  f"{r['max_logit_error']:.2e}")
    console.print(f"wall: fabric simulation {r['wall_fabric_s']:.1f} s, eager "
                  f"{r['wall_eager_s'] * 1e3:.1f} ms, compile {r['wall_compile_s']:.1f} s")


# ------------------------------------------------------------------------------ demo -----
@app.command()
def demo(json_out: JsonOpt = False) -> None:
    """GenSLM-25M reads real genomes on a simulated WSE-2 and trains a few steps; then the
    stencil on the full wafer."""
    def body() -> None:
        from waferscale.report.compile import run_report
        from waferscale.train import DEMO_TRAINING, demo_training
        from waferscale.workloads import data_path

        # the whole model on one whole genome: ~10,000 codons fit GenSLM's 10,240 tokens
        seq, batch = 10240, 1
        fasta = str(data_path("example_genomes.fasta"))
        if not json_out:
            console.print(f"[bold]waferscale demo[/bold]: GenSLM-25M (all 8 layers) reads "
                          f"{batch} whole SARS-CoV-2 genome as {seq:,} codon tokens, forward + "
                          f"loss on a simulated WSE-2 in pipelined mode (about 1-2 minutes "
                          f"here: compile, fabric simulation, then eager PyTorch to compare)\n")
        from waferscale.cli_report import demo_report
        r = run_report("genslm-25m", fasta, seq=seq, batch=batch)
        if not json_out:
            _print_run(r)
            console.print(f"\nTraining: {DEMO_TRAINING['steps']} AdamW steps of GenSLM-25M "
                          f"on one {DEMO_TRAINING['seq']}-codon window in weight-streaming "
                          f"mode (forward and backward graphs on the simulated wafer, the "
                          f"optimizer in MemoryX), then the same steps in eager PyTorch "
                          f"(about a minute here)")
        t = demo_training(fasta, on_step=None if json_out else lambda s: console.print(
            f"  step {s.step}: loss on the wafer {s.loss:.6f}"))
        full = stencil_report("wse2", "755x994x1000", 1000, estimate=True)
        page = demo_report(r, full)
        if json_out:
            _emit({"genslm": r, "training": t, "stencil_full_wafer": full,
                   "report": str(page)})
            return
        console.print(f"  eager PyTorch: {', '.join(f'{x:.6f}' for x in t['eager_losses'])}"
                      f"  (max |diff| {t['max_loss_difference']:.1e}); {t['timing_note']}")
        console.print("\nThe SC22 25-point stencil, 755x994x1000, 1000 steps, full wafer "
                      "(closed-form cost, equal to the simulated cycles in the tests):")
        _print_stencil(full)
        console.print(f"\nreport: {page} (open it in a browser)")
    _guard(body)


# ------------------------------------------------------------------- yield / validate ----
@app.command(name="yield")
def yield_(json_out: JsonOpt = False,
           plot: Annotated[Path | None, typer.Option(help="write yield vs area to this PNG")]
           = None,
           spec: SpecOpt = "wse2") -> None:
    """Yield of a monolithic die versus a wafer with spare cores."""
    from waferscale.cli_yield import yield_command

    def body() -> None:
        if plot is not None:
            from waferscale.report.compile import check_image_path
            get_spec(spec)  # a bad spec is named before the plot path is checked
            check_image_path(plot, "--plot")
        yield_command(json_out, plot, spec)
    _guard(body)


@app.command()
def validate(json_out: JsonOpt = False,
             agreement: Annotated[bool, typer.Option(
                 "--agreement", help="fast model vs cycle simulator table")] = False,
             quick: Annotated[bool, typer.Option("--quick", help="fewer, smaller cases")]
             = False) -> None:
    """Published hardware measurements versus this simulator, with the error of each."""
    def body() -> None:
        if agreement:
            from waferscale.fabric.cycle.agreement import agreement_rows, agreement_summary
            rows = agreement_rows(quick)
            summary = agreement_summary(rows)
            if json_out:
                _emit({"rows": rows, "summary": summary})
                return
            table = Table(title="agreement: fast model vs cycle simulator")
            for c in ("primitive", "grid", "wavelets", "fast", "cycle", "error"):
                table.add_column(c, justify="left" if c == "primitive" else "right")
            for row in rows:
                table.add_row(row["primitive"], row["grid"], str(row["wavelets"]),
                              f"{row['fast_cycles']:.0f}", f"{row['cycle_cycles']:.0f}",
                              f"{100 * row['error']:+.2f} %")
            console.print(table)
            console.print(f"max |error| {100 * summary['max_abs_error']:.2f} % "
                          f"({summary['worst']}); tolerance {100 * summary['tolerance']:.0f} "
                          f"%; values agree: {summary['values_agree']}")
            return
        from waferscale.report.validation import summary as summarise
        from waferscale.report.validation import validation_cases
        rows = validation_cases(quick)
        summary = summarise(rows)
        if json_out:
            _emit({"cases": rows, "summary": summary})
            return
        table = Table(title="validation: published hardware results vs this simulator")
        for c in ("case", "ours", "published", "error", "band", "ok"):
            table.add_column(c, justify="left" if c == "case" else "right")
        for row in rows:
            rel = "" if row["relation"] == "=" else row["relation"] + " "
            table.add_row(row["name"], f"{row['ours']:.4g} {row['unit']}",
                          f"{rel}{row['published']:.4g}", f"{100 * row['error']:+.1f} %",
                          row["band"], "yes" if row["passed"] else "NO")
        console.print(table)
        console.print(f"median |error| {100 * summary['median_abs_error']:.1f} %, max "
                      f"{100 * summary['max_abs_error']:.1f} % ({summary['worst_case']}); "
                      f"goal: median <= {100 * summary['goal']['median_abs_error']:.0f} %, "
                      f"max <= {100 * summary['goal']['max_abs_error']:.0f} %")
        for row in rows:
            console.print(f"- {row['name']}: {row['note']}")
    _guard(body)


# ------------------------------------------------------------ gpu / compare / quote -----
from waferscale.cli_bicgstab import register as _register_bicgstab  # noqa: E402
from waferscale.cli_cache import register as _register_cache  # noqa: E402
from waferscale.cli_cluster import register as _register_cluster  # noqa: E402
from waferscale.cli_generate import register as _register_generate  # noqa: E402
from waferscale.cli_gpu import register as _register_gpu  # noqa: E402
from waferscale.cli_report import register as _register_report  # noqa: E402
from waferscale.cli_train import register as _register_train  # noqa: E402

_register_gpu(app)
_register_generate(app)
_register_train(app)
_register_cluster(app)
_register_report(app)
_register_bicgstab(app)
_register_cache(app)


def main(argv: list[str] | None = None) -> int:
    """The ``waferscale`` entry point: runs one command under the error contract (module
    docstring) and returns its exit status. ``argv`` defaults to ``sys.argv[1:]``; tests
    call ``main([...])`` in-process."""
    args = list(sys.argv[1:] if argv is None else argv)
    DEBUG.on = bool(os.environ.get("WAFERSCALE_DEBUG")) or "--debug" in args
    args = [a for a in args if a != "--debug"]
    json_out = "--json" in args
    try:
        rc = app(args, prog_name="waferscale", standalone_mode=False)
    except getattr(_cx, "NoArgsIsHelpError", ()) as exc:
        # a bare `waferscale` (or a group without a command): the help, not an error
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        return 0
    except _cx.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "waferscale"
        _fail(2, f"{exc.format_message()} (see {where} --help)", type(exc).__name__,
              json_out)
        return 2
    except _cx.ClickException as exc:
        _fail(exc.exit_code or 1, exc.format_message(), type(exc).__name__, json_out)
        return exc.exit_code or 1
    except (typer.Abort, KeyboardInterrupt):
        _fail(130, "interrupted (Ctrl-C)", "KeyboardInterrupt", json_out)
        return 130
    except Exception as exc:  # outside a command's guard: a bug in the CLI itself
        if DEBUG.on:
            traceback.print_exc()
        _fail(1, f"internal error: {type(exc).__name__}: {_one_line(str(exc), 300)} (a bug "
                 f"in waferscale; run again with --debug for the traceback)",
              type(exc).__name__, json_out)
        return 1
    return rc if isinstance(rc, int) else 0

