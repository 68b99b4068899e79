"""Line collectives the GEMM and GEMV kernels need beyond the fabric's own primitives.

`waferscale.fabric.movement` moves data by whole-line patterns (a shift of every PE by the
same distance, a chain reduce to one end). Two WaferLLM kernels need patterns that are not
of that form, so they are built here from the same port bookkeeping (ramps, links, detours)
that movement uses, with the same timing conventions:

* `line_permute`: every PE of a line sends its tile to another position of that line (the
  interleaved ring of MeshGEMM, where each PE's ring neighbour is at most two hops away);
* `chain_into`: a pipelined chain reduce over an arbitrary, increasing set of positions of a
  line (stride > 1 is the upper level of MeshGEMV's K-tree);
* `ktree_reduce`: MeshGEMV's K-tree: groups of ceil(n**(1/K)) PEs reduce into their middle
  member from both sides, and the group leaders do the same at the next level.

Everything is vectorised over the lines of a rectangle; Python loops run over tree levels,
groups of a level (about sqrt(n) of them) and hop offsets, never over PEs.
"""

from __future__ import annotations

import math

import numpy as np

from waferscale.errors import KernelShapeError
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.grid import Fabric, Rect
from waferscale.fabric.movement import (
    deliver,
    execute_line,
    line_port,
    line_view,
    load_links,
    local_view,
    path_extra,
    send,
)
from waferscale.fabric.tensor import MeshTensor
from waferscale.hardware.spec import WaferSpec


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


# -------------------------------------------------------------------------- chains ------
def chain_into(fabric: Fabric, rect: Rect, axis: str, reverse: bool, ready: np.ndarray,
               wav: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Pipelined chain reduce along ``members`` (increasing positions, in the coordinates of
    the direction ``reverse`` picks) into the last member; returns when its sum is complete.

    ``ready``/``wav`` are [lines, n] arrays in those coordinates. Stage i forwards the running
    sum from members[i-1] to members[i] over h hops; like `movement.reduce`'s chain it adds
    2*T_R + (h + 1) cycles of latency (ramp down, h hops, ramp up, add) and streams the
    wavelets behind the first one. Each receiver spends one add per wavelet on its CE.
    """
    spec = fabric.spec
    view = line_view(rect, axis, reverse)
    port = line_port(axis, reverse)
    lines, n = wav.shape
    s = np.asarray(members, dtype=int)
    extra = path_extra(fabric, view, port)
    hops = np.diff(s)
    steps = 2 * spec.ramp_cycles + (hops + 1) * spec.hop_cycles
    cost = np.concatenate([[0.0], np.cumsum(steps)])[None, :] + extra[:, s] - extra[:, s[:1]]
    r = ready[:, s]
    emit = np.maximum.accumulate(r - cost, axis=1) + cost
    m_wav = wav[:, s]
    # senders: every member but the root, each at its emit time
    full = np.zeros((lines, n))
    send_mask = np.zeros((lines, n), dtype=bool)
    send_mask[:, s[:-1]] = True
    full[:, s] = emit
    send(fabric, view, full, wav, send_mask)
    # links between consecutive members carry the sender's wavelets from its emit time
    load = np.zeros((lines, n))
    link_start = np.zeros((lines, n))
    span = np.arange(s[0], s[-1])
    stage = np.searchsorted(s, span, side="right") - 1    # the member sending over each link
    load[:, span] = m_wav[:, stage]
    link_start[:, span] = emit[:, stage]
    load_links(fabric, view, port, link_start, load)
    recv = np.zeros((lines, n), dtype=bool)
    recv[:, s[1:]] = True
    heads = np.zeros((lines, n))
    heads[:, s[1:]] = emit[:, 1:]
    wav_in = np.zeros((lines, n))
    wav_in[:, s[1:]] = m_wav[:, :-1]
    arrive = deliver(fabric, view, heads, wav_in, 1.0, recv)
    busy = np.where(recv, wav_in, 0.0)
    execute_line(fabric, rect, axis, reverse, busy, np.where(recv, heads, 0.0))
    done = np.maximum(arrive[:, s[-1]] - spec.ramp_cycles, emit[:, -1] + m_wav[:, -2])
    return done


def ktree_groups(members: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive groups of ``size`` members (the last may be shorter)."""
    return [members[i:i + size] for i in range(0, members.size, size)]


def ktree_group_size(n: int, levels: int) -> int:
    """ceil(n ** (1/K)), corrected for float rounding, so that size ** K >= n."""
    g = max(2, math.ceil(n ** (1.0 / levels) - 1e-9))
    while g ** levels < n:
        g += 1
    return g


def leader_index(length: int) -> int:
    """The member a group reduces into: its middle, so both sides are (almost) equally long."""
    return (length - 1) // 2


def ktree_reduce(t: MeshTensor, axis: str, levels: int = 2) -> tuple[MeshTensor, int]:
    """MeshGEMV's K-tree reduce of a tensor that is partial along ``axis``'s lines.

    Level 1 cuts each line into groups of g = ceil(n**(1/K)) PEs; each group reduces into
    its middle PE by two pipelined chains, one from each side. Level 2 does the same over the
    group leaders (g hops apart), and so on for K levels, so the critical path is about
    K * g / 2 chain stages (WaferLLM: N**(1/K) * K / 2 routing stages). Returns the sum on
    the root line (one PE wide, as `movement.reduce` returns it) and the root position.
    """
    along = t.row_map if axis == "col" else t.col_map
    if along != "partial":
        raise KernelShapeError(f"ktree_reduce along {axis}: tensor {t.name!r} must hold "
                               f"partial sums along that mesh axis, not {along!r}")
    fabric = t.fabric
    n = line_length(t.rect, axis)
    local, unlocal = local_view(axis, False)
    ce = local(fabric.ce_clock[t.rect.slices])
    ready = np.maximum(local(t.ready), ce)
    wav = local(t.wavelets()).astype(float)
    members = np.arange(n)
    if n > 1:
        size = ktree_group_size(n, levels)
        for _ in range(levels):
            leaders = []
            for group in ktree_groups(members, size):
                c = leader_index(group.size)
                leader = int(group[c])
                leaders.append(leader)
                if group.size == 1:
                    continue
                done = np.full(ready.shape[0], -np.inf)
                # the shorter side first: its stream reaches the leader's ramp first
                if c > 0:
                    done = np.maximum(done, chain_into(fabric, t.rect, axis, False, ready,
                                                       wav, group[: c + 1]))
                lower = n - 1 - group[c:][::-1]
                flipped = (ready[:, ::-1], wav[:, ::-1])
                done = np.maximum(done, chain_into(fabric, t.rect, axis, True, *flipped,
                                                   lower))
                ce = local(fabric.ce_clock[t.rect.slices])
                ready[:, leader] = np.maximum(done, ce[:, leader])
            members = np.asarray(leaders)
            if members.size == 1:
                break
    root = int(members[0])
    tiles = None
    if t.tiles is not None:
        summed = local(t.tiles).sum(axis=1, keepdims=True, dtype=np.float32)
        tiles = unlocal(to_storage(summed, t.dtype))
    if axis == "row":
        out_rect = Rect(t.rect.row, t.rect.col + root, t.rect.rows, 1)
        maps = {"col_map": None}
    else:
        out_rect = Rect(t.rect.row + root, t.rect.col, 1, t.rect.cols)
        maps = {"row_map": None}
    out_ready = unlocal(ready[:, root:root + 1])
    return t.like(tiles, out_ready, rect=out_rect, **maps), root


# ---------------------------------------------------------------------- closed form -----
def _merge_at_leader(wav: float, emits: list[float], ce: float,
                     ramp: float) -> tuple[float, float, float]:
    """Streams reaching a leader one after the other (shorter side first): each takes the
    ramp in for ``wav`` cycles and the CE one add per wavelet. Returns (ready, ce, ramp)."""
    done = -math.inf
    for emit in emits:
        begin = max(emit, ramp)
        ramp = begin + wav
        done = max(done, begin + wav)
        ce = max(ce, emit) + wav
    return max(done, ce), ce, ramp


def ktree_reduce_cycles(spec: WaferSpec, wavelets: float, n: int, levels: int = 2,
                        ready: float = 0.0) -> tuple[float, int]:
    """When `ktree_reduce` leaves the sum on its root, for a line of ``n`` PEs whose
    partial sums of ``wavelets`` are all ready at ``ready``; and the root's position.

    The same grouping as `ktree_reduce`, evaluated with scalars: a chain stage over h hops
    adds 2*T_R + h + 1 cycles, a chain streams its wavelets behind the first, and a leader
    takes its two incoming streams through its ramp one after the other.
    """
    if n <= 1 or wavelets <= 0:
        return ready, 0
    step = 2 * spec.ramp_cycles
    members = list(range(n))
    state = {m: (ready, ready, 0.0) for m in members}     # ready, ce clock, ramp-in clock
    size = ktree_group_size(n, levels)
    for _ in range(levels):
        leaders = []
        for group in ktree_groups(np.asarray(members), size):
            c = leader_index(group.size)
            leader = int(group[c])
            leaders.append(leader)
            if group.size == 1:
                continue
            emits = []
            for side in (group[: c + 1], group[c:][::-1]):
                if side.size < 2:
                    continue
                emit = state[int(side[0])][0]
                for prev, cur in zip(side[:-1], side[1:], strict=True):
                    hops = abs(int(cur) - int(prev))
                    emit = max(state[int(cur)][0],
                               emit + step + (hops + 1) * spec.hop_cycles)
                emits.append(emit)
            r, ce, ramp = state[leader]
            state[leader] = _merge_at_leader(wavelets, emits, ce, ramp)
        members = leaders
        if len(members) == 1:
            break
    root = members[0]
    return state[root][0], root
