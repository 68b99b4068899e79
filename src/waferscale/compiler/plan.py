"""Planning: group nodes into kernel stages, pick each stage's kernel, rectangle and cost.

A *stage* is what gets its own rectangle of the wafer in pipelined execution: one kernel
node, or one fused group of pointwise ops; pointwise groups and layer norms that only
feed (or only read) one GEMM are fused into it as epilogues and prologues
(`fuse_epilogues`, `fuse_prologues`). Free layout nodes (relabel) belong to the stage
that produced their input; data-moving layout nodes (move) are charged to the bigger of
their producing and consuming stages (a slice or cat streamed over a GEMM's rectangle is
cheap; the same stream over a one-op ``neg`` stage's few PEs made it the pipeline's
bottleneck). Host fallbacks are stages without a rectangle, timed by the system I/O their
inputs and outputs cross.

Rectangle sizes: stages share the wafer in proportion to their work (FLOPs), so that the
pipeline is roughly balanced; every stage gets at least what its SRAM needs, and no more
than its problem can use (a p x p GEMM needs p <= min(m, k, n)). Within its share a GEMM
takes the fastest MeshGEMM layout (q x q groups side by side, token rows split over them
and taken in rounds when they do not fit), attention `attention.choose_layout`: each
kernel family sizes itself (`KernelFamily.size`). All cycle counts here come from the
kernels' closed form ``cost()``: the same numbers the estimate mode reports and the
fabric run must meet. These first sizes are a calibration: `compiler.place` turns them
into placement blocks, the floorplanner decides the final rectangles, and
`size_stage(..., bounds=)` sizes every kernel again inside the rectangle it was given.

Stages are frozen values: every function here returns new stages and a new `Plan`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from waferscale.errors import KernelError
from waferscale.fabric.timing import transfer_cycles
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Node
from waferscale.kernels.family import Sizing, Stage, fabric_dtype_of, is_layout, moves_data
from waferscale.kernels.registry import family

#: Share of the wafer the planner hands out (the strip placer needs slack to pack).
AREA_FRACTION = 0.6


def home_of(g: Graph, name: str, stage_of: dict[str, str]) -> str | None:
    """The stage whose output a value is (looking through layout nodes)."""
    seen = 0
    while name not in stage_of and seen < 1000:
        node = g.nodes[name]
        if node.op != "call" or not node.inputs:
            return None
        refs = [i for i in node.inputs if g.nodes[i].op != "const"]
        if not refs:
            return None
        name = refs[0]
        seen += 1
    return stage_of.get(name)


def _new_stage(g: Graph, head: str, members: list[str]) -> Stage:
    """A stage of one family from its nodes: parameters, FLOPs, resident weight bytes."""
    nodes = [g.nodes[n] for n in members]
    kind = nodes[0].meta["kind"]
    fam = family(kind)
    dtype = fabric_dtype_of(nodes[0])
    params, flops = fam.describe(g, nodes, dtype)
    return Stage(head, kind, tuple(members), dtype, params, flops,
                 fam.weight_bytes(g, nodes, dtype))


def build_stages(g: Graph) -> tuple[list[Stage], dict[str, str]]:
    """Stages in topological order and the map node -> stage for kernel and layout nodes
    (written once into ``meta['stage']``)."""
    members: dict[str, list[str]] = {}
    stage_of: dict[str, str] = {}
    for node in g.calls():
        if is_layout(node):
            continue
        head = node.meta.get("group", node.name)
        members.setdefault(head, []).append(node.name)
        stage_of[node.name] = head
    stages = {head: _new_stage(g, head, names) for head, names in members.items()}
    for head, names in members.items():
        for n in names:
            g.nodes[n].meta["flops"] = stages[head].flops / len(names)
    fuse_epilogues(g, stages, stage_of)
    fuse_prologues(g, stages, stage_of)
    for name, st in stages.items():
        stages[name] = dataclasses.replace(st, inputs=_feeds(g, st, stage_of))
    # layout nodes are charged to their producer's stage (`charge_moves` re-assigns moves)
    for node in g.calls():
        if is_layout(node):
            node.meta["stage"] = home_of(g, node.name, stage_of) if node.inputs else None
    for name, st in stage_of.items():
        g.nodes[name].meta["stage"] = st
    return list(stages.values()), stage_of


def _feeds(g: Graph, st: Stage, stage_of: dict[str, str]) -> tuple[str, ...]:
    """The stages (and ``<input>``) a stage reads from, in order of first read."""
    feeds: list[str] = []
    members = set(st.nodes)
    for n in st.nodes:
        for i in g.nodes[n].inputs:
            if i in members or g.nodes[i].op == "const":
                continue
            h = home_of(g, i, stage_of)
            if h and h != st.name and h not in feeds:
                feeds.append(h)
            if h is None and g.nodes[i].op == "input" and "<input>" not in feeds:
                feeds.append("<input>")
    return tuple(feeds)


def _direct_home(g: Graph, name: str, stage_of: dict[str, str]) -> str | None:
    """The stage whose output ``name`` is, through free layout nodes only (a view of a
    GEMM's output is its output tile as it lies on the PEs; a slice or cat moves data)."""
    seen = 0
    while name not in stage_of and seen < 1000:
        node = g.nodes[name]
        if node.op != "call" or not node.inputs or moves_data(node):
            return None
        refs = [i for i in node.inputs if g.nodes[i].op != "const"]
        if len(refs) != 1:
            return None
        name = refs[0]
        seen += 1
    return stage_of.get(name)


def _numel(g: Graph, name: str) -> int:
    n = g.nodes[name].meta.get("numel")
    return int(n) if isinstance(n, int) else -1


def _hosts(stages: dict[str, Stage], name: str | None, role: str) -> bool:
    st = stages.get(name) if name else None
    return st is not None and family(st.kind).hosts(st, role)


def _absorb(stages: dict[str, Stage], stage_of: dict[str, str], home: str, st: Stage,
            role: str, **how: int) -> bool:
    """Fuse stage ``st`` into stage ``home`` (its family decides); True when it did."""
    merged = family(stages[home].kind).absorb(stages[home], st, role, **how)
    if merged is None:
        return False
    stages[home] = merged
    for n in st.nodes:
        stage_of[n] = home
    del stages[st.name]
    return True


def fuse_epilogues(g: Graph, stages: dict[str, Stage], stage_of: dict[str, str]) -> None:
    """Fuse stages whose family `fuses_into` an epilogue (pointwise chains) into the GEMM
    whose output they read.

    Why: a GELU or a residual add after a GEMM is one more pass over the output tile the
    GEMM's PEs already hold; as a stage of its own it took a sliver of the wafer and the
    whole [tokens, 4d] tensor had to stream into it (the pipeline's bottleneck). The fused
    chain runs on the GEMM's groups after the product (timed by the GEMM family on the
    per-PE output tile), and its values are computed by the same value functions as a
    pointwise stage's. A chain is fused when at least one operand is a GEMM's whole output
    as it lies on the PEs (through views only), every tensor operand has that size and so
    has the result: the other operands (a residual stream, a second GEMM's output) then
    arrive tile for tile in the GEMM's layout, which makes them inbound streams of the
    GEMM's stage (``streamed``, with SRAM for their tiles). A slice or a broadcast would
    need data movement, so those chains stay stages. Of several GEMMs read, the chain
    joins the last one in pipeline order (its other operands are ready by then)."""
    order = {name: i for i, name in enumerate(stages)}
    for name in list(stages):
        st = stages[name]
        if family(st.kind).fuses_into != "epilogue":
            continue
        members = set(st.nodes)
        homes: list[str | None] = []
        sizes: set[int] = set()
        for n in st.nodes:
            for i in g.nodes[n].inputs:
                if i in members or g.nodes[i].op == "const":
                    continue
                homes.append(_direct_home(g, i, stage_of))
                sizes.add(_numel(g, i))
        hosts = [h for h in homes if _hosts(stages, h, "epilogue")]
        if hosts:
            home = max(hosts, key=order.__getitem__)  # type: ignore[arg-type]
            full = _numel(g, stages[home].nodes[0])
            if full <= 0 or sizes != {full} or _numel(g, st.nodes[-1]) != full:
                continue
            _absorb(stages, stage_of, home, st, "epilogue",
                    streamed=sum(h != home for h in homes))
        else:
            home = _sole_source(g, st, stages, stage_of)
            if home is not None:
                _absorb(stages, stage_of, home, st, "epilogue",
                        numel=max(sizes | {_numel(g, st.nodes[-1])}))


def _reader(g: Graph, name: str, users: dict[str, list[str]],
            stages: dict[str, Stage], stage_of: dict[str, str]) -> str | None:
    """The stage that is the only wafer reader of a layer norm's output, as the operand a
    prologue produces (through getitem and free views), or None. Graph outputs may read it
    too (a training graph saves the normalised rows, mean and rstd for its backward): the
    host stage holds them after the prologue and sends them out like the LN stage would."""
    todo, found = [name], set()
    while todo:
        n = todo.pop()
        for u in users[n]:
            if u == "<output>":
                continue
            node = g.nodes[u] if u in g.nodes else None
            if node is None:
                return None
            if node.short == "getitem" and n == name:
                if node.args[1] != 0:
                    if any(x != "<output>" for x in users[u]):
                        return None   # mean or rstd is read on the wafer
                    continue
                todo.append(u)
            elif is_layout(node) and not moves_data(node):
                todo.append(u)
            elif _hosts(stages, stage_of.get(u), "prologue"):
                gst = stages[stage_of[u]]
                if not family(gst.kind).reads_as_input(gst, node, n):
                    return None
                found.add(gst.name)
            else:
                return None
    return found.pop() if len(found) == 1 else None


def fuse_prologues(g: Graph, stages: dict[str, Stage], stage_of: dict[str, str]) -> None:
    """Fuse a stage whose family `fuses_into` a prologue (a layer norm) into the GEMM that
    alone reads it.

    Why: in a transformer every layer norm feeds one projection (QKV, the MLP's first
    layer, the LM head). As a stage of its own it had a sliver of the wafer and the
    [tokens, hidden] stream to swallow through it (GenSLM-25M at seq 1,024: the slowest
    stages, ~270k cycles, against ~50k for the GEMMs). On the GEMM's grid the A operand
    already lies as [rows, hidden] over the q x q PEs of each group: the row statistics
    are a chain allreduce along the grid rows and the normalisation a local pass, which is
    exactly `norm.cost` on a q x q rectangle of the group's token rows (charged per round
    by the GEMM family, the same in plan and runtime)."""
    users = g.users()
    for name in list(stages):
        st = stages[name]
        if family(st.kind).fuses_into != "prologue":
            continue
        home = _reader(g, st.nodes[0], users, stages, stage_of)
        if home is not None:
            _absorb(stages, stage_of, home, st, "prologue")


def _sole_source(g: Graph, st: Stage, stages: dict[str, Stage],
                 stage_of: dict[str, str]) -> str | None:
    """The epilogue host every tensor operand of a chain comes from through layout ops
    (slices, cats, permutes: moves charged on the host's rectangle), if there is one.

    Why: GPT-NeoX's rotary embedding is six small chains over slices of the QKV product
    (``q_rot * cos + rotate_half(q_rot) * sin``); as stages of their own each took a
    sliver of the wafer and a stream. Their data already lies on the QKV GEMM's PEs, so
    they run there, over the slice's elements spread on the GEMM's PEs (``numel``)."""
    members = set(st.nodes)
    found: set[str | None] = set()
    for n in st.nodes:
        for i in g.nodes[n].inputs:
            if i in members or g.nodes[i].op == "const":
                continue
            found.add(home_of(g, i, stage_of))
    if len(found) != 1:
        return None
    home = found.pop()
    return home if _hosts(stages, home, "epilogue") else None


def size_stage(spec: WaferSpec, st: Stage, area: float, max_side: int | None,
               bounds: tuple[int, int] | None = None) -> Stage:
    """The stage sized by its family: rectangle, algorithm, closed-form cycles, SRAM per PE.

    ``bounds`` = (rows, cols) of a placed rectangle the kernel must fit inside (its shape
    is then chosen within it); without it the kernel takes a shape of about ``area`` PEs.
    A kernel that cannot run there comes back with ``fits = False`` and the reason.
    """
    side_cap = min(spec.rows, spec.cols, max_side or 10 ** 9)
    if bounds is not None:
        if max_side:
            bounds = (min(bounds[0], max_side), min(bounds[1], max_side))
        side_cap = min(side_cap, max(bounds))
        area = float(bounds[0] * bounds[1])
    try:
        params, sz = family(st.kind).size(spec, st, area, side_cap, bounds)
    except KernelError as exc:
        rect = st.rect if st.rect != (0, 0) else (1, 1)
        return dataclasses.replace(st, sizing=dataclasses.replace(
            st.sizing, rect=rect, fits=False, why_not=str(exc)))
    if sz.sram_per_pe > spec.sram_bytes:
        sz = dataclasses.replace(sz, fits=False, why_not=(
            f"needs {sz.sram_per_pe} B per PE on {sz.rect[0]}x{sz.rect[1]} PEs, over the "
            f"{spec.sram_bytes} B SRAM"))
    return dataclasses.replace(st, params=params, sizing=sz)


def move_cycles(spec: WaferSpec, st: Stage, node: Node) -> float:
    """A data-moving layout op on the stage's rectangle: each PE's share of the tensor
    streams at most the rectangle's width plus height (`timing.transfer_cycles`)."""
    pes = max(1, st.pes)
    per_pe = math.ceil(node.meta.get("numel", 0) / pes)
    return float(transfer_cycles(spec, per_pe, max(1, st.rect[0] + st.rect[1] - 2)))


def consumer_stage(g: Graph, name: str, stage_of: dict[str, str],
                   users: dict[str, list[str]]) -> str | None:
    """The first kernel stage that reads a value (looking through layout nodes)."""
    todo, seen = [name], set()
    while todo:
        n = todo.pop(0)
        for u in users.get(n, []):
            if u in seen or u == "<output>":
                continue
            seen.add(u)
            if u in stage_of:
                return stage_of[u]
            todo.append(u)
    return None


def charge_moves(g: Graph, stages: list[Stage], stage_of: dict[str, str],
                 weight: dict[str, float]) -> None:
    """Charge each data-moving layout node to the heavier of its producing and consuming
    stages (``meta['stage']``): moving a tensor costs its per-PE share times the
    rectangle's span, so it belongs on the big rectangle, not on a one-op pointwise stage
    that would become the bottleneck."""
    users = g.users()
    host = {s.name for s in stages if not family(s.kind).on_wafer}
    for node in g.calls():
        if not moves_data(node):
            continue
        prod = node.meta.get("stage")
        cons = consumer_stage(g, node.name, stage_of, users)
        options = [s for s in (prod, cons) if s and s not in host]
        if options:
            node.meta["stage"] = max(options, key=lambda s: weight.get(s, 0.0))


def moves_of(g: Graph) -> dict[str, list[Node]]:
    """The data-moving layout nodes charged to each stage."""
    out: dict[str, list[Node]] = {}
    for node in g.calls():
        if moves_data(node) and node.meta.get("stage"):
            out.setdefault(node.meta["stage"], []).append(node)
    return out


def with_moves(spec: WaferSpec, st: Stage, moves: list[Node]) -> Stage:
    """The stage with the cycles of its data-moving layout ops on its current rectangle."""
    return dataclasses.replace(st, move_cycles=sum(move_cycles(spec, st, n) for n in moves))


def _work(g: Graph, st: Stage) -> float:
    """What a stage's area share follows: its FLOPs, but at least a few passes over its
    output (a pointwise op with few FLOPs still has to sweep every element)."""
    numel = g.nodes[st.nodes[-1]].meta.get("numel", 0) or 0
    return max(st.flops, 16.0 * numel, 1.0)


def on_wafer(stages: list[Stage] | tuple[Stage, ...]) -> list[Stage]:
    """The stages that get a rectangle (all but host fallbacks)."""
    return [s for s in stages if family(s.kind).on_wafer]


@dataclass(frozen=True)
class Plan:
    """The planned program: stages, their order, and what the model needs of the wafer."""

    stages: tuple[Stage, ...]
    stage_of: dict[str, str]
    spec: WaferSpec
    weight_bytes: int
    sram_needed_bytes: int
    wafer_sram_bytes: int
    why_not: tuple[str, ...]

    @property
    def pipelined_fits(self) -> bool:
        return not self.why_not

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def with_stages(self, stages: dict[str, Stage], why_not: list[str] | tuple[str, ...] = ()
                    ) -> Plan:
        """The plan with some stages replaced (by name) and more reasons it does not fit."""
        new = tuple(stages.get(s.name, s) for s in self.stages)
        return dataclasses.replace(
            self, stages=new, why_not=self.why_not + tuple(why_not),
            sram_needed_bytes=sum(s.sram_per_pe * s.pes for s in on_wafer(new)))


def plan(g: Graph, spec: WaferSpec, *, max_side: int | None = None,
         area_fraction: float = AREA_FRACTION) -> Plan:
    """Stages sized by their work share of the wafer; feasibility of pipelined mode."""
    stages, stage_of = build_stages(g)
    weight = {s.name: _work(g, s) for s in stages}
    total = sum(weight[s.name] for s in on_wafer(stages)) or 1.0
    budget = area_fraction * spec.rows * spec.cols
    stages = [size_stage(spec, st, budget * weight[st.name] / total, max_side)
              for st in stages]
    charge_moves(g, stages, stage_of, weight)
    moves = moves_of(g)
    stages = [with_moves(spec, st, moves.get(st.name, [])) for st in stages]
    for st in stages:
        for node in moves.get(st.name, []):
            node.meta["cycles"] = move_cycles(spec, st, node)
    weight_bytes = sum(s.weight_bytes for s in stages)
    placed = on_wafer(stages)
    needed = sum(s.sram_per_pe * s.pes for s in placed)
    wafer = spec.rows * spec.cols * spec.sram_bytes
    why = [f"{s.name} ({s.kind}): {s.why_not}" for s in stages if not s.fits]
    pes = sum(s.pes for s in placed)
    if pes > spec.rows * spec.cols:
        why.append(f"the stages need {pes} PEs, the wafer has {spec.rows * spec.cols}")
    if max(needed, weight_bytes) > wafer:
        why.insert(0, f"needs {max(needed, weight_bytes) / 1e9:.2f} GB of SRAM (weights "
                      f"{weight_bytes / 1e9:.2f} GB) but the wafer has {wafer / 1e9:.2f} GB")
    return Plan(tuple(stages), stage_of, spec, weight_bytes, needed, wafer, tuple(why))


__all__ = ["AREA_FRACTION", "Plan", "Sizing", "Stage", "build_stages", "charge_moves",
           "fuse_epilogues", "fuse_prologues", "home_of", "move_cycles", "moves_of",
           "on_wafer", "plan", "size_stage", "with_moves"]
