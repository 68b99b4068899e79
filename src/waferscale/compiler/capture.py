"""Capture a PyTorch model as a core-ATen :class:`~waferscale.ir.Graph`.

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

import contextlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree

from waferscale.compiler.errors import CaptureError, MissingInputsError, UnsupportedDtypeError
from waferscale.ir import (
    Graph,
    Node,
    Ref,
    eliminate_dead,
    iter_refs,
    map_refs,
    source_of,
    tensor_meta,
)

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


#: Loggers that print a traceback of their own when a model fails to trace (a shape
#: mismatch in the user's forward): the failure becomes one `CaptureError`, whose cause
#: keeps that traceback, instead of 20 lines on stderr before it.
_EXPORT_LOGGERS = ("torch._subclasses.fake_tensor",)


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    before = [lg.disabled for lg in loggers]
    for lg in loggers:
        lg.disabled = True
    try:
        yield
    finally:
        for lg, was in zip(loggers, before, strict=True):
            lg.disabled = was


def export(model: torch.nn.Module, example_inputs: Any, *, strict: bool = False
           ) -> torch.export.ExportedProgram:
    """``torch.export`` + core-ATen decompositions (SDPA kept), with typed errors."""
    args, kwargs = _as_args(example_inputs)
    _check_dtypes(model, (args, kwargs))
    try:
        with _quiet(_EXPORT_LOGGERS):
            ep = torch.export.export(model, args, kwargs, strict=strict)
            return ep.run_decompositions(decomposition_table())
    except Exception as exc:  # the exporter raises many unrelated classes
        raise CaptureError(
            f"torch.export cannot capture {type(model).__name__}: {_shorten(exc)}; or compile "
            f"it with torch.compile(model, backend='waferscale'), which splits the graph "
            f"there and runs the rest on the wafer") from exc


def _module_path(n: torch.fx.Node) -> str:
    """The innermost module an op was traced in (``gpt_neox.layers.3.mlp.dense_h_to_4h``):
    what weight streaming reports its timeline by. A backward graph's nodes carry the
    stack of the forward op they differentiate (aot_autograd's ``fwd_nn_module_stack``)."""
    stack = n.meta.get("nn_module_stack") or n.meta.get("fwd_nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    return path.replace("L['self'].", "").replace("L['fn'].", "")


def _data_dependent_shape(n: torch.fx.Node, where: str, code: str) -> str:
    """Why a node whose shape depends on tensor values (``x[x > 0]``, ``nonzero``,
    ``masked_select``, an index built from values) cannot be compiled, and what to do."""
    op = str(n.target) if hasattr(n.target, "_schema") else getattr(n.target, "__name__",
                                                                       str(n.target))
    at = f" at {where}" + (f" ({code})" if code else "") if where else ""
    return (f"{op}{at} makes a tensor whose shape depends on the values (a boolean mask "
            f"index, nonzero, masked_select, unique): the wafer's programs have static "
            f"shapes; keep the shape with torch.where(mask, x, 0) or a fixed-size top-k, or "
            f"compile with torch.compile(model, backend='waferscale'), which runs that part "
            f"on the host")


def _convert(gm_graph: torch.fx.Graph, const_of: dict[str, torch.Tensor],
             user_inputs: list[str]) -> Graph:
    # imported here, not at module import: it loads sympy (about a second), which an
    # estimate compiling a cached capture (`capture_cache`) never needs
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    g = Graph()
    g.user_inputs = list(user_inputs)
    env: dict[str, str] = {}

    def ref(n: Any) -> Any:
        return Ref(env[n.name]) if isinstance(n, torch.fx.Node) else n

    for n in gm_graph.nodes:
        where, code = source_of(n.meta.get("stack_trace"))
        try:
            meta = tensor_meta(n.meta.get("val"))
        except GuardOnDataDependentSymNode:
            raise CaptureError(_data_dependent_shape(n, where, code)) from None
        meta.update(source=where, code=code, module=_module_path(n))
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
                _make_const(node)
                folded += 1
            continue
        g.constants[node.name] = value
        if value.device.type == "meta" and not node.inputs and len(node.args) == 1 \
                and isinstance(node.args[0], (int, float, bool)):
            # a scalar built from a literal (scalar_tensor(0)): the meta device drops the
            # value, which later passes need to recognise patterns (the loss matcher,
            # `kernels.loss.fuse_cross_entropy`)
            node.meta["scalar"] = node.args[0]
        _make_const(node)
        node.meta["folded_from"] = node.target
        folded += 1
    return folded


def _make_const(node: Node) -> None:
    """A folded node holds its value: it no longer reads its operands, so a weight that
    only fed a folded transpose is dead (it was kept, and counted twice in the model's
    parameters: GenSLM-25M read 50.5M for its 25.3M)."""
    node.op = "const"
    node.args, node.kwargs = (), {}


# ------------------------------------------------------------ repeated-layer capture -------
def repeated_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The model's stack of identical layers: ``(path, ModuleList)``, or None.

    Identical means same class and the same parameter/buffer names, shapes and dtypes, so
    one layer's graph is every layer's graph. The largest such stack (by parameters) is
    the decoder; smaller ones are left alone.
    """
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for path, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) < 3 or not path:
            continue
        first = mod[0]

        def signature(m: torch.nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
            return [(n, tuple(t.shape), t.dtype) for n, t in
                    list(m.named_parameters()) + list(m.named_buffers())]

        sig = signature(first)
        if any(type(m) is not type(first) or signature(m) != sig for m in mod):
            continue
        size = sum(t.numel() for _, t in first.named_parameters()) * len(mod)
        if best is None or size > best[0]:
            best = (size, path, mod)
    return None if best is None else (best[1], best[2])


def _layer_of(path_prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(path_prefix)}\.(\d+)(?:\.|$)")


def _layer_tags(ep: torch.export.ExportedProgram, prefix: str) -> dict[str, int]:
    """Node name -> index of the repeated layer it belongs to (untagged: outside layers).

    Call nodes carry the exporter's ``nn_module_stack``; parameter/buffer placeholders are
    tagged by the state-dict name they stand for.
    """
    pat = _layer_of(prefix)
    tags: dict[str, int] = {}
    sig = ep.graph_signature
    targets = dict(sig.inputs_to_parameters)
    targets.update(sig.inputs_to_buffers)
    for name, target in targets.items():
        m = pat.match(target)
        if m:
            tags[name] = int(m.group(1))
    for n in ep.graph.nodes:
        if n.op != "call_function":
            continue
        for path, _ in (n.meta.get("nn_module_stack") or {}).values():
            m = pat.match(str(path))
            if m:
                tags[n.name] = int(m.group(1))
                break
    return tags


def _shape_key(obj: Any) -> Any:
    """Args with every Ref blanked: two layers' nodes must agree on everything else."""
    return repr(map_refs(obj, lambda r: "%"))


def _replicate(g: Graph, tags: dict[str, int], n_layers: int, prefix: str,
               tensors: dict[str, torch.Tensor], param_target: dict[str, str]) -> Graph | None:
    """Grow a graph captured with layers 0 and 1 into the ``n_layers`` graph.

    Layer 1 is the template: copy ``k`` (2 <= k < n) is layer 1 with its own parameters
    (``prefix.k.*``), its reads of layer-0 values redirected to copy ``k-1`` (the carried
    hidden state) and its reads of values from outside the layers (rotary tables, masks)
    kept. Nodes after the layers read copy ``n-1`` instead of layer 1. Returns None when the
    graph does not have that shape (the caller then exports the whole model).
    """
    order = list(g.nodes)
    pos = {name: i for i, name in enumerate(order)}
    l0 = [n for n in order if tags.get(n) == 0]
    l1 = [n for n in order if tags.get(n) == 1]
    if not l0 or len(l0) != len(l1) or any(t not in (0, 1) for t in tags.values()):
        return None
    calls0 = [n for n in l0 if g.nodes[n].op == "call"]
    calls1 = [n for n in l1 if g.nodes[n].op == "call"]
    if not calls1 or len(calls0) != len(calls1):
        return None
    # the two layers run back to back: no outside call node in between or inside them
    lo, hi = pos[calls0[0]], pos[calls1[-1]]
    for name in order[lo:hi + 1]:
        if g.nodes[name].op == "call" and name not in tags:
            return None
    index1 = {n: j for j, n in enumerate(l1)}
    partner = dict(zip(l0, l1, strict=True))
    for a, b in zip(l0, l1, strict=True):
        na, nb = g.nodes[a], g.nodes[b]
        # (a parameter's target is its own name)
        ta, tb = (na.target, nb.target) if na.op == "call" else ("", "")
        if (na.op, ta, _shape_key(na.args), _shape_key(na.kwargs),
                na.meta.get("shape"), na.meta.get("dtype")) != (
                nb.op, tb, _shape_key(nb.args), _shape_key(nb.kwargs),
                nb.meta.get("shape"), nb.meta.get("dtype")):
            return None
        # layer 1 reads layer 1 where layer 0 reads layer 0, and layer-0 values (the carried
        # state) only where layer 0 reads the layers' input
        for ra, rb in zip(iter_refs((na.args, na.kwargs)), iter_refs((nb.args, nb.kwargs)),
                          strict=True):
            if tags.get(ra.name) == 0 and partner[ra.name] != rb.name:
                return None
            if tags.get(ra.name) is None and tags.get(rb.name) == 1:
                return None
    # after the layers, nothing may read layer 0 directly (e.g. all hidden states)
    users_after = [n for n in order if n not in tags and pos[n] > hi]
    for name in users_after:
        if any(tags.get(r) == 0 for r in g.nodes[name].inputs):
            return None
    if any(tags.get(r.name) == 0 for r in iter_refs(g.outputs)):
        return None

    taken = set(order)
    pat = _layer_of(prefix)

    def fresh(stem: str, k: int) -> str:
        name = f"{stem}_l{k}"
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    index0 = {n: j for j, n in enumerate(l0)}
    copies: list[list[str]] = [l0, l1]
    new_nodes: list[Node] = []
    for k in range(2, n_layers):
        names = [fresh(n, k) for n in l1]
        prev = copies[k - 1]

        def remap(r: Ref, names: list[str] = names, prev: list[str] = prev) -> Ref:
            if r.name in index1:
                return Ref(names[index1[r.name]])
            if r.name in index0:
                return Ref(prev[index0[r.name]])
            return r

        for j, src in enumerate(l1):
            node = g.nodes[src]
            new = Node(names[j], node.op, target=node.target, args=map_refs(node.args, remap),
                       kwargs=map_refs(node.kwargs, remap), meta=dict(node.meta), fn=node.fn)
            if node.op == "const":
                target = param_target.get(src)
                if target is None or not pat.match(target):
                    return None
                own = pat.sub(f"{prefix}.{k}.", target, count=1)
                if own not in tensors:
                    return None
                new.target = new.name
                g.constants[new.name] = tensors[own]
            new_nodes.append(new)
        copies.append(names)
    last = copies[-1]

    def remap_after(r: Ref) -> Ref:
        return Ref(last[index1[r.name]]) if r.name in index1 else r

    out = Graph(user_inputs=list(g.user_inputs), out_spec=g.out_spec, source=g.source,
                constants=g.constants)
    for name in order:
        node = g.nodes[name]
        if pos[name] > hi and name not in tags:
            node.args = map_refs(node.args, remap_after)
            node.kwargs = map_refs(node.kwargs, remap_after)
        out.add(node)
        if name == calls1[-1]:
            for new in new_nodes:
                out.add(new)
    out.outputs = [map_refs(o, remap_after) for o in g.outputs]
    return out


@contextlib.contextmanager
def first_blocks(model: torch.nn.Module, prefix: str, keep: int) -> Iterator[None]:
    """``model`` with only the first ``keep`` layers of its stack at ``prefix`` (and its
    config's ``num_hidden_layers`` to match) while the block runs; restored after, also
    on error. Tracing cost grows with the layers traced, so estimates trace a few layers
    and replicate what one middle layer does (here and in `report.training`)."""
    parent_path, _, attr = prefix.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    blocks = parent._modules[attr]
    config = getattr(model, "config", None)
    cfg_layers = getattr(config, "num_hidden_layers", None)
    parent._modules[attr] = torch.nn.ModuleList(list(blocks)[:keep])
    if cfg_layers == len(blocks):
        config.num_hidden_layers = keep
    try:
        yield
    finally:
        parent._modules[attr] = blocks
        if cfg_layers == len(blocks):
            config.num_hidden_layers = cfg_layers


def capture_replicated(model: torch.nn.Module, example_inputs: Any, *, strict: bool = False
                       ) -> Graph | None:
    """Capture a model whose decoder is N identical layers by exporting it with 2 of them.

    ``torch.export`` costs time per op traced, so a 64-layer model costs 32 times a 2-layer
    one; the graph of layers 2..N-1 is layer 1's, replicated (with each layer's own
    parameters). The result is the same graph the full export gives (same ops, shapes,
    FLOPs and bytes; node names differ), so planning and timing see the whole model.
    Returns None when the model has no such stack or its graph does not have that shape.
    """
    found = repeated_blocks(model)
    if found is None:
        return None
    prefix, blocks = found
    n_layers = len(blocks)
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    with first_blocks(model, prefix, 2):
        ep = export(model, example_inputs, strict=strict)
    tags = _layer_tags(ep, prefix)
    sig = ep.graph_signature
    param_target = dict(sig.inputs_to_parameters)
    param_target.update(sig.inputs_to_buffers)
    return _replicate(from_exported(ep), tags, n_layers, prefix, tensors, param_target)


def capture(model: torch.nn.Module, example_inputs: Any, *, strict: bool = False,
            replicate: bool | None = None) -> Graph:
    """torch.export -> core ATen -> :class:`Graph`, constants folded, dead code removed.

    ``replicate``: export one copy of the repeated decoder layer pair and replicate it
    (:func:`capture_replicated`). ``None`` (default) does so for meta-device models, whose
    compile is estimate-only and where a full export of a billions-of-parameters model
    costs most of the compile time; real-weight models are exported whole, op by op.
    """
    if replicate is None:
        replicate = any(p.device.type == "meta" for p in model.parameters())
    g = capture_replicated(model, example_inputs, strict=strict) if replicate else None
    if g is None:
        ep = export(model, example_inputs, strict=strict)
        g = from_exported(ep)
    fold_constants(g)
    eliminate_dead(g)
    return g


__all__ = ["capture", "capture_replicated", "decomposition_table", "export", "first_blocks",
           "fold_constants", "from_exported", "from_fx", "repeated_blocks"]
