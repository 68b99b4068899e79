"""`waferscale compile` / `run` / the GenSLM demo: load a model, compile it, report.

MODEL is a preset (genslm-25m, genslm-250m, genslm-2.5b, genslm-25b, gpt2) or
``path/file.py:factory`` where ``factory()`` returns a module, or ``(module, example_inputs)``.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from waferscale.compiler.errors import CompileError
from waferscale.errors import WaferscaleError

PRESETS = ("genslm-25m", "genslm-250m", "genslm-2.5b", "genslm-25b", "gpt2")
#: Above this many parameters a preset is built on the meta device (no weights here).
META_ABOVE = 1_000_000_000


class ModelSpecError(CompileError):
    """MODEL is neither a preset nor a loadable ``file.py:factory``."""


def _preset_params(name: str) -> int:
    from waferscale.workloads.presets import GENSLM_PRESETS
    return GENSLM_PRESETS[name].params if name in GENSLM_PRESETS else 124_000_000


def load_model(model: str, *, seq: int, batch: int, meta: bool = False, layers: int | None = None
               ) -> tuple[torch.nn.Module, dict[str, Any] | tuple[Any, ...], int]:
    """(module, example inputs, vocabulary size) for MODEL."""
    if model in PRESETS:
        from waferscale.workloads import build_model
        kw: dict[str, Any] = {"seq_len": seq}
        if meta:
            kw["device"] = "meta"
        m = build_model(model, **kw)
        if layers is not None:
            _truncate_layers(m, layers)
        vocab = int(m.config.vocab_size)
        ids = torch.randint(0, vocab, (batch, seq))
        return m, {"input_ids": ids}, vocab
    if ":" not in model or not model.split(":")[0].endswith(".py"):
        raise ModelSpecError(f"model {model!r}: use a preset ({', '.join(PRESETS)}) or "
                             f"path/file.py:factory")
    path, factory = model.rsplit(":", 1)
    if not Path(path).is_file():
        raise ModelSpecError(f"model file {path} does not exist")
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, factory):
        raise ModelSpecError(f"{path} has no function {factory!r}")
    made = getattr(mod, factory)()
    if isinstance(made, tuple):
        m, example = made
    else:
        m = made
        vocab = int(getattr(getattr(m, "config", None), "vocab_size", 0) or 0)
        if not vocab:
            raise ModelSpecError(f"{factory}() returned a model without config.vocab_size; "
                                 f"return (model, example_inputs) instead")
        example = {"input_ids": torch.randint(0, vocab, (batch, seq))}
    vocab = int(getattr(getattr(m, "config", None), "vocab_size", 0) or 0)
    return m, example, vocab


def _truncate_layers(m: torch.nn.Module, layers: int) -> None:
    """Keep the first ``layers`` decoder layers (a shorter model for quick runs)."""
    base = getattr(m, "gpt_neox", None) or getattr(m, "transformer", None)
    blocks = getattr(base, "layers", None) or getattr(base, "h", None)
    if blocks is not None and layers < len(blocks):
        del blocks[layers:]
        m.config.num_hidden_layers = layers


def parse_rect(text: str) -> tuple[int, int, int, int]:
    """``r,c,h,w`` (row, column, rows, columns) from the command line."""
    parts = [p.strip() for p in text.split(",")]
    try:
        r, c, h, w = (int(p) for p in parts)
    except ValueError as exc:
        raise WaferscaleError(f"--reserve {text!r}: expected r,c,h,w (four integers: row, "
                              f"column, rows, columns)") from exc
    return r, c, h, w


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
    import waferscale

    if seq < 1 or batch < 1:
        raise WaferscaleError(f"--seq {seq} and --batch {batch} must be at least 1")
    meta = estimate and model in PRESETS or (model in PRESETS
                                             and _preset_params(model) > META_ABOVE)
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
    """Forward + loss on the simulated wafer for genomes from ``fasta``; eager for reference."""
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


__all__ = ["PRESETS", "compile_report", "load_model", "parse_rect", "run_report",
           "write_map"]
