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

from dataclasses import dataclass

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
    the exporter recorded), or ``""`` when the graph has none (a backward graph)."""
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
    saved = sum(int(n.meta.get("out_bytes", 0)) for n in g.nodes.values()
                if n.meta.get("saved"))
    working = max((s.sram_per_pe * s.pes for s in on_wafer(wplan.stages)), default=0)
    return wplan, StreamPlan(tuple(rows), saved, int(working), spec.pes * spec.sram_bytes)


__all__ = ["StreamPlan", "StreamStage", "plan_streaming"]
