"""All wavelet queues of the grid as ring buffers in a few arrays.

Router input queues and compute-engine input queues share one index space so the router
can push into either with the same fancy-indexed write. Each entry carries the cycle at
which it becomes visible (arrival time), which models link and ramp latency without
separate pipeline arrays: a wavelet sent at cycle t over a link of latency L is written at
once with ready time t + L, and the slot it holds meanwhile is the credit the hardware would
hold for the wire.
"""

from __future__ import annotations

import numpy as np

from waferscale.fabric.cycle.config import CycleConfig
from waferscale.fabric.cycle.ports import R
from waferscale.fabric.cycle.routing import Channels
from waferscale.hardware.spec import WaferSpec

#: the arrival cycle of an empty queue's head (`Queues.never` where ``hrdy`` is 32-bit)
NEVER = np.iinfo(np.int64).max // 2


class Queues:
    """Ring buffers: flat ``val``/``rdy`` (queue-major), ``head``, ``cnt``, ``cap``."""

    def __init__(self, ch: Channels, spec: WaferSpec, config: CycleConfig,
                 wide: bool = False) -> None:
        n = ch.sentinel + 1
        lat = np.zeros(n, dtype=np.int64)
        cap = np.zeros(n, dtype=np.int64)
        link_in = ch.ch_in != R
        # a channel fed by the ramp waits for the CE pipeline, then the ramp
        lat[: ch.nch] = np.where(link_in, spec.hop_cycles, config.ce_latency + spec.ramp_cycles)
        cap[: ch.nch] = config.router_queue_depth + lat[: ch.nch]
        # compute engines read their queues before the routers move within a cycle, so a
        # wavelet can reach a CE no sooner than the next cycle, even with ramp_cycles = 0
        lat[ch.nch: ch.sentinel] = max(spec.ramp_cycles, 1)
        cap[ch.nch: ch.sentinel] = config.ce_queue_depth + spec.ramp_cycles
        capmax = int(cap.max()) if n > 1 else 1
        # ring storage is a power of two wide, so positions wrap with a mask; ``cap`` (the
        # credit limit) is what flow control checks
        self.shift = max(capmax - 1, 1).bit_length()
        self.mask = (1 << self.shift) - 1
        self.n = n
        # arrival cycles, latencies, credits and ring positions fit 32 bits (half the cache
        # lines per queue) unless a run may reach 2**30 cycles (`wide`) or a hop takes that
        # long; so does ``hrdy``, whose empty mark is then the largest int32 (``never``)
        small = not wide and int(lat.max(initial=0)) < 1 << 30
        dtype = np.int32 if small else np.int64
        self.never = int(np.iinfo(np.int32).max) if small else int(NEVER)
        self.lat, self.cap = lat.astype(dtype), cap.astype(dtype)
        self.val = np.zeros(n << self.shift, dtype=np.float32)
        self.rdy = np.zeros(n << self.shift, dtype=dtype)
        self.head = np.zeros(n, dtype=dtype)
        self.cnt = np.zeros(n, dtype=dtype)
        # arrival cycle of each queue's head wavelet (``never`` when empty): one gather
        # tells the router and the CEs which heads can move
        self.hrdy = np.full(n, self.never, dtype=dtype)
        # pending out-ports of each router channel's head wavelet (multicast progress)
        self.tx = np.zeros(n, dtype=np.uint8)
        self.tx[: ch.nch] = ch.ch_tx
        self.pend = self.tx.copy()
        # a router channel whose head found every owed queue full sleeps until one of
        # those queues pops (or its own head changes): the router then skips it
        self.awake = np.ones(n, dtype=bool)
        self.feeders = _feeders(ch, n).astype(dtype)

    def ready(self, idx: np.ndarray, t: int) -> np.ndarray:
        """Whether the head of each queue in ``idx`` has arrived by cycle ``t``."""
        return self.hrdy[idx] <= t

    def peek(self, idx: np.ndarray) -> np.ndarray:
        return self.val[(idx << self.shift) + self.head[idx]]

    def push(self, idx: np.ndarray, values: np.ndarray, ready_at: np.ndarray | int) -> None:
        """Append one wavelet to each queue in ``idx`` (distinct queues, space checked)."""
        cnt = self.cnt[idx]
        pos = (idx << self.shift) + ((self.head[idx] + cnt) & self.mask)
        self.val[pos] = values
        self.rdy[pos] = ready_at
        self.cnt[idx] = cnt + 1
        empty = cnt == 0
        if np.count_nonzero(empty):
            at = ready_at[empty] if isinstance(ready_at, np.ndarray) else ready_at
            self.hrdy[idx[empty]] = at

    def pop(self, idx: np.ndarray) -> np.ndarray:
        """Remove and return the head of each queue in ``idx`` (distinct, non-empty)."""
        base = idx << self.shift
        head = self.head[idx]
        values = self.val[base + head]
        head = (head + 1) & self.mask
        self.head[idx] = head
        cnt = self.cnt[idx] - 1
        self.cnt[idx] = cnt
        self.hrdy[idx] = np.where(cnt > 0, self.rdy[base + head], self.hrdy.dtype.type(self.never))
        self.awake[idx] = True
        self.awake[self.feeders[idx]] = True
        return values

    def next_ready(self, t: int) -> int | None:
        """The earliest future cycle at which some queue head becomes visible."""
        later = self.hrdy[(self.hrdy > t) & (self.hrdy < self.never)]
        return int(later.min()) if later.size else None


def _feeders(ch: Channels, n: int) -> np.ndarray:
    """[queues, k] router channels that push into each queue (sentinel-padded)."""
    chans, ports = np.nonzero(ch.dest != ch.sentinel)
    dst = ch.dest[chans, ports]
    order = np.argsort(dst, kind="stable")
    dst, chans = dst[order], chans[order]
    counts = np.bincount(dst, minlength=n)
    width = max(int(counts.max()) if counts.size else 1, 1)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(dst.size) - first[dst]
    out = np.full((n, width), ch.sentinel, dtype=np.int64)
    out[dst, rank] = chans
    return out
