"""Planning for weight-streaming mode: every kernel on the whole wafer, weights from MemoryX.

In weight streaming the wafer runs one layer at a time: the layer's weights arrive from
MemoryX over the system I/O, every PE works on that layer, and the activations stay on
the wafer for the next layer (and, in training, for the backward pass). So each
on-wafer stage is sized on the whole wafer (`plan.size_stage` with the wafer as its
bounds, or ``max_side`` x ``max_side`` to keep a functional simulation small) instead of
on a share of it, and what a stage streams is read off the graph:

* **weights in**: the constants it reads (a torch.export graph's parameters) and the graph
  inputs marked ``meta['weight']`` it reads through layout ops (the parameters of a
  torch.compile training graph, and in its backward the weights saved by the forward);
* **gradients out**: the graph outputs it produces that are marked ``meta['param_grad']``
  (a backward graph's weight gradients, summed by SwarmX and applied by MemoryX);
* **activations kept**: the forward outputs marked ``meta['saved']`` (what the backward
  reads), which must stay on the wafer or be offloaded to MemoryX.

`runtime.weight_streaming` turns a `StreamPlan` into a timeline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from waferscale.compiler.plan import Plan, moves_of, on_wafer, size_stage, with_moves
from waferscale.fabric.dtypes import BYTES
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Ref
from waferscale.kernels.family import is_layout
from waferscale.kernels.registry import family


@dataclass(frozen=True)
class StreamStage:
    """One stage as weight streaming runs it (bytes per sample batch of the graph)."""

    name: str
    kind: str
    layer: str
    compute_cycles: float
    weight_bytes: int
    grad_bytes: int
    on_wafer: bool


@dataclass(frozen=True)
class StreamPlan:
    """The streaming view of one graph: stages in order and what stays on the wafer."""

    stages: tuple[StreamStage, ...]
    saved_bytes: int
    working_bytes: int
    wafer_sram_bytes: int
    #: ``saved_bytes`` by the layer that produced each kept activation (`_layer`)
    saved_by_layer: tuple[tuple[str, int], ...] = ()
    #: per layer, the activations it reads from before it (`_layer_inputs`): what a
    #: recomputing backward keeps instead of the layer's ``saved_by_layer``
    layer_inputs: tuple[tuple[str, int], ...] = ()

    @property
    def weight_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.stages)

    @property
    def grad_bytes(self) -> int:
        return sum(s.grad_bytes for s in self.stages)


def _origin(g: Graph, name: str) -> str:
    """The node a value comes from through layout ops (a transpose of a weight is the
    weight, laid out for the kernel when it streams in)."""
    seen = 0
    while seen < 1000:
        node = g.nodes[name]
        if node.op != "call" or not is_layout(node):
            return name
        refs = [i for i in node.inputs if g.nodes[i].op != "const"]
        if len(refs) != 1:
            return name
        name = refs[0]
        seen += 1
    return name


def _streamed_inputs(g: Graph, nodes: tuple[str, ...], dtype: str) -> int:
    """Bytes of the weight inputs a stage reads (each weight once, in the stage's dtype)."""
    members, seen, total = set(nodes), set(), 0
    for n in nodes:
        for i in g.nodes[n].inputs:
            if i in members:
                continue
            src = g.nodes[_origin(g, i)]
            if src.op == "input" and src.meta.get("weight") and src.name not in seen:
                seen.add(src.name)
                total += int(src.meta.get("numel", 0)) * BYTES[dtype]
    return total


def _layer(g: Graph, nodes: tuple[str, ...]) -> str:
    """The model's layer a stage belongs to (``meta['module']``: the innermost module path
    the tracer recorded; in a backward graph, the forward op's), or ``""`` when no node
    has one."""
    for n in nodes:
        path = g.nodes[n].meta.get("module") or ""
        parts = path.split(".")
        for i, part in enumerate(parts):
            if part in ("layers", "h", "blocks") and i + 1 < len(parts) \
                    and parts[i + 1].isdigit():
                return f"layer {parts[i + 1]}"
        if path:
            return parts[-1]
    return ""


def _fill_layer_gaps(rows: list[StreamStage]) -> list[StreamStage]:
    """Unlabelled stages between two stages of one layer belong to it: ops the tracer
    records no module for (a backward's gradient sums of the residual) run inside the
    layer they sit in."""
    out = list(rows)
    i = 0
    while i < len(out):
        if out[i].layer:
            i += 1
            continue
        j = i
        while j < len(out) and not out[j].layer:
            j += 1
        if 0 < i and j < len(out) and out[i - 1].layer == out[j].layer:
            out[i:j] = [replace(s, layer=out[j].layer) for s in out[i:j]]
        i = j
    return out


def replicate_layers(sp: StreamPlan, n_layers: int) -> StreamPlan | None:
    """The plan of an ``n_layers`` model from the plan of its first three layers.

    A stack of identical layers streams the same stages for every layer (same kernels,
    shapes, weights and gradients), so layer 1 of three, a middle layer with a layer on
    each side, stands for layers 1..n-2; the third layer is the last one. Stages keep
    their order: a backward plan, which meets the layers last first, gets the copies in
    that order too. None when the plan does not hold exactly three labelled layers, each
    in one contiguous run (the caller then traces the whole model).
    """
    labels = [s.layer for s in sp.stages]
    runs: dict[str, tuple[int, int]] = {}
    for i, label in enumerate(labels):
        if label in runs and runs[label][1] != i:
            if label.startswith("layer "):
                return None
            continue
        lo = runs[label][0] if label in runs else i
        runs[label] = (lo, i + 1)
    if sorted(k for k in runs if k.startswith("layer ")) != ["layer 0", "layer 1", "layer 2"]:
        return None
    lo, hi = runs["layer 1"]
    middle = sp.stages[lo:hi]
    forward = runs["layer 0"][0] < lo
    order = range(1, n_layers - 1) if forward else range(n_layers - 2, 0, -1)
    copies = tuple(replace(s, name=s.name if k == 1 else f"{s.name}_l{k}", layer=f"layer {k}")
                   for k in order for s in middle)
    last = f"layer {n_layers - 1}"
    stages = tuple(replace(s, layer=last) if s.layer == "layer 2" else s
                   for s in sp.stages[:lo]) + copies + tuple(
        replace(s, layer=last) if s.layer == "layer 2" else s for s in sp.stages[hi:])
    def grown(per_layer: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
        by_layer = dict(per_layer)
        out = [(last if k == "layer 2" else k, v) for k, v in per_layer]
        if "layer 1" in by_layer:
            out += [(f"layer {k}", by_layer["layer 1"]) for k in range(2, n_layers - 1)]
        return tuple(out)

    extra = (n_layers - 3) * dict(sp.saved_by_layer).get("layer 1", 0)
    return replace(sp, stages=stages, saved_bytes=sp.saved_bytes + extra,
                   saved_by_layer=grown(sp.saved_by_layer),
                   layer_inputs=grown(sp.layer_inputs))


def _layer_inputs(g: Graph) -> dict[str, int]:
    """Bytes of the activations each model layer reads from outside itself: the hidden
    state the layer before hands it, which is all a recomputing backward must keep to run
    the layer's forward again. Values several layers read (rotary tables, masks) are kept
    once whatever the policy, so they are not a layer's; weights and constants stream or
    stay anyway."""
    readers: dict[str, set[str]] = {}
    for n in g.nodes.values():
        label = _layer(g, (n.name,))
        if n.op != "call" or not label.startswith("layer "):
            continue
        for i in n.inputs:
            src = g.nodes[_origin(g, i)]
            if src.op == "const" or src.meta.get("weight") or \
                    _layer(g, (src.name,)) == label:
                continue
            readers.setdefault(src.name, set()).add(label)
    out: dict[str, int] = {}
    for name, labels in readers.items():
        if len(labels) == 1:
            label = next(iter(labels))
            out[label] = out.get(label, 0) + int(g.nodes[name].meta.get("out_bytes", 0))
    return out


def plan_streaming(g: Graph, p: Plan, spec: WaferSpec, max_side: int | None = None
                   ) -> tuple[Plan, StreamPlan]:
    """Every on-wafer stage sized on the whole wafer, and what each one streams."""
    bounds = (spec.rows, spec.cols)
    moves = moves_of(g)
    sized = {s.name: with_moves(spec, size_stage(spec, s, float(spec.pes), max_side, bounds),
                                moves.get(s.name, []))
             for s in on_wafer(p.stages)}
    bad = [f"{s.name} ({s.kind}) on the whole wafer: {s.why_not}" for s in sized.values()
           if not s.fits]
    wplan = p.with_stages(sized, bad)
    grads: dict[str, int] = {}
    for o in g.outputs:
        if isinstance(o, Ref) and g.nodes[o.name].meta.get("param_grad"):
            node = g.nodes[o.name]
            home = node.meta.get("stage")
            if home:
                grads[home] = grads.get(home, 0) + int(node.meta.get("numel", 0)) * BYTES[
                    wplan.stage(home).dtype]
    rows = []
    for st in wplan.stages:
        wafer = family(st.kind).on_wafer
        rows.append(StreamStage(
            st.name, st.kind, _layer(g, st.nodes),
            (st.cost_cycles + st.move_cycles) if wafer else st.cost_cycles,
            st.weight_bytes + _streamed_inputs(g, st.nodes, st.dtype) if wafer else 0,
            grads.get(st.name, 0), wafer))
    rows = _fill_layer_gaps(rows)
    saved: dict[str, int] = {}
    for n in g.nodes.values():
        if n.meta.get("saved"):
            label = _layer(g, (n.name,))
            saved[label] = saved.get(label, 0) + int(n.meta.get("out_bytes", 0))
    working = max((s.sram_per_pe * s.pes for s in on_wafer(wplan.stages)), default=0)
    return wplan, StreamPlan(tuple(rows), sum(saved.values()), int(working),
                             spec.pes * spec.sram_bytes, tuple(saved.items()),
                             tuple(_layer_inputs(g).items()))


__all__ = ["StreamPlan", "StreamStage", "plan_streaming", "replicate_layers"]
