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

import numpy as np

from waferscale.hardware.spec import WaferSpec

#: Cycles between a compute engine reading an element and its result leaving for the ramp
#: (the "+1" of every dependent step in HPDC'24's model, 2*T_R + 1 per step). The cycle
#: simulator's ``CycleConfig.ce_latency`` default, which these forms were checked against.
CE_LATENCY = 1
#: Wavelets of one colour that can wait for the compute engine: its input queue plus the
#: ramp's stages. [A]: no public figure; the cycle simulator's defaults
#: (``CycleConfig.ce_queue_depth`` 4 + ``ramp_cycles`` 2), which these forms are checked
#: against. Used where a stream arrives while the CE consumes another (`fabric.ktree`).
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
        from waferscale.fabric.ktree import ktree_reduce_cycles
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
                  element_bytes: int = 4) -> np.ndarray:
    """Cycles of one vector instruction over ``elements`` on each PE.

    The rate is the SIMD width of (dtype, op), unless the SRAM ports are slower: ``reads``
    and ``writes`` memory operands per element against the spec's ports and word size.
    """
    elements = np.asarray(elements, dtype=float)
    width = spec.simd.width(dtype, op, accumulate)
    word = spec.mem_word_bits / 8
    per_element = max(1.0 / width,
                      reads * element_bytes / (spec.mem_reads_per_cycle * word),
                      writes * element_bytes / (spec.mem_writes_per_cycle * word))
    return np.ceil(elements * per_element)


def halo_cycles(spec: WaferSpec, wavelets: float, radius: int, directions: int = 4) -> float:
    """Radius-r multicast halo of an interior PE: its ramp in takes ``directions * r`` tiles.

    The nearest neighbour's first wavelet reaches the router one hop after leaving its CE;
    from then the ramp into the CE is the bottleneck, one wavelet per cycle.
    """
    if wavelets <= 0:
        return 0.0
    ramp_in = directions * radius * wavelets / spec.ramp_wavelets_per_cycle
    return 1 + ramp_in + spec.hop_cycles + 2 * spec.ramp_cycles
