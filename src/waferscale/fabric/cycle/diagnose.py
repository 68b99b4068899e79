"""Reports for runs that cannot finish: which PEs wait, on which colours, behind which queues.

A deadlock on a mesh is almost always a cycle of full queues or a receiver that never reads;
listing the stalled instructions next to the queues that hold wavelets shows the cycle.
"""

from __future__ import annotations

import numpy as np

from waferscale.fabric.cycle.ce import ComputeEngines
from waferscale.fabric.cycle.grid import pe_name
from waferscale.fabric.cycle.ports import BIT, NAMES, mask_names


def queue_lines(ce: ComputeEngines, limit: int = 12) -> list[str]:
    """Non-empty queues: router channels with the ports their head still owes, CE queues."""
    ch, q = ce.ch, ce.q
    lines: list[str] = []
    for i in np.flatnonzero(q.cnt[: ch.nch])[:limit]:
        owed = int(q.pend[i])
        full = []
        for port in range(5):
            if owed & BIT[port]:
                dst = int(ch.dest[i, port])
                if q.cnt[dst] >= q.cap[dst]:
                    full.append(NAMES[port])
        why = f"; blocked: queue behind {''.join(full)} is full" if full else ""
        lines.append(f"router queue PE {pe_name(int(ch.ch_pe[i]), ch.cols)} colour "
                     f"{int(ch.ch_color[i])} from {NAMES[int(ch.ch_in[i])]}: "
                     f"{int(q.cnt[i])}/{int(q.cap[i])} wavelets, head owes "
                     f"{mask_names(owed)}{why}")
    for i in np.flatnonzero(q.cnt[ch.nch: ch.sentinel])[:limit]:
        lines.append(f"CE queue PE {pe_name(int(ch.cq_pe[i]), ch.cols)} colour "
                     f"{int(ch.cq_color[i])}: {int(q.cnt[ch.nch + i])} wavelet(s) nobody reads")
    return lines


def involved(ce: ComputeEngines) -> tuple[list[tuple[int, int]], list[int]]:
    """(PEs, colours) that hold wavelets or run stalled work, for the error's attributes."""
    ch, q = ce.ch, ce.q
    pes: set[int] = set()
    colors: set[int] = set()
    held = np.flatnonzero(q.cnt[: ch.nch])
    pes.update(int(p) for p in ch.ch_pe[held])
    colors.update(int(c) for c in ch.ch_color[held])
    held_cq = np.flatnonzero(q.cnt[ch.nch: ch.sentinel])
    pes.update(int(p) for p in ch.cq_pe[held_cq])
    colors.update(int(c) for c in ch.cq_color[held_cq])
    for op in ce.ops:
        run = np.flatnonzero(op.running)
        pes.update(int(p) for p in run)
        for i in op.queue:
            qi = op.queue[i][run]
            in_cq = qi >= ch.nch
            colors.update(int(c) for c in ch.cq_color[qi[in_cq] - ch.nch])
            colors.update(int(c) for c in ch.ch_color[qi[~in_cq]])
    return sorted((p // ch.cols, p % ch.cols) for p in pes), sorted(colors)
