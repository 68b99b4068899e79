"""The compiler's graph: a plain, serialisable list of tensor ops (torch.fx style).

Why not keep torch.fx's own graph: passes here need to add nodes' placement, cost and
kernel choice, serialise the result as JSON, and run without torch's tracing machinery.
So a captured graph is copied into :class:`Graph`: every :class:`Node` has an ``op``
(``input``, ``const``, ``call``), a ``target`` (the ATen overload's name, e.g.
``aten.addmm.default``), its ``args``/``kwargs`` with :class:`Ref` where another node's
value goes, and a ``meta`` dict that passes annotate and later passes read:

* ``shape``, ``dtype`` (torch dtype name), ``numel``: from the exporter's fake tensors;
* ``flops``, ``bytes``: work and traffic of the op (``annotate_costs``);
* ``sparsity``: fraction of zeros of the output, measured when values exist;
* ``source``: ``file:line in function`` of the user code that produced it, and ``code``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch


@dataclass(frozen=True)
class Ref:
    """A use of another node's value inside ``args``/``kwargs``."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass
class Node:
    """One op of the graph; ``fn`` is the callable (not serialised) that runs it on the host."""

    name: str
    op: str                       # "input" | "const" | "call"
    target: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)

    @property
    def inputs(self) -> list[str]:
        """Names of the nodes this one reads, in order of first use."""
        seen: list[str] = []
        for r in iter_refs((self.args, self.kwargs)):
            if r.name not in seen:
                seen.append(r.name)
        return seen

    @property
    def short(self) -> str:
        """The op without namespace and overload: ``addmm`` for ``aten.addmm.default``."""
        parts = self.target.split(".")
        return parts[1] if len(parts) >= 2 and parts[0] == "aten" else self.target


def iter_refs(obj: Any) -> Iterator[Ref]:
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from iter_refs(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from iter_refs(o)


def map_refs(obj: Any, fn: Callable[[Ref], Any]) -> Any:
    """``obj`` with every :class:`Ref` replaced by ``fn(ref)`` (lists, tuples, dicts kept)."""
    if isinstance(obj, Ref):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(map_refs(o, fn) for o in obj)
    if isinstance(obj, list):
        return [map_refs(o, fn) for o in obj]
    if isinstance(obj, dict):
        return {k: map_refs(v, fn) for k, v in obj.items()}
    return obj


@dataclass
class Graph:
    """Nodes in topological order, the graph's outputs, and the constant tensors.

    ``constants`` holds parameters, buffers and lifted constants by node name (meta tensors
    when the model was built on the meta device). ``out_spec`` rebuilds the model's output
    structure (a pytree spec) from the flat outputs.
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    outputs: list[Any] = field(default_factory=list)
    constants: dict[str, torch.Tensor] = field(default_factory=dict)
    user_inputs: list[str] = field(default_factory=list)
    out_spec: Any = None
    source: str = "torch.export"

    def add(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def users(self) -> dict[str, list[str]]:
        """Consumers of every node (outputs count as a consumer named ``<output>``)."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self.nodes.values():
            for name in node.inputs:
                out[name].append(node.name)
        for r in iter_refs(self.outputs):
            out[r.name].append("<output>")
        return out

    def calls(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == "call"]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.calls():
            counts[n.target] = counts.get(n.target, 0) + 1
        return dict(sorted(counts.items()))

    def parameter_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.constants.values())

    def parameter_count(self) -> int:
        return sum(t.numel() for t in self.constants.values() if t.is_floating_point())


def eliminate_dead(g: Graph) -> int:
    """Drop nodes no output depends on (folded subgraphs, assertions)."""
    live: set[str] = set()
    stack = [r.name for r in map_refs_list(g.outputs)]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        stack.extend(g.nodes[name].inputs)
    dead = [n for n in g.nodes if n not in live and g.nodes[n].op != "input"]
    for n in dead:
        del g.nodes[n]
        g.constants.pop(n, None)
    return len(dead)


def map_refs_list(outputs: list[Any]) -> list[Ref]:
    return [o for o in outputs if isinstance(o, Ref)]


# ------------------------------------------------------------ pattern-matching helpers -----
# What the kernel families' graph rewrites (`KernelFamily.match`: the loss and RMS-norm
# matchers) read of the nodes around a candidate pattern.
def ref_name(x: Any) -> str | None:
    """The node an argument refers to, None for a literal."""
    return x.name if isinstance(x, Ref) else None


def const_value(g: Graph, x: Any) -> Any:
    """The Python value of a scalar argument: inline, or a folded 0-d constant (its value,
    or the literal it was built from when folded on the meta device); None otherwise."""
    if isinstance(x, (int, float, bool)):
        return x
    name = ref_name(x)
    if name is not None and g.nodes[name].op == "const":
        if "scalar" in g.nodes[name].meta:       # a literal folded on the meta device
            return g.nodes[name].meta["scalar"]
        v = g.constants.get(name)
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type != "meta":
            return v.item()
    return None


def sole_user(users: dict[str, list[str]], name: str, g: Graph) -> Node | None:
    """The one call node that reads ``name``, None if it has several or is an output."""
    us = users.get(name, [])
    node = g.nodes.get(us[0]) if len(us) == 1 else None    # "<output>" is no node
    return node if node is not None and node.op == "call" else None


def rewrite_call(node: Node, target: str, fn: Callable[..., Any], args: tuple[Any, ...],
                 source: Node) -> None:
    """Turn ``node`` (the last op of a matched pattern) into one call of ``target``: its
    users and the graph's outputs keep reading it; the source line is the pattern's first
    op's. The ops it replaces are then dead (`eliminate_dead`)."""
    node.target, node.fn, node.args, node.kwargs = target, fn, args, {}
    node.meta.update({k: source.meta[k] for k in ("source", "code") if k in source.meta})


DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def fabric_dtype(dtype: torch.dtype) -> str | None:
    """The fabric storage dtype of a torch dtype, None if the PEs cannot compute with it."""
    return DTYPE_NAMES.get(dtype)


def tensor_meta(value: Any) -> dict[str, Any]:
    """Shape/dtype/numel/bytes of a (fake) tensor, or of the tensors of a tuple result."""
    if isinstance(value, torch.Tensor):
        shape = [int(s) for s in value.shape]
        return {"shape": shape, "dtype": str(value.dtype).replace("torch.", ""),
                "numel": math.prod(shape), "out_bytes": math.prod(shape) * value.element_size()}
    if isinstance(value, (list, tuple)):
        parts = [tensor_meta(v) for v in value]
        return {"shape": [p.get("shape") for p in parts],
                "dtype": [p.get("dtype") for p in parts],
                "numel": sum(p.get("numel", 0) for p in parts),
                "out_bytes": sum(p.get("out_bytes", 0) for p in parts)}
    return {"shape": None, "dtype": type(value).__name__, "numel": 0, "out_bytes": 0}


def source_of(stack_trace: str | None) -> tuple[str, str]:
    """``(file:line in fn, code)`` of the innermost frame of an fx ``stack_trace``.

    The exporter records the Python stack that created the op, outermost first; the last
    frame is the line the user (or the library the user called) wrote.
    """
    if not stack_trace:
        return "", ""
    lines = [ln for ln in stack_trace.strip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i].strip()
        if ln.startswith("File "):
            try:
                file_part, line_part, fn_part = ln.split(", ", 2)
                path = file_part[len("File "):].strip('"')
                short = "/".join(path.split("/")[-2:])
                where = f"{short}:{line_part.replace('line ', '')} in {fn_part[3:]}"
            except ValueError:
                where = ln
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return where, code
    return "", ""


_T = TypeVar("_T")


def per_graph(store: dict[int, _T], g: Graph, make: Callable[[], _T]) -> _T:
    """``make()`` once per graph object: kept in ``store`` by the graph's id and dropped
    when the graph is collected (so a new graph at a recycled id never reads it). For what
    a pass derives from a compiled graph every run and the graph never changes after
    compiling."""
    key = id(g)
    if key not in store:
        store[key] = make()
        weakref.finalize(g, store.pop, key, None)
    return store[key]


__all__ = ["DTYPE_NAMES", "Graph", "Node", "Ref", "const_value", "eliminate_dead", "fabric_dtype",
           "iter_refs", "map_refs", "map_refs_list", "per_graph", "ref_name", "rewrite_call",
           "sole_user", "source_of", "tensor_meta"]
