"""The ``waferscale`` backend of ``torch.compile``.

torch.compile hands a backend torch-level graphs; ``aot_autograd`` turns them into core-ATen
forward (and, for training, backward) graphs, which reach ``fw_compiler``/``bw_compiler``
here and go through the same lowering as ``waferscale.compile``. Graph breaks (e.g.
data-dependent control flow) are handled by dynamo: the pieces it can capture run on the
wafer, the rest in eager PyTorch. Each compiled piece is recorded in ``COMPILED`` so its
report can be read.

Nothing the backend meets crashes the user's program, and nothing runs elsewhere
unsaid. A graph that ends at a dynamo graph break, one the backend cannot compile, or
one whose run fails warns once (`GraphBreakWarning`, naming the op or error and the
user's source line) and runs in eager PyTorch. `summary()` says, per graph, what ran on
the wafer (the stages' kinds), what ran on the host and why (fallback ops with their
source lines), the graph breaks, and the graphs that ran eagerly with the reason;
`print_summary()` prints it.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from typing import Any, TextIO

import torch
from torch._functorch.aot_autograd import make_boxed_func
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

from waferscale.compiler.capture import fold_constants, from_fx
from waferscale.hardware.spec import get_spec
from waferscale.ir import eliminate_dead
from waferscale.kernels.registry import family

#: Reports of the graphs compiled by the backend, most recent last.
COMPILED: list[Any] = []
#: One record per graph the backend was handed, most recent last (`summary`).
_GRAPHS: list[dict[str, Any]] = []


class GraphBreakWarning(UserWarning):
    """Part of a ``torch.compile``-d program runs in eager PyTorch, not on the wafer: a
    dynamo graph break, or a graph the backend could not compile or run."""
#: The backend's settings: ``spec``, ``max_side`` and ``mode`` (``api.MODES``). Per call,
#: ``torch.compile(model, backend="waferscale", options={...})`` overrides them.
_OPTIONS: dict[str, Any] = {"spec": "wse2", "max_side": None, "mode": "auto", "systems": 1,
                            "on_error": "eager"}
#: What a graph the backend cannot compile does: run eagerly with a warning (a user's
#: program never crashes on it), or raise (estimates, where an eager graph would be
#: silently missing from the figures).
ON_ERROR = ("eager", "raise")
#: Op names that only relabel or lay out a value: a weight seen through them is a weight.
_WEIGHT_VIEWS = {"t", "view", "_unsafe_view", "reshape", "transpose", "permute", "_to_copy",
                 "clone", "detach", "alias", "expand", "unsqueeze", "squeeze"}
#: Forward graph (its aot metadata's id) -> what its backward graph must know of the values
#: it receives from the forward (under the forward's names): which are weights
#: (``"weights"``) and which are attention masks the forward found causal (``"causal"``).
_FORWARD_FACTS: dict[int, dict[str, set[str]]] = {}


def configure(spec: str = "wse2", max_side: int | None = None, mode: str = "auto") -> None:
    """Which wafer and mode the backend compiles for by default."""
    _options({"spec": spec, "max_side": max_side, "mode": mode})
    _OPTIONS.update(spec=spec, max_side=max_side, mode=mode)


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults with ``options`` applied, checked (a typed error names a bad key)."""
    from waferscale.api import MODES
    from waferscale.compiler.errors import CompileError

    opts = {**_OPTIONS, **(options or {})}
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise CompileError(f"backend options {unknown}: known options are "
                           f"{sorted(_OPTIONS)}")
    if opts["on_error"] not in ON_ERROR:
        raise CompileError(f"backend option on_error={opts['on_error']!r}: use one of "
                           f"{', '.join(ON_ERROR)}")
    if opts["mode"] not in MODES:
        raise CompileError(f"backend option mode={opts['mode']!r}: use one of "
                           f"{', '.join(MODES)}")
    return opts


def _short(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def _mark_weights(gm: torch.fx.GraphModule, g: Any, params: list[bool], backward: bool,
                  training: bool) -> None:
    """Tell the weight-streaming planner which inputs of an aot graph are weights and
    which outputs are weight gradients (`compiler.streaming`).

    Forward graph: its first inputs are dynamo's, in order, so ``params`` marks them; the
    values computed from weights alone through layout ops are weights too, and are
    remembered for the backward graph, which receives the saved ones under the same names.
    Its outputs past the user's (``num_forward_returns``) are saved for the backward:
    activations, unless they are weights. Backward graph: output i is the gradient of the
    forward's input i."""
    ctx = torch._guards.TracingContext.try_get()
    meta = getattr(ctx, "fw_metadata", None)
    places = [n for n in gm.graph.nodes if n.op == "placeholder"]
    key = id(meta)
    if not backward:
        weights = {n.name for n, p in zip(places, params, strict=False) if p}
        for n in gm.graph.nodes:
            if n.op == "call_function" and _short(n.target) in _WEIGHT_VIEWS and all(
                    a.name in weights for a in n.all_input_nodes) and n.all_input_nodes:
                weights.add(n.name)
        if training:
            _FORWARD_FACTS[key] = {"weights": weights, "causal": set()}
        outs = list(gm.graph.output_node().args[0])
        user = int(getattr(meta, "num_forward_returns", len(outs)))
        for o in outs[user:]:
            if isinstance(o, torch.fx.Node) and o.name not in weights and o.name in g.nodes:
                g.nodes[o.name].meta["saved"] = True
    else:
        facts = _FORWARD_FACTS.pop(key, {})
        weights = facts.get("weights", set())
        for n in places:
            if n.name in facts.get("causal", set()) and n.name in g.nodes:
                g.nodes[n.name].meta["causal_mask"] = True
        outs = list(gm.graph.output_node().args[0])
        for o, p in zip(outs, params, strict=False):
            if p and isinstance(o, torch.fx.Node) and o.name in g.nodes:
                g.nodes[o.name].meta["param_grad"] = True
    for n in places:
        if n.name in weights and n.name in g.nodes:
            g.nodes[n.name].meta["weight"] = True


def _remember_causal_masks(g: Any) -> None:
    """The attention masks a forward graph's kernels accepted as causal (folded constants
    checked by value): its backward receives them as plain inputs, without values."""
    ctx = torch._guards.TracingContext.try_get()
    facts = _FORWARD_FACTS.get(id(getattr(ctx, "fw_metadata", None)))
    if facts is None:
        return
    from waferscale.kernels.registry import FAMILIES

    for node in g.calls():
        mask = node.kwargs.get("attn_mask")
        fam = FAMILIES.get(node.meta.get("kind", ""))
        # an attention op its kernel took (not left to the host): its mask is causal
        if mask is not None and fam is not None and fam.on_wafer:
            facts["causal"].add(mask.name)


def _no_values(x: Any) -> bool:
    """A tensor without values: on the meta device, or a fake tensor."""
    return isinstance(x, torch.Tensor) and (x.device.type == "meta"
                                            or isinstance(x, FakeTensor))




def _graph_break() -> dict[str, str] | None:
    """The dynamo graph break the graph being compiled ends at, if any: its reason (the
    op or construct dynamo could not trace) and the user's source line. Read from the
    translator dynamo is running; None outside dynamo or at a plain return."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator
        tx = InstructionTranslator.current_tx()
        why = tx.output.compile_subgraph_reason
    except Exception:  # not under dynamo (a direct call), or another torch's internals
        return None
    if why is None or not getattr(why, "graph_break", False):
        return None
    lines = [ln.strip() for ln in str(why.reason).splitlines() if ln.strip()]
    explain = next((ln.split(":", 1)[1].strip() for ln in lines
                    if ln.startswith("Explanation:")), "")
    stack = list(getattr(why, "user_stack", None) or [])
    top = stack[-1] if stack else None
    return {"reason": lines[0] if lines else "graph break", "detail": explain.rstrip("."),
            "site": f"{top.filename}:{top.lineno}" if top else "",
            "code": (top.line or "").strip() if top else ""}


def _source(gm: torch.fx.GraphModule) -> str:
    """``file:line`` of the user's code behind the graph's first op (dynamo records each
    node's stack), "" if none is recorded."""
    for n in gm.graph.nodes:
        trace = n.meta.get("stack_trace") if n.op == "call_function" else None
        frames = [ln.strip() for ln in (trace or "").splitlines()
                  if ln.strip().startswith('File "')]
        if frames:
            file, _, rest = frames[-1][len('File "'):].partition('", line ')
            return f"{file}:{rest.split(',')[0]}"
    return ""


def _short_site(site: str) -> str:
    """``file:line`` with the file's directory dropped, for messages."""
    return site.rsplit("/", 1)[-1] if site else "an unknown line"


#: What `_warn` has said (file, line, text): each warning once, as Python's default filter
#: would if the warning were raised in the user's code.
_WARNED: dict[Any, Any] = {}


def _warn(message: str, site: str) -> None:
    """A `GraphBreakWarning` attributed to the user's line ``site`` (``file:line``), not
    to the backend or torch's internals."""
    file, _, line = site.rpartition(":")
    warnings.warn_explicit(message, GraphBreakWarning, file or "<torch.compile>",
                           int(line) if line.isdigit() else 0, registry=_WARNED)


def _compiler(opts: dict[str, Any], params: list[bool], *, backward: bool, training: bool
              ) -> Any:
    """The forward (or backward) compiler aot_autograd calls for one dynamo graph: a
    graph it cannot compile, or whose run fails, runs eagerly with a warning."""

    def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        record: dict[str, Any] = {"graph": len(_GRAPHS),
                                  "kind": "backward" if backward else "forward",
                                  "source": _source(gm), "ran_on": "eager",
                                  "graph_break": None if backward else _graph_break()}
        _GRAPHS.append(record)
        brk = record["graph_break"]
        if brk is not None:
            _warn(f"waferscale: graph break at {_short_site(brk['site'])}"
                  f"{' (' + brk['code'] + ')' if brk['code'] else ''}: {brk['reason']}"
                  f"{': ' + brk['detail'] if brk['detail'] else ''}. That runs in eager "
                  f"PyTorch; the graphs before and after it run on the wafer "
                  f"(waferscale.backend.summary())", brk["site"])
        try:
            return _compile(gm, example_inputs, record)
        except Exception as exc:  # any failure: eager, said; never the user's crash
            if opts["on_error"] == "raise":
                raise
            record["eager_reason"] = f"compile failed: {type(exc).__name__}: {exc}"
            _warn(f"waferscale: a {record['kind']} graph (from "
                  f"{_short_site(record['source'])}) runs in eager PyTorch: "
                  f"{type(exc).__name__}: {exc}", record["source"])
            return gm.forward

    def _compile(gm: torch.fx.GraphModule, example_inputs: list[Any],
                 record: dict[str, Any]) -> Any:
        from waferscale.api import CompiledModel, lower_graph

        g = from_fx(gm)
        _mark_weights(gm, g, params, backward, training)
        # aot_autograd calls the compiler with its fake mode active: folding under it would
        # store FakeTensors as constants (an arange-built causal mask), which have no
        # values when the program runs, and reading a constant's values (is this mask
        # causal?) fails
        with unset_fake_temporarily():
            fold_constants(g)
            eliminate_dead(g)
            prog = lower_graph(g, get_spec(opts["spec"]), max_side=opts["max_side"],
                               mode=opts["mode"])
        if not backward and training:
            _remember_causal_masks(g)
        compiled = CompiledModel(prog, tuple(example_inputs), systems=opts["systems"])
        COMPILED.append(compiled)
        on_wafer = [s.kind for s in prog.stages if family(s.kind).on_wafer]
        record.update(mode=prog.mode, wafer_stages=dict(Counter(on_wafer)),
                      host_ops=[{k: f[k] for k in ("op", "count", "sources", "reason")
                                 if k in f} for f in prog.fallback_ops()])
        meta = any(isinstance(x, torch.Tensor) and x.device.type == "meta"
                   for x in example_inputs)
        if prog.mode not in ("pipelined", "weight_streaming") or meta:
            record["eager_reason"] = (f"mode {prog.mode!r}: planned only, the report has the "
                                      f"figures" if not meta else "meta inputs: shapes only")
            return gm.forward   # not run here: eager (or meta), the report has the plan
        # a program of host ops only still runs (on the host, through the simulator)
        record["ran_on"] = "wafer" if on_wafer else "host"

        def run(*args: Any) -> Any:
            if any(_no_values(a) for a in args):   # a shapes-only trace (estimates)
                return gm.forward(*args)
            if record["ran_on"] != "eager":
                try:
                    outs = compiled(*args)
                    return outs if isinstance(outs, (list, tuple)) else (outs,)
                except Exception as exc:  # the wafer run failed: eager from now on, said
                    record["ran_on"] = "eager"
                    record["eager_reason"] = f"run failed: {type(exc).__name__}: {exc}"
                    _warn(f"waferscale: a {record['kind']} graph (from "
                          f"{_short_site(record['source'])}) failed on the wafer and runs "
                          f"in eager PyTorch from now on: {type(exc).__name__}: {exc}",
                          record["source"])
            return gm.forward(*args)

        # aot_autograd's calling convention: one list of arguments (a plain function
        # works too, with a UserWarning printed into the user's program every run)
        return make_boxed_func(run)

    return compile_graph


def decompositions(training: bool) -> dict[Any, Any]:
    """Core ATen; for graphs that will be differentiated, less the decomposition of
    ``_scaled_dot_product_flash_attention_for_cpu``. In torch 2.13 that decomposition
    returns the attention *probabilities* where the op returns the log-sum-exp, and the
    fused CPU backward reads that output as the log-sum-exp: every gradient through
    attention came out wrong (0.85 max error on a 1-layer GPT-NeoX whose largest gradient
    is 0.21; torch's own comment says inductor must exclude it). Kept whole, the op runs in
    PyTorch on the host (a reported fallback). Inference never reads that output, so there
    the decomposition stays and attention runs on the wafer's GEMM and softmax kernels."""
    table = torch._decomp.core_aten_decompositions()
    if training:
        table.pop(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default, None)
    return table


def backend(gm: torch.fx.GraphModule, example_inputs: list[Any],
            options: dict[str, Any] | None = None) -> Any:
    """What torch.compile calls (the package's ``torch_dynamo_backends`` entry point names
    it, so ``backend="waferscale"`` works without importing this module). Dynamo compiles
    a frame again when grad mode changes, so the mode here is the caller's. ``options``:
    ``spec``, ``max_side``, ``mode``, ``systems`` (the reports' figures for N systems)
    (``torch.compile(..., options=...)``)."""
    from torch._dynamo.backends.common import aot_autograd

    opts = _options(options)
    params = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            arg = n.meta.get("grapharg")
            params.append(isinstance(getattr(arg, "example", None), torch.nn.Parameter))
    training = torch.is_grad_enabled()
    return aot_autograd(
        fw_compiler=_compiler(opts, params, backward=False, training=training),
        bw_compiler=_compiler(opts, params, backward=True, training=training),
        decompositions=decompositions(training))(gm, example_inputs)


def summary() -> dict[str, Any]:
    """What ``torch.compile(..., backend="waferscale")`` did since import (or `clear`):
    per graph (``graphs``) whether it ran on the wafer or in eager PyTorch and why, its
    wafer stages by kind, its host ops with their source lines and reasons, and the graph
    break it ends at; then the totals and every graph break dynamo counted (some break
    before any op and never reach the backend, so only dynamo's counter has them). Plain
    JSON data."""
    from torch._dynamo.utils import counters

    graphs = [dict(r) for r in _GRAPHS]
    breaks = [dict(r["graph_break"], graph=r["graph"]) for r in graphs if r["graph_break"]]
    host: Counter[str] = Counter()
    for r in graphs:
        host.update({f["op"]: f.get("count", 1) for f in r.get("host_ops", [])})
    return {
        "graphs": graphs,
        "on_wafer": sum(r["ran_on"] == "wafer" for r in graphs),
        "host_only": sum(r["ran_on"] == "host" for r in graphs),
        "eager": [{"graph": r["graph"], "kind": r["kind"], "source": r["source"],
                   "reason": r.get("eager_reason", "")} for r in graphs
                  if r["ran_on"] == "eager"],
        "host_ops": dict(host.most_common()),
        "graph_breaks": breaks,
        "dynamo_graph_breaks": {str(k).splitlines()[0]: v
                                for k, v in counters["graph_break"].items()},
    }


def print_summary(file: TextIO | None = None) -> None:
    """`summary` as text: one line per graph, then the graph breaks and host ops."""
    s = summary()
    out = file or sys.stdout
    print(f"waferscale backend: {len(s['graphs'])} graphs, {s['on_wafer']} ran on the wafer, "
          f"{s['host_only']} had no wafer kernel (host ops only), {len(s['eager'])} ran in "
          f"eager PyTorch", file=out)
    for r in s["graphs"]:
        stages = ", ".join(f"{k} x{v}" for k, v in r.get("wafer_stages", {}).items())
        line = f"  graph {r['graph']} ({r['kind']}, {_short_site(r['source'])}): "
        if r["ran_on"] == "wafer":
            line += f"wafer [{stages}]"
        elif r["ran_on"] == "host":
            line += "host (no op of it has a wafer kernel)"
        else:
            line += f"eager: {r.get('eager_reason', '')}"
        host = ", ".join(f"{f['op']} ({f.get('reason', '')}; {', '.join(f.get('sources', []))})"
                         for f in r.get("host_ops", []))
        print(line + (f"; on the host: {host}" if host else ""), file=out)
    for b in s["graph_breaks"]:
        print(f"  graph break after graph {b['graph']} at {_short_site(b['site'])}: "
              f"{b['reason']}"
              f"{': ' + b['detail'] if b['detail'] else ''}", file=out)
    for reason, n in s["dynamo_graph_breaks"].items():
        print(f"  dynamo counted {n} x: {reason}", file=out)


def clear() -> None:
    """Forget the graphs `summary` reports (``COMPILED`` too) and dynamo's break counts."""
    from torch._dynamo.utils import counters

    _GRAPHS.clear()
    COMPILED.clear()
    counters["graph_break"].clear()


def register() -> None:
    """Register ``backend="waferscale"`` with torch.compile (idempotent): for a source tree
    used without installing (no entry point); an installed package is found lazily."""
    from torch._dynamo import list_backends
    from torch._dynamo.backends.registry import register_backend

    if "waferscale" in list_backends(exclude_tags=()):
        return
    register_backend(name="waferscale")(backend)


register()

__all__ = ["COMPILED", "GraphBreakWarning", "backend", "clear", "configure", "print_summary",
           "register", "summary"]
