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
takes the fastest MeshGEMM layout (`_gemm_layout`: q x q groups side by side, token rows
split over them and taken in rounds when they do not fit), attention
`attention.choose_layout`. All cycle counts here come from the kernels' closed
form ``cost()``: the same numbers the estimate mode reports and the fabric run must meet.
These first sizes are a calibration: `compiler.place` turns them into placement blocks,
the floorplanner decides the final rectangles, and `size_stage(..., bounds=)` re-sizes
every kernel inside the rectangle it was given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from waferscale.compiler.ir import Graph, Node, Ref
from waferscale.compiler.lower import reduce_layout
from waferscale.errors import KernelError
from waferscale.fabric.dtypes import BYTES
from waferscale.fabric.timing import transfer_cycles
from waferscale.hardware.spec import WaferSpec
from waferscale.kernels import attention, embedding, gemm, loss, norm
from waferscale.kernels import elementwise as ew
from waferscale.kernels import reduce as reduce_kernel

#: Share of the wafer the planner hands out (the strip placer needs slack to pack).
AREA_FRACTION = 0.6
#: Density assumed for activations after a ReLU when no values exist (estimate mode).
RELU_DENSITY = 0.5


TORCH_TO_FABRIC = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass
class Stage:
    """One kernel on its own rectangle (or a host fallback)."""

    name: str
    kind: str
    nodes: list[str]
    dtype: str = "fp32"
    params: dict[str, Any] = field(default_factory=dict)
    flops: float = 0.0
    weight_bytes: int = 0
    rect: tuple[int, int] = (0, 0)
    algorithm: str = ""
    cost_cycles: float = 0.0
    move_cycles: float = 0.0
    sram_per_pe: int = 0
    fits: bool = True
    why_not: str = ""
    inputs: list[str] = field(default_factory=list)     # stages feeding this one

    @property
    def pes(self) -> int:
        return self.rect[0] * self.rect[1]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "nodes": self.nodes, "dtype": self.dtype,
                "params": self.params, "flops": self.flops, "weight_bytes": self.weight_bytes,
                "rect": list(self.rect), "algorithm": self.algorithm,
                "cost_cycles": self.cost_cycles, "move_cycles": self.move_cycles,
                "sram_per_pe": self.sram_per_pe, "fits": self.fits, "why_not": self.why_not,
                "inputs": self.inputs}


def _fdt(node: Node) -> str:
    d = node.meta.get("dtype")
    d = d[0] if isinstance(d, list) else d
    return TORCH_TO_FABRIC.get(str(d), "fp32")


def _shape(g: Graph, x: Any) -> list[int]:
    if isinstance(x, Ref):
        s = g.nodes[x.name].meta.get("shape")
        return list(s) if s and isinstance(s[0], int) else list(s[0]) if s else []
    return []


def _rows_cols(shape: list[int]) -> tuple[int, int]:
    """[..., H] -> (tokens, H): activations are laid out 2-D, tokens over PE rows."""
    if not shape:
        return 1, 1
    return max(1, math.prod(shape[:-1])), max(1, shape[-1])


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


def build_stages(g: Graph) -> tuple[list[Stage], dict[str, str]]:
    """Stages in topological order and the map node -> stage for kernel and layout nodes."""
    stages: dict[str, Stage] = {}
    stage_of: dict[str, str] = {}
    for node in g.calls():
        kind = node.meta.get("kind")
        if kind in ("relabel", "move"):
            continue
        head = node.meta.get("group", node.name) if kind == "pointwise" else node.name
        if head not in stages:
            stages[head] = Stage(head, kind, [], _fdt(node))
        stages[head].nodes.append(node.name)
        stage_of[node.name] = head
    for st in stages.values():
        _describe(g, st)
    fuse_epilogues(g, stages, stage_of)
    fuse_prologues(g, stages, stage_of)
    for st in stages.values():
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
        st.inputs = feeds
    # layout nodes are charged to their producer's stage
    for node in g.calls():
        if node.meta.get("kind") in ("relabel", "move"):
            h = home_of(g, node.name, stage_of) if node.inputs else None
            node.meta["stage"] = h
    for name, st in stage_of.items():
        g.nodes[name].meta["stage"] = st
    return list(stages.values()), stage_of


def _direct_home(g: Graph, name: str, stage_of: dict[str, str]) -> str | None:
    """The stage whose output ``name`` is, through free layout nodes only (a view of a
    GEMM's output is its output tile as it lies on the PEs; a slice or cat moves data)."""
    seen = 0
    while name not in stage_of and seen < 1000:
        node = g.nodes[name]
        if node.op != "call" or not node.inputs or node.meta.get("kind") == "move":
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


def fuse_epilogues(g: Graph, stages: dict[str, Stage], stage_of: dict[str, str]) -> None:
    """Fuse pointwise stages into the mm/addmm whose output they read.

    Why: a GELU or a residual add after a GEMM is one more pass over the output tile the
    GEMM's PEs already hold; as a stage of its own it took a sliver of the wafer and the
    whole [tokens, 4d] tensor had to stream into it (the pipeline's bottleneck). The fused
    chain runs on the GEMM's groups after the product (``params["epilogue"]``, timed by
    `fused_cycles` on the per-PE output tile), and its values are computed by the same
    value functions as a pointwise stage's. A chain is fused when at least one operand is
    a GEMM's whole output as it lies on the PEs (through views only), every tensor operand
    has that size and so has the result: the other operands (a residual stream, a second
    GEMM's output) then arrive tile for tile in the GEMM's layout, which makes them
    inbound streams of the GEMM's stage (``streamed``, with SRAM for their tiles). A slice
    or a broadcast would need data movement, so those chains stay stages. Of several
    GEMMs read, the chain joins the last one in pipeline order (its other operands are
    ready by then)."""
    order = {name: i for i, name in enumerate(stages)}
    for name in list(stages):
        st = stages[name]
        if st.kind != "pointwise":
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
        gemms = [h for h in homes if h in stages and stages[h].kind == "gemm"
                 and stages[h].params.get("op") in ("mm", "addmm")]
        chain = {"ops": st.params["ops"], "reads": st.params["reads"], "nodes": list(st.nodes)}
        if gemms:
            home = max(gemms, key=order.__getitem__)
            full = _numel(g, stages[home].nodes[0])
            if full <= 0 or sizes != {full} or _numel(g, st.nodes[-1]) != full:
                continue
            chain["streamed"] = sum(h != home for h in homes)
        else:
            home = _sole_gemm_source(g, st, stages, stage_of)
            if home is None:
                continue
            chain["numel"] = max(sizes | {_numel(g, st.nodes[-1])})
        gst = stages[home]
        gst.nodes.extend(st.nodes)
        gst.params.setdefault("epilogue", []).append(chain)
        gst.flops += st.flops
        for n in st.nodes:
            stage_of[n] = home
        del stages[name]


def _gemm_reading(g: Graph, name: str, users: dict[str, list[str]],
                  stages: dict[str, Stage], stage_of: dict[str, str]) -> str | None:
    """The mm/addmm stage that is the only wafer reader of a layer norm's output, as its A
    operand (through getitem and free views), or None. Graph outputs may read it too (a
    training graph saves the normalised rows, mean and rstd for its backward): the GEMM's
    stage holds them after the prologue and sends them out like the LN stage would."""
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
            elif node.meta.get("kind") == "relabel":
                todo.append(u)
            elif stage_of.get(u) in stages and stages[stage_of[u]].kind == "gemm":
                gst = stages[stage_of[u]]
                a = node.args[1] if node.short == "addmm" else node.args[0]
                if u != gst.nodes[0] or gst.params.get("op") not in ("mm", "addmm") \
                        or not isinstance(a, Ref) or a.name != n:
                    return None
                found.add(gst.name)
            else:
                return None
    return found.pop() if len(found) == 1 else None


def fuse_prologues(g: Graph, stages: dict[str, Stage], stage_of: dict[str, str]) -> None:
    """Fuse a layer norm into the mm/addmm that alone reads it, as a prologue.

    Why: in a transformer every layer norm feeds one projection (QKV, the MLP's first
    layer, the LM head). As a stage of its own it had a sliver of the wafer and the
    [tokens, hidden] stream to swallow through it (GenSLM-25M at seq 1,024: the slowest
    stages, ~270k cycles, against ~50k for the GEMMs). On the GEMM's grid the A operand
    already lies as [rows, hidden] over the q x q PEs of each group: the row statistics
    are a chain allreduce along the grid rows and the normalisation a local pass, which is
    exactly `norm.cost` on a q x q rectangle of ``mrows`` tokens (``params["prologue"]``,
    charged per round by `prologue_cycles`, the same in plan and runtime)."""
    users = g.users()
    for name in list(stages):
        st = stages[name]
        if st.kind != "layer_norm":
            continue
        home = _gemm_reading(g, st.nodes[0], users, stages, stage_of)
        if home is None:
            continue
        gst = stages[home]
        if st.params["hidden"] != gst.params["k"] or st.params["tokens"] != gst.params["m"]:
            continue
        gst.nodes.insert(1, st.nodes[0])
        gst.params["prologue"] = {k: st.params[k] for k in ("weight", "bias", "eps")}
        gst.flops += st.flops
        gst.weight_bytes += st.weight_bytes
        stage_of[st.nodes[0]] = home
        del stages[name]


def _sole_gemm_source(g: Graph, st: Stage, stages: dict[str, Stage],
                      stage_of: dict[str, str]) -> str | None:
    """The mm/addmm every tensor operand of a pointwise stage comes from through layout
    ops (slices, cats, permutes: moves charged on the GEMM's rectangle), if there is one.

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
    gst = stages.get(home) if home else None
    if gst is None or gst.kind != "gemm" or gst.params.get("op") not in ("mm", "addmm"):
        return None
    return home


def _describe(g: Graph, st: Stage) -> None:
    """Kernel parameters, FLOPs and resident weight bytes of a stage."""
    node = g.nodes[st.nodes[0]]
    consts = {i for n in st.nodes for i in g.nodes[n].inputs if g.nodes[i].op == "const"}
    st.weight_bytes = int(sum(g.constants[c].numel() * BYTES[st.dtype] for c in consts
                              if c in g.constants and hasattr(g.constants[c], "numel")))
    short = node.short
    if st.kind == "gemm":
        if short == "addmm":
            a, b = _shape(g, node.args[1]), _shape(g, node.args[2])
            batch, m, k, n = 1, a[0], a[1], b[1]
        elif short == "mm":
            a, b = _shape(g, node.args[0]), _shape(g, node.args[1])
            batch, m, k, n = 1, a[0], a[1], b[1]
        else:
            a, b = _shape(g, node.args[0]), _shape(g, node.args[1])
            batch, m, k, n = a[0], a[1], a[2], b[2]
        a_arg = node.args[1] if short == "addmm" else node.args[0]
        st.params = {"op": short, "batch": batch, "m": m, "k": k, "n": n,
                     "bias": short == "addmm", "skip": _relu_fed(g, a_arg)}
        st.flops = 2.0 * batch * m * k * n
    elif st.kind == "attention":
        # its only constant is the causal mask, which the kernel builds from positions
        # instead of storing (a [seq, seq] table: 419 MB per layer at 10,240 tokens)
        st.weight_bytes = 0
        b, h, s, d = _shape(g, node.args[0])
        st.params = {"groups": b * h, "seq": s, "head_dim": d, "batch": b, "heads": h,
                     "assumed_causal": bool(node.meta.get("assumed_causal"))}
        st.flops = attention.flops(b * h, s, d)
    elif st.kind in ("layer_norm", "softmax"):
        t, h = _rows_cols(_shape(g, node.args[0]))
        st.params = {"tokens": t, "hidden": h}
        if st.kind == "layer_norm":
            st.params.update(weight=node.args[2] is not None, bias=node.args[3] is not None,
                             eps=float(node.args[4]))
        else:
            st.params["log"] = short == "_log_softmax"
        st.flops = (8.0 if st.kind == "layer_norm" else 5.0) * t * h
    elif st.kind == "embedding":
        v, h = _shape(g, node.args[0])
        tokens = math.prod(_shape(g, node.args[1]) or [1])
        st.params = {"tokens": tokens, "vocab": v, "hidden": h}
        st.flops = float(tokens * h)
    elif st.kind == "pointwise":
        t, h = _rows_cols(node.meta["shape"])
        ops = [g.nodes[n].meta["pointwise"] for n in st.nodes]
        external = {i for n in st.nodes for i in g.nodes[n].inputs if i not in st.nodes}
        st.params = {"tokens": t, "hidden": h, "ops": ops, "reads": max(1, len(external))}
        st.flops = float(t * h * sum(ew.OP_COSTS[o].flops for o in ops))
    elif st.kind == "reduce":
        rows, cols, axis = reduce_layout(node, g)
        st.params = {"rows": rows, "cols": cols, "axis": axis}
        st.flops = float(rows * cols)
    elif st.kind == "cross_entropy":
        t, v = _shape(g, node.args[0])
        st.params = {"tokens": t, "vocab": v, "ignore_index": int(node.args[2]),
                     "reduction": node.args[3]}
        st.flops = 4.0 * t * v    # per logit: max, subtract, exp, sum
    else:  # fallback
        # integer ops on the inputs alone (`lower.fallbacks(input_only=True)`) run before
        # the batch is sent: only their results cross the I/O
        io = 0 if all(g.nodes[n].meta.get("input_only") for n in st.nodes) else sum(
            g.nodes[i].meta.get("out_bytes", 0) for n in st.nodes
            for i in g.nodes[n].inputs if g.nodes[i].op != "const")
        io += sum(g.nodes[n].meta.get("out_bytes", 0) for n in st.nodes)
        st.params = {"io_bytes": int(io), "op": node.target}
    for n in st.nodes:
        g.nodes[n].meta["flops"] = st.flops / len(st.nodes)


def _relu_fed(g: Graph, x: Any) -> bool:
    """Whether a GEMM's activation comes (through layout nodes) from a ReLU."""
    name = x.name if isinstance(x, Ref) else None
    while name is not None:
        node = g.nodes[name]
        if node.op != "call":
            return False
        if node.short in ("relu",) or (node.short == "clamp_min" and node.args[1] == 0):
            return True
        if node.meta.get("kind") in ("relabel", "move"):
            refs = [i for i in node.inputs if g.nodes[i].op != "const"]
            name = refs[0] if refs else None
            continue
        return False
    return False


# ------------------------------------------------------------------ per-kind sizing -------
def fused_cycles(spec: WaferSpec, elements: float, dtype: str, ops: list[str], reads: int
                 ) -> float:
    """A fused pointwise chain: every op's passes back to back in registers; the SRAM is read
    ``reads`` times and written once per element (`timing.vector_cycles`'s formula)."""
    word = spec.mem_word_bits / 8
    per = sum(ew.OP_COSTS[o].passes / spec.simd.width(dtype, ew.OP_COSTS[o].simd) for o in ops)
    per = max(per, reads * BYTES[dtype] / (spec.mem_reads_per_cycle * word),
              BYTES[dtype] / (spec.mem_writes_per_cycle * word))
    return float(math.ceil(elements * per))


def _row_rect(spec: WaferSpec, t: int, h: int, area: float,
              bounds: tuple[int, int] | None, bytes_of) -> tuple[int, int]:
    """Tokens over rows, hidden over columns: about ``area`` PEs, grown until the tiles fit
    the SRAM; inside ``bounds`` the whole placed rectangle (as far as the tensor spans it),
    with fewer columns where that is what fits (a softmax keeps per-row buffers as wide as
    its column count, so a wide rectangle can overflow where a narrower one fits)."""
    if bounds is not None:
        r, c = max(1, min(t, bounds[0])), max(1, min(h, bounds[1]))
        if bytes_of(r, c) > spec.sram_bytes:
            for cc in sorted({max(1, c >> i) for i in range(1, 12)}, reverse=True):
                if bytes_of(r, cc) <= spec.sram_bytes:
                    return r, cc
        return r, c
    c = max(1, min(h, spec.cols, int(math.sqrt(max(area, 1)))))
    r = max(1, min(t, spec.rows, int(max(area, 1) // c)))
    while bytes_of(r, c) > spec.sram_bytes:
        if r < min(t, spec.rows):
            r = min(t, spec.rows, r * 2)
        elif c < min(h, spec.cols):
            c = min(h, spec.cols, c * 2)
        else:
            break
    return r, c


def pointwise_layout(t: int, h: int, area: float, bounds: tuple[int, int] | None,
                     side_cap: int) -> tuple[int, int]:
    """The 2-D layout (rows, cols) of a pointwise stage's elements.

    A pointwise op does not care which element sits on which PE, so its layout follows the
    rectangle, not the tensor: laid out as [tokens, last] a rotary ``neg`` on [8192, 8]
    could use at most 8 PE columns, and the big stream feeding it had to squeeze through
    them. When the rectangle (``bounds``, or a square of ``area`` PEs) is wider than the
    last axis, the flattened elements are laid out in rows as wide as the rectangle
    (padded at the end); otherwise the natural [tokens, last] layout is kept."""
    n = t * h
    cols = bounds[1] if bounds is not None else int(math.sqrt(max(area, 1)))
    cols = max(1, min(cols, side_cap, n))
    if cols <= h:
        return t, h
    return -(-n // cols), cols


def _grid_candidates(m: int, k: int, n: int, limit: int) -> list[int]:
    """Grids p <= limit that give distinct tiles (for each tile size of m, k or n the
    smallest p reaching it): more PEs with the same tiles only add steps or hops."""
    out: set[int] = set()
    for d in (m, k, n):
        lim = max(1, min(limit, d))
        for parts in range(1, lim + 1):
            tile = -(-d // parts)
            out.add(-(-d // tile))
    return sorted(p for p in out if 1 <= p <= limit)


def batched_tiling(batch: int, p: int, rows: int, cols: int) -> tuple[int, int]:
    """(group rows, group cols) of p x p grids a batch of ``batch`` independent GEMMs uses
    in a ``rows x cols`` rectangle: as many groups as fit (at most the batch), side by side
    along the longer side first, so the groups' rectangle stays inside the bounds."""
    gr, gc = max(1, rows // p), max(1, cols // p)
    if gr * gc <= batch:
        return gr, gc
    # fewer groups than fit: the smallest gr x gc block of groups that holds the batch,
    # fewest rounds first, then fewest PEs, then squarest
    best: tuple[int, int, int, int, int] | None = None
    for r in range(1, gr + 1):
        c = min(gc, -(-batch // r))
        rounds = -(-batch // (r * c))
        key = (rounds, r * c, abs(r - c), r, c)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[3], best[4]


def _extra_bytes(mb: int, kb: int, nb: int, b: int, extras: tuple[bool, bool, int]) -> int:
    """SRAM per PE a GEMM stage keeps beyond `gemm.sram_bytes`: the bias slice, a fused
    layer norm's gamma / beta slices and two fp32 statistics per row, and the output tiles
    of fused pointwise chains (and of their streamed operands). ``extras`` = (bias,
    prologue, output tiles)."""
    bias, prologue, tiles = extras
    return (nb * b if bias else 0) + ((2 * kb * b + 8 * mb) if prologue else 0) \
        + tiles * mb * nb * b


def gemm_extras(st: Stage) -> tuple[bool, bool, int]:
    """A GEMM stage's (bias, layer-norm prologue, fused output tiles) for `_extra_bytes`."""
    p = st.params
    tiles = 1 + sum(c.get("streamed", 0) for c in p["epilogue"]) if p.get("epilogue") else 0
    return bool(p.get("bias")), bool(p.get("prologue")), tiles


def stage_extra_bytes(st: Stage, q: int, mg: int) -> int:
    """`_extra_bytes` of a sized GEMM stage on q x q groups of ``mg`` rows (the runtime's
    SRAM peak adds the same)."""
    return _extra_bytes(-(-mg // q), -(-st.params["k"] // q), -(-st.params["n"] // q),
                        BYTES[st.dtype], gemm_extras(st))


@lru_cache(maxsize=65536)
def _gemm_at(spec: WaferSpec, m: int, k: int, n: int, q: int, dtype: str, skip: str | None,
             density: float, extras: tuple[bool, bool, int] = (False, False, 0)
             ) -> tuple[float, int] | None:
    """(cycles, SRAM bytes per PE) of MeshGEMM [m,k]x[k,n] on a q x q grid with the
    stage's ``extras`` (`_extra_bytes`), or None when it does not fit (q > min(m, k, n) or
    over the SRAM). Cached: the floorplanner asks ``time_at`` for thousands of rectangles
    and each one searches every grid."""
    if q > min(m, k, n):
        return None
    sram = gemm.sram_bytes(m, k, n, q, dtype, "fp32", "meshgemm") + _extra_bytes(
        -(-m // q), -(-k // q), -(-n // q), BYTES[dtype], extras)
    if sram > spec.sram_bytes:
        return None
    c = gemm.cost(m, k, n, algorithm="meshgemm", grid=q, spec=spec, dtype=dtype,
                  accumulate="fp32", skip=skip, a_density=density)
    return float(c.cycles), int(sram)


def _rows_that_fit(spec: WaferSpec, k: int, n: int, q: int, dtype: str,
                   extras: tuple[bool, bool, int]) -> int:
    """Most A rows a q x q MeshGEMM grid holds with the weights: `gemm.sram_bytes` and
    `_extra_bytes` are both linear in the row block mb, so two evaluations give it."""
    kb, nb = -(-k // q), -(-n // q)

    def per_pe(mb: int) -> int:
        return gemm.sram_bytes(mb * q, k, n, q, dtype, "fp32", "meshgemm") + _extra_bytes(
            mb, kb, nb, BYTES[dtype], extras)

    fixed = per_pe(0)
    return int(max(0, (spec.sram_bytes - fixed) // (per_pe(1) - fixed))) * q


def row_split(m: int, groups: int) -> tuple[int, int]:
    """(rows per group, groups used) when a GEMM's M rows (tokens) are split into at most
    ``groups`` chunks: equal chunks of ``ceil(m / groups)`` rows, the last one shorter, so
    the slowest group is a full chunk and no group is left empty."""
    groups = max(1, min(groups, m))
    mg = -(-m // groups)
    return mg, -(-m // mg)


@lru_cache(maxsize=65536)
def _gemm_layout(spec: WaferSpec, batch: int, m: int, k: int, n: int, rows: int, cols: int,
                 area: float, side_cap: int, bounded: bool, split: bool, dtype: str,
                 skip: str | None, density: float,
                 extras: tuple[bool, bool, int] = (False, False, 0)
                 ) -> tuple[float, int, int, int, int, int, int, int] | None:
    """The fastest side-by-side layout of a GEMM stage in a ``rows x cols`` rectangle (or
    about ``area`` PEs when not ``bounded``): (cycles per entry x rounds, PEs, grid q,
    group rows, group cols, rows per group mg, row groups, SRAM per PE), or None.

    Batch entries (a bmm's heads) go on disjoint q x q groups; a single GEMM (``split``)
    has its M rows cut into as many groups as fit, each group holding a full copy of the
    weights (charged in its SRAM per PE), so a tall or wide rectangle is used, not just
    its short side squared. Every useful q is tried: a smaller grid with more groups often
    wins. Ties go to the fewest PEs."""
    limit = max(1, min(rows, cols, m, k, n))
    best: tuple[float, int, int, int, int, int, int, int] | None = None
    for q in _grid_candidates(m, k, n, limit):
        if bounded:
            slots_r, slots_c = max(1, rows // q), max(1, cols // q)
            slots = slots_r * slots_c
        else:
            # about ``area`` PEs: as many groups as the area holds (at least one)
            cap = max(1, m // q) if split and batch == 1 else batch
            groups = max(1, min(cap, int(max(area, 1) // (q * q))))
            gc = max(1, min(groups, side_cap // q, math.ceil(math.sqrt(groups))))
            gr = max(1, min(-(-groups // gc), side_cap // q))
            slots_r, slots_c, slots = gr, gc, gr * gc
        if split and batch == 1:
            mg, used = row_split(m, min(slots, max(1, m // q)))
            got = _gemm_at(spec, mg, k, n, q, dtype, skip, density, extras)
            if got is None and mg > q:
                # too many rows for the SRAM: chunks of the most rows that fit, the groups
                # taking them in rounds (a weight-stationary stream of token rows)
                fit = _rows_that_fit(spec, k, n, q, dtype, extras)
                if fit >= 1:
                    mg, used = row_split(m, -(-m // max(q, fit)))
                    got = _gemm_at(spec, mg, k, n, q, dtype, skip, density, extras)
            if got is None:
                continue
            gr, gc = batched_tiling(min(used, slots), q, slots_r * q, slots_c * q)
            rounds = -(-used // (gr * gc))
        else:
            mg, used = m, 1
            got = _gemm_at(spec, m, k, n, q, dtype, skip, density, extras)
            if got is None:
                continue
            if bounded:
                gr, gc = batched_tiling(batch, q, rows, cols)
            else:
                gr, gc = slots_r, slots_c
            rounds = -(-batch // (gr * gc))
        cyc, sram = got
        key = (rounds * cyc, gr * gc * q * q, q, gr, gc, mg, used, sram)
        if best is None or key[:2] < best[:2]:
            best = key
    return best


def _size_gemm(spec: WaferSpec, st: Stage, area: float, side_cap: int,
               bounds: tuple[int, int] | None) -> None:
    """A GEMM stage on side-by-side q x q sub-grids of its rectangle (``tiling`` = group
    rows x group cols): a bmm's batch entries (heads x batch) are independent GEMMs, each
    group running ``ceil(batch / groups)`` of them one after another; an mm/addmm has its
    M rows split over the groups (``msplit`` groups of ``mrows`` rows, weights replicated
    per group). The stage takes the slowest group's time."""
    p, dt = st.params, st.dtype
    batch, m, k, n = p["batch"], p["m"], p["k"], p["n"]
    skip = "a" if p["skip"] else None
    dens = RELU_DENSITY if skip else 1.0
    split = p.get("op") in ("mm", "addmm") and batch == 1
    extras = gemm_extras(st)
    if bounds is not None:
        best = _gemm_layout(spec, batch, m, k, n, bounds[0], bounds[1], 0.0, side_cap, True,
                            split, dt, skip, dens, extras)
        where = f"{bounds[0]}x{bounds[1]}"
    else:
        side = max(1, min(side_cap, int(math.sqrt(max(area, 1)))))
        best = _gemm_layout(spec, batch, m, k, n, side, side, area, side_cap, False, split,
                            dt, skip, dens, extras)
        if best is None:
            full = max(1, min(side_cap, m, k, n))
            best = _gemm_layout(spec, batch, m, k, n, full, full, float(full * full),
                                side_cap, False, split, dt, skip, dens, extras)
        where = f"~{area:.0f}-PE"
    if best is None:
        raise KernelError(f"gemm [{m},{k}]x[{k},{n}] {dt}: no square grid within the "
                          f"{where} rectangle fits the {spec.sram_bytes} B SRAM")
    total, _, q, gr, gc, mg, used, sram = best
    rounds = -(-(used if split and batch == 1 else batch) // (gr * gc))
    st.rect = (gr * q, gc * q)
    st.algorithm = "meshgemm"
    st.sram_per_pe = sram
    st.cost_cycles = total
    st.params = {**p, "grid": q, "tiling": [gr, gc], "msplit": used, "mrows": mg}
    if batch > 1:
        st.algorithm += f" x{batch} on {gr}x{gc} groups of {q}x{q} ({rounds} per group)"
    elif used > 1:
        st.algorithm += (f", M split over {gr}x{gc} groups of {q}x{q} ({mg} rows each, "
                         f"weights replicated" + (f", {rounds} rounds)" if rounds > 1 else ")"))
    st.cost_cycles += gemm_extra_cycles(spec, st, q, mg, rounds)
    if p.get("prologue"):
        st.algorithm = "layer norm + " + st.algorithm


def gemm_extra_cycles(spec: WaferSpec, st: Stage, q: int, mg: int, rounds: int) -> float:
    """Cycles a sized GEMM stage adds to its products, every round: the bias add over the
    output tile, a fused layer norm (`prologue_cycles`) and fused pointwise chains
    (`epilogue_cycles`). The plan's cost and the runtime's measured cycles both take them
    from here."""
    extra = prologue_cycles(spec, st, q, mg, rounds) + epilogue_cycles(spec, st, q, mg, rounds)
    if st.params.get("bias"):
        tile = -(-mg // q) * -(-st.params["n"] // q)
        extra += rounds * float(ew.op_cycles(spec, tile, "fp32", "add", reads=2))
    return extra


def prologue_cycles(spec: WaferSpec, st: Stage, q: int, mg: int, rounds: int) -> float:
    """Cycles of a layer norm fused in front of a GEMM (`fuse_prologues`): `norm.cost` of
    ``mg`` token rows x ``k`` over each q x q group, every round; 0 without one."""
    pro = st.params.get("prologue")
    if not pro:
        return 0.0
    return rounds * norm.cost(spec, [mg, st.params["k"]], (min(q, mg), q), dtype=st.dtype,
                              weight=pro["weight"], bias=pro["bias"])


def epilogue_cycles(spec: WaferSpec, st: Stage, q: int, mg: int, rounds: int) -> float:
    """Cycles of the pointwise chains fused into a GEMM (`fuse_epilogues`): each chain is a
    `fused_cycles` pass over the per-PE output tile (``ceil(mg/q) x ceil(n/q)``), or for a
    chain over a slice of the output its ``numel`` elements spread over the GEMM's PEs and
    rounds, after the product, on every group and round; the runtime charges the same."""
    chains = st.params.get("epilogue") or []
    tile = -(-mg // q) * -(-st.params["n"] // q)
    per_round = rounds * q * q * math.prod(st.params.get("tiling", [1, 1]))
    return rounds * sum(fused_cycles(spec, -(-c["numel"] // per_round) if "numel" in c
                                     else tile, st.dtype, c["ops"], c["reads"])
                        for c in chains)


def size_stage(spec: WaferSpec, st: Stage, area: float, max_side: int | None,
               bounds: tuple[int, int] | None = None) -> None:
    """Rectangle, algorithm, closed-form cycles and SRAM per PE of one stage.

    ``bounds`` = (rows, cols) of a placed rectangle the kernel must fit inside (its shape
    is then chosen within it); without it the kernel takes a shape of about ``area`` PEs.
    """
    dt, p = st.dtype, st.params
    side_cap = min(spec.rows, spec.cols, max_side or 10 ** 9)
    if bounds is not None:
        if max_side:
            bounds = (min(bounds[0], max_side), min(bounds[1], max_side))
        side_cap = min(side_cap, max(bounds))
        area = float(bounds[0] * bounds[1])
    eb = BYTES[dt]
    try:
        if st.kind == "gemm":
            _size_gemm(spec, st, area, side_cap, bounds)
        elif st.kind == "attention":
            _size_attention(spec, st, area, side_cap, bounds)
        elif st.kind == "layer_norm":
            t, h = p["tokens"], p["hidden"]

            def ln_bytes(r: int, c: int) -> int:
                tile = -(-t // r) * -(-h // c)
                return 2 * tile * eb + 2 * -(-h // c) * eb + 16 * -(-t // r)
            st.rect = _row_rect(spec, t, h, area, bounds, ln_bytes)
            st.cost_cycles = norm.cost(spec, [t, h], st.rect, dtype=dt, weight=p["weight"],
                                       bias=p["bias"])
            st.sram_per_pe = ln_bytes(*st.rect)
            st.algorithm = "two-pass, chain allreduce"
        elif st.kind == "softmax":
            t, h = p["tokens"], p["hidden"]

            def sm_bytes(r: int, c: int) -> int:
                tile = -(-t // r) * -(-h // c)
                return 2 * tile * eb + 4 * tile + 16 * -(-t // r) * max(1, c)
            st.rect = _row_rect(spec, t, h, area, bounds, sm_bytes)
            st.cost_cycles = ew.softmax_cost(spec, [t, h], st.rect, dtype=dt, log=p["log"])
            st.sram_per_pe = sm_bytes(*st.rect)
            st.algorithm = ("log-" if p["log"] else "") + "max/exp/sum, chain allreduce"
        elif st.kind == "reduce":
            t, h = p["rows"], p["cols"]

            def rd_bytes(r: int, c: int) -> int:
                tr, tc = -(-t // r), -(-h // c)
                return tr * tc * eb + 4 * (tr + tc)     # the tile, fp32 partial sums
            st.rect = _row_rect(spec, t, h, area, bounds, rd_bytes)
            st.cost_cycles = reduce_kernel.cost(spec, (t, h), st.rect, p["axis"], dtype=dt)
            st.sram_per_pe = rd_bytes(*st.rect)
            st.algorithm = f"sum over {'rows' if p['axis'] == 0 else 'columns'}, chain reduce"
        elif st.kind == "cross_entropy":
            t, v = p["tokens"], p["vocab"]

            def ce_bytes(r: int, c: int) -> int:
                # logits and their gradient, per token row: target, max, sum, picked logit
                return 2 * -(-t // r) * -(-v // c) * eb + 16 * -(-t // r)
            st.rect = _row_rect(spec, t, v, area, bounds, ce_bytes)
            st.cost_cycles = loss.cost(spec, t, v, st.rect, dtype=dt)
            st.sram_per_pe = ce_bytes(*st.rect)
            st.algorithm = "cross-entropy: max/exp/sum/pick, chain allreduce, mean"
        elif st.kind == "embedding":
            _size_embedding(spec, st, area, bounds)
        elif st.kind == "pointwise":
            t, h = pointwise_layout(p["tokens"], p["hidden"], area, bounds, side_cap)
            st.params = {**p, "layout": [t, h]}

            def pw_bytes(r: int, c: int) -> int:
                return (p["reads"] + 1) * -(-t // r) * -(-h // c) * eb
            st.rect = _row_rect(spec, t, h, area, bounds, pw_bytes)
            tile = -(-t // st.rect[0]) * -(-h // st.rect[1])
            st.cost_cycles = fused_cycles(spec, tile, dt, p["ops"], p["reads"])
            st.sram_per_pe = pw_bytes(*st.rect)
            st.algorithm = "fused: " + "+".join(p["ops"])
        else:
            st.rect = (0, 0)
            st.cost_cycles = p["io_bytes"] * 8 / spec.io_bits_per_s * spec.clock_hz
            st.algorithm = "host (PyTorch), over system I/O"
        if st.sram_per_pe > spec.sram_bytes:
            st.fits = False
            st.why_not = (f"needs {st.sram_per_pe} B per PE on {st.rect[0]}x{st.rect[1]} PEs, "
                          f"over the {spec.sram_bytes} B SRAM")
    except KernelError as exc:
        st.fits = False
        st.why_not = str(exc)
        st.rect = st.rect if st.rect != (0, 0) else (1, 1)


def _size_attention(spec: WaferSpec, st: Stage, area: float, side_cap: int,
                    bounds: tuple[int, int] | None) -> None:
    """The fastest flash-attention layout (`attention.choose_layout`: query blocks over
    rows, each group's chain of blocks snaked over ``fold`` columns, K/V shifted along it
    or multicast down it to ``split`` sub-bands) inside the placed rectangle, or at
    planning time inside about ``area`` PEs of full-height columns (the whole wafer when
    nothing fits there)."""
    p, dt = st.params, st.dtype
    g_, s, d = p["groups"], p["seq"], p["head_dim"]
    if bounds is not None:
        limits = bounds
    else:
        rows = max(1, min(spec.rows, side_cap))
        limits = (rows, max(1, min(spec.cols, side_cap, int(max(area, 1) // rows))))
    try:
        lay = attention.choose_layout(spec, g_, s, d, max_rows=limits[0],
                                      max_cols=limits[1], dtype=dt)
    except KernelError:
        if bounds is not None:
            raise
        lay = attention.choose_layout(spec, g_, s, d, max_rows=min(spec.rows, side_cap),
                                      max_cols=min(spec.cols, side_cap), dtype=dt)
    st.params = {**p, "fold": lay.fold, "kv": lay.kv, "split": lay.split}
    st.rect = (lay.rows, lay.cols)
    st.cost_cycles = lay.cycles
    st.sram_per_pe = attention.plan(spec, g_, s, d, st.rect, dtype=dt, fold=lay.fold,
                                    kv=lay.kv, split=lay.split).sram()["peak"]
    st.algorithm = (f"flash, K/V shifted along a snake (fold {lay.fold})" if lay.kv == "shift"
                    else f"flash, K/V multicast down a snake (fold {lay.fold}, split "
                         f"{lay.split})")


def _size_embedding(spec: WaferSpec, st: Stage, area: float,
                    bounds: tuple[int, int] | None) -> None:
    """The table replicated down the rows when it fits (a local gather, no fabric
    traffic: GenSLM's 69 codons), else sharded over the rows (GPT-2's 50,257 x 768 is
    154 MB in fp32), whichever `embedding.choose_layout` finds fastest in the bounds; at
    planning time, without bounds, about ``area`` PEs shaped like `_row_rect`, or the
    whole wafer when a table needs more than that to be stored once."""
    p, dt = st.params, st.dtype
    t, v, h = p["tokens"], p["vocab"], p["hidden"]
    layout = "replicated"
    rect = _row_rect(spec, t, h, area, bounds,
                     lambda r, c: embedding.sram_bytes(t, v, h, (r, c), dt))
    if embedding.sram_bytes(t, v, h, rect, dt) > spec.sram_bytes:
        if bounds is not None:
            limits = bounds
        else:
            c = max(1, min(h, spec.cols, int(math.sqrt(max(area, 1)))))
            limits = (max(1, min(spec.rows, int(max(area, 1) // c))), c)
        try:
            layout, r, c, _ = embedding.choose_layout(spec, t, v, h, max_rows=limits[0],
                                                      max_cols=limits[1], dtype=dt)
        except KernelError:
            if bounds is not None:
                raise
            layout, r, c, _ = embedding.choose_layout(spec, t, v, h, max_rows=spec.rows,
                                                      max_cols=spec.cols, dtype=dt)
        rect = (r, c)
    embedding.check(spec, t, v, h, rect, dt, layout=layout)
    st.params = {**p, "layout": layout}
    st.rect = rect
    st.cost_cycles = embedding.cost(spec, t, v, h, rect, dtype=dt, layout=layout)
    st.sram_per_pe = embedding.sram_bytes(t, v, h, rect, dt, layout=layout)
    st.algorithm = ("local gather, table replicated down rows" if layout == "replicated"
                    else "table sharded over rows, ids multicast, column reduce-scatter")


def move_cycles(spec: WaferSpec, g: Graph, st: Stage, node: Node) -> float:
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
    stages: moving a tensor costs its per-PE share times the rectangle's span, so it belongs
    on the big rectangle, not on a one-op pointwise stage that would become the bottleneck."""
    users = g.users()
    fallback = {s.name for s in stages if s.kind == "fallback"}
    for node in g.calls():
        if node.meta.get("kind") != "move":
            continue
        prod = node.meta.get("stage")
        cons = consumer_stage(g, node.name, stage_of, users)
        options = [s for s in (prod, cons) if s and s not in fallback]
        if options:
            node.meta["stage"] = max(options, key=lambda s: weight.get(s, 0.0))


def add_move_cycles(spec: WaferSpec, g: Graph, stages: list[Stage]) -> None:
    """(Re)compute every stage's data-movement cycles on its current rectangle."""
    by_name = {s.name: s for s in stages}
    for st in stages:
        st.move_cycles = 0.0
    for node in g.calls():
        if node.meta.get("kind") == "move" and node.meta.get("stage") in by_name:
            st = by_name[node.meta["stage"]]
            c = move_cycles(spec, g, st, node)
            node.meta["cycles"] = c
            st.move_cycles += c


def _work(g: Graph, st: Stage) -> float:
    """What a stage's area share follows: its FLOPs, but at least a few passes over its
    output (a pointwise op with few FLOPs still has to sweep every element)."""
    numel = g.nodes[st.nodes[-1]].meta.get("numel", 0) or 0
    return max(st.flops, 16.0 * numel, 1.0)


@dataclass
class Plan:
    """The planned program: stages, their order, and what the model needs of the wafer."""

    stages: list[Stage]
    stage_of: dict[str, str]
    spec: WaferSpec
    weight_bytes: int
    sram_needed_bytes: int
    wafer_sram_bytes: int
    pipelined_fits: bool
    why_not: list[str]


def plan(g: Graph, spec: WaferSpec, *, max_side: int | None = None,
         area_fraction: float = AREA_FRACTION) -> Plan:
    """Stages sized by their work share of the wafer; feasibility of pipelined mode."""
    stages, stage_of = build_stages(g)
    on_wafer = [s for s in stages if s.kind != "fallback"]
    weight = {s.name: _work(g, s) for s in stages}
    total = sum(weight[s.name] for s in on_wafer) or 1.0
    budget = area_fraction * spec.rows * spec.cols
    for st in stages:
        size_stage(spec, st, budget * weight[st.name] / total, max_side)
    charge_moves(g, stages, stage_of, weight)
    add_move_cycles(spec, g, stages)
    weight_bytes = sum(s.weight_bytes for s in stages)
    needed = sum(s.sram_per_pe * s.pes for s in on_wafer)
    wafer = spec.rows * spec.cols * spec.sram_bytes
    why = [f"{s.name} ({s.kind}): {s.why_not}" for s in stages if not s.fits]
    pes = sum(s.pes for s in on_wafer)
    if pes > spec.rows * spec.cols:
        why.append(f"the stages need {pes} PEs, the wafer has {spec.rows * spec.cols}")
    if max(needed, weight_bytes) > wafer:
        why.insert(0, f"needs {max(needed, weight_bytes) / 1e9:.2f} GB of SRAM (weights "
                      f"{weight_bytes / 1e9:.2f} GB) but the wafer has {wafer / 1e9:.2f} GB")
    return Plan(stages, stage_of, spec, weight_bytes, needed, wafer, not why, why)


__all__ = ["AREA_FRACTION", "Plan", "Stage", "add_move_cycles", "build_stages", "charge_moves",
           "epilogue_cycles", "fuse_epilogues", "fuse_prologues", "fused_cycles",
           "gemm_extra_cycles", "gemm_extras", "home_of", "plan", "prologue_cycles",
           "size_stage", "stage_extra_bytes"]
