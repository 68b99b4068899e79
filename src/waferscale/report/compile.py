"""The reports behind `waferscale compile`, `waferscale run` and the demo, as plain dicts.

They live in the library, not the CLI, so that tests and benchmarks measure exactly what
the command prints with ``--json``: the CLI only parses arguments and renders these dicts.
Every figure comes from ``CompiledModel.report()``; these functions add what the command
knows (the model name, the sequence length, the loss against eager PyTorch, wall times).
"""

from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from waferscale.compiler.errors import CompileError
from waferscale.errors import WaferscaleError
from waferscale.hardware.spec import get_spec
from waferscale.models import META_ABOVE, PRESETS, ModelSpecError, load_model, preset_params


def check_image_path(path: str | Path, option: str = "--map") -> Path:
    """``path`` if an image can be written there, else a `WaferscaleError` saying why: a
    format matplotlib writes (by suffix), not a directory, in a directory that exists and
    is writable. Checked before the work that produces the image, not after it."""
    from matplotlib.backend_bases import FigureCanvasBase

    p = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = p.suffix.lower().lstrip(".")
    if p.is_dir():
        raise WaferscaleError(f"{option} {path}: is a directory (give a file name such as "
                              f"{p / 'map.png'})")
    if suffix not in formats:
        raise WaferscaleError(f"{option} {path}: {'no' if not suffix else 'unknown'} image "
                              f"format{' ' + repr(suffix) if suffix else ''} (end the name in "
                              f".png, .pdf or .svg)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise WaferscaleError(f"{option} {path}: directory {parent} does not exist (create "
                              f"it first)")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise WaferscaleError(f"{option} {path}: not writable (choose a path you can write)")
    return p


def write_map(cm: Any, path: str | Path) -> Path:
    """The wafer map of a compiled model: every kernel's rectangle coloured by pipeline
    position (so by layer), beside the routed link load (``floorplan.plot``)."""
    from waferscale.compiler.floorplan.plot import plot_floorplan

    path = check_image_path(path)
    placed = cm.program.placed
    if placed is None:
        raise CompileError(f"no placement to draw: the model compiled in {cm.program.mode} "
                           f"mode ({'; '.join(cm.program.notes)[:300]})")
    if not placed.rects:
        raise CompileError("no placement to draw: no stage of this model runs on the wafer "
                           "(every op is a layout op or runs on the host)")
    f = placed.figures
    return plot_floorplan(placed.result, path, baseline=True,
                          utilisation=(f["utilization"], f.get("baseline_utilization", 0.0)))


#: Host memory a preset's causal masks may take when it is compiled with real weights.
MASK_BYTES_LIMIT = 4 * 2**30


def check_host_memory(model: str, seq: int, batch: int, fix: str) -> None:
    """Refuse up front a preset with real weights whose compile would take more host memory
    than `MASK_BYTES_LIMIT` for its causal masks: the model builds a ``[batch, 1, seq,
    seq]`` fp32 mask, which capture folds into a constant (GenSLM-25M at 10,240 tokens:
    0.4 GB per sample; ``--batch 64`` grew past 11 GB within two minutes here). Models
    from a file are the user's and not checked."""
    need = batch * seq * seq * 4
    if model in PRESETS and need > MASK_BYTES_LIMIT:
        raise WaferscaleError(f"{model} at --seq {seq} --batch {batch} with real weights needs "
                              f"about {need / 2**30:,.0f} GiB of host memory for its causal "
                              f"masks alone (batch x seq^2 x 4 B; the limit is "
                              f"{MASK_BYTES_LIMIT / 2**30:.0f} GiB) ({fix})")


def _load(model: str, **kw: Any) -> tuple[torch.nn.Module, Any, int]:
    """`load_model`, where a ``file.py:factory`` whose module cannot be imported or whose
    factory raises is the user's to fix (a `ModelSpecError` naming the exception and the
    line), not a traceback; a factory must give a module (and example inputs)."""
    if model in PRESETS:
        return load_model(model, **kw)
    try:
        m, example, vocab = load_model(model, **kw)
    except WaferscaleError:
        raise
    except Exception as exc:  # the user's code: any exception, reported as theirs
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if not f.filename.startswith((str(Path(__file__).parents[1]), "<"))]
        if isinstance(exc, SyntaxError) and exc.filename:
            where = f" at {Path(exc.filename).name}:{exc.lineno}"
        else:
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames \
                else ""
        first = " ".join(str(exc).split())[:300]
        raise ModelSpecError(f"model {model}: loading it raised {type(exc).__name__}: "
                             f"{first}{where} (fix the file or the factory)") from exc
    if not isinstance(m, torch.nn.Module):
        raise ModelSpecError(f"model {model}: the factory returned {type(m).__name__}, not a "
                             f"torch.nn.Module (return a module, or (module, example_inputs))")
    return m, example, vocab


def compile_report(model: str, *, seq: int, batch: int, estimate: bool, strict: bool,
                   spec: str = "wse2", reserve: list[tuple[int, int, int, int]] | None = None,
                   pin: dict[str, tuple[int, int, int, int]] | None = None,
                   map_path: str | Path | None = None, layers: int | None = None,
                   density: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Compile MODEL and return its report (plan, stages, throughput) plus ``model`` and
    ``seq``, and ``map`` when ``map_path`` is given. ``density``: stated nonzero
    fractions for an estimate (`compiler.density.Density`'s fields).

    Presets are built on the meta device in estimate mode, and always above ``META_ABOVE``
    parameters: their weights would not fit in host memory, and a plan needs shapes only.
    """
    import waferscale

    if seq < 1 or batch < 1:
        raise WaferscaleError(f"--seq {seq} and --batch {batch} must be at least 1")
    get_spec(spec)
    if map_path is not None:
        check_image_path(map_path)
    meta = estimate and model in PRESETS or (model in PRESETS
                                             and preset_params(model) > META_ABOVE)
    if not meta:
        check_host_memory(model, seq, batch, "add --estimate to plan and time it on meta "
                                             "weights, or use a smaller --batch or --seq")
    mode = "estimate" if estimate else "auto"
    if meta:
        cm = _compile_preset_meta(model, seq=seq, batch=batch, layers=layers, spec=spec,
                                  mode=mode, strict=strict, reserve=reserve, pin=pin,
                                  density=density)
    else:
        m, example, _ = _load(model, seq=seq, batch=batch, meta=meta, layers=layers)
        cm = waferscale.compile(m, example, spec=spec, mode=mode, strict=strict,
                                reserve=reserve, pin=pin, density=density)
    rep = cm.report()
    rep["floorplan"] = cm.program.floorplan   # the routed placement, for wafer maps
    if map_path is not None:
        rep["map"] = str(write_map(cm, map_path))
    rep["model"] = model
    rep["seq"] = seq
    return rep


def _compile_preset_meta(model: str, *, seq: int, batch: int, layers: int | None,
                         **options: Any) -> Any:
    """`waferscale.compile` of a preset built on the meta device, its capture read from
    the disk cache when the same preset, shapes and code were captured before
    (`compiler.capture_cache`: building and exporting the model is most of an estimate's
    wall time, and a meta model's capture depends on nothing else)."""
    from waferscale.api import capture_model, compile_graph
    from waferscale.compiler import capture_cache

    t0 = time.perf_counter()   # on a hit, reading the cache stands for the capture
    key = capture_cache.key(model=model, seq=seq, batch=batch, layers=layers, meta=True)
    hit = capture_cache.load(key)
    if hit is not None:
        g, example, note = hit
        return compile_graph(g, example, note=note, t0=t0, **options)
    m, example, _ = _load(model, seq=seq, batch=batch, meta=True, layers=layers)
    t0 = time.perf_counter()   # as `waferscale.compile`: from the built model on
    g, note = capture_model(m, example)
    capture_cache.save(key, g, example, note)
    return compile_graph(g, example, note=note, t0=t0, module=m, **options)


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
    get_spec(spec)
    if not Path(fasta).is_file():
        raise WaferscaleError(f"--fasta {fasta}: no such file")
    check_host_memory(model, seq, batch, "use a smaller --batch or --seq (`waferscale compile "
                                         "--estimate` times any size)")
    records = read_fasta(fasta)
    m, _, _ = _load(model, seq=seq, batch=batch, layers=layers)
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
    rep["floorplan"] = cm.program.floorplan   # the routed placement, for wafer maps
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
