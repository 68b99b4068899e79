"""`waferscale.compile(model, example_inputs)`: PyTorch model in, wafer program out.

The returned :class:`CompiledModel` is called like the model and returns torch tensors
computed on the simulated wafer (pipelined mode), and ``.report()`` says how fast the wafer
would run it. Models too big to execute here (built on the meta device, or over the
wafer's SRAM) compile in estimate mode: planned and timed with the kernels' ``cost()``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from typing import Any

import torch
import torch.utils._pytree as pytree

from waferscale.compiler import capture as cap
from waferscale.compiler import lower
from waferscale.compiler.density import Density
from waferscale.compiler.density import annotate as annotate_density
from waferscale.compiler.density import check_mode as check_density_mode
from waferscale.compiler.errors import CompileError, FallbackError, FitError
from waferscale.compiler.floorplan import BlockSramError, ConstraintError, FloorplanConfig
from waferscale.compiler.floorplan.serialize import to_dict
from waferscale.compiler.place import PlacedProgram, RectLike, place_plan
from waferscale.compiler.plan import Plan
from waferscale.compiler.plan import plan as make_plan
from waferscale.compiler.program import Program, route
from waferscale.compiler.streaming import plan_streaming
from waferscale.errors import RouteError, WaferscaleError
from waferscale.fabric.defective import DefectsLike, resolve_remap
from waferscale.hardware.defects import Remap
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph
from waferscale.kernels.registry import family

MODES = ("auto", "pipelined", "weight_streaming", "estimate")


def _fallback_message(fb: list[dict[str, Any]]) -> str:
    parts = []
    for f in fb:
        src = "; ".join(f["sources"][:2]) or "unknown source"
        parts.append(f"{f['op']} x{f['count']} ({f['reason']}) at {src}")
    return "; ".join(parts)


#: Report keys of the placement (zero when the model was not placed).
PLACEMENT_KEYS = ("utilization", "flop_utilization", "baseline_utilization", "colors_used",
                  "peak_link_load", "place_seconds")


def lower_graph(g: Graph, spec: WaferSpec, *, mode: str = "auto", strict: bool = False,
                max_side: int | None = None, t0: float | None = None,
                reserve: list[RectLike] | None = None, pin: dict[str, RectLike] | None = None,
                placer_config: FloorplanConfig | None = None) -> Program:
    """Lowering, planning, placement and routing of a captured graph, top to bottom.

    Contradicting ``reserve``/``pin`` constraints raise :class:`ConstraintError` (naming the
    stages and rectangles); a model that does not fit raises :class:`CompileError` in
    ``mode="pipelined"`` and runs in weight-streaming mode otherwise (every stage on the
    whole wafer, weights from MemoryX: `compiler.streaming`). ``mode="weight_streaming"``
    skips placement.
    """
    t0 = time.perf_counter() if t0 is None else t0
    if mode not in MODES:
        raise CompileError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    lower.lower(g)
    fb = lower.fallbacks(g)
    if strict and fb:
        raise FallbackError(f"strict mode: {sum(f['count'] for f in fb)} op(s) have no wafer "
                            f"kernel and would run on the host: {_fallback_message(fb)}")
    p = make_plan(g, spec, max_side=max_side)
    t_place = time.perf_counter()
    planned = p
    placed = None
    if mode != "weight_streaming":
        placed, p = _place(g, p, spec, reserve=reserve, pin=pin, max_side=max_side,
                           placer_config=placer_config)
    place_seconds = time.perf_counter() - t_place
    run_mode, notes = _mode(g, p, mode)
    stream = None
    if run_mode.startswith("weight_streaming"):
        placed = None
        p, stream = plan_streaming(g, dataclasses.replace(planned, why_not=()), spec,
                                   max_side)
        if not p.pipelined_fits:   # not even one stage at a time fits the wafer
            raise FitError("the model does not fit in weight-streaming mode either: "
                               + "; ".join(p.why_not))
    figures: dict[str, Any] = {k: 0 for k in PLACEMENT_KEYS}
    if placed is not None:
        figures.update(placed.figures)
    figures["place_seconds"] = place_seconds
    routes = route(g, p, placed)
    return Program(g, p, spec, run_mode, placement=placed.rects if placed else {},
                   routes=routes, compile_seconds=time.perf_counter() - t0,
                   notes=tuple(notes),
                   floorplan=to_dict(placed.result) if placed is not None else None,
                   figures=figures, placed=placed, streaming=stream)


def _place(g: Graph, p: Plan, spec: WaferSpec, *, reserve: list[RectLike] | None,
           pin: dict[str, RectLike] | None, max_side: int | None,
           placer_config: FloorplanConfig | None) -> tuple[PlacedProgram | None, Plan]:
    """Floorplan a plan that fits: the placement (None when it failed) and the plan with
    every stage sized in its rectangle, or with the reasons placement failed."""
    if not p.pipelined_fits:
        return None, p
    try:
        placed = place_plan(g, p, spec, reserve=reserve, pin=pin, max_side=max_side,
                            config=placer_config)
    except ConstraintError:
        raise
    except BlockSramError as exc:
        if pin and exc.block in pin:  # a pinned rectangle too small: the user's to fix
            raise ConstraintError(str(exc), blocks=[exc.block]) from exc
        return None, dataclasses.replace(p, why_not=p.why_not + (str(exc),))
    except (WaferscaleError, RouteError) as exc:
        return None, dataclasses.replace(p, why_not=p.why_not + (f"placement: {exc}",))
    bad = [s for s in placed.stages.values() if not s.fits]
    return placed, p.with_stages(placed.stages, [
        f"{s.name} ({s.kind}) in its placed rectangle {placed.rects.get(s.name)}: {s.why_not}"
        for s in bad])


def _mode(g: Graph, p: Plan, mode: str) -> tuple[str, list[str]]:
    """The execution mode the plan gets, and the notes that say why."""
    notes: list[str] = []
    meta_weights = any(t.device.type == "meta" for t in g.constants.values()
                       if isinstance(t, torch.Tensor))
    if mode == "pipelined" and not p.pipelined_fits:
        raise CompileError("the model does not fit pipelined mode: " + "; ".join(p.why_not)
                           + "; weight streaming is the mode for it (mode='weight_streaming' "
                             "or 'auto')")
    if mode == "weight_streaming":
        run_mode = "weight_streaming"
        notes.append("weight streaming requested: every stage runs on the whole wafer, its "
                     "weights streamed in from MemoryX")
    elif not p.pipelined_fits:
        run_mode = "weight_streaming"
        notes.append("pipelined mode does not fit: " + "; ".join(p.why_not))
        notes.append("weight streaming chosen: every stage runs on the whole wafer, its "
                     "weights streamed in from MemoryX (docs/weight-streaming.md)")
    elif mode == "estimate" or meta_weights:
        run_mode = "pipelined (estimate)"
    else:
        run_mode = "pipelined"
    for st in p.stages:
        notes.extend(n for n in family(st.kind).notes(st) if n not in notes)
    return run_mode, notes


class CompiledModel:
    """A model compiled for the wafer: call it like the model; ``report()`` for figures."""

    def __init__(self, program: Program, example_inputs: Any, remap: Remap | None = None,
                 systems: int = 1, module: torch.nn.Module | None = None) -> None:
        if not isinstance(systems, int) or isinstance(systems, bool) or systems < 1:
            raise CompileError(f"systems={systems!r}: give a whole number of systems >= 1")
        self.program = program
        #: Systems the figures are for: weight streaming runs them data parallel on one
        #: SwarmX tree (docs/clusters.md); pipelined figures are per system.
        self.systems = systems
        #: The defective wafer this model runs on (None: a perfect wafer).
        self.remap = remap
        #: The compiled module, kept for `generate` (None for graphs from torch.compile).
        self.module = module
        self.last_run: dict[str, Any] | None = None
        self.last_generation: dict[str, Any] | None = None
        self._lm: Any = None
        self._batch, self._tokens = _batch_tokens(example_inputs)

    @property
    def mode(self) -> str:
        return self.program.mode

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from waferscale.runtime.pipelined import execute

        if self.program.mode not in ("pipelined", "weight_streaming"):
            raise CompileError(f"this model compiled in {self.program.mode} mode: it can be "
                               f"timed (report()) but not run here; build it with real "
                               f"weights (not on the meta device) to run it")
        outs, runs = execute(self.program, args, kwargs, remap=self.remap)
        self.last_run = {"runs": runs}
        self._batch, self._tokens = _batch_tokens(args if args else kwargs)
        if self.program.graph.out_spec is not None:
            return pytree.tree_unflatten(outs, self.program.graph.out_spec)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int | None = None,
                 **kwargs: Any) -> Any:
        """transformers' ``generate`` for a compiled causal LM, run on this wafer: the same
        tokens (greedy, or sampled with the same seed), prefill and decode with the KV cache
        resident (`waferscale.generate.CompiledLM`, imported on first use; it imports
        nothing of this module, so the dependency runs one way); figures in
        ``last_generation``."""
        from waferscale.generate import CompiledLM, GenerateError

        if self.module is None:
            raise GenerateError("generate() needs the module: compile it with "
                                "waferscale.compile(model, example_inputs)")
        if self._lm is None:
            self._lm = CompiledLM(self.module, spec=self.program.spec)
        out = self._lm.generate(input_ids, max_new_tokens, **kwargs)
        self.last_generation = self._lm.report()
        return out

    def time_only(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run every kernel on a timing-only fabric (clocks, no values) and report."""
        from waferscale.runtime.pipelined import execute

        _, runs = execute(self.program, args, kwargs, timing_only=True,
                          remap=self.remap)
        self.last_run = {"runs": runs}
        return self.report()

    def _measured(self) -> dict[str, Any]:
        """What each stage measured in the last run (none before a run)."""
        return self.last_run["runs"] if self.last_run is not None else {}

    def seconds_per_batch(self) -> float:
        """The wafer's time per batch, what `report` derives its throughput from: weight
        streaming's when the program streams, else the pipeline's period
        (`estimate.period_cycles`) at the spec's clock. Without the rest of the report: a
        training step asks for it every step."""
        if self.program.streaming is not None:
            return float(self.report()["weight_streaming"]["seconds_per_batch"])
        from waferscale.runtime.estimate import period_cycles

        cycles = {k: r.cycles for k, r in self._measured().items()}
        return period_cycles(self.program, cycles) / self.program.spec.clock_hz

    def report(self) -> dict[str, Any]:
        """Mode, throughput, per-stage figures, SRAM, fallbacks (measured after a run)."""
        from waferscale.hardware.system import CS2_SYSTEM
        from waferscale.runtime.estimate import summarize
        from waferscale.runtime.weight_streaming import forward_report

        prog = self.program
        measured = self.last_run is not None
        runs = self._measured()
        cycles = {k: r.cycles for k, r in runs.items()}
        sram = {k: r.sram_peak for k, r in runs.items() if r.sram_peak}
        busy = {k: r.busy_fraction for k, r in runs.items()}
        summary = summarize(prog, cycles, batch=self._batch, tokens=self._tokens, sram=sram,
                            busy=busy if measured else None, measured=measured)
        out: dict[str, Any] = {
            "mode": prog.mode, "spec": prog.spec.name, "clock_hz": prog.spec.clock_hz,
            "measured": "fabric" if measured else "cost() closed form",
            "batch": self._batch, "tokens": self._tokens,
            "compile_seconds": prog.compile_seconds,
            "parameters": prog.graph.parameter_count(),
            "weight_bytes": prog.plan.weight_bytes,
            "sram_needed_bytes": prog.plan.sram_needed_bytes,
            "wafer_sram_bytes": prog.plan.wafer_sram_bytes,
            "pipelined_fits": prog.mode.startswith("pipelined"),
            "fallback_ops": prog.fallback_ops(),
            "host_input_ops": lower.fallbacks(prog.graph, input_only=True),
            "op_counts": prog.graph.op_counts(),
            "notes": list(prog.notes),
        }
        out.update(prog.figures)
        out.update(summary)
        out["defects"] = self.remap.summary() if self.remap is not None else None
        if prog.streaming is not None:
            # stage by stage on the whole wafer: the pipeline's period and fill do not apply
            ws = forward_report(prog.streaming, prog.spec, CS2_SYSTEM, batch=self._batch,
                                tokens=self._tokens, systems=self.systems)
            out["weight_streaming"] = ws
            for key in ("samples_per_second", "tokens_per_second", "bound"):
                out[key] = ws[key]
            out["latency_seconds"] = ws["seconds_per_batch"]
            for key in ("period_cycles", "pipeline_fill_seconds", "bottleneck",
                        "bottleneck_kind"):
                out.pop(key, None)
        if measured:
            worst = [r for r in summary["stages"] if r["cost_agreement"] is not None]
            out["cost_agreement_max_deviation"] = max(
                (abs(r["cost_agreement"] - 1.0) for r in worst), default=0.0)
        return out


def _batch_tokens(inputs: Any) -> tuple[int, int]:
    leaves = [x for x in pytree.tree_leaves(inputs) if isinstance(x, torch.Tensor)]
    if not leaves:
        return 1, 1
    x = leaves[0]
    batch = int(x.shape[0]) if x.dim() else 1
    if x.is_floating_point():
        tokens = int(x.numel() // x.shape[-1]) if x.dim() > 1 else batch
    else:
        tokens = int(x.numel())
    return batch, tokens


def compile(model: torch.nn.Module, example_inputs: Any = None, *,
            spec: WaferSpec | str | None = "wse2", mode: str = "auto", strict: bool = False,
            max_side: int | None = None, reserve: list[RectLike] | None = None,
            pin: dict[str, RectLike] | None = None,
            placer_config: FloorplanConfig | None = None,
            defects: DefectsLike | None = None, systems: int = 1,
            density: Density | dict[str, float] | None = None) -> CompiledModel:
    """Capture ``model`` with torch.export, lower, plan, place and route it for ``spec``.

    ``mode``: 'auto' (pipelined if it fits, else a weight-streaming estimate), 'pipelined'
    (error if it does not fit) or 'estimate' (plan and time only). ``strict``: an op
    without a wafer kernel is an error instead of a host fallback. ``max_side`` caps a
    kernel's rectangle side (keeps simulations of big problems short). ``reserve``:
    rectangles ``(row, col, rows, cols)`` no kernel may use; ``pin``: ``{stage name:
    (row, col, rows, cols)}`` fixes a kernel's rectangle (stage names as in
    ``report()["stages"]``); contradicting ones raise ``floorplan.ConstraintError``.
    ``placer_config``: the floorplanner's settings (``compiler.place.COMPILE_CONFIG``).
    ``defects``: run on a defective wafer instead of a perfect one: a `Remap`, a
    `DefectMap`, a density per mm² or ``(density, seed)`` (see
    `fabric.defective.resolve_remap`). Placement is unchanged (the remap hides the defects
    behind spares); each stage's fabric charges the detours under its rectangle, so values
    are identical and cycles are not lower. Raises `SparesExhaustedError` up front.
    ``systems``: the report's figures for N systems (weight streaming: data parallel on one
    SwarmX tree, each system the example's batch; a cluster that runs the values:
    `waferscale.train.Trainer(systems=N)`).
    ``density``: for ``mode='estimate'`` only, the nonzero fractions to price sparse
    kernels at where no values exist: ``Density(weights=0.1, activations=0.3)`` or the
    same as a dict (`compiler.density`); the functional modes count them from the values.
    """
    t0 = time.perf_counter()
    spec = get_spec(spec)
    remap = resolve_remap(spec, defects)
    stated = Density.of(density)
    check_density_mode(stated, mode)
    g, train_note = capture_model(model, example_inputs)
    return compile_graph(g, example_inputs, spec=spec, mode=mode, strict=strict,
                         max_side=max_side, reserve=reserve, pin=pin,
                         placer_config=placer_config, defects=remap, systems=systems,
                         note=train_note, t0=t0, module=model, density=stated)


def capture_model(model: torch.nn.Module, example_inputs: Any) -> tuple[Graph, str]:
    """The first half of `compile`: the model captured as in eval mode, and the report
    note saying what that changed ('' when nothing). Split out so that a caller holding a
    cached capture (`compiler.capture_cache`) runs only the second half, `compile_graph`."""
    if not isinstance(model, torch.nn.Module):
        raise CompileError(f"compile expects a torch.nn.Module, got {type(model).__name__}")
    train_note = _train_mode_note(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        g = cap.capture(model, example_inputs)
    finally:
        for m, training in modes.items():  # each module's own flag, as it was
            m.training = training
    return g, train_note


def compile_graph(g: Graph, example_inputs: Any, *, spec: WaferSpec | str | None = "wse2",
                  mode: str = "auto", strict: bool = False, max_side: int | None = None,
                  reserve: list[RectLike] | None = None,
                  pin: dict[str, RectLike] | None = None,
                  placer_config: FloorplanConfig | None = None,
                  defects: DefectsLike | None = None, systems: int = 1, note: str = "",
                  t0: float | None = None, module: torch.nn.Module | None = None,
                  density: Density | dict[str, float] | None = None) -> CompiledModel:
    """The second half of `compile`: lower, plan, place and route a captured graph (which
    it edits in place). Arguments as `compile`'s; ``note`` joins the report's notes
    (`capture_model`'s train-mode note), ``t0`` is when compiling began (the report's
    ``compile_seconds`` count from it), ``module`` the model for `generate` (None when
    the graph came from a cache and the model was never built)."""
    t0 = time.perf_counter() if t0 is None else t0
    spec = get_spec(spec)
    remap = resolve_remap(spec, defects)
    stated = Density.of(density)
    check_density_mode(stated, mode)
    density_note = annotate_density(g, stated)
    prog = lower_graph(g, spec, mode=mode, strict=strict, max_side=max_side, t0=t0,
                       reserve=reserve, pin=pin, placer_config=placer_config)
    extra = tuple(n for n in (note, density_note) if n)
    if extra:
        prog = dataclasses.replace(prog, notes=prog.notes + extra)
    return CompiledModel(prog, example_inputs, remap, systems=systems, module=module)


def _train_mode_note(model: torch.nn.Module) -> str:
    """What compiling a model in train mode changes, as a report note ('' in eval mode).

    `compile` captures the model for inference (as ``model.eval()``): dropout off, batch
    norms on their running statistics. When a module of the model behaves differently in
    train mode that changes its outputs, so it is said in a warning as well as the note;
    training runs through ``torch.compile(model, backend="waferscale")``."""
    if not model.training:
        return ""
    differs = []
    for name, m in model.named_modules():
        p = getattr(m, "p", 0.0) if isinstance(m, torch.nn.modules.dropout._DropoutNd) else max(
            [v for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)],
            default=0.0)
        if m.training and (p > 0 or isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            differs.append(name or type(m).__name__)
    if not differs:
        return ("the model is in train mode; it was compiled as in eval mode, which changes "
                "nothing here (no dropout with p > 0, no batch norm)")
    more = f" and {len(differs) - 3} more" if len(differs) > 3 else ""
    note = (f"the model is in train mode but was compiled for inference, as model.eval(): "
            f"{', '.join(differs[:3])}{more} behave as in eval mode (no dropout, batch norms "
            f"on running statistics), so outputs equal model.eval()'s, not model.train()'s; "
            f"call model.eval() before compiling to silence this, or train with "
            f"torch.compile(model, backend='waferscale')")
    level, frame = 1, sys._getframe(0)   # point the warning at the user's call
    while frame is not None and frame.f_globals.get("__name__", "").startswith("waferscale"):
        frame, level = frame.f_back, level + 1
    warnings.warn(note, UserWarning, stacklevel=level)
    return note


__all__ = ["CompiledModel", "MODES", "PLACEMENT_KEYS", "capture_model", "compile",
           "compile_graph", "lower_graph"]
