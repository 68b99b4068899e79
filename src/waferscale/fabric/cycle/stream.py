"""A stream between two rectangles along X-then-Y routes, as a wavelet program.

Every PE of the source rectangle sends its data to the PE at the same place in the
destination rectangle: first along its row to the destination column, then along that
column. Routes are per colour, not per flow, so two flows that pass through a common PE
need different colours; a greedy colouring of the flows' PE sets finds them, and a stream
that needs more colours than the budget fails with a `ColorBudgetError`.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import ColorBudgetError, GridError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.lines import ColorPool
from waferscale.fabric.cycle.ports import DELTA, NAMES, OPPOSITE
from waferscale.fabric.cycle.sim import CycleSim

Rect4 = tuple[int, int, int, int]


def xy_path(src: tuple[int, int], dst: tuple[int, int]) -> list[tuple[int, int, str, str]]:
    """The PEs of an X-then-Y route with the port each enters by and leaves by."""
    (r, c), (r1, c1) = src, dst
    moves = [1 if c1 > c else 3] * abs(c1 - c) + [2 if r1 > r else 0] * abs(r1 - r)
    path: list[tuple[int, int, str, str]] = []
    came = "R"
    for port in moves:
        path.append((r, c, came, NAMES[port]))
        r, c = r + DELTA[port][0], c + DELTA[port][1]
        came = NAMES[OPPOSITE[port]]
    path.append((r, c, came, "R"))
    return path


def stream_phase(sim: CycleSim, pool: ColorPool, src_arr: str, dst_arr: str, n: int,
                 src: Rect4, dst: Rect4) -> list[isa.Instr]:
    """Route and program the stream ``src`` -> ``dst`` (rectangles of equal shape)."""
    r0, c0, h, w = src
    r1, c1, h1, w1 = dst
    if (h, w) != (h1, w1):
        raise GridError(f"stream: destination {h1}x{w1} must have the source's shape {h}x{w}")
    for (rr, cc) in ((r0, c0), (r1, c1)):
        if rr < 0 or cc < 0 or rr + h > sim.rows or cc + w > sim.cols:
            raise GridError(f"stream: rectangle {h}x{w} at ({rr},{cc}) does not fit the "
                            f"{sim.rows}x{sim.cols} grid")
    if (r0, c0) == (r1, c1):
        raise GridError("stream: source and destination are the same rectangle")
    flows = [xy_path((r0 + i, c0 + j), (r1 + i, c1 + j)) for i in range(h) for j in range(w)]
    color_idx = _color_flows([{(a, b) for a, b, _, _ in f} for f in flows])
    needed = max(color_idx) + 1
    if needed > pool.budget - pool.next:
        raise ColorBudgetError(
            f"stream {h}x{w} from ({r0},{c0}) to ({r1},{c1}) needs {needed} colours (flows "
            f"that cross a common PE need distinct colours) but {pool.budget - pool.next} "
            f"are left; stream fewer rows/columns at a time")
    colors = pool.take(needed, "stream")
    send_c = np.zeros((sim.rows, sim.cols), dtype=np.int64)
    recv_c = np.zeros((sim.rows, sim.cols), dtype=np.int64)
    rx = np.zeros((needed, sim.rows, sim.cols), dtype=object)
    tx = np.zeros((needed, sim.rows, sim.cols), dtype=object)
    for flow, k in zip(flows, color_idx, strict=True):
        for r, c, into, out in flow:
            rx[k, r, c], tx[k, r, c] = into, out
        send_c[flow[0][0], flow[0][1]] = colors[k]
        recv_c[flow[-1][0], flow[-1][1]] = colors[k]
    for k, color in enumerate(colors):
        used = rx[k] != 0
        for into, out in {(rx[k, r, c], tx[k, r, c]) for r, c in np.argwhere(used)}:
            sim.route(color, into, out, used & (rx[k] == into) & (tx[k] == out))
    senders = np.zeros((sim.rows, sim.cols), dtype=bool)
    senders[r0:r0 + h, c0:c0 + w] = True
    receivers = np.zeros_like(senders)
    receivers[r1:r1 + h, c1:c1 + w] = True
    return [
        isa.mov(isa.FabOut(send_c), isa.Mem(src_arr), n, async_=True, mask=senders,
                label="stream send"),
        isa.mov(isa.Mem(dst_arr), isa.FabIn(recv_c), n, mask=receivers, label="stream recv"),
    ]


def _color_flows(pe_sets: list[set[tuple[int, int]]]) -> list[int]:
    """Greedy colouring: each flow takes the lowest colour no overlapping flow has."""
    colors: list[int] = []
    for i, pes in enumerate(pe_sets):
        taken = {colors[j] for j in range(i) if pe_sets[j] & pes}
        k = 0
        while k in taken:
            k += 1
        colors.append(k)
    return colors
