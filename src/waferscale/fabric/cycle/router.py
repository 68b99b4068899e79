"""One cycle of every router at once.

Each output link (PE, port) grants one wavelet per cycle to one of the channels that want
it: the channel's head has arrived, still owes a copy to that port, and the queue behind
the link has a free slot (credit). Ties go round-robin, so colours sharing a link each get
their turn and a colour whose receiver is full never blocks another one. A multicast head
leaves its queue once every port in its tx set has taken a copy.

The step works on requests, not on the whole link table: only channels whose head has
arrived ask, so a quiet part of the grid costs nothing. Each request carries its link and
its place in that link's round-robin order; the lowest rotated place per link wins.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from waferscale.fabric.cycle.queues import Queues
from waferscale.fabric.cycle.routing import Channels

_BIG = np.int64(1 << 40)
#: no live-channel bitset: `cejit.router_step` scans every channel (the NumPy CEs push
#: without keeping one)
_NO_LIVE = np.zeros(0, dtype=np.int64)
#: lowest set port of a 5-bit mask
_LOWEST = np.array([(m & -m).bit_length() - 1 if m else 0 for m in range(32)], dtype=np.int64)


def jit() -> ModuleType:
    """The compiled kernels, imported on first use (numba's import is not free)."""
    from waferscale.fabric.cycle import cejit as compiled

    return compiled


class Router:
    """Vectorised arbitration and transfer over the compiled link table."""

    #: step with the compiled loop (`cejit.router_step`) on grids of at least this many PEs;
    #: smaller ones (most tests, the CLI's checks) skip numba's import and cache load, about
    #: a second, which their few thousand requests a cycle would not win back. Tests set
    #: it to 0 or to None (never) to compare the two steps.
    compiled_from_pes: int | None = 1024

    def __init__(self, ch: Channels, queues: Queues) -> None:
        self.ch, self.q = ch, queues
        nlinks = ch.link_id.size
        # per (channel, out-port) request slot: its link row, rank there, destination
        slots = ch.nch * 5
        self.slot_link = np.zeros(slots, dtype=np.int64)
        self.slot_rank = np.zeros(slots, dtype=np.int64)
        self.slot_dst = np.full(slots, ch.sentinel, dtype=np.int64)
        rows, cols = np.nonzero(ch.link_ch != ch.sentinel)
        chans = ch.link_ch[rows, cols]
        slot = chans * 5 + ch.link_port[rows]
        self.slot_link[slot] = rows
        self.slot_rank[slot] = cols
        self.slot_dst[slot] = ch.link_dst[rows, cols]
        self.link_width = np.maximum((ch.link_ch != ch.sentinel).sum(axis=1), 1)
        self.link_pe, self.link_port = ch.link_pe, ch.link_port
        self.rr = np.zeros(nlinks, dtype=np.int64)
        self.best = np.full(nlinks, _BIG, dtype=np.int64)
        self.mark = np.zeros(max(queues.n, nlinks), dtype=np.int64)
        self.occupancy = 0          # wavelets held in router channels
        self.moved = 0              # link transfers so far (a progress measure)
        self.trace: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None
        self._scratch: tuple[np.ndarray, ...] | None = None

    def _unique(self, keys: np.ndarray) -> bool:
        """Whether ``keys`` has no repeats (stamps a scratch array, no sort)."""
        order = np.arange(keys.size)
        self.mark[keys] = order
        return bool(np.count_nonzero(self.mark[keys] == order) == keys.size)

    def step(self, t: int) -> int:
        """Advance all links by one cycle; return the number of wavelets moved.

        The compiled loop (`cejit.router_step`) unless a trace is recorded; both are the same
        arbitration, the NumPy one is the reference and records the trace.
        """
        if self.occupancy == 0:
            return 0
        if self.trace is not None or self.compiled_from_pes is None \
                or self.ch.pes < self.compiled_from_pes:
            return self.step_numpy(t)
        if self._scratch is None:
            self._scratch = self.compiled_tables()
        q = self.q
        moved, held = jit().router_step(
            t, self.ch.nch, q.hrdy, q.awake, q.pend, q.tx, q.cnt, q.cap, q.head, q.val, q.rdy,
            q.lat, q.feeders, q.shift, q.mask, q.never, *self._scratch, _NO_LIVE)
        self.occupancy += held
        self.moved += moved
        return moved

    def compiled_tables(self) -> tuple[np.ndarray, ...]:
        """The compiled step's own tables: (destination, link, rank) per slot and (pointer,
        best key, width) per link in one row each, and its request scratch. Its pointers
        live here, not in ``rr``: a run uses one step or the other throughout."""
        nslot = self.ch.nch * 5
        # int32 halves what a request touches; keys are below a link's width, so 1 << 30
        # stands for "no request yet" (`cejit._NONE`)
        slot_pack = np.stack([self.slot_dst, self.slot_link, self.slot_rank], axis=1)
        link_pack = np.stack([self.rr, np.full_like(self.rr, 1 << 30), self.link_width], axis=1)
        # port-major rows (`cejit.router_step`): row port * nch + channel
        slot_pack = slot_pack.reshape(-1, 5, 3).transpose(1, 0, 2).reshape(-1, 3)
        return (slot_pack.astype(np.int32), link_pack.astype(np.int32),
                np.zeros((nslot, 4), dtype=np.int32))

    def step_numpy(self, t: int) -> int:
        """`step` in vectorised NumPy: the reference, and the path that records traces."""
        if self.occupancy == 0:
            return 0
        q, nch = self.q, self.ch.nch
        act = np.flatnonzero((q.hrdy[:nch] <= t) & q.awake[:nch])
        if act.size == 0:
            return 0
        # one request per port still owed; most heads owe one port, multicasts a few more
        bits = q.pend[act]
        port = _LOWEST[bits]
        src = act
        rest = bits & (bits - 1)
        if np.count_nonzero(rest):
            srcs, ports = [src], [port]
            more = np.flatnonzero(rest)
            cur = src
            while more.size:
                cur, bits = cur[more], rest[more]
                srcs.append(cur)
                ports.append(_LOWEST[bits])
                rest = bits & (bits - 1)
                more = np.flatnonzero(rest)
            src, port = np.concatenate(srcs), np.concatenate(ports)
        slot = src * 5 + port
        dst = self.slot_dst[slot]
        ok = q.cnt[dst] < q.cap[dst]
        nok = int(np.count_nonzero(ok))
        if nok < ok.size:
            q.awake[src[~ok]] = False        # blocked on credit: sleep until a pop
            q.awake[src[ok]] = True          # ... unless another of its ports can go
        if not nok:
            return 0
        src, port, slot, dst = src[ok], port[ok], slot[ok], dst[ok]
        link = self.slot_link[slot]
        if not self._unique(link):
            # several channels want one link: the lowest place after its pointer wins
            width = self.link_width[link]
            key = (self.slot_rank[slot] - self.rr[link]) % width
            np.minimum.at(self.best, link, key)
            win = key == self.best[link]
            self.best[link] = _BIG
            src, port, slot, dst, link = src[win], port[win], slot[win], dst[win], link[win]
            self.rr[link] = (self.slot_rank[slot] + 1) % self.link_width[link]
        bit = np.left_shift(1, port).astype(np.uint8)
        values = q.peek(src)
        q.push(dst, values, t + q.lat[dst])
        if self._unique(src):
            q.pend[src] &= ~bit
        else:  # a multicast head went out of several ports this cycle
            np.bitwise_and.at(q.pend, src, ~bit)
        cand = src[q.pend[src] == 0]
        if cand.size and not self._unique(cand):
            cand = np.unique(cand)
        if cand.size:
            q.pop(cand)
            q.pend[cand] = q.tx[cand]
        self.occupancy += int(np.count_nonzero(dst < nch)) - cand.size
        self.moved += src.size
        if self.trace is not None:
            self.trace.append((t, self.link_pe[link], self.link_port[link],
                               self.ch.ch_color[src], values.copy()))
        return int(src.size)

