"""Compiled (numba) versions of the cycle simulator's per-cycle inner loops.

Why numba here: one cycle of a 64 x 64 stencil moves about 4,600 wavelets out of 11,000
link requests, and the vectorised NumPy router (`Router.step_numpy`) spends some forty
array calls and their temporaries on it, about 1 ms a cycle; a loop over the requests
costs a few hundred nanoseconds each. The arbitration (lowest round-robin key per link, a
multicast head that leaves its queue once every owed port took a copy, credits checked
before anything moves) is the NumPy version's, step for step, so every cycle count, value
and counter is the same; tests run both and compare (tests/test_cycle_router.py).

Nothing here is imported unless a `CycleSim` runs, so the fast model never pays numba's
import; compiled code is cached on disk next to this file. `cejit.run_cycles` calls
`router_step`, and numba keys its cache of that loop on cejit.py alone: cejit.py takes
this file's time stamp when this one is newer (`cejit._stamp_after`), so that an edit here
recompiles the loop.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

#: larger than any round-robin key (a link has at most 5 * colours channels): no request
_NONE = 1 << 30


@numba.njit(cache=True, nogil=True, inline="always")
def _ask(c, n, blocked, conflict, nch, pend, cnt, cap, slot_pack, link_pack, req_slot,
         req_dst):
    """The requests of arrived, awake channel ``c``: every owed port, credit checked, the
    lowest rotated rank per link kept; returns the new (requests, blocked, conflict)."""
    bits = pend[c]
    for p in range(5):
        if bits & (1 << p):
            slot = p * nch + c
            d = np.int64(slot_pack[slot, 0])
            req_slot[n] = c * 8 + p
            if cnt[d] < cap[d]:
                req_dst[n] = d
                link = slot_pack[slot, 1]
                # (rank - rr) mod width without a division: both lie in [0, width)
                key = slot_pack[slot, 2] - link_pack[link, 0]
                if key < 0:
                    key += link_pack[link, 2]
                b = link_pack[link, 1]
                if b != _NONE:
                    conflict = True
                if key < b:
                    link_pack[link, 1] = key
            else:
                req_dst[n] = -1
                blocked += 1
            n += 1
    return n, blocked, conflict


@numba.njit(cache=True, nogil=True)
def router_step(t: int, nch: int, hrdy: np.ndarray, awake: np.ndarray, pend: np.ndarray,
                tx: np.ndarray, cnt: np.ndarray, cap: np.ndarray, head: np.ndarray,
                val: np.ndarray, rdy: np.ndarray, lat: np.ndarray, feeders: np.ndarray,
                shift: int, mask: int, never: int, slot_pack: np.ndarray,
                link_pack: np.ndarray, req_slot: np.ndarray, req_dst: np.ndarray,
                live: np.ndarray) -> tuple[int, int]:
    """One cycle of every router (`Router.step_numpy`'s semantics); returns (wavelets
    moved, change of the wavelets held in router channels).

    ``slot_pack`` holds (destination queue, link row, rank on the link) per (channel,
    out-port) slot, port-major (row ``port * nch + channel``, so that successive channels'
    slots share cache lines; a request names ``channel * 8 + port``), and ``link_pack``
    (round-robin pointer, best key so far, width) per link, one row each so that a request
    touches one cache line of each.
    """
    # requests: every owed port of every arrived, awake head; credit checked before any
    # move, and the lowest rotated rank per link found in the same pass
    n = 0
    blocked = 0
    conflict = False
    track = live.size > 0
    if track:
        # only the 64-channel words of ``live`` that hold a non-empty channel
        for w in range(live.size):
            word = live[w]
            while word != 0:
                c = (w << 6) + trailing_zeros(word)
                word &= word - 1
                if hrdy[c] > t or not awake[c]:
                    continue
                n, blocked, conflict = _ask(c, n, blocked, conflict, nch, pend, cnt, cap,
                                            slot_pack, link_pack, req_slot, req_dst)
    else:
        for c in range(nch):
            if hrdy[c] > t or not awake[c]:
                continue
            n, blocked, conflict = _ask(c, n, blocked, conflict, nch, pend, cnt, cap,
                                        slot_pack, link_pack, req_slot, req_dst)
    if n == 0 or blocked == n:
        if blocked:
            for i in range(n):
                awake[req_slot[i] >> 3] = False
        return 0, 0
    if blocked:
        # blocked on credit: sleep until a pop, unless another of its ports can go
        for i in range(n):
            if req_dst[i] < 0:
                awake[req_slot[i] >> 3] = False
        for i in range(n):
            if req_dst[i] >= 0:
                awake[req_slot[i] >> 3] = True
    # the winner of every link moves a copy of its head
    moved = 0
    into_routers = 0
    for i in range(n):
        d = req_dst[i]
        if d < 0:
            continue
        c = req_slot[i] >> 3
        p = req_slot[i] & 7
        slot = p * nch + c
        if conflict:
            link = slot_pack[slot, 1]
            key = slot_pack[slot, 2] - link_pack[link, 0]
            if key < 0:
                key += link_pack[link, 2]
            if key != link_pack[link, 1]:
                continue
        k = cnt[d]
        pos = (d << shift) + ((head[d] + k) & mask)
        val[pos] = val[(c << shift) + head[c]]
        rdy[pos] = t + lat[d]
        cnt[d] = k + 1
        if k == 0:
            hrdy[d] = t + lat[d]
            if track and d < nch:
                live[d >> 6] |= np.int64(1) << (d & 63)
        pend[c] &= ~np.uint8(1 << p)
        req_slot[moved] = req_slot[i]   # winners, in request order, for the pass below
        moved += 1
        if d < nch:
            into_routers += 1
    # winners advance their link's pointer (when any link had a contest) and reset its key
    # (each link with a key has one winner), and heads that every owed port has taken
    # leave their queue; the refilled ``pend`` (never 0 for a channel that asked) keeps a
    # multicast head from leaving twice
    npop = 0
    for i in range(moved):
        c = req_slot[i] >> 3
        slot = (req_slot[i] & 7) * nch + c
        link = slot_pack[slot, 1]
        link_pack[link, 1] = _NONE
        if conflict:
            nxt = slot_pack[slot, 2] + 1
            link_pack[link, 0] = 0 if nxt >= link_pack[link, 2] else nxt
        if pend[c] == 0:
            npop += 1
            head[c] = (head[c] + 1) & mask
            cnt[c] -= 1
            if cnt[c] > 0:
                hrdy[c] = rdy[(c << shift) + head[c]]
            else:
                hrdy[c] = never
                if track:
                    live[c >> 6] &= ~(np.int64(1) << (c & 63))
            awake[c] = True
            for j in range(feeders.shape[1]):
                awake[feeders[c, j]] = True
            pend[c] = tx[c]
    return moved, into_routers - npop
