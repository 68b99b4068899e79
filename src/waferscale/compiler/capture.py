"""Capture a PyTorch model as a core-ATen :class:`~waferscale.compiler.ir.Graph`.

Two front doors feed the same graph: ``torch.export`` (whole model, ahead of time) and the
ATen graphs ``aot_autograd`` hands to the ``waferscale`` torch.compile backend. Attention
stays one op: ``aten.scaled_dot_product_attention`` is removed from the decomposition
table, because the wafer has an attention kernel and decomposing it into matmul + softmax
would lose the causal structure (and is not bitwise, see docs/compiler.md).

After conversion, ``fold_constants`` evaluates every op whose inputs are all constants
(weight transposes, rotary tables, causal masks built from ``arange``): on the wafer those
are laid out when the program is loaded, not computed per sample.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.utils._pytree as pytree

from waferscale.compiler.errors import CaptureError, MissingInputsError, UnsupportedDtypeError
from waferscale.compiler.ir import Graph, Node, Ref, map_refs, source_of, tensor_meta

#: Ops never folded: they would make a constant out of something that changes per call.
_NO_FOLD = ("rand", "randn", "randint", "bernoulli", "dropout", "native_dropout", "empty")


def decomposition_table() -> dict[Any, Any]:
    """Core-ATen decompositions, minus SDPA (kept whole for the attention kernel)."""
    table = torch.export.default_decompositions()
    table.pop(torch.ops.aten.scaled_dot_product_attention.default, None)
    return table


def _as_args(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if example_inputs is None:
        raise MissingInputsError("no example inputs: pass example_inputs=(tensor, ...) or a "
                                 "dict of keyword tensors; shapes are needed to capture")
    if isinstance(example_inputs, dict):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise MissingInputsError(f"example inputs must be a tensor, a tuple of tensors or a "
                                 f"dict, got {type(example_inputs).__name__}")
    leaves = [x for x in pytree.tree_leaves((args, kwargs)) if isinstance(x, torch.Tensor)]
    if not leaves:
        raise MissingInputsError("example inputs contain no tensor; pass at least one tensor")
    return args, kwargs


def _check_dtypes(model: torch.nn.Module, args: Any) -> None:
    ok = (torch.float32, torch.float16, torch.bfloat16)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and p.dtype not in ok:
            raise UnsupportedDtypeError(
                f"parameter {name} is {str(p.dtype).replace('torch.', '')}; the PEs compute in "
                f"fp32, fp16 or bf16: convert the model with model.to(torch.float32) or "
                f"torch.bfloat16")
    for x in pytree.tree_leaves(args):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype not in ok:
            raise UnsupportedDtypeError(
                f"an example input is {str(x.dtype).replace('torch.', '')}; use fp32, fp16 "
                f"or bf16 inputs")
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise UnsupportedDtypeError("complex inputs have no datapath on the PEs; pass "
                                        "real tensors")


def _shorten(exc: Exception) -> str:
    """The exporter's reason cut to what the user must change."""
    text = str(exc)
    where = ""
    m = re.search(r'File "([^"]+)", line (\d+)', text)
    if m:
        where = f" at {m.group(1).split('/')[-1]}:{m.group(2)}"
    m2 = re.search(r"User code \(most recent call last\):.*?File \"([^\"]+)\", line (\d+)",
                   text, re.S)
    if m2:
        where = f" at {m2.group(1).split('/')[-1]}:{m2.group(2)}"
    data_dependent = any(s in text for s in (
        "data-dependent", "data dependent", "GuardOnDataDependent", "Could not guard on",
        "Could not extract specialized integer", "Data dependent"))
    if data_dependent:
        return (f"the model's control flow depends on tensor values{where} (an if/while on a "
                f"tensor, .item() or a value-dependent shape); make it depend on shapes or "
                f"constants, or use torch.cond")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return f"{type(exc).__name__}: {first[:200]}{where}"


def export(model: torch.nn.Module, example_inputs: Any, *, strict: bool = False
           ) -> torch.export.ExportedProgram:
    """``torch.export`` + core-ATen decompositions (SDPA kept), with typed errors."""
    args, kwargs = _as_args(example_inputs)
    _check_dtypes(model, (args, kwargs))
    try:
        ep = torch.export.export(model, args, kwargs, strict=strict)
        return ep.run_decompositions(decomposition_table())
    except Exception as exc:  # the exporter raises many unrelated classes
        raise CaptureError(
            f"torch.export cannot capture {type(model).__name__}: {_shorten(exc)}; or compile "
            f"it with torch.compile(model, backend='waferscale'), which splits the graph "
            f"there and runs the rest on the wafer") from exc


def _convert(gm_graph: torch.fx.Graph, const_of: dict[str, torch.Tensor],
             user_inputs: list[str]) -> Graph:
    g = Graph()
    g.user_inputs = list(user_inputs)
    env: dict[str, str] = {}

    def ref(n: Any) -> Any:
        return Ref(env[n.name]) if isinstance(n, torch.fx.Node) else n

    for n in gm_graph.nodes:
        meta = tensor_meta(n.meta.get("val"))
        where, code = source_of(n.meta.get("stack_trace"))
        meta.update(source=where, code=code)
        if n.op == "placeholder":
            op = "const" if n.name in const_of else "input"
            g.add(Node(n.name, op, target=n.name, meta=meta))
            if op == "const":
                g.constants[n.name] = const_of[n.name]
        elif n.op == "get_attr":
            owner = gm_graph.owning_module
            value = getattr(owner, str(n.target)) if owner is not None else None
            g.add(Node(n.name, "const", target=str(n.target), meta=meta))
            if isinstance(value, torch.Tensor):
                g.constants[n.name] = value
        elif n.op == "call_function":
            args = torch.fx.node.map_aggregate(n.args, ref)
            kwargs = dict(torch.fx.node.map_aggregate(n.kwargs, ref))
            target = str(n.target) if not callable(n.target) or hasattr(n.target, "_schema") \
                else getattr(n.target, "__name__", str(n.target))
            g.add(Node(n.name, "call", target=target, args=tuple(args), kwargs=kwargs,
                       meta=meta, fn=n.target))
        elif n.op == "output":
            g.outputs = list(pytree.tree_leaves(torch.fx.node.map_aggregate(n.args[0], ref)))
        env[n.name] = n.name
    return g


def from_exported(ep: torch.export.ExportedProgram) -> Graph:
    """Copy an exported program into the compiler's graph (parameters become constants)."""
    sig = ep.graph_signature
    const_of: dict[str, torch.Tensor] = {}
    state = ep.state_dict
    for name, target in sig.inputs_to_parameters.items():
        const_of[name] = state[target]
    for name, target in sig.inputs_to_buffers.items():
        const_of[name] = state[target] if target in state else ep.constants[target]
    for name, target in getattr(sig, "inputs_to_lifted_tensor_constants", {}).items():
        const_of[name] = ep.constants[target]
    users = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"]
    g = _convert(ep.graph, const_of, users)
    g.out_spec = ep.call_spec.out_spec
    g.source = "torch.export"
    return g


def from_fx(gm: torch.fx.GraphModule) -> Graph:
    """An ATen GraphModule from aot_autograd: every placeholder is a runtime input."""
    users = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    g = _convert(gm.graph, {}, users)
    g.source = "torch.compile"
    return g


def fold_constants(g: Graph) -> int:
    """Evaluate ops whose inputs are all constants; returns how many were folded."""
    folded = 0
    for node in list(g.nodes.values()):
        if node.op != "call" or node.fn is None:
            continue
        if any(g.nodes[i].op != "const" for i in node.inputs):
            continue
        if any(s in node.target for s in _NO_FOLD) or "_assert" in node.target:
            continue
        try:
            with torch.no_grad():
                value = node.fn(*map_refs(node.args, lambda r: g.constants[r.name]),
                                **map_refs(node.kwargs, lambda r: g.constants[r.name]))
        except Exception:
            continue
        if not isinstance(value, torch.Tensor):
            # tuples (split) stay as calls; their getitems fold on the next round
            if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor)
                                                        for v in value):
                node.meta["folded_tuple"] = True
                g.constants[node.name] = value  # type: ignore[assignment]
                node.op = "const"
                folded += 1
            continue
        g.constants[node.name] = value
        node.op = "const"
        node.meta["folded_from"] = node.target
        folded += 1
    return folded


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


def capture(model: torch.nn.Module, example_inputs: Any, *, strict: bool = False) -> Graph:
    """torch.export -> core ATen -> :class:`Graph`, constants folded, dead code removed."""
    ep = export(model, example_inputs, strict=strict)
    g = from_exported(ep)
    fold_constants(g)
    eliminate_dead(g)
    return g


__all__ = ["capture", "decomposition_table", "eliminate_dead", "export", "fold_constants",
           "from_exported", "from_fx"]
