"""Fused pointwise chains: ATen's elementwise ops, grouped into one pass over a tile each.

Lowering: every ATen op of `POINTWISE` whose results are floats the PEs hold becomes a
pointwise node (``meta['pointwise']``: the `elementwise.OP_COSTS` entry it costs as), and
`fuse` groups them (``meta['group']``) so that a chain (or a DAG: a tanh-GELU reads its
input three times) reads its external operands once, keeps its intermediates in
registers and writes one output. A group is a stage of its own, or the epilogue of the
GEMM whose output it reads (`compiler.plan` asks the GEMM family to absorb it).

Timing (`fused_cycles`): every op's passes back to back, at least the SRAM traffic of
``reads`` operand reads and one write per element. Values: the elementwise kernels' value
functions in fp32, rounded to the storage dtype after every op (as PyTorch rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waferscale.errors import KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.hardware.spec import WaferSpec
from waferscale.ir import Graph, Node, Ref
from waferscale.kernels import elementwise as ew
from waferscale.kernels.family import (
    FLOAT_DTYPES,
    TORCH_TO_FABRIC,
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    done,
    figures_key,
    float_out,
    remember,
    remembered,
    row_rect,
    rows_cols,
    to_np,
    to_torch,
)

#: ATen pointwise op -> the elementwise kernel op it costs as (`elementwise.OP_COSTS`).
POINTWISE: dict[str, str] = {
    "add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "div", "neg": "neg",
    "relu": "relu", "tanh": "tanh", "sin": "sin", "cos": "cos", "exp": "exp", "log": "log",
    "rsqrt": "rsqrt", "reciprocal": "reciprocal", "sigmoid": "sigmoid", "silu": "silu",
    "gelu": "gelu",
    "erf": "erf", "pow": "mul", "maximum": "max", "minimum": "max", "sqrt": "rsqrt",
    "abs": "max", "square": "square", "clamp_min": "max", "clamp_max": "max",
    "clamp": "max", "hardtanh": "max", "leaky_relu": "max", "where": "select",
    "_to_copy": "copy", "copy": "copy", "fill": "copy",
}


@dataclass(frozen=True)
class PointwiseParams(StageParams):
    """A fused chain over [tokens, hidden] elements; ``layout`` (rows, cols) once sized."""

    tokens: int
    hidden: int
    ops: tuple[str, ...]
    reads: int
    layout: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        unknown = [o for o in self.ops if o not in ew.OP_COSTS]
        if self.tokens < 1 or self.hidden < 1 or self.reads < 1 or not self.ops or unknown:
            raise KernelShapeError(f"pointwise chain {self.ops} over [{self.tokens}, "
                                   f"{self.hidden}] reading {self.reads} operands: sizes and "
                                   f"reads must be >= 1 and every op in OP_COSTS "
                                   f"(unknown: {unknown})")


def op_of(node: Node, g: Graph) -> str | None:
    """The elementwise op a pointwise node costs as, None if it is not one the PEs run."""
    op = POINTWISE.get(node.short)
    if op is None or not float_out(node):
        return None
    if any(str(g.nodes[i].meta.get("dtype")).startswith("complex") for i in node.inputs):
        # a float result of a complex operand (``abs``, a real/imaginary part): the PEs
        # hold no complex values, and the real part alone is not the answer
        return None
    if node.short == "gelu" and node.kwargs.get("approximate", "none") == "tanh":
        return "gelu_fast"
    if node.short == "_to_copy":
        src = g.nodes[node.inputs[0]].meta.get("dtype") if node.inputs else None
        if src not in FLOAT_DTYPES:
            return None
        return "copy" if src != node.meta.get("dtype") else None
    if node.short == "where":
        # a condition the wafer holds: a constant (a causal mask), or a mask built from the
        # inputs alone on the host (`input_only`, e.g. the embedding backward's padding
        # mask), which streams in with the batch like the token ids
        cond = node.args[0]
        src = g.nodes[cond.name] if isinstance(cond, Ref) else None
        if src is None or not (src.op == "const" or src.meta.get("input_only")):
            return None
    return op


def _passes(node: Node) -> tuple[str, ...]:
    """The elementwise ops a pointwise node costs: one, but a clamp with both bounds (and
    hardtanh) is a compare-and-keep against each, and a leaky ReLU a multiply by the slope
    then a select by sign (`max(x, a x)` only holds for slopes up to 1)."""
    op = node.meta["pointwise"]
    if node.short == "leaky_relu":
        return ("mul", op)
    if node.short == "clamp":
        bounds = list(node.args[1:3]) + [node.kwargs.get("min"), node.kwargs.get("max")]
        return (op,) * max(1, sum(b is not None for b in bounds))
    if node.short == "hardtanh":
        return (op, op)
    return (op,)


def fused_cycles(spec: WaferSpec, elements: float, dtype: str, ops: tuple[str, ...] | list[str],
                 reads: int) -> float:
    """A fused pointwise chain: every op's passes back to back in registers; the SRAM is read
    ``reads`` times and written once per element (`timing.vector_cycles`'s formula)."""
    word = spec.mem_word_bits / 8
    per = sum(ew.OP_COSTS[o].passes / spec.simd.width(dtype, ew.OP_COSTS[o].simd) for o in ops)
    per = max(per, reads * BYTES[dtype] / (spec.mem_reads_per_cycle * word),
              BYTES[dtype] / (spec.mem_writes_per_cycle * word))
    return float(math.ceil(elements * per))


def layout_of(t: int, h: int, area: float, bounds: tuple[int, int] | None,
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


def fuse(g: Graph) -> int:
    """Group pointwise ops into one pass each; ``meta['group']`` = the group's first node.

    A value joins its consumers' group when it is pointwise and *private*: every user is a
    pointwise op of the same shape. Its consumers then all sit in one group, so the value
    never leaves the PE's registers and the group reads its external inputs once and
    writes one output. This fuses DAGs, not only chains: a tanh-GELU reads the GEMM
    output three times (``0.5 x``, ``x^3``, ``x + c x^3``) and is still one pass. A group
    that would end with more than one value used outside it (only possible through
    values read by several members) falls back to chains: a node joins its producer when
    it is the producer's only consumer. Returns the number of groups.
    """
    users = g.users()
    pw = [n for n in g.calls() if n.meta.get("kind") == FAMILY.kind]
    parent = {n.name: n.name for n in pw}
    order = {n.name: i for i, n in enumerate(pw)}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def private(src: Node) -> bool:
        return all(u in parent and g.nodes[u].meta["shape"] == src.meta["shape"]
                   for u in users[src.name])

    for node in pw:
        for name in node.inputs:
            if name in parent and g.nodes[name].meta["shape"] == node.meta["shape"] \
                    and private(g.nodes[name]):
                a, b = find(name), find(node.name)
                if a != b:  # the earlier node heads the group
                    a, b = (a, b) if order[a] < order[b] else (b, a)
                    parent[b] = a
    members: dict[str, list[str]] = {}
    for node in pw:
        members.setdefault(find(node.name), []).append(node.name)
    groups = 0
    for head, names in members.items():
        inside = set(names)
        outs = [m for m in names if any(u not in inside for u in users[m])]
        if len(outs) == 1:
            for m in names:
                g.nodes[m].meta["group"] = head
            groups += 1
            continue
        for m in names:  # chains only
            node = g.nodes[m]
            lead = m
            for name in node.inputs:
                if name in inside and users[name] == [m] \
                        and g.nodes[name].meta["shape"] == node.meta["shape"]:
                    lead = g.nodes[name].meta["group"]
                    break
            node.meta["group"] = lead
            groups += lead == m
    return groups


# ------------------------------------------------------------------ values ----------------
def _value(short: str, kwargs: dict[str, Any], vals: list[Any]) -> np.ndarray:
    """An ATen pointwise op on fp32 NumPy arrays (the elementwise kernels' value functions)."""
    fns = ew.POINTWISE
    x = vals[0]
    y = vals[1] if len(vals) > 1 else None
    if short in ("add", "sub"):
        alpha = kwargs.get("alpha", 1)
        r = y * np.float32(alpha) if alpha != 1 else y
        return fns[short][1](x, r)
    if short == "rsub":
        return np.subtract(y, x)
    if short in ("mul", "maximum", "minimum"):
        return {"mul": np.multiply, "maximum": np.maximum, "minimum": np.minimum}[short](x, y)
    if short == "div":
        mode = kwargs.get("rounding_mode")
        q = np.divide(x, y)
        return np.trunc(q) if mode == "trunc" else np.floor(q) if mode == "floor" else q
    if short == "pow":
        return np.power(x, y)
    if short == "sqrt":
        return np.sqrt(x)
    if short == "abs":
        return np.abs(x)
    if short == "clamp_min":
        return np.maximum(x, y)
    if short == "clamp_max":
        return np.minimum(x, y)
    if short == "clamp":
        # torch.clamp(x, min, max) = min(max(x, min), max); either bound may be None
        lo = y if y is not None else kwargs.get("min")
        hi = vals[2] if len(vals) > 2 else kwargs.get("max")
        out = x if lo is None else np.maximum(x, lo)
        return out if hi is None else np.minimum(out, hi)
    if short == "hardtanh":
        lo = y if y is not None else kwargs.get("min_val", -1.0)
        hi = vals[2] if len(vals) > 2 else kwargs.get("max_val", 1.0)
        return np.minimum(np.maximum(x, np.float32(lo)), np.float32(hi))
    if short == "leaky_relu":
        slope = np.float32(y if y is not None else kwargs.get("negative_slope", 0.01))
        return np.where(x > 0, x, x * slope)
    if short == "where":
        return np.where(x.astype(bool), y, vals[2])
    if short in ("_to_copy", "copy", "fill"):
        return (y if short != "_to_copy" else x) * np.float32(1)
    if short == "gelu":
        key = "gelu_fast" if kwargs.get("approximate", "none") == "tanh" else "gelu"
        return fns[key][1](x)
    return fns[short][1](x)


def node_value(node: Node, vals: list[Any]) -> np.ndarray:
    """One pointwise node on fp32 operands, rounded to its storage dtype (as PyTorch
    rounds after every op), as fp32: the value step of fused stages and epilogues."""
    with np.errstate(all="ignore"):
        res = np.asarray(_value(node.short, node.kwargs, vals), np.float32)
    return to_storage(res, TORCH_TO_FABRIC[node.meta["dtype"]]).astype(np.float32, copy=False)


def _plain(v: Any, shape: tuple[int, ...] | None = None) -> Any:
    """An operand as fp32 NumPy (a tensor broadcast to ``shape``) or an fp32 scalar."""
    if isinstance(v, torch.Tensor):
        full = to_np(v).astype(np.float32, copy=False)
        return full if full.ndim == 0 or shape is None else np.broadcast_to(full, shape)
    return np.float32(v) if isinstance(v, (int, float, bool)) else v


def _owned(res: np.ndarray, shape: tuple[int, ...], operands: list[Any]) -> np.ndarray:
    """``res`` as a value of its own: itself when it is a fresh, whole, writable array (it
    goes to torch without a copy), else a copy (a broadcast, or an operand's own memory
    when an op returns its input): values must never alias each other. Copying every
    result (and every operand) was a third of GenSLM-25M's functional forward at 10,240
    tokens."""
    if res.shape != shape or not (res.flags.c_contiguous and res.flags.writeable) \
            or any(isinstance(v, np.ndarray) and np.may_share_memory(res, v)
                   for v in operands):
        return np.array(np.broadcast_to(res, shape), np.float32)
    return res


class Pointwise(KernelFamily):
    """Fused chains of elementwise ops (module docstring)."""

    kind = "pointwise"
    targets = frozenset(POINTWISE)
    fuses_into = "epilogue"

    def rejects(self, node: Node, g: Graph) -> str | None:
        if op_of(node, g) is not None:
            return None
        return super().rejects(node, g) or "no wafer kernel for this op"

    def annotate(self, node: Node, g: Graph) -> None:
        node.meta["pointwise"] = op_of(node, g)

    def group(self, g: Graph) -> int:
        return fuse(g)

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[PointwiseParams, float]:
        t, h = rows_cols(nodes[0].meta["shape"])
        ops = tuple(o for n in nodes for o in _passes(n))
        names = {n.name for n in nodes}
        external = {i for n in nodes for i in n.inputs if i not in names}
        return (PointwiseParams(t, h, ops, max(1, len(external))),
                float(t * h * sum(ew.OP_COSTS[o].flops for o in ops)))

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[PointwiseParams, Sizing]:
        p: PointwiseParams = st.params  # type: ignore[assignment]
        t, h = layout_of(p.tokens, p.hidden, area, bounds, side_cap)
        eb = BYTES[st.dtype]

        def pw_bytes(r: int, c: int) -> int:
            return (p.reads + 1) * -(-t // r) * -(-h // c) * eb

        rect = row_rect(spec, t, h, area, bounds, pw_bytes)
        tile = -(-t // rect[0]) * -(-h // rect[1])
        return PointwiseParams(p.tokens, p.hidden, p.ops, p.reads, (t, h)), Sizing(
            rect, fused_cycles(spec, tile, st.dtype, p.ops, p.reads), pw_bytes(*rect),
            "fused: " + "+".join(p.ops))

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun | None:
        """The whole chain runs at its last node: operands distributed with the output's
        layout, the chain charged as one pass on the stage's fabric (SRAM for every operand
        and the output, one execute). Values are computed on the plain array, not on the
        PE tiles: every op is elementwise and runs in fp32 with the same per-op rounding,
        so an element's value does not depend on which PE holds it (or on the tiles'
        padding), and spreading operands into tiles cost more than the ops. No clock
        depends on a value either, so a stage with the figures of an earlier one
        (`figures_key`: every training step repeats them) reads them."""
        if node.name != st.nodes[-1]:
            return None
        p: PointwiseParams = st.params  # type: ignore[assignment]
        g = ctx.graph
        shape = tuple(node.meta["shape"])
        key = figures_key(ctx, st, shape)
        measured = remembered(key)
        if measured is None:
            fab = ctx.fabric(st)
            numel = math.prod(shape)
            h = shape[-1] if shape else 1
            t, h = p.layout or (max(1, numel // max(1, h)), h)
            probe = MeshTensor(fab, fab.full, (t, h), st.dtype, 0, 1, None, allocate=False)
            tile = float(np.prod(probe.tile_shape))
            for i in range(p.reads + 1):
                fab.sram.alloc(f"pw{i}", 0, 0, probe.bytes_per_pe())
            fab.execute(fab.full, fused_cycles(ctx.spec, tile, st.dtype, p.ops, p.reads), 0.0)
            measured = remember(key, done(fab))
        if not ctx.timing_only:
            local: dict[str, np.ndarray] = {}
            read: list[Any] = []
            for name in st.nodes:
                member = g.nodes[name]
                vals = [local[a.name] if isinstance(a, Ref) and a.name in local
                        else _plain(ctx.env[a.name], shape) if isinstance(a, Ref)
                        else a if isinstance(a, (list, tuple)) else _plain(a)
                        for a in member.args]
                read += vals
                local[name] = node_value(member, vals)
            ctx.env[node.name] = to_torch(_owned(local[node.name], shape, read),
                                          getattr(torch, node.meta["dtype"]))
        return measured

    def execute_fused(self, ctx: ExecContext, st: Stage, node: Node) -> None:
        """A node of a chain fused into a GEMM: the same value function and rounding as a
        stage's, on the whole output (elementwise, so tiling it over the groups' PEs
        changes no value); its cycles are the GEMM stage's."""
        if ctx.timing_only:
            return
        vals = [to_np(v).astype(np.float32, copy=False) if isinstance(v, torch.Tensor)
                else _plain(v)
                for v in (ctx.env[a.name] if isinstance(a, Ref) else a for a in node.args)]
        res = node_value(node, vals)
        ctx.env[node.name] = to_torch(_owned(res, tuple(node.meta["shape"]), vals),
                                      getattr(torch, node.meta["dtype"]))


FAMILY = Pointwise()

__all__ = ["FAMILY", "POINTWISE", "PointwiseParams", "fuse", "fused_cycles", "layout_of",
           "node_value", "op_of"]
