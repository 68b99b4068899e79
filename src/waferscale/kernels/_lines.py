"""Line collectives the GEMM and GEMV kernels need beyond the fabric's own primitives.

`waferscale.fabric.movement` moves data by whole-line patterns (a shift of every PE by the
same distance, a chain reduce to one end). Two WaferLLM kernels need patterns that are not
of that form, so they are built here from the same port bookkeeping (ramps, links, detours)
that movement uses, with the same timing conventions:

* `line_permute`: every PE of a line sends its tile to another position of that line (the
  interleaved ring of MeshGEMM, where each PE's ring neighbour is at most two hops away);
* `chain_into`, `ktree_reduce`, `ktree_reduce_cycles` (re-exported from
  `waferscale.fabric.movement`, the runs, and `fabric.timing`, the closed forms, where they
  live next to the fabric's primitives so that the cycle simulator's agreement table can
  run them): a chain reduce over chosen positions of a line, and MeshGEMV's K-tree.

Everything is vectorised over the lines of a rectangle; Python loops run over tree levels,
groups of a level (about sqrt(n) of them) and hop offsets, never over PEs.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import KernelShapeError
from waferscale.fabric.grid import Rect
from waferscale.fabric.movement import (
    deliver,
    line_port,
    line_view,
    load_links,
    local_view,
    path_extra,
    send,
)
from waferscale.fabric.tensor import MeshTensor


def line_length(rect: Rect, axis: str) -> int:
    return rect.cols if axis == "row" else rect.rows


# ------------------------------------------------------------------------ permute -------
class _PermutePlan:
    """What a permutation of a line's positions fixes before any clock is read: per
    direction, the flows' sources, destinations, hops, how many flows share the busiest
    link on each flow's path, and the inverse permutation that moves the tiles.

    Kernels permute with the same ``dest`` at every step (MeshGEMM's ring), so it is built
    once per (line length, permutation) and reused; it holds no clocks and no values.
    """

    def __init__(self, n: int, dest: np.ndarray) -> None:
        pos = np.arange(n)
        self.moving = dest != pos
        self.inverse = np.argsort(dest)
        self.directions: list[tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        for reverse in (False, True):
            sel = (dest < pos) if reverse else (dest > pos)
            if not sel.any():
                continue
            src = pos[sel] if not reverse else n - 1 - pos[sel]
            dst = dest[sel] if not reverse else n - 1 - dest[sel]
            count_diff = np.zeros(n + 1)
            count_diff[src] += 1.0
            count_diff[dst] -= 1.0
            count = np.cumsum(count_diff)[:n]
            hops = dst - src
            share = np.ones(src.size)
            for k in range(int(hops.max())):  # loop over hop offsets of the longest flow
                on_path = k < hops
                share = np.where(on_path, np.maximum(share, count[np.minimum(src + k, n - 1)]),
                                 share)
            self.directions.append((reverse, src, dst, hops, share))


_PERMUTE_PLANS: dict[tuple[int, bytes], _PermutePlan] = {}


def _permute_plan(n: int, dest: np.ndarray) -> _PermutePlan:
    key = (n, dest.tobytes())
    plan = _PERMUTE_PLANS.get(key)
    if plan is None:
        if len(_PERMUTE_PLANS) > 1024:
            _PERMUTE_PLANS.clear()
        plan = _PERMUTE_PLANS[key] = _PermutePlan(n, dest)
    return plan


def line_permute(t: MeshTensor, axis: str, dest: np.ndarray, *,
                 ready: np.ndarray | None = None, wavelets: np.ndarray | None = None
                 ) -> MeshTensor:
    """Every PE at position ``p`` of each line sends its tile to position ``dest[p]``.

    ``dest`` is a permutation of the line's positions, the same for every line; a PE with
    ``dest[p] == p`` keeps its tile. ``ready`` (default: the tiles' ready) is when each PE
    may start sending, so callers can express flow control (the receiver's buffer must be
    free); ``wavelets`` (default: one per element) lets sparse senders send only nonzeros.
    Flows that share a link interleave, one wavelet per cycle, as in `movement.shift`.
    """
    fabric, spec = t.fabric, t.fabric.spec
    n = line_length(t.rect, axis)
    dest = np.asarray(dest, dtype=int)
    if dest.shape != (n,) or not np.array_equal(np.sort(dest), np.arange(n)):
        raise KernelShapeError(f"line_permute: dest must be a permutation of the {n} positions "
                               f"of a line, got {dest.tolist()}")
    plan = _permute_plan(n, dest)
    local, unlocal = local_view(axis, False)
    wav = local(np.broadcast_to(t.wavelets() if wavelets is None else wavelets,
                                t.rect.shape)).astype(float)
    send_ready = local(np.broadcast_to(t.ready if ready is None else ready, t.rect.shape))
    lines = wav.shape[0]
    start = send(fabric, line_view(t.rect, axis, False), send_ready, wav,
                  np.broadcast_to(plan.moving, (lines, n)))
    new_ready = local(t.ready).copy()
    for reverse, src, dst, hops, share in plan.directions:
        view = line_view(t.rect, axis, reverse)
        port = line_port(axis, reverse)
        # direction coordinates: position 0 is the upstream end of this direction
        d_wav = wav[:, ::-1] if reverse else wav
        d_start = start[:, ::-1] if reverse else start
        flow_wav = d_wav[:, src]
        # a permutation: sources are distinct and destinations are distinct, so plain
        # fancy-index updates of the difference arrays are exact
        diff = np.zeros((lines, n + 1))
        diff[:, src] += flow_wav
        diff[:, dst] -= flow_wav
        load = np.cumsum(diff, axis=1)[:, :n]
        load_links(fabric, view, port, d_start.min(axis=1, keepdims=True), load)
        extra = path_extra(fabric, view, port)
        heads = np.zeros((lines, n))
        wav_in = np.zeros((lines, n))
        serial = np.ones((lines, n))
        mask = np.zeros((lines, n), dtype=bool)
        heads[:, dst] = d_start[:, src] + spec.ramp_cycles + hops * spec.hop_cycles \
            + extra[:, dst] - extra[:, src]
        wav_in[:, dst] = flow_wav
        serial[:, dst] = share
        mask[:, dst] = True
        arrive = deliver(fabric, view, heads, wav_in, serial, mask)
        if reverse:
            mask, arrive = mask[:, ::-1], arrive[:, ::-1]
        np.copyto(new_ready, arrive, where=mask)
    tiles = None
    if t.tiles is not None:
        # out[dest[p]] = in[p] along the line axis: one contiguous gather
        tiles = np.take(t.tiles, plan.inverse, axis=1 if axis == "row" else 0)
    return t.like(tiles, unlocal(new_ready))


# the chains and the K-tree live with the fabric's primitives (the cycle simulator's
# agreement table runs them); kernels keep importing them from here
from waferscale.fabric.movement import chain_into, ktree_reduce  # noqa: E402
from waferscale.fabric.timing import (  # noqa: E402
    ktree_group_size,
    ktree_groups,
    ktree_reduce_cycles,
    leader_index,
)

__all__ = ["chain_into", "ktree_group_size", "ktree_groups", "ktree_reduce",
           "ktree_reduce_cycles", "leader_index", "line_length", "line_permute"]
