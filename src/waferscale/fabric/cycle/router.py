"""One cycle of every router at once.

Each output link (PE, port) grants one wavelet per cycle to one of the channels that want
it: the channel's head has arrived, still owes a copy to that port, and the queue behind
the link has a free slot (credit). Ties go round-robin, so colours sharing a link each get
their turn and a colour whose receiver is full never blocks another one. A multicast head
leaves its queue once every port in its tx set has taken a copy.

Links are grouped by how many channels can contend for them (1, 2, 4, 8, ...) so each
group is a dense [links, width] matrix with little padding; a link with one contender
needs no arbitration at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.fabric.cycle.queues import Queues
from waferscale.fabric.cycle.routing import Channels


@dataclass
class _Bucket:
    ch: np.ndarray        # [links, width] contending channels (sentinel-padded)
    dst: np.ndarray       # [links, width] queue each would push into
    bit: np.ndarray       # [links, 1] out-port bit
    pe: np.ndarray        # [links]
    port: np.ndarray      # [links]
    rr: np.ndarray        # [links] round-robin pointer
    width: int
    dcap: np.ndarray      # [links, width] capacity of each destination queue
    rot: np.ndarray       # [width, width] priority of column j when the pointer is at i


class Router:
    """Vectorised arbitration and transfer over the compiled link table."""

    def __init__(self, ch: Channels, queues: Queues) -> None:
        self.ch, self.q = ch, queues
        counts = (ch.link_ch != ch.sentinel).sum(axis=1)
        self.buckets: list[_Bucket] = []
        lo = 0
        width = 1
        while lo < (int(counts.max()) if counts.size else 0):
            rows = np.flatnonzero((counts > lo) & (counts <= width))
            width = min(width, ch.width)
            if rows.size:
                dst = np.ascontiguousarray(ch.link_dst[rows, :width])
                ar = np.arange(width)
                self.buckets.append(_Bucket(
                    np.ascontiguousarray(ch.link_ch[rows, :width]), dst,
                    ch.link_bit[rows][:, None], ch.link_pe[rows], ch.link_port[rows],
                    np.zeros(rows.size, dtype=np.int64), width, queues.cap[dst],
                    (ar[None, :] - ar[:, None]) % width))
            lo, width = width, width * 2
        self.mark = np.zeros(queues.n, dtype=np.int64)
        self.occupancy = 0          # wavelets held in router channels
        self.moved = 0              # link transfers so far (a progress measure)
        self.trace: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None

    def step(self, t: int) -> int:
        """Advance all links by one cycle; return the number of wavelets moved."""
        if self.occupancy == 0:
            return 0
        q = self.q
        srcs, dsts, bits, pes, ports = [], [], [], [], []
        for b in self.buckets:
            want = (q.hrdy[b.ch] <= t) & (q.cnt[b.dst] < b.dcap) & ((q.pend[b.ch] & b.bit) != 0)
            if b.width == 1:
                rows = np.flatnonzero(want[:, 0])
                col = np.zeros(rows.size, dtype=np.int64)
            else:
                rows = np.flatnonzero(want.any(axis=1))
                if rows.size == 0:
                    continue
                key = np.where(want[rows], b.rot[b.rr[rows]], b.width)
                col = key.argmin(axis=1)
                b.rr[rows] = (col + 1) % b.width
            if rows.size:
                srcs.append(b.ch[rows, col])
                dsts.append(b.dst[rows, col])
                bits.append(b.bit[rows, 0])
                if self.trace is not None:
                    pes.append(b.pe[rows])
                    ports.append(b.port[rows])
        if not srcs:
            return 0
        src = np.concatenate(srcs) if len(srcs) > 1 else srcs[0]
        dst = np.concatenate(dsts) if len(dsts) > 1 else dsts[0]
        bit = np.concatenate(bits) if len(bits) > 1 else bits[0]
        values = q.peek(src)
        q.push(dst, values, t + q.lat[dst])
        order = np.arange(src.size)
        self.mark[src] = order
        if (self.mark[src] == order).all():
            q.pend[src] &= ~bit
        else:  # a multicast head went out of several ports this cycle
            np.bitwise_and.at(q.pend, src, ~bit)
        cand = src[q.pend[src] == 0]
        if cand.size:
            order = np.arange(cand.size)
            self.mark[cand] = order
            done = cand[self.mark[cand] == order]
            q.pop(done)
            q.pend[done] = q.tx[done]
        else:
            done = cand
        self.occupancy += int(np.count_nonzero(dst < self.ch.nch)) - done.size
        self.moved += src.size
        if self.trace is not None:
            self.trace.append((t, np.concatenate(pes), np.concatenate(ports),
                               self.ch.ch_color[src], values.copy()))
        return int(src.size)
