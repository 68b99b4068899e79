"""One cycle of every router at once.

Each output link (PE, port) grants one wavelet per cycle to one of the channels that want
it: the channel's head has arrived, still owes a copy to that port, and the queue behind
the link has a free slot (credit). Ties go round-robin, so colours sharing a link each get
their turn and a colour whose receiver is full never blocks another one. A multicast head
leaves its queue once every port in its tx set has taken a copy.
"""

from __future__ import annotations

import numpy as np

from waferscale.fabric.cycle.queues import Queues
from waferscale.fabric.cycle.routing import Channels


class Router:
    """Vectorised arbitration and transfer over the compiled link table."""

    def __init__(self, ch: Channels, queues: Queues) -> None:
        self.ch, self.q = ch, queues
        self.rr = np.zeros(ch.link_id.size, dtype=np.int64)
        self.cols_idx = np.arange(ch.width, dtype=np.int64)[None, :]
        self.bit_col = ch.link_bit[:, None]
        self.occupancy = 0          # wavelets held in router channels
        self.moved = 0              # link transfers so far (a progress measure)
        self.trace: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None

    def step(self, t: int) -> int:
        """Advance all links by one cycle; return the number of wavelets moved."""
        if self.occupancy == 0:
            return 0
        ch, q = self.ch, self.q
        lc, ld = ch.link_ch, ch.link_dst
        head_ready = (q.cnt > 0) & (q.rdy[np.arange(q.n), q.head] <= t)
        want = head_ready[lc] & ((q.pend[lc] & self.bit_col) != 0) & (q.cnt[ld] < q.cap[ld])
        if ch.width == 1:
            rows = np.flatnonzero(want[:, 0])
            if rows.size == 0:
                return 0
            col = np.zeros(rows.size, dtype=np.int64)
        else:
            prio = (self.cols_idx - self.rr[:, None]) % ch.width
            key = np.where(want, prio, ch.width)
            pick = key.argmin(axis=1)
            rows = np.flatnonzero(key[np.arange(key.shape[0]), pick] < ch.width)
            if rows.size == 0:
                return 0
            col = pick[rows]
            self.rr[rows] = (col + 1) % ch.width
        src = lc[rows, col]
        dst = ld[rows, col]
        bits = ch.link_bit[rows]
        values = q.val[src, q.head[src]]
        q.push(dst, values, t + q.lat[dst])
        np.bitwise_and.at(q.pend, src, ~bits)
        done = np.unique(src[q.pend[src] == 0])
        q.pop(done)
        q.pend[done] = q.tx[done]
        into_router = int(np.count_nonzero(dst < ch.nch))
        self.occupancy += into_router - done.size
        self.moved += rows.size
        if self.trace is not None:
            self.trace.append((t, ch.link_pe[rows], ch.link_port[rows],
                               ch.ch_color[src], values.copy()))
        return int(rows.size)
