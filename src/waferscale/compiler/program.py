"""The compiled program: graph + stages + placement + routes, serialisable as JSON.

This is what the runtime executes and what reports read. ``placement`` holds the
rectangle the floorplanner gave each stage (the kernel's own grid, ``Stage.rect``, lies
inside it); routes are the streams between a producer stage's rectangle and each
consumer's: their hop counts are the routed bundle's lengths (``compiler.place``) and their
cycles come from `timing.stream_cycles`. ``floorplan`` is the floorplanner's serialised
result (rectangles, routed bands, colours, figures) and ``figures`` the placed-vs-strip
figures, both recorded in ``dumps()``. A program is a frozen value, built once by
`api.lower_graph` from the passes' results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from waferscale import strict_json
from waferscale.compiler.lower import fallbacks
from waferscale.compiler.place import PlacedProgram, read_numel
from waferscale.compiler.plan import Plan
from waferscale.compiler.streaming import StreamPlan
from waferscale.fabric.grid import Rect
from waferscale.fabric.timing import stream_cycles
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph
from waferscale.kernels.family import Stage


@dataclass
class Route:
    """A stream of activations from one stage's rectangle to another's."""

    src: str
    dst: str
    hops: int
    wavelets_per_pe: float
    cycles: float
    color: int = -1
    lanes: int = 0
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Program:
    graph: Graph
    plan: Plan
    spec: WaferSpec
    mode: str
    placement: dict[str, Rect] = field(default_factory=dict)
    routes: tuple[Route, ...] = ()
    compile_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    floorplan: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    placed: PlacedProgram | None = None  # not serialised; for maps
    streaming: StreamPlan | None = None  # weight-streaming mode: what each stage streams

    @property
    def stages(self) -> tuple[Stage, ...]:
        return self.plan.stages

    def stage(self, name: str) -> Stage:
        return self.plan.stage(name)

    def fallback_ops(self) -> list[dict[str, Any]]:
        return fallbacks(self.graph)

    def to_json(self) -> dict[str, Any]:
        nodes = []
        for n in self.graph.nodes.values():
            meta = {k: v for k, v in n.meta.items() if isinstance(v, (int, float, str, bool,
                                                                      list, type(None)))}
            nodes.append({"name": n.name, "op": n.op, "target": n.target,
                          "inputs": n.inputs, "meta": meta})
        return {
            "spec": self.spec.name, "mode": self.mode,
            "stages": [s.to_json() for s in self.stages],
            "placement": {k: [r.row, r.col, r.rows, r.cols] for k, r in self.placement.items()},
            "routes": [r.to_json() for r in self.routes],
            "floorplan": self.floorplan, "placement_figures": self.figures,
            "nodes": nodes, "fallback_ops": self.fallback_ops(),
            "compile_seconds": self.compile_seconds, "notes": list(self.notes),
        }

    def dumps(self) -> str:
        """The program as strict JSON: a non-finite figure (an infinite period, a NaN in
        a node's meta) is null, named with what it was under ``non_finite``."""
        return strict_json.dumps(self.to_json(), indent=1)


def route(g: Graph, plan: Plan, placed: PlacedProgram | None) -> tuple[Route, ...]:
    """Streams between placed stages (input feeds and fallbacks are I/O, not routes)."""
    spec = plan.spec
    routes: list[Route] = []
    placement = placed.rects if placed is not None else {}
    routed: dict[tuple[str, str], Any] = {}
    if placed is not None:
        prob = placed.result.problem
        routed = {(prob.nets[r.net].src, prob.nets[r.net].dst): r
                  for r in placed.result.routing.routes}
    for st in plan.stages:
        dst = placement.get(st.name)
        if dst is None:
            continue
        for src_name in st.inputs:
            src = placement.get(src_name)
            if src is None:
                continue
            # what the consumer reads of the producer (after slices), as the placer
            # and the realised stage time count it, not the producer's whole output
            numel = read_numel(g, st, plan.stage(src_name), plan.stage_of)
            rows, cols = st.rect if st.pes else (dst.rows, dst.cols)
            per_pe = math.ceil(numel / max(1, rows * cols))
            net = routed.get((src_name, st.name))
            if placed is not None:  # the routed bundle's lengths (as compiler.place times it)
                d_rows, d_cols = placed.offsets.get((src_name, st.name), (0, 1))
                d_cols = max(d_cols, 1)
            else:
                d_rows, d_cols = dst.row - src.row, dst.col - src.col
            cyc = stream_cycles(spec, per_pe, d_rows, d_cols, rows, cols)
            routes.append(Route(src_name, st.name, abs(d_rows) + abs(d_cols), per_pe, cyc,
                                net.color if net else -1, net.lanes if net else 0,
                                net.kind if net else ""))
    return tuple(routes)


__all__ = ["Program", "Route", "route"]
