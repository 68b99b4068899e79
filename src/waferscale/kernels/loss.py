"""Cross-entropy loss over the vocabulary, with its gradient, on the fabric.

Mapping: logits [tokens, vocab] with tokens over the rectangle's rows and the vocabulary
over its columns (what the LM head leaves), or whole rows per PE. Per token the kernel
needs the row max, the sum of exponentials and the target's logit; the last two travel
together in one allreduce along the row. The mean over tokens is a chain reduce down the
rows. The gradient ``(softmax(z) - onehot(y)) / n`` is produced in the same sweep, in the
logits' dtype, so the backward pass can start without another pass over the logits.

Matches ``torch.nn.functional.cross_entropy(z, y, ignore_index=-100)`` (mean over the
tokens whose target is not ignored) and its gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waferscale.errors import KernelError, KernelShapeError
from waferscale.fabric import MeshTensor
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.tensor import AxisMap, valid_extent
from waferscale.fabric.timing import reduce_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import (
    Graph,
    Node,
    Ref,
    const_value,
    eliminate_dead,
    ref_name,
    rewrite_call,
    sole_user,
)
from waferscale.kernels.elementwise import (
    WORK,
    RowLayout,
    allreduce_stat,
    allreduce_stat_cycles,
    check_dtype,
    local_pass,
    op_cycles,
    pad_mask,
    row_max,
    row_max_cycles,
    stat_tensor,
    tile_elements,
    tile_shape,
)
from waferscale.kernels.family import (
    ExecContext,
    RowFamily,
    Stage,
    StageParams,
    StageRun,
    done,
    shape_of,
)

KERNEL = "cross_entropy"


def _layout(shape: Sequence[int], rect_shape: tuple[int, int], row_map: AxisMap,
            col_map: AxisMap) -> RowLayout:
    if len(shape) != 2:
        raise KernelShapeError(f"{KERNEL}: logits of shape {tuple(shape)} must be "
                               f"[tokens, vocab]")
    if row_map not in (0, None) or col_map not in (1, None):
        raise KernelShapeError(f"{KERNEL}: logits must map tokens (axis 0) to PE rows or "
                               f"nothing and the vocabulary (axis 1) to PE columns or nothing, "
                               f"got ({row_map!r}, {col_map!r})")
    return RowLayout.of(KERNEL, shape, rect_shape, row_map, col_map)


def _check_targets(targets: np.ndarray, tokens: int, vocab: int, ignore_index: int
                   ) -> np.ndarray:
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer):
        raise KernelError(f"{KERNEL}: targets must be integer class ids, got {targets.dtype}")
    targets = targets.reshape(-1)
    if targets.size != tokens:
        raise KernelShapeError(f"{KERNEL}: {targets.size} targets for {tokens} rows of logits")
    bad = np.nonzero(((targets < 0) | (targets >= vocab)) & (targets != ignore_index))[0]
    if bad.size:
        raise KernelError(f"{KERNEL}: target {int(targets[bad[0]])} at position "
                          f"{int(bad[0])} is out of range for {vocab} classes (valid 0.."
                          f"{vocab - 1}, or ignore_index {ignore_index})")
    if not (targets != ignore_index).any():
        raise KernelError(f"{KERNEL}: every target equals ignore_index {ignore_index}; the "
                          f"mean loss is undefined")
    return targets


def run(logits: MeshTensor, targets: np.ndarray, *, ignore_index: int = -100,
        algorithm: str = "chain") -> tuple[MeshTensor, MeshTensor]:
    """Mean cross-entropy and d(loss)/d(logits).

    Returns ``(loss, grad)``: ``loss`` is a [1] fp32 tensor on the rectangle's first row
    (every column holds it), ``grad`` has the logits' shape, layout and dtype. Targets are
    resident 32-bit words next to the logits.
    """
    check_dtype(KERNEL, logits.dtype)
    layout = _layout(logits.shape, logits.rect.shape, logits.row_map, logits.col_map)
    tokens, vocab = logits.shape
    targets = _check_targets(targets, tokens, vocab, ignore_index)
    count = float((targets != ignore_index).sum())
    fabric, rect = logits.fabric, logits.rect
    values = not fabric.timing_only
    tgt = MeshTensor.from_numpy(fabric, targets.astype(np.float32), rect, logits.row_map,
                                None, "fp32", name=fabric.fresh_name("targets"))
    n = tile_elements(logits)
    rows = n / logits.tile_shape[-1]
    mask = pad_mask(logits)

    m = row_max(logits, layout, algorithm, np.maximum(logits.ready, tgt.ready))
    end = local_pass(fabric, rect, n, WORK, "exp", m.ready)
    end = local_pass(fabric, rect, rows, WORK, "select", end, reads=2)      # pick z[y]
    end = local_pass(fabric, rect, n, WORK, "add", end, writes=0)           # sum of e
    e = stats = hit = None
    if values:
        z = logits.tiles.astype(np.float32)
        e = np.exp(z - m.tiles)
        if mask is not None:
            e = np.where(mask, e, np.float32(0))
        hit, local_idx = _target_hits(logits, tgt, ignore_index)
        zy = np.where(hit, np.take_along_axis(z, local_idx[..., None], -1)[..., 0], 0)
        stats = np.stack([e.sum(-1), zy], axis=-1).astype(np.float32)        # [R, C, tr, 2]
    packed = allreduce_stat(stat_tensor(logits, layout, 2, stats, end), layout, algorithm)
    end = local_pass(fabric, rect, rows, WORK, "log", packed.ready)
    end = local_pass(fabric, rect, rows, WORK, "add", end, reads=2)         # lse = m + log
    end = local_pass(fabric, rect, rows, WORK, "sub", end, reads=2)         # lse - z[y]
    end = local_pass(fabric, rect, rows, WORK, "mul", end, reads=2)         # x ignore mask
    # gradient: e / (sum e) / count, minus 1 / count at the target
    end = local_pass(fabric, rect, rows, WORK, "reciprocal", end)
    end = local_pass(fabric, rect, rows, WORK, "mul", end, reads=2)
    end = local_pass(fabric, rect, n, logits.dtype, "mul", end)
    end = local_pass(fabric, rect, rows, logits.dtype, "sub", end, reads=2)
    g_tiles = token_loss = None
    if values:
        weight = _weights(tgt, ignore_index)                                  # [R, C, tr]
        total, zy = packed.tiles[..., 0], packed.tiles[..., 1]
        total = np.where(weight > 0, total, np.float32(1))                    # padded rows
        token_loss = (m.tiles[..., 0] + np.log(total) - zy) * weight
        scale = weight / (total * np.float32(count))
        g = e * scale[..., None] - np.where(
            hit[..., None] & (np.arange(logits.tile_shape[-1]) == _local(logits, tgt)[..., None]),
            np.float32(1 / count), np.float32(0))
        g_tiles = to_storage(g, logits.dtype)
    grad = logits.like(g_tiles, end)
    # the mean over tokens: local sum, chain reduce down the rows, scale by 1 / count
    end = local_pass(fabric, rect, rows, WORK, "add", end, writes=0)
    part = None if token_loss is None else token_loss.sum(-1, keepdims=True)
    split = logits.row_map == 0
    loss = MeshTensor(fabric, rect, (1,), WORK, "partial" if split else None, None, part, end,
                      fabric.fresh_name("loss_partial"))
    if split:
        summed = mv.reduce(loss, "col", algorithm, root="first")
        loss.free()
        loss = summed
    end = local_pass(fabric, loss.rect, 1.0, WORK, "mul", loss.ready)
    out_tiles = None if loss.tiles is None else loss.tiles / np.float32(count)
    result = loss.like(out_tiles, end, name=fabric.fresh_name("loss"))
    for t in (loss, packed, m, tgt):
        t.free()
    return result, grad


def _weights(tgt: MeshTensor, ignore_index: int) -> np.ndarray:
    """1 for each real, not-ignored token of a PE's rows, 0 for ignored and padded ones."""
    real = pad_mask(tgt)
    keep = tgt.tiles != ignore_index
    return (keep & real if real is not None else keep).astype(np.float32)


def _local(logits: MeshTensor, tgt: MeshTensor) -> np.ndarray:
    """Each PE's target index relative to its vocabulary slice: [R, C, tr]."""
    tc = logits.tile_shape[-1]
    offset = np.arange(logits.rect.cols) * tc if logits.col_map == 1 else \
        np.zeros(logits.rect.cols)
    return tgt.tiles.astype(np.int64) - offset.astype(np.int64)[None, :, None]


def _target_hits(logits: MeshTensor, tgt: MeshTensor, ignore_index: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    local = _local(logits, tgt)
    tc = logits.tile_shape[-1]
    extent = valid_extent(logits.shape[1], logits.rect.cols) if logits.col_map == 1 else \
        np.full(logits.rect.cols, logits.shape[1])
    hit = (local >= 0) & (local < extent[None, :, None]) & (_weights(tgt, ignore_index) > 0)
    return hit, np.clip(local, 0, tc - 1)


def cost(spec: WaferSpec | str | None, tokens: int, vocab: int, rect_shape: tuple[int, int],
         *, row_map: AxisMap = 0, col_map: AxisMap = 1, dtype: str = "fp32",
         algorithm: str = "chain") -> float:
    """Closed form of `run` (loss and gradient)."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    shape = (tokens, vocab)
    layout = _layout(shape, rect_shape, row_map, col_map)
    tile = tile_shape(shape, rect_shape, row_map, col_map)
    n = float(np.prod(tile))
    rows = float(tile[0])

    def c(elements: float, dt: str, op: str, **kw: int) -> float:
        return float(op_cycles(spec, elements, dt, op, **kw))

    total = row_max_cycles(spec, tile, layout, algorithm)
    total += c(n, WORK, "exp") + c(rows, WORK, "select", reads=2) + c(n, WORK, "add", writes=0)
    total += allreduce_stat_cycles(spec, 2 * rows, layout, algorithm)
    total += c(rows, WORK, "log") + c(rows, WORK, "add", reads=2) \
        + c(rows, WORK, "sub", reads=2) + c(rows, WORK, "mul", reads=2)
    total += c(rows, WORK, "reciprocal") + c(rows, WORK, "mul", reads=2) + c(n, dtype, "mul") \
        + c(rows, dtype, "sub", reads=2)
    total += c(rows, WORK, "add", writes=0)
    if row_map == 0:
        total += reduce_cycles(spec, 1.0, rect_shape[0], algorithm)
    return total + c(1.0, WORK, "mul")


# ------------------------------------------------------------------ the stage family ------
# The lowering of ``F.cross_entropy``: recognise a decomposed cross-entropy and give it to
# this kernel.
#
# Recognise a decomposed cross-entropy and give it to the wafer's loss kernel.
#
# ``torch.nn.functional.cross_entropy`` (what transformers' causal-LM heads call when given
# ``labels=``) reaches the graph as a dozen core ATen ops: ``_log_softmax``, a ``gather`` of
# the target's log-probability, a ``where`` that zeroes ignored targets, a ``sum`` and, for
# the mean, a ``div`` by the count of targets that are not ignored. One by one, ``gather``
# and the float ``where`` and ``sum`` have no kernel, so the loss fell back to the host and
# took the [tokens, vocab] log-probabilities across the system I/O. The wafer has one kernel
# for the whole thing (`kernels.loss`: row max, exponentials, the target's logit and the mean
# in one sweep), so this pass finds the pattern and replaces it with one node,
# ``waferscale.cross_entropy(logits, targets, ignore_index, reduction)``.
#
# The match is structural and strict: every intermediate must have no other user, the
# gather's index must be the targets with ignored entries replaced by a constant, and the
# mask and the count must test the same targets against the same ``ignore_index``. Anything
# else is left alone (and falls back op by op, as before).

#: The target of the node this pass writes.
CROSS_ENTROPY = "waferscale.cross_entropy"


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                  reduction: str) -> torch.Tensor:
    """What the replaced ops computed, on the host (fallback runs and eager references)."""
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=ignore_index,
                                             reduction=reduction)


def _ne_target(g: Graph, x: Any) -> tuple[str, int] | None:
    """``(targets, ignore_index)`` when ``x`` is ``ne(targets, ignore_index)``."""
    name = ref_name(x)
    if name is None:
        return None
    node = g.nodes[name]
    if node.op != "call" or node.short != "ne" or ref_name(node.args[0]) is None:
        return None
    ii = const_value(g, node.args[1])
    return (ref_name(node.args[0]), int(ii)) if isinstance(ii, (int, float)) else None


def _sole(users: dict[str, list[str]], name: str, short: str, g: Graph) -> Node | None:
    """The one user of ``name`` if it is a ``short`` op."""
    node = sole_user(users, name, g)
    return node if node is not None and node.short == short else None


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
    idx = g.nodes.get(ref_name(gather.args[2]) or "")
    if idx is None or idx.short != "unsqueeze":
        return None
    safe = g.nodes.get(ref_name(idx.args[0]) or "")
    if safe is None or safe.short != "where":
        return None
    picked = _ne_target(g, safe.args[0])
    if picked is None or ref_name(safe.args[1]) != picked[0] \
            or const_value(g, safe.args[2]) is None:
        return None
    targets, ignore_index = picked
    squeeze = _sole(users, gather.name, "squeeze", g)
    neg = _sole(users, squeeze.name, "neg", g) if squeeze else None
    masked = _sole(users, neg.name, "where", g) if neg else None
    if masked is None or _ne_target(g, masked.args[0]) != picked \
            or ref_name(masked.args[1]) != neg.name or const_value(g, masked.args[2]) != 0:
        return None
    total = _sole(users, masked.name, "sum", g)
    if total is None or total.meta.get("shape") != []:
        return None
    final, reduction = total, "sum"
    div = _sole(users, total.name, "div", g)
    if div is not None and ref_name(div.args[0]) == total.name \
            and _is_count(g, div.args[1], picked):
        final, reduction = div, "mean"
    return {"logits": ref_name(ls.args[0]), "targets": targets, "ignore_index": ignore_index,
            "reduction": reduction, "final": final, "source": ls}


def _is_count(g: Graph, x: Any, picked: tuple[str, int]) -> bool:
    """``x`` is ``sum(ne(targets, ignore_index))`` (cast to float or not)."""
    node = g.nodes.get(ref_name(x) or "")
    if node is not None and node.short == "_to_copy":
        node = g.nodes.get(ref_name(node.args[0]) or "")
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
        rewrite_call(final, CROSS_ENTROPY, cross_entropy,
                     (Ref(m["logits"]), Ref(m["targets"]), m["ignore_index"], m["reduction"]),
                     src)
        final.meta.update(dtype="float32", shape=[])
        found += 1
    if found:
        eliminate_dead(g)
    return found


@dataclass(frozen=True)
class CrossEntropyParams(StageParams):
    """The loss of [tokens, vocab] logits against integer targets."""

    tokens: int
    vocab: int
    ignore_index: int
    reduction: str

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.vocab < 1 or self.reduction not in ("mean", "sum"):
            raise KernelShapeError(f"cross-entropy of [{self.tokens}, {self.vocab}] with "
                                   f"reduction {self.reduction!r}: sizes must be >= 1 and "
                                   f"the reduction 'mean' or 'sum'")


def stage_sram_bytes(p: CrossEntropyParams, dtype: str, r: int, c: int) -> int:
    """SRAM per PE on r x c PEs: the logits and their gradient, and per token row the
    target, max, sum and picked logit."""
    return 2 * -(-p.tokens // r) * -(-p.vocab // c) * BYTES[dtype] + 16 * -(-p.tokens // r)


class CrossEntropy(RowFamily):
    """The loss kernel: the node `fuse_cross_entropy` writes (``CROSS_ENTROPY``)."""

    kind = "cross_entropy"
    targets = frozenset({CROSS_ENTROPY})

    def rejects(self, node: Node, g: Graph) -> str | None:
        return None

    def match(self, g: Graph) -> int:
        return fuse_cross_entropy(g)

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[CrossEntropyParams, float]:
        node = nodes[0]
        t, v = shape_of(g, node.args[0])
        # per logit: max, subtract, exp, sum
        return CrossEntropyParams(t, v, int(node.args[2]), node.args[3]), 4.0 * t * v

    def extent(self, p: CrossEntropyParams) -> tuple[int, int]:
        return p.tokens, p.vocab

    def sram_bytes(self, p: CrossEntropyParams, dtype: str, r: int, c: int) -> int:
        return stage_sram_bytes(p, dtype, r, c)

    def cycles(self, spec: WaferSpec, p: CrossEntropyParams, dtype: str,
               rect: tuple[int, int]) -> float:
        return cost(spec, p.tokens, p.vocab, rect, dtype=dtype)

    def algorithm(self, p: CrossEntropyParams) -> str:
        return "cross-entropy: max/exp/sum/pick, chain allreduce, mean"

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        """The kernel gives the mean over targets that are not ignored (and the gradient,
        in the same sweep); a ``sum`` reduction is that mean times their count."""
        p: CrossEntropyParams = st.params  # type: ignore[assignment]
        logits, targets = ctx.value(node.args[:2])
        fab = ctx.fabric(st)
        t, v, ii = p.tokens, p.vocab, p.ignore_index
        tgt = np.zeros(t, np.int64) if ctx.timing_only else targets.reshape(-1).numpy()
        mean, _grad = run(ctx.mesh(fab, logits, (t, v), st.dtype), tgt, ignore_index=ii)
        if not ctx.timing_only:
            value = np.float32(mean.to_numpy().reshape(-1)[0])
            if p.reduction == "sum":
                value = value * np.float32((tgt != ii).sum())
            ctx.env[node.name] = torch.tensor(float(value), dtype=torch.float32)
        return done(fab)


FAMILY = CrossEntropy()
