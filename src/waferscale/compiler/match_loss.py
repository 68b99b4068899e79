"""Recognise a decomposed cross-entropy and give it to the wafer's loss kernel.

``torch.nn.functional.cross_entropy`` (what transformers' causal-LM heads call when given
``labels=``) reaches the graph as a dozen core ATen ops: ``_log_softmax``, a ``gather`` of
the target's log-probability, a ``where`` that zeroes ignored targets, a ``sum`` and, for
the mean, a ``div`` by the count of targets that are not ignored. One by one, ``gather``
and the float ``where`` and ``sum`` have no kernel, so the loss fell back to the host and
took the [tokens, vocab] log-probabilities across the system I/O. The wafer has one kernel
for the whole thing (`kernels.loss`: row max, exponentials, the target's logit and the mean
in one sweep), so this pass finds the pattern and replaces it with one node,
``waferscale.cross_entropy(logits, targets, ignore_index, reduction)``.

The match is structural and strict: every intermediate must have no other user, the
gather's index must be the targets with ignored entries replaced by a constant, and the
mask and the count must test the same targets against the same ``ignore_index``. Anything
else is left alone (and falls back op by op, as before).
"""

from __future__ import annotations

from typing import Any

import torch

from waferscale.compiler.capture import eliminate_dead
from waferscale.compiler.ir import Graph, Node, Ref

#: The target of the node this pass writes.
CROSS_ENTROPY = "waferscale.cross_entropy"


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                  reduction: str) -> torch.Tensor:
    """What the replaced ops computed, on the host (fallback runs and eager references)."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=ignore_index,
                                             reduction=reduction)


def _ref(x: Any) -> str | None:
    return x.name if isinstance(x, Ref) else None


def _const(g: Graph, x: Any) -> Any:
    """The Python value of a scalar constant argument (inline or a folded 0-d constant)."""
    if isinstance(x, (int, float, bool)):
        return x
    name = _ref(x)
    if name is not None and g.nodes[name].op == "const":
        if "scalar" in g.nodes[name].meta:       # a literal folded on the meta device
            return g.nodes[name].meta["scalar"]
        v = g.constants.get(name)
        if isinstance(v, torch.Tensor) and v.numel() == 1 and v.device.type != "meta":
            return v.item()
    return None


def _ne_target(g: Graph, x: Any) -> tuple[str, int] | None:
    """``(targets, ignore_index)`` when ``x`` is ``ne(targets, ignore_index)``."""
    name = _ref(x)
    if name is None:
        return None
    node = g.nodes[name]
    if node.op != "call" or node.short != "ne" or _ref(node.args[0]) is None:
        return None
    ii = _const(g, node.args[1])
    return (_ref(node.args[0]), int(ii)) if isinstance(ii, (int, float)) else None


def _sole(users: dict[str, list[str]], name: str, short: str, g: Graph) -> Node | None:
    """The one user of ``name`` if it is a ``short`` op."""
    us = users.get(name, [])
    node = g.nodes.get(us[0]) if len(us) == 1 else None    # "<output>" is no node
    return node if node is not None and node.op == "call" and node.short == short else None


def _last_dim(dim: Any, rank: int) -> bool:
    return isinstance(dim, int) and dim in (-1, rank - 1)


def _match(g: Graph, ls: Node, users: dict[str, list[str]]) -> dict[str, Any] | None:
    """The replaced pattern starting at a ``_log_softmax``, or None."""
    shape = ls.meta.get("shape") or []
    if len(shape) != 2 or not _last_dim(ls.args[1], 2) or ls.meta.get("dtype") != "float32":
        return None
    gather = _sole(users, ls.name, "gather", g)
    if gather is None or not _last_dim(gather.args[1], 2):
        return None
    idx = g.nodes.get(_ref(gather.args[2]) or "")
    if idx is None or idx.short != "unsqueeze":
        return None
    safe = g.nodes.get(_ref(idx.args[0]) or "")
    if safe is None or safe.short != "where":
        return None
    picked = _ne_target(g, safe.args[0])
    if picked is None or _ref(safe.args[1]) != picked[0] or _const(g, safe.args[2]) is None:
        return None
    targets, ignore_index = picked
    squeeze = _sole(users, gather.name, "squeeze", g)
    neg = _sole(users, squeeze.name, "neg", g) if squeeze else None
    masked = _sole(users, neg.name, "where", g) if neg else None
    if masked is None or _ne_target(g, masked.args[0]) != picked \
            or _ref(masked.args[1]) != neg.name or _const(g, masked.args[2]) != 0:
        return None
    total = _sole(users, masked.name, "sum", g)
    if total is None or total.meta.get("shape") != []:
        return None
    final, reduction = total, "sum"
    div = _sole(users, total.name, "div", g)
    if div is not None and _ref(div.args[0]) == total.name and _is_count(g, div.args[1], picked):
        final, reduction = div, "mean"
    return {"logits": _ref(ls.args[0]), "targets": targets, "ignore_index": ignore_index,
            "reduction": reduction, "final": final, "source": ls}


def _is_count(g: Graph, x: Any, picked: tuple[str, int]) -> bool:
    """``x`` is ``sum(ne(targets, ignore_index))`` (cast to float or not)."""
    node = g.nodes.get(_ref(x) or "")
    if node is not None and node.short == "_to_copy":
        node = g.nodes.get(_ref(node.args[0]) or "")
    return node is not None and node.short == "sum" and _ne_target(g, node.args[0]) == picked


def fuse_cross_entropy(g: Graph) -> int:
    """Replace each decomposed cross-entropy by one ``CROSS_ENTROPY`` node; returns how many.

    The final node of the pattern (the ``div`` of a mean, the ``sum`` of a sum) is rewritten
    in place, so its users and the graph's outputs are unchanged; the ops it replaces are
    then dead and dropped.
    """
    found = 0
    for node in list(g.calls()):
        if node.name not in g.nodes or node.short != "_log_softmax":
            continue
        m = _match(g, node, g.users())
        if m is None:
            continue
        final, src = m["final"], m["source"]
        final.target, final.fn = CROSS_ENTROPY, cross_entropy
        final.args = (Ref(m["logits"]), Ref(m["targets"]), m["ignore_index"], m["reduction"])
        final.kwargs = {}
        final.meta.update(dtype="float32", shape=[],
                          **{k: src.meta[k] for k in ("source", "code") if k in src.meta})
        found += 1
    if found:
        eliminate_dead(g)
    return found


__all__ = ["CROSS_ENTROPY", "cross_entropy", "fuse_cross_entropy"]
