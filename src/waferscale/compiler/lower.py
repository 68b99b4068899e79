"""Lowering: every ATen op to a kernel family, a layout change, or a host fallback.

Which op a kernel lowers is the kernel family's declaration (`kernels.registry`: its
``targets``, ``rejects`` and pattern ``match``); this module applies them and owns the
layout ops. `lower` writes ``node.meta['kind']`` (a family's kind, ``relabel``, ``move``
or the host's ``fallback``), lets each family annotate its nodes (pointwise ops get
``meta['pointwise']``) and group them (pointwise chains: ``meta['group']``).

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

from typing import Any

from waferscale.ir import Graph, Node
from waferscale.kernels import registry
from waferscale.kernels.family import MOVE as MOVE_KIND
from waferscale.kernels.family import RELABEL as RELABEL_KIND
from waferscale.kernels.family import float_out

RELABEL = {"view", "_unsafe_view", "reshape", "unsqueeze", "squeeze", "alias", "detach",
           "expand", "clone", "contiguous", "getitem", "lift_fresh_copy", "squeeze_copy",
           "view_copy", "unsqueeze_copy", "expand_copy", "alias_copy", "dropout"}
MOVE = {"permute", "transpose", "t", "slice", "select", "split", "split_with_sizes", "cat",
        "index_select", "permute_copy", "slice_copy", "select_copy", "narrow",
        "slice_scatter"}


def _layout_kind(node: Node, g: Graph) -> str | None:
    """``relabel`` / ``move`` for a layout op (a cast to the same dtype is a relabel)."""
    if node.short == "_to_copy" and node.meta.get("dtype") == g.nodes[node.inputs[0]].meta.get(
            "dtype"):
        return RELABEL_KIND
    if node.short in RELABEL:
        return RELABEL_KIND
    if node.short in MOVE:
        return MOVE_KIND
    return None


def classify(g: Graph) -> dict[str, int]:
    """Write ``meta['kind']`` on every call node; returns counts per kind."""
    counts: dict[str, int] = {}
    for node in g.calls():
        kind, reason = _layout_kind(node, g), None
        if kind is None:
            fam = registry.claiming(node)
            if fam is None:
                reason = ("no wafer kernel for this op" if float_out(node)
                          else f"no kernel for {node.meta.get('dtype')} results")
            else:
                reason = fam.rejects(node, g)
            if reason is None:
                assert fam is not None
                kind = fam.kind
                fam.annotate(node, g)
            else:
                kind = registry.HOST.kind
        node.meta["kind"] = kind
        if _from_inputs_only(node, g):
            node.meta["input_only"] = True
        if reason is not None:
            node.meta["fallback_reason"] = (
                "reads only the model's inputs: runs in the host's input pipeline, sent with "
                "the batch" if node.meta.get("input_only") else reason)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def lower(g: Graph) -> dict[str, int]:
    """The lowering passes in order: each family's pattern matchers (a decomposed loss
    becomes one node), `classify`, then each family's grouping (pointwise chains)."""
    for fam in registry.FAMILIES.values():
        fam.match(g)
    counts = classify(g)
    for fam in registry.FAMILIES.values():
        fam.group(g)
    return counts


def _from_inputs_only(node: Node, g: Graph) -> bool:
    """True for an integer or bool result that reads only the model's inputs, constants
    and other such results (labels shifted and masked): nothing the wafer computes.
    `classify` visits calls in graph order, so every call input is already marked."""
    return not float_out(node) and all(
        g.nodes[i].op != "call" or g.nodes[i].meta.get("input_only") for i in node.inputs)


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
        if node.meta.get("kind") != registry.HOST.kind or bool(node.meta.get("input_only")) \
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
    """The lowering table: each family's ops, and the layout ops (docs, `compile --json`)."""
    return {**registry.supported_ops(), "relabel": sorted(f"aten.{k}" for k in RELABEL),
            "move": sorted(f"aten.{k}" for k in MOVE)}


__all__ = ["MOVE", "RELABEL", "classify", "fallbacks", "lower", "supported_ops"]
