"""Compiled (numba) versions of the cycle simulator's per-cycle inner loops.

Why numba here: one cycle of a 64 x 64 stencil moves about 4,600 wavelets out of 11,000
link requests, and the vectorised NumPy router (`Router.step_numpy`) spends some forty
array calls and their temporaries on it, about 1 ms a cycle; a loop over the requests
costs a few hundred nanoseconds each. The arbitration (lowest round-robin key per link, a
multicast head that leaves its queue once every owed port took a copy, credits checked
before anything moves) is the NumPy version's, step for step, so every cycle count, value
and counter is the same; tests run both and compare (tests/test_cycle_router.py).

Nothing here is imported unless a `CycleSim` runs, so the fast model never pays numba's
import; compiled code is cached on disk next to this file.
"""

from __future__ import annotations

import numba
import numpy as np

#: larger than any round-robin key (a link has at most 5 * colours channels)
_BIG = 1 << 40


@numba.njit(cache=True, nogil=True)
def router_step(t: int, nch: int, hrdy: np.ndarray, awake: np.ndarray, pend: np.ndarray,
                tx: np.ndarray, cnt: np.ndarray, cap: np.ndarray, head: np.ndarray,
                val: np.ndarray, rdy: np.ndarray, lat: np.ndarray, feeders: np.ndarray,
                shift: int, mask: int, never: int, slot_dst: np.ndarray,
                slot_link: np.ndarray, slot_rank: np.ndarray, link_width: np.ndarray,
                rr: np.ndarray, best: np.ndarray, req_src: np.ndarray, req_port: np.ndarray,
                req_dst: np.ndarray, popped: np.ndarray) -> tuple[int, int]:
    """One cycle of every router (`Router.step_numpy`'s semantics); returns (wavelets
    moved, change of the wavelets held in router channels)."""
    # requests: every owed port of every arrived, awake head; credit checked before any move
    n = 0
    blocked = 0
    for c in range(nch):
        if hrdy[c] > t or not awake[c]:
            continue
        bits = pend[c]
        for p in range(5):
            if bits & (1 << p):
                req_src[n] = c
                req_port[n] = p
                d = slot_dst[c * 5 + p]
                req_dst[n] = d if cnt[d] < cap[d] else -1
                if req_dst[n] < 0:
                    blocked += 1
                n += 1
    if n == 0 or blocked == n:
        if blocked:
            for i in range(n):
                awake[req_src[i]] = False
        return 0, 0
    if blocked:
        # blocked on credit: sleep until a pop, unless another of its ports can go
        for i in range(n):
            if req_dst[i] < 0:
                awake[req_src[i]] = False
        for i in range(n):
            if req_dst[i] >= 0:
                awake[req_src[i]] = True
    # arbitration: several channels on one link -> the lowest key after its pointer wins
    conflict = False
    for i in range(n):
        if req_dst[i] < 0:
            continue
        slot = req_src[i] * 5 + req_port[i]
        link = slot_link[slot]
        if best[link] != _BIG:
            conflict = True
        # (rank - rr) mod width without a division: both lie in [0, width)
        key = slot_rank[slot] - rr[link]
        if key < 0:
            key += link_width[link]
        if key < best[link]:
            best[link] = key
    moved = 0
    into_routers = 0
    for i in range(n):
        d = req_dst[i]
        if d < 0:
            continue
        c = req_src[i]
        slot = c * 5 + req_port[i]
        link = slot_link[slot]
        if conflict:
            key = slot_rank[slot] - rr[link]
            if key < 0:
                key += link_width[link]
            if key != best[link]:
                req_dst[i] = -1
                continue
        # push a copy of c's head into d
        k = cnt[d]
        pos = (d << shift) + ((head[d] + k) & mask)
        val[pos] = val[(c << shift) + head[c]]
        rdy[pos] = t + lat[d]
        cnt[d] = k + 1
        if k == 0:
            hrdy[d] = t + lat[d]
        pend[c] &= ~np.uint8(1 << req_port[i])
        moved += 1
        if d < nch:
            into_routers += 1
    for i in range(n):
        slot = req_src[i] * 5 + req_port[i]
        link = slot_link[slot]
        if conflict and req_dst[i] >= 0:
            nxt = slot_rank[slot] + 1
            rr[link] = 0 if nxt >= link_width[link] else nxt
    for i in range(n):
        best[slot_link[req_src[i] * 5 + req_port[i]]] = _BIG
    # heads that every owed port has taken leave their queue
    npop = 0
    for i in range(n):
        c = req_src[i]
        if req_dst[i] >= 0 and pend[c] == 0 and popped[c] == 0:
            popped[c] = 1
            npop += 1
            head[c] = (head[c] + 1) & mask
            cnt[c] -= 1
            hrdy[c] = rdy[(c << shift) + head[c]] if cnt[c] > 0 else never
            awake[c] = True
            for j in range(feeders.shape[1]):
                awake[feeders[c, j]] = True
            pend[c] = tx[c]
    for i in range(n):
        popped[req_src[i]] = 0
    return moved, into_routers - npop
