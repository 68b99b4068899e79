"""Lowering: every ATen op to a kernel family, a layout change, or a host fallback.

The table below is the whole contract between PyTorch and the wafer (docs/compiler.md
prints it). Passes write ``node.meta['kind']`` (``gemm``, ``attention``, ``layer_norm``,
``softmax``, ``embedding``, ``reduce``, ``cross_entropy``, ``pointwise``, ``relabel``,
``move``, ``fallback``) and, for pointwise ops, ``node.meta['pointwise']`` (the
elementwise op and its cost passes), then ``fuse_pointwise`` groups chains of pointwise
ops into one pass (``meta['group']``).

Layout ops:

* ``relabel`` (free): view, _unsafe_view, reshape, unsqueeze, squeeze, alias, detach,
  expand, clone, contiguous, getitem, lift_fresh_copy, _to_copy to the same dtype. The
  tiles on the PEs do not change; only how the next kernel reads them (an ``expand`` of a
  replicated operand is served by the fabric's multicast, which the consumer pays).
* ``move`` (data movement): permute, transpose, t, slice, select, split, split_with_sizes,
  cat, index_select, slice_scatter (a slice written into a copy: the backward of a
  slice). On the fabric every element may change PE, so the compiler charges a stream of
  the tensor across its rectangle (`timing.transfer_cycles` of the elements per PE over
  the rectangle's width plus height) to the kernel that produced it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from waferscale.compiler.ir import Graph, Node, Ref
from waferscale.compiler.match_loss import CROSS_ENTROPY

KERNELS: dict[str, str] = {
    "mm": "gemm", "addmm": "gemm", "bmm": "gemm",
    "scaled_dot_product_attention": "attention",
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "native_layer_norm": "layer_norm",
    "_softmax": "softmax",
    "_log_softmax": "softmax",
    "embedding": "embedding",
}

#: ATen pointwise op -> (elementwise kernel op used for cost, value function on fp32 tensors).
POINTWISE: dict[str, str] = {
    "add": "add", "sub": "sub", "rsub": "sub", "mul": "mul", "div": "div", "neg": "neg",
    "relu": "relu", "tanh": "tanh", "sin": "sin", "cos": "cos", "exp": "exp", "log": "log",
    "rsqrt": "rsqrt", "reciprocal": "reciprocal", "sigmoid": "sigmoid", "silu": "silu",
    "gelu": "gelu",
    "erf": "erf", "pow": "mul", "maximum": "max", "minimum": "max", "sqrt": "rsqrt",
    "abs": "max", "square": "square", "clamp_min": "max", "where": "select",
    "_to_copy": "copy", "copy": "copy", "fill": "copy",
}

RELABEL = {"view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "alias", "detach",
           "expand", "clone", "contiguous", "getitem", "lift_fresh_copy", "squeeze_copy",
           "view_copy", "unsqueeze_copy", "expand_copy", "alias_copy", "dropout"}
MOVE = {"permute", "transpose", "t", "slice", "select", "split", "split_with_sizes", "cat",
        "index_select", "permute_copy", "slice_copy", "select_copy", "narrow",
        "slice_scatter"}

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def _float_out(node: Node) -> bool:
    """Every output is a float the PEs hold (ops like native_layer_norm and the CPU flash
    attention return several)."""
    d = node.meta.get("dtype")
    outs = d if isinstance(d, list) else [d]
    return bool(outs) and all(isinstance(x, str) and x in FLOAT_DTYPES for x in outs)


def _pointwise_op(node: Node, g: Graph) -> str | None:
    """The elementwise op a pointwise node costs as, None if it is not one the PEs run."""
    op = POINTWISE.get(node.short)
    if op is None or not _float_out(node):
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


def classify(g: Graph) -> dict[str, int]:
    """Write ``meta['kind']`` on every call node; returns counts per kind."""
    counts: dict[str, int] = {}
    for node in g.calls():
        kind = "fallback"
        short = node.short
        if short in KERNELS and _float_out(node):
            kind = KERNELS[short]
            if short in ("_softmax", "_log_softmax") and (
                    node.args[1] not in (-1, len(node.meta["shape"]) - 1) or node.args[2]):
                kind = "fallback"
            if short in ("scaled_dot_product_attention", FLASH_CPU) and not _causal(node, g):
                kind = "fallback"
        elif short == "_to_copy" and node.meta.get("dtype") == g.nodes[node.inputs[0]].meta.get(
                "dtype"):
            kind = "relabel"
        elif short in RELABEL:
            kind = "relabel"
        elif short in MOVE:
            kind = "move"
        elif _pointwise_op(node, g) is not None:
            kind = "pointwise"
            node.meta["pointwise"] = _pointwise_op(node, g)
        elif short == "sum" and _float_out(node) and reduce_layout(node, g) is not None:
            kind = "reduce"
        if short == "embedding" and kind == "embedding" and node.meta.get("dtype") \
                not in FLOAT_DTYPES:
            kind = "fallback"
        if node.target == CROSS_ENTROPY:
            kind = "cross_entropy"
        node.meta["kind"] = kind
        if _from_inputs_only(node, g):
            node.meta["input_only"] = True
        if kind == "fallback":
            node.meta["fallback_reason"] = (
                "reads only the model's inputs: runs in the host's input pipeline, sent with "
                "the batch" if node.meta.get("input_only") else _why(node))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def reduce_layout(node: Node, g: Graph) -> tuple[int, int, int] | None:
    """``(rows, cols, axis)`` of a sum over leading or trailing dims, seen as a sum over
    axis 0 or 1 of the input flattened to [rows, cols] (the `reduce` kernel's layout);
    None for other dims, a ``dtype`` argument or a 0-d input."""
    shape = list(g.nodes[node.inputs[0]].meta.get("shape") or [])
    rank = len(shape)
    dims = node.args[1] if len(node.args) > 1 else None
    if rank == 0 or node.kwargs.get("dtype") is not None or \
            (dims is not None and not isinstance(dims, (list, tuple))):
        return None
    picked = sorted({d % rank for d in dims}) if dims else list(range(rank))
    k = len(picked)
    if k < rank and picked == list(range(rank - k, rank)):
        return math.prod(shape[:rank - k]), math.prod(shape[rank - k:]), 1
    if picked == list(range(k)):
        return math.prod(shape[:k]), math.prod(shape[k:]), 0
    return None


def _from_inputs_only(node: Node, g: Graph) -> bool:
    """True for an integer or bool result that reads only the model's inputs, constants
    and other such results (labels shifted and masked): nothing the wafer computes.
    `classify` visits calls in graph order, so every call input is already marked."""
    return not _float_out(node) and all(
        g.nodes[i].op != "call" or g.nodes[i].meta.get("input_only") for i in node.inputs)


def _why(node: Node) -> str:
    if node.short in ("scaled_dot_product_attention", FLASH_CPU):
        return "attention with a non-causal mask or dropout (the kernel is causal, no dropout)"
    if node.short in ("_softmax", "_log_softmax"):
        return ("softmax over an axis other than the last, or half_to_float (run it in the "
                "input's dtype over the last axis)")
    if not _float_out(node):
        return f"no kernel for {node.meta.get('dtype')} results"
    return "no wafer kernel for this op"


#: ATen's CPU flash attention: what torch.compile's training graphs keep of an SDPA
#: (`backend.decompositions`); it returns the output and the row log-sum-exp.
FLASH_CPU = "_scaled_dot_product_flash_attention_for_cpu"


def _attention_args(node: Node) -> tuple[Any, bool, float]:
    """``(attn_mask, is_causal, dropout_p)`` of an SDPA or a CPU flash attention: the two
    ops order their arguments differently (the flash op's mask is keyword-only)."""
    a, kw = node.args, node.kwargs
    if node.short == FLASH_CPU:
        return (kw.get("attn_mask"), bool(a[4] if len(a) > 4 else kw.get("is_causal")),
                float(a[3] if len(a) > 3 else kw.get("dropout_p", 0.0)))
    return (a[3] if len(a) > 3 else kw.get("attn_mask"),
            bool(a[5] if len(a) > 5 else kw.get("is_causal")),
            float(a[4] if len(a) > 4 else kw.get("dropout_p", 0.0)))


def _causal(node: Node, g: Graph) -> bool:
    """Causal if ``is_causal`` or the mask is a folded constant equal to a lower triangle.

    A mask built on the meta device has no values; it is assumed causal (decoder models
    build it from ``arange``) and the assumption is recorded in ``meta['assumed_causal']``.
    """
    mask, is_causal, dropout = _attention_args(node)
    if dropout:
        return False
    if is_causal:
        return True
    if mask is None:
        return False
    if not isinstance(mask, Ref) or g.nodes[mask.name].op != "const":
        return False
    value = g.constants[mask.name]
    if value.device.type == "meta":
        node.meta["assumed_causal"] = True
        return True
    s_q, s_k = value.shape[-2], value.shape[-1]
    tril = torch.ones(s_q, s_k, dtype=torch.bool).tril()
    if value.dtype == torch.bool:
        return bool((value == tril).all())
    return bool(((value == 0) == tril).all())


def fuse_pointwise(g: Graph) -> int:
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
    pw = [n for n in g.calls() if n.meta.get("kind") == "pointwise"]
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


def fallbacks(g: Graph, *, input_only: bool = False) -> list[dict[str, Any]]:
    """Every host-fallback op with its count and the source lines it comes from.

    ``input_only=True`` lists the other host ops instead: integer or bool ops that read
    only the model's inputs (labels shifted by one and tested against ``ignore_index``).
    They need nothing from the wafer, so they run in the host's input pipeline before the
    batch is sent, their results cross the system I/O with the inputs (charged), and they
    are not fallbacks: no value goes to the host and back.
    """
    out: dict[str, dict[str, Any]] = {}
    for node in g.calls():
        if node.meta.get("kind") != "fallback" or bool(node.meta.get("input_only")) \
                != input_only:
            continue
        entry = out.setdefault(node.target, {"op": node.target, "count": 0, "sources": [],
                                             "reason": node.meta.get("fallback_reason", "")})
        entry["count"] += 1
        src = node.meta.get("source", "")
        if node.meta.get("code"):
            src = f"{src}: {node.meta['code']}"
        if src and src not in entry["sources"]:
            entry["sources"].append(src)
    return list(out.values())


def supported_ops() -> dict[str, list[str]]:
    """The lowering table by kind, for docs and `waferscale compile --json`."""
    return {"kernels": sorted(f"aten.{k} -> {v}" for k, v in KERNELS.items()),
            "pointwise": sorted(f"aten.{k}" for k in POINTWISE),
            "relabel": sorted(f"aten.{k}" for k in RELABEL),
            "move": sorted(f"aten.{k}" for k in MOVE)}


__all__ = ["KERNELS", "MOVE", "POINTWISE", "RELABEL", "classify", "fallbacks",
           "fuse_pointwise", "reduce_layout", "supported_ops"]
