"""Closed-form cycle counts of the fabric's primitives: the one source of truth for cost.

The movement and compute functions advance per-PE clocks with exactly these formulas (plus
contention with whatever else is in flight), and kernels' ``cost()`` add them up, so an
estimate for a model too big to run and a simulation of a small one cannot drift apart.

Conventions (see docs/fabric.md): a message of B wavelets over H hops leaves its source CE at
t0, spends T_R cycles on the ramp down to the router, one cycle per hop, and T_R cycles up the
ramp into the destination CE; one wavelet per cycle follows the first, so the message is
complete at ``t0 + B + H + 2*T_R``. Reduce and broadcast costs follow Luczynski et al.,
"Near-Optimal Wafer-Scale Reduce" (HPDC'24).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from waferscale.hardware.spec import WaferSpec

#: Cycles between a compute engine reading an element and its result leaving for the ramp
#: (the "+1" of every dependent step in HPDC'24's model, 2*T_R + 1 per step). The cycle
#: simulator's ``CycleConfig.ce_latency`` default, which these forms were checked against.
CE_LATENCY = 1
#: Wavelets of one colour that can wait for the compute engine: its input queue plus the
#: ramp's stages. [A]: no public figure; the cycle simulator's defaults
#: (``CycleConfig.ce_queue_depth`` 4 + ``ramp_cycles`` 2), which these forms are checked
#: against. Used where a stream arrives while the CE consumes another (`movement.ktree_reduce`).
CE_QUEUE_WAVELETS = 6


def transfer_cycles(spec: WaferSpec, wavelets: float, hops: int, share: int = 1) -> float:
    """A point-to-point message; ``share`` messages from consecutive PEs interleave on its
    busiest link, so its wavelets arrive one every ``share`` cycles.

    ``share * (B - 1) + 2 + H + 2 T_R``: the source CE reads the first element one cycle
    before it goes down the ramp, and the last of B interleaved wavelets arrives
    ``share * (B - 1)`` cycles after the first, then one cycle into the queue. Both terms were
    measured against the wavelet-level cycle simulator (docs/fabric.md).
    """
    if wavelets <= 0:
        return 0.0
    return share * (wavelets - 1) + 2 + hops * spec.hop_cycles + 2 * spec.ramp_cycles


def multicast_cycles(spec: WaferSpec, wavelets: float, pes: int) -> float:
    """Flooding broadcast from one end of a line of ``pes`` PEs: B + (P - 1) + 2 T_R + 1
    (HPDC'24: B + P + 2 T_R)."""
    if pes <= 1 or wavelets <= 0:
        return 0.0
    return transfer_cycles(spec, wavelets, pes - 1)


def chain_step_cycles(spec: WaferSpec, hops: int = 1) -> float:
    """Latency one chain-reduce stage adds: ramp up, add, ramp down, and ``hops`` routers
    passed at one cycle each (HPDC'24: 2*T_R + 2 per stage between neighbours). Only the
    two PEs that add touch a ramp; the routers in between pass the wavelets on."""
    return 2 * spec.ramp_cycles + CE_LATENCY + hops * spec.hop_cycles


def chain_reduce_cycles(spec: WaferSpec, wavelets: float, pes: int) -> float:
    """Chain reduce of B wavelets over P PEs to one end: B + (2 T_R + 2)(P - 1)."""
    if pes <= 1 or wavelets <= 0:
        return 0.0
    return wavelets + chain_step_cycles(spec) * (pes - 1)


def tree_levels(pes: int) -> int:
    return max(0, math.ceil(math.log2(pes))) if pes > 1 else 0


def tree_reduce_cycles(spec: WaferSpec, wavelets: float, pes: int) -> float:
    """Binary-tree reduce to one end: level l sends B wavelets 2**l hops."""
    if pes <= 1 or wavelets <= 0:
        return 0.0
    return sum(transfer_cycles(spec, wavelets, 2 ** level) for level in range(tree_levels(pes)))


def reduce_cycles(spec: WaferSpec, wavelets: float, pes: int, algorithm: str) -> float:
    if algorithm == "chain":
        return chain_reduce_cycles(spec, wavelets, pes)
    if algorithm == "tree":
        return tree_reduce_cycles(spec, wavelets, pes)
    raise ValueError(f"reduce algorithm {algorithm!r}: use 'chain' or 'tree'")


def allreduce_cycles(spec: WaferSpec, wavelets: float, pes: int, algorithm: str = "chain"
                     ) -> float:
    """Reduce to one end, then flood the result back; ``"ktree"``: MeshGEMV's K-tree (K = 2)
    into the middle, then a flood from there to both ends (`movement.allreduce`)."""
    if algorithm == "ktree":
        if pes <= 1 or wavelets <= 0:
            return 0.0
        done, root = ktree_reduce_cycles(spec, wavelets, pes)
        return done + multicast_cycles(spec, wavelets, max(root, pes - 1 - root) + 1)
    return reduce_cycles(spec, wavelets, pes, algorithm) + multicast_cycles(spec, wavelets, pes)


def shift_cycles(spec: WaferSpec, wavelets: float, length: int, distance: int = 1,
                 cyclic: bool = False) -> float:
    """Every PE of a line sends its tile ``distance`` PEs on (the wrap goes back the line)."""
    if wavelets <= 0 or distance % length == 0:
        return 0.0
    forward = transfer_cycles(spec, wavelets, distance, share=min(distance, length - distance))
    if not cyclic:
        return forward
    wrap = transfer_cycles(spec, wavelets, length - distance,
                           share=min(distance, length - distance))
    return max(forward, wrap)


def stream_cycles(spec: WaferSpec, wavelets: float, d_rows: int, d_cols: int, rows: int,
                  cols: int) -> float:
    """Every PE of a rows x cols rectangle sends its tile to the PE at the same place in a
    rectangle (d_rows, d_cols) away, X first then Y; flows that share a link interleave."""
    share = max(min(abs(d_cols), cols), min(abs(d_rows), rows), 1)
    return transfer_cycles(spec, wavelets, abs(d_rows) + abs(d_cols), share=share)


def vector_cycles(spec: WaferSpec, elements: np.ndarray | float, dtype: str, op: str,
                  reads: int = 2, writes: int = 1, accumulate: str | None = None,
                  element_bytes: int = 4, integral: bool = False) -> np.ndarray:
    """Cycles of one vector instruction over ``elements`` on each PE.

    The rate is the SIMD width of (dtype, op), unless the SRAM ports are slower: ``reads``
    and ``writes`` memory operands per element against the spec's ports and word size.
    ``integral``: the caller knows the counts are whole numbers, so at one element per
    cycle they are the cycles themselves (returned as they are, not copied).
    """
    width = spec.simd.width(dtype, op, accumulate)
    word = spec.mem_word_bits / 8
    per_element = max(1.0 / width,
                      reads * element_bytes / (spec.mem_reads_per_cycle * word),
                      writes * element_bytes / (spec.mem_writes_per_cycle * word))
    if not isinstance(elements, np.ndarray) and not integral:
        # one count (kernel sizing asks millions of them): the same float64 product and
        # ceiling in plain Python, returned as NumPy's scalar would be
        cycles = float(elements) * per_element
        return np.float64(math.ceil(cycles) if math.isfinite(cycles) else cycles)
    elements = np.asarray(elements, dtype=float)
    if integral and per_element == 1.0:
        return elements
    cycles = elements * per_element
    return np.ceil(cycles, out=cycles) if isinstance(cycles, np.ndarray) else np.ceil(cycles)


def halo_cycles(spec: WaferSpec, wavelets: float, radius: int, directions: int = 4) -> float:
    """Radius-r multicast halo of an interior PE: its ramp in takes ``directions * r`` tiles.

    The nearest neighbour's first wavelet reaches the router one hop after leaving its CE;
    from then the ramp into the CE is the bottleneck, one wavelet per cycle.
    """
    if wavelets <= 0:
        return 0.0
    ramp_in = directions * radius * wavelets / spec.ramp_wavelets_per_cycle
    return 1 + ramp_in + spec.hop_cycles + 2 * spec.ramp_cycles

# ----------------------------------------------------------- K-tree (closed form) -----
# The K-tree reduce of `movement.ktree_reduce` (MeshGEMV's, WaferLLM OSDI'25; HPDC'24's
# multi-level reduce) in closed form, and the grouping both share.
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
