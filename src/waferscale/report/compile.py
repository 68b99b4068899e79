"""The reports behind `waferscale compile`, `waferscale run` and the demo, as plain dicts.

They live in the library, not the CLI, so that tests and benchmarks measure exactly what
the command prints with ``--json``: the CLI only parses arguments and renders these dicts.
Every figure comes from ``CompiledModel.report()``; these functions add what the command
knows (the model name, the sequence length, the loss against eager PyTorch, wall times).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from waferscale.compiler.errors import CompileError
from waferscale.errors import WaferscaleError
from waferscale.models import META_ABOVE, PRESETS, load_model, preset_params


def write_map(cm: Any, path: str | Path) -> Path:
    """The wafer map of a compiled model: every kernel's rectangle coloured by pipeline
    position (so by layer), beside the routed link load (``floorplan.plot``)."""
    from waferscale.compiler.floorplan.plot import plot_floorplan

    placed = cm.program.placed
    if placed is None:
        raise CompileError(f"no placement to draw: the model compiled in {cm.program.mode} "
                           f"mode ({'; '.join(cm.program.notes)[:300]})")
    f = placed.figures
    return plot_floorplan(placed.result, path, baseline=True,
                          utilisation=(f["utilization"], f.get("baseline_utilization", 0.0)))


def compile_report(model: str, *, seq: int, batch: int, estimate: bool, strict: bool,
                   spec: str = "wse2", reserve: list[tuple[int, int, int, int]] | None = None,
                   pin: dict[str, tuple[int, int, int, int]] | None = None,
                   map_path: str | Path | None = None, layers: int | None = None
                   ) -> dict[str, Any]:
    """Compile MODEL and return its report (plan, stages, throughput) plus ``model`` and
    ``seq``, and ``map`` when ``map_path`` is given.

    Presets are built on the meta device in estimate mode, and always above ``META_ABOVE``
    parameters: their weights would not fit in host memory, and a plan needs shapes only.
    """
    import waferscale

    if seq < 1 or batch < 1:
        raise WaferscaleError(f"--seq {seq} and --batch {batch} must be at least 1")
    meta = estimate and model in PRESETS or (model in PRESETS
                                             and preset_params(model) > META_ABOVE)
    m, example, _ = load_model(model, seq=seq, batch=batch, meta=meta, layers=layers)
    cm = waferscale.compile(m, example, spec=spec, mode="estimate" if estimate else "auto",
                            strict=strict, reserve=reserve, pin=pin)
    rep = cm.report()
    if map_path is not None:
        rep["map"] = str(write_map(cm, map_path))
    rep["model"] = model
    rep["seq"] = seq
    return rep


def run_report(model: str, fasta: str, *, seq: int, batch: int, spec: str = "wse2",
               layers: int | None = None) -> dict[str, Any]:
    """Forward + loss on the simulated wafer for genomes from ``fasta``; eager for reference.

    The eager loss and logits beside the wafer's are what make the run a check of the
    values, not only of the timing; the wall times say where a slow run spent its time.
    """
    import waferscale
    from waferscale.runtime.loss_stage import wafer_cross_entropy
    from waferscale.workloads import genome_batch, read_fasta

    if seq < 2 or batch < 1:
        raise WaferscaleError(f"--seq {seq} must be at least 2 and --batch {batch} at least 1")
    if not Path(fasta).is_file():
        raise WaferscaleError(f"--fasta {fasta}: no such file")
    records = read_fasta(fasta)
    m, _, _ = load_model(model, seq=seq, batch=batch, layers=layers)
    gb = genome_batch(records, None, seq, batch)
    ids = gb.input_ids
    t0 = time.perf_counter()
    cm = waferscale.compile(m, {"input_ids": ids}, spec=spec, mode="pipelined")
    t1 = time.perf_counter()
    out = cm(input_ids=ids)
    t2 = time.perf_counter()
    logits = out.logits if hasattr(out, "logits") else out
    targets = gb.labels[:, 1:]
    loss, lrun, lrect = wafer_cross_entropy(cm.program.spec, logits[:, :-1], targets)
    t3 = time.perf_counter()
    with torch.no_grad():
        eager_logits = m(input_ids=ids).logits
    t4 = time.perf_counter()
    eager_loss = float(F.cross_entropy(eager_logits[:, :-1].reshape(-1, eager_logits.shape[-1])
                                       .float(), targets.reshape(-1), ignore_index=-100))
    rep = cm.report()
    spec_obj = cm.program.spec
    rep["loss_stage"] = {"rect": f"{lrect[0]}x{lrect[1]}", "cycles": lrun.cycles,
                         "sram_peak": lrun.sram_peak}
    period = max(rep["period_cycles"], lrun.cycles)
    rep.update(model=model, seq=seq, fasta=str(fasta), genomes=len(records),
               loss=loss, eager_loss=eager_loss, loss_abs_error=abs(loss - eager_loss),
               max_logit_error=float((logits.float() - eager_logits.float()).abs().max()),
               samples_per_second=batch / spec_obj.seconds(period),
               tokens_per_second=batch * seq / spec_obj.seconds(period),
               wall_compile_s=t1 - t0, wall_fabric_s=t3 - t1, wall_forward_s=t2 - t1,
               wall_eager_s=t4 - t3)
    rep["compile_seconds"] = t1 - t0
    return rep


__all__ = ["compile_report", "run_report", "write_map"]
