"""Reduces over chosen PEs of a line: the chains and the K-tree that only some PEs compute in.

`movement.reduce`'s chain adds at every PE (each stage: ramp down, add, ramp up, one hop:
``2*T_R + 2`` cycles, HPDC'24). When the PEs that hold addends are spread out, or when a
line is reduced in stages, most PEs between two that add only pass wavelets on in their
routers, one cycle per hop, and never touch their ramp:

* `chain_into`: a pipelined chain reduce over an increasing set of positions of a line;
  a stage over h hops costs ``2*T_R + h + 1`` cycles (the ramps and the add only at its
  ends, one cycle per router in between);
* `ktree_reduce`: MeshGEMV's K-tree (WaferLLM, OSDI'25), HPDC'24's multi-level reduce:
  groups of ceil(n**(1/K)) PEs reduce into their middle member from both sides, and the
  group leaders do the same over pass-through routers at the next level.

`ktree_reduce_cycles` is the same schedule in closed form. The wavelet-level version is
`waferscale.fabric.cycle.collectives.ktree_reduce_phase`; `waferscale validate
--agreement` compares the two.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from waferscale.errors import ShapeError
from waferscale.fabric.dtypes import to_storage
from waferscale.fabric.grid import RAMP_IN, Fabric, Rect
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
from waferscale.fabric.timing import CE_LATENCY, CE_QUEUE_WAVELETS
from waferscale.hardware.spec import WaferSpec


def line_length(rect: Rect, axis: str) -> int:
    return rect.cols if axis == "row" else rect.rows


def chain_into(fabric: Fabric, rect: Rect, axis: str, reverse: bool, ready: np.ndarray,
               wav: np.ndarray, members: np.ndarray, *, arrival: bool = False
               ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Pipelined chain reduce along ``members`` (increasing positions, in the coordinates of
    the direction ``reverse`` picks) into the last member; returns when its sum is complete.

    ``ready``/``wav`` are [lines, n] arrays in those coordinates. Stage i forwards the running
    sum from members[i-1] to members[i] over h hops; like `movement.reduce`'s chain it adds
    2*T_R + h + 1 cycles of latency (ramp down, h hops, ramp up, add) and streams the
    wavelets behind the first one. Each receiver spends one add per wavelet on its CE.
    ``arrival=True`` also returns when the stream reaches the last member.
    """
    spec = fabric.spec
    view = line_view(rect, axis, reverse)
    port = line_port(axis, reverse)
    lines, n = wav.shape
    s = np.asarray(members, dtype=int)
    extra = path_extra(fabric, view, port)
    hops = np.diff(s)
    steps = 2 * spec.ramp_cycles + hops * spec.hop_cycles + CE_LATENCY
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
    return (done, emit[:, -1]) if arrival else done


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
        raise ShapeError(f"ktree_reduce along {axis}: tensor {t.name!r} must hold "
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
                first = None
                if c > 0:
                    first = chain_into(fabric, t.rect, axis, False, ready, wav, group[: c + 1],
                                       arrival=True)
                    done = np.maximum(done, first[0])
                lower = n - 1 - group[c:][::-1]
                flipped = (ready[:, ::-1], wav[:, ::-1])
                second, arrive = chain_into(fabric, t.rect, axis, True, *flipped, lower,
                                            arrival=True)
                done = np.maximum(done, second)
                if first is not None:
                    # the upper side's stream queues while the lower one is taken in
                    b = wav[:, leader]
                    steal = queue_steal(b, arrive, first[0] - b, first[0])
                    done = done + steal
                    ramp = local(fabric.port_clock[RAMP_IN][t.rect.slices])
                    ramp[:, leader] += steal
                    fabric.port_clock[RAMP_IN][t.rect.slices] = unlocal(ramp)
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
def queue_steal(wavelets: Any, arrival: Any, start: Any, end: Any) -> Any:
    """Cycles a stream of ``wavelets`` that reaches a PE's ramp at ``arrival`` costs the
    stream the PE's CE is taking in from ``start`` to ``end``.

    The ramp into the CE serves the colours that have data in turn, so the waiting stream's
    wavelets take every other slot until its CE queue is full (`CE_QUEUE_WAVELETS`); each
    one it queues while the other still has wavelets to come delays that one by a cycle,
    in which the CE idles. Measured on the cycle simulator (docs/fabric.md).
    """
    queued = np.minimum(CE_QUEUE_WAVELETS, wavelets)
    overlap = np.minimum(end - 1, arrival + queued) - np.maximum(start, arrival)
    steal = np.maximum(0.0, np.minimum(queued, overlap))
    return float(steal) if np.ndim(steal) == 0 else steal


def _merge_at_leader(wav: float, arrivals: list[float], ready: float, ce: float
                     ) -> tuple[float, float, float]:
    """Streams reaching a leader at ``arrivals``, taken one after the other (shorter side
    first): each takes the ramp in for ``wav`` cycles and the CE one add per wavelet. A
    stream that arrives while another is consumed takes ramp slots once, until its queue is
    full (`queue_steal`). Returns (ready, ce, ramp)."""
    stolen: set[int] = set()
    t = ready
    for i, a in enumerate(arrivals):
        begin = max(a, t)
        end = begin + wav
        for j in range(i + 1, len(arrivals)):
            if j not in stolen and arrivals[j] < end:
                steal = queue_steal(wav, arrivals[j], begin, end)
                end += steal
                if steal:
                    stolen.add(j)
        t = end
        ce = max(ce, a) + wav
    return max(t, ce), ce, t


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
    step = 2 * spec.ramp_cycles + CE_LATENCY
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
            arrivals = []
            for side in (group[: c + 1], group[c:][::-1]):
                if side.size < 2:
                    continue
                emit = state[int(side[0])][0]
                for prev, cur in zip(side[:-1], side[1:], strict=True):
                    hops = abs(int(cur) - int(prev))
                    emit = emit + step + hops * spec.hop_cycles
                    if int(cur) != leader:     # a member adds and forwards once it is done
                        emit = max(state[int(cur)][0], emit)
                arrivals.append(emit)
            r, ce, _ = state[leader]
            state[leader] = _merge_at_leader(wavelets, arrivals, r, ce)
        members = leaders
        if len(members) == 1:
            break
    root = members[0]
    return state[root][0], root
