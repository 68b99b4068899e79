"""The whole run loop compiled: compute engines, routers and the state counters in numba.

`CycleSim.run` steps every cycle from Python with NumPy over all PEs (`ComputeEngines.step`,
`Router.step`): the reference. On large grids (`CycleSim.compiled_from_pes`) it hands the
run to `run_cycles` here instead, which loops over the cycles itself and returns only
when the run is quiet (finished or deadlocked), hits its cycle limit, livelocks or meets a
program error. Each step is the reference's, in the same order and with the same
tie-breaks, so cycle counts, values and counters are identical; tests run both
(tests/test_cycle_compiled_ce.py). What the NumPy step does for all PEs at once, this does
PE by PE, and it keeps the NumPy step's semantics where the order could show:

* a fused group (`fused.OpGroup`) reads every granted instance's operands, then writes
  every result; ports are granted per PE in launch order, groups in program order;
* a batch of pops (or pushes) that names one queue twice acts once, as NumPy's fancy
  indexing does;
* instructions issue grouped by instruction id, PEs ascending; finished instances are
  handled per member instruction, in launch order (ascending PE for wide instructions).

A program error (a bad operand at launch, an `Activate` of a data task) stops the loop
before the offending instruction changes anything; `sim.py` then replays that one
instruction through the reference code, which raises the same error.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

# ------------------------------------------------------------------ the router step -----
# One cycle of every router, also used on its own by the NumPy compute engines
# (`Router.step`). Why numba: one cycle of a 64 x 64 stencil moves about 4,600 wavelets out
# of 11,000 link requests, and the vectorised NumPy router (`Router.step_numpy`) spends some
# forty array calls and their temporaries on it, about 1 ms a cycle; a loop over the
# requests costs a few hundred nanoseconds each. The arbitration (lowest round-robin key per
# link, a multicast head that leaves its queue once every owed port took a copy, credits
# checked before anything moves) is the NumPy version's, step for step, so every cycle
# count, value and counter is the same (tests/test_cycle_router.py). It lives in this file
# because numba keys the disk cache of `run_cycles`, which compiles it in, on this file
# alone: in a module of its own, an edit to it ran the old router from the cache.

#: larger than any round-robin key (a link has at most 5 * colours channels): no request
_NONE = 1 << 30


@numba.njit(cache=True, nogil=True, inline="always")
def _ask(c, n, blocked, conflict, nch, pend, cnt, cap, slot_pack, link_pack, req):
    """The requests of arrived, awake channel ``c``: every owed port, credit checked, the
    lowest rotated rank per link kept; returns the new (requests, blocked, conflict)."""
    bits = pend[c]
    for p in range(5):
        if bits & (1 << p):
            slot = p * nch + c
            d = np.int64(slot_pack[slot, 0])
            req[n, 0] = c * 8 + p
            if cnt[d] < cap[d]:
                req[n, 1] = d
                link = slot_pack[slot, 1]
                rank = slot_pack[slot, 2]
                req[n, 2] = link
                req[n, 3] = rank
                # (rank - rr) mod width without a division: both lie in [0, width)
                key = rank - link_pack[link, 0]
                if key < 0:
                    key += link_pack[link, 2]
                b = link_pack[link, 1]
                if b != _NONE:
                    conflict = True
                if key < b:
                    link_pack[link, 1] = key
            else:
                req[n, 1] = -1
                blocked += 1
            n += 1
    return n, blocked, conflict


@numba.njit(cache=True, nogil=True)
def router_step(t: int, nch: int, hrdy: np.ndarray, awake: np.ndarray, pend: np.ndarray,
                tx: np.ndarray, cnt: np.ndarray, cap: np.ndarray, head: np.ndarray,
                val: np.ndarray, rdy: np.ndarray, lat: np.ndarray, feeders: np.ndarray,
                shift: int, mask: int, never: int, slot_pack: np.ndarray,
                link_pack: np.ndarray, req: np.ndarray, live: np.ndarray) -> tuple[int, int]:
    """One cycle of every router (`Router.step_numpy`'s semantics); returns (wavelets
    moved, change of the wavelets held in router channels).

    ``slot_pack`` holds (destination queue, link row, rank on the link) per (channel,
    out-port) slot, port-major (row ``port * nch + channel``, so that successive channels'
    slots share cache lines; a request names ``channel * 8 + port``), and ``link_pack``
    (round-robin pointer, best key so far, width) per link, one row each so that a request
    touches one cache line of each. Each request keeps its row of ``req`` (``channel * 8 +
    port``, destination queue or -1 when out of credit, link, rank): the passes after the
    first read it in order instead of the slot's row again, a dependent load each.
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
                                            slot_pack, link_pack, req)
    else:
        for c in range(nch):
            if hrdy[c] > t or not awake[c]:
                continue
            n, blocked, conflict = _ask(c, n, blocked, conflict, nch, pend, cnt, cap,
                                        slot_pack, link_pack, req)
    if n == 0 or blocked == n:
        if blocked:
            for i in range(n):
                awake[req[i, 0] >> 3] = False
        return 0, 0
    if blocked:
        # blocked on credit: sleep until a pop, unless another of its ports can go
        for i in range(n):
            if req[i, 1] < 0:
                awake[req[i, 0] >> 3] = False
        for i in range(n):
            if req[i, 1] >= 0:
                awake[req[i, 0] >> 3] = True
    # the winner of every link moves a copy of its head
    moved = 0
    into_routers = 0
    for i in range(n):
        d = req[i, 1]
        if d < 0:
            continue
        c = req[i, 0] >> 3
        p = req[i, 0] & 7
        if conflict:
            link = req[i, 2]
            key = req[i, 3] - link_pack[link, 0]
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
        req[moved, 0] = req[i, 0]       # winners, in request order, for the pass below
        req[moved, 2] = req[i, 2]
        req[moved, 3] = req[i, 3]
        moved += 1
        if d < nch:
            into_routers += 1
    # winners advance their link's pointer (when any link had a contest) and reset its key
    # (each link with a key has one winner), and heads that every owed port has taken
    # leave their queue; the refilled ``pend`` (never 0 for a channel that asked) keeps a
    # multicast head from leaving twice
    npop = 0
    for i in range(moved):
        c = req[i, 0] >> 3
        link = req[i, 2]
        link_pack[link, 1] = _NONE
        if conflict:
            nxt = req[i, 3] + 1
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


#: `run_cycles` outcomes
QUIET, CYCLE_LIMIT, LIVELOCK, ERR_LAUNCH, ERR_CONTROL = range(5)
#: `ctr` slots
ELEMENTS, ISSUED, MOVED, OCCUPANCY, LAST_ACTIVE, LAST_USEFUL, PROGRESS, T, ERR_ID, ERR_N = \
    range(10)
#: operand kinds
K_MEM, K_FABIN, K_FABOUT, K_SCALAR, K_ARG = range(5)
#: instruction kinds
I_VEC, I_SETREG, I_ADDREG, I_ACTIVATE, I_BLOCK, I_UNBLOCK = range(6)
#: vector ops
OPS = {"mov": 0, "add": 1, "sub": 2, "mul": 3, "max": 4, "fmac": 5}
#: comparisons of `isa.Cond`
CMPS = {"==": 1, "!=": 2, "<": 3, "<=": 4, ">": 5, ">=": 6}


@numba.njit(cache=True, nogil=True, inline="always")
def _isrc(s, p, src, src_arr, regs):
    """Value of int source ``s`` on PE ``p``: const, per-PE array or Reg * scale + bias."""
    kind = src[s, 0]
    if kind == 0:
        return src[s, 1]
    if kind == 1:
        return src_arr[src[s, 1], p]
    return regs[src[s, 1], p] * src[s, 2] + src[s, 3]


@numba.njit(cache=True, nogil=True, inline="always")
def _compute(code, a, b, c):
    if code == 0:
        return a
    if code == 1:
        return a + b
    if code == 2:
        return a - b
    if code == 3:
        return a * b
    if code == 4:
        return a if (a >= b or a != a) else b
    return a + b * c


@numba.njit(cache=True, nogil=True)
def _pop(q, qval, qrdy, head, cnt, hrdy, awake, feeders, shift, mask, never):
    base = q << shift
    v = qval[base + head[q]]
    h = (head[q] + 1) & mask
    head[q] = h
    c = cnt[q] - 1
    cnt[q] = c
    hrdy[q] = qrdy[base + h] if c > 0 else never
    awake[q] = True
    for j in range(feeders.shape[1]):
        awake[feeders[q, j]] = True
    return v


@numba.njit(cache=True, nogil=True)
def _control(k, sel, nsel, tmp, ctl, src, src_arr, regs, bound, activated, blocked,
             act_count):
    """Control record ``k`` on PEs ``sel[:nsel]``; False where the reference raises."""
    kind = ctl[k, 0]
    if kind == I_SETREG or kind == I_ADDREG:
        r = ctl[k, 1]
        for j in range(nsel):
            p = sel[j]
            v = _isrc(ctl[k, 2], p, src, src_arr, regs)
            regs[r, p] = v if kind == I_SETREG else regs[r, p] + v
        return True
    m = 0
    cmp = ctl[k, 4]
    for j in range(nsel):
        p = sel[j]
        if cmp != 0:
            a = regs[ctl[k, 5], p]
            b = _isrc(ctl[k, 6], p, src, src_arr, regs)
            if cmp == 1:
                ok = a == b
            elif cmp == 2:
                ok = a != b
            elif cmp == 3:
                ok = a < b
            elif cmp == 4:
                ok = a <= b
            elif cmp == 5:
                ok = a > b
            else:
                ok = a >= b
            if not ok:
                continue
        tmp[m] = p
        m += 1
    target = ctl[k, 3]
    if kind == I_ACTIVATE:
        for j in range(m):
            if bound[target, tmp[j]] >= 0:
                return False
        for j in range(m):
            p = tmp[j]
            if not activated[target, p]:
                activated[target, p] = True
                act_count[target] += 1
    elif kind == I_BLOCK:
        for j in range(m):
            blocked[target, tmp[j]] = True
    else:
        for j in range(m):
            blocked[target, tmp[j]] = False
    return True


@numba.njit(cache=True, nogil=True)
def _interleave(sram, words, lanes, temp, forward):
    """Reorder the SRAM images in place, ``lanes`` PEs at a time: forward, word w of PE p
    moves from ``p * words + w`` to ``((p // lanes) * words + w) * lanes + p % lanes``
    (the PEs of a group side by side, word by word); backward undoes it. Each group is
    copied to ``temp``, then transposed back in 8 x 8 tiles."""
    size = lanes * words
    rows, cols = (lanes, words) if forward else (words, lanes)
    for g in range(sram.size // size):
        base = g * size
        temp[:size] = sram[base:base + size]
        for r0 in range(0, rows, 8):
            r1 = min(r0 + 8, rows)
            for c0 in range(0, cols, 8):
                for c in range(c0, min(c0 + 8, cols)):
                    for r in range(r0, r1):
                        sram[base + c * rows + r] = temp[r * cols + c]


@numba.njit(cache=True, nogil=True)
def _advance(gid, sel, nsel, succ, pc, cur):
    for j in range(nsel):
        p = sel[j]
        nxt = succ[gid, p]
        pc[p] = nxt
        if nxt < 0:
            cur[p] = -1


@numba.njit(cache=True, nogil=True, error_model="numpy")
def run_cycles(t, max_cycles, window, ctr, prog_tabs, op_tabs, pe_state, inst, scratch,
               queues, router):
    """Run from cycle ``t`` until the machine is quiet or something needs Python."""
    (first, succ, gid_info, ctl, src, src_arr, task_cq, task_has_dq, bound) = prog_tabs
    (op_info, opd_kind, opd_src, opd_off, opd_len, opd_stride, opd_step, opd_srow, sval_tab,
     unit_start, unit_ops, consts) = op_tabs
    (cur, pc, wait, activated, blocked, act_count, arg, n_async, regs, sram, rd_left, wr_left,
     ramp_left, flag, inflight, stats_flat, code_base, op_running, op_count, cq_of,
     up_of) = pe_state
    (unit_count, i_pe, i_op, i_n, i_prog, i_addr, i_q, i_sval) = inst
    (idle, picked, act, gcnt, gsorted, granted, gval, res, gpos, fin, tmp, qstamp, qlast,
     qpos, errsel, pe_mark) = scratch
    (qval, qrdy, head, cnt, cap, hrdy, lat, awake, pend, tx, feeders) = queues
    (nch, shift, mask, never, slot_pack, link_pack, req, live) = router
    words, rcap, wcap, rampcap, microthreads, budget = (consts[0], consts[1], consts[2],
                                                        consts[3], consts[4], consts[5])
    lanes = consts[6]
    npes = cur.size
    ntask = first.shape[0]
    ngid = succ.shape[0]
    nunit = unit_start.size - 1
    nq = hrdy.size
    stamp = max(qstamp.max(), pe_mark.max())
    while True:
        ctr[T] = t
        if t >= max_cycles:
            return CYCLE_LIMIT
        did = False
        # ---- scheduler: a free main thread picks its first runnable task ----------------
        nidle = 0
        for p in range(npes):
            if cur[p] < 0:
                idle[nidle] = p
                nidle += 1
        for tid in range(ntask):
            if nidle == 0:
                break
            local = act_count[tid] > 0
            data = False
            if task_has_dq[tid]:
                for p in range(npes):
                    c = task_cq[tid, p]
                    if c >= 0 and cnt[c] > 0:
                        data = True
                        break
            if not (local or data):
                continue
            keep = 0
            npk = 0
            for j in range(nidle):
                p = idle[j]
                cand = False
                if not blocked[tid, p]:
                    if local and activated[tid, p]:
                        cand = True
                    elif data:
                        c = task_cq[tid, p]
                        if c >= 0 and hrdy[c] <= t:
                            cand = True
                if cand:
                    picked[npk] = p
                    npk += 1
                else:
                    idle[keep] = p
                    keep += 1
            nidle = keep
            if npk == 0:
                continue
            did = True
            for j in range(npk):
                p = picked[j]
                if activated[tid, p]:
                    activated[tid, p] = False
                    act_count[tid] -= 1
                if data:
                    c = task_cq[tid, p]
                    if c >= 0:
                        arg[p] = _pop(c, qval, qrdy, head, cnt, hrdy, awake, feeders, shift,
                                      mask, never)
                cur[p] = tid
                pc[p] = first[tid, p]
                flag[p] |= 1
                if pc[p] < 0:
                    cur[p] = -1
        # ---- issue: one instruction per PE whose main thread is not waiting ------------
        nact = 0
        for p in range(npes):
            if pc[p] >= 0 and wait[p] < 0:
                act[nact] = p
                nact += 1
        if nact:
            gcnt[:] = 0
            for j in range(nact):
                gcnt[pc[act[j]] + 1] += 1
            for g in range(ngid):
                gcnt[g + 1] += gcnt[g]
            for j in range(ngid + 1):
                gpos[j] = gcnt[j]
            for j in range(nact):
                g = pc[act[j]]
                gsorted[gpos[g]] = act[j]
                gpos[g] += 1
            for gid in range(ngid):
                lo, hi = gcnt[gid], gcnt[gid + 1]
                if lo == hi:
                    continue
                nsel = hi - lo
                sel = gsorted[lo:hi]
                tid = gid_info[gid, 0]
                o = gid_info[gid, 1]
                if o < 0:
                    if not _control(gid, sel, nsel, tmp, ctl, src, src_arr, regs, bound,
                                    activated, blocked, act_count):
                        errsel[:nsel] = sel
                        ctr[ERR_ID] = gid
                        ctr[ERR_N] = nsel
                        return ERR_CONTROL
                    _advance(gid, sel, nsel, succ, pc, cur)
                else:
                    is_async = op_info[o, 8]
                    if is_async:
                        m = 0
                        for j in range(nsel):
                            p = sel[j]
                            if not op_running[o, p] and n_async[p] < microthreads:
                                sel[m] = p
                                m += 1
                        nsel = m
                        if nsel == 0:
                            continue
                        sel = sel[:nsel]
                    # validate before anything changes, as the reference's launch does
                    nopd = op_info[o, 1]
                    bad = False
                    for j in range(nsel):
                        p = sel[j]
                        n = _isrc(op_info[o, 2], p, src, src_arr, regs)
                        if n < 0:
                            bad = True
                            break
                        for i in range(nopd):
                            kind = opd_kind[o, i]
                            if kind == K_MEM:
                                base = _isrc(opd_src[o, i], p, src, src_arr, regs)
                                last = base + max(n - 1, 0) * opd_stride[o, i]
                                if base < 0 or last >= opd_len[o, i] or last < 0:
                                    bad = True
                            elif kind == K_FABIN or kind == K_FABOUT:
                                color = _isrc(opd_src[o, i], p, src, src_arr, regs)
                                if color < 0 or color >= budget:
                                    bad = True
                                elif kind == K_FABIN and cq_of[color, p] < 0:
                                    bad = True
                                elif kind == K_FABOUT and up_of[color, p] < 0:
                                    bad = True
                        if bad:
                            break
                    if bad:
                        errsel[:nsel] = sel
                        ctr[ERR_ID] = gid
                        ctr[ERR_N] = nsel
                        return ERR_LAUNCH
                    u = op_info[o, 6]
                    pos = unit_start[u] + unit_count[u]
                    for j in range(nsel):
                        p = sel[j]
                        n = _isrc(op_info[o, 2], p, src, src_arr, regs)
                        i_pe[pos] = p
                        i_op[pos] = o
                        i_n[pos] = n
                        i_prog[pos] = 0
                        for i in range(nopd):
                            kind = opd_kind[o, i]
                            if kind == K_MEM:
                                base = _isrc(opd_src[o, i], p, src, src_arr, regs)
                                i_addr[pos, i] = ((p // lanes) * words + opd_off[o, i]
                                                  + base) * lanes + p % lanes
                            elif kind == K_FABIN:
                                color = _isrc(opd_src[o, i], p, src, src_arr, regs)
                                i_q[pos, i] = cq_of[color, p]
                            elif kind == K_FABOUT:
                                color = _isrc(opd_src[o, i], p, src, src_arr, regs)
                                i_q[pos, i] = up_of[color, p]
                            elif kind == K_SCALAR:
                                i_sval[pos, i] = sval_tab[opd_srow[o, i], p]
                            else:
                                i_sval[pos, i] = arg[p]
                        op_running[o, p] = True
                        inflight[p] += 1
                        pos += 1
                    unit_count[u] += nsel
                    op_count[o] += nsel
                    if is_async:
                        for j in range(nsel):
                            n_async[sel[j]] += 1
                        _advance(gid, sel, nsel, succ, pc, cur)
                    else:
                        for j in range(nsel):
                            wait[sel[j]] = o
                for j in range(nsel):
                    flag[sel[j]] |= 1
                ctr[ISSUED] += nsel
                did = True
        # ---- vector instructions in flight, unit by unit ----------------------------------
        anyrun = False
        for u in range(nunit):
            if unit_count[u]:
                anyrun = True
                break
        if anyrun:
            rd_left[:] = rcap
            wr_left[:] = wcap
            ramp_left[:] = rampcap
            before = ctr[ELEMENTS]
            for u in range(nunit):
                cnt_u = unit_count[u]
                if cnt_u == 0:
                    continue
                s = unit_start[u]
                o0 = unit_ops[u, 0]
                nopd = op_info[o0, 1]
                code = op_info[o0, 0]
                reads, writes, fab_out = op_info[o0, 3], op_info[o0, 4], op_info[o0, 5]
                nfin = 0
                if op_info[o0, 9]:      # wide: several elements a cycle, memory only
                    for idx in range(s, s + cnt_u):
                        p = i_pe[idx]
                        o = i_op[idx]
                        rem = i_n[idx] - i_prog[idx]
                        k = min(rem, op_info[o, 7])
                        if reads:
                            k = min(k, rd_left[p] // reads)
                        if writes:
                            k = min(k, wr_left[p] // writes)
                        if k > 0:
                            flag[p] |= 1
                            for lane in range(k):
                                at = i_prog[idx] + lane
                                a = np.float32(0)
                                b = np.float32(0)
                                c = np.float32(0)
                                for i in range(1, nopd):
                                    if opd_kind[o, i] == K_MEM:
                                        v = sram[i_addr[idx, i] + at * opd_step[o, i]]
                                    else:
                                        v = i_sval[idx, i]
                                    if i == 1:
                                        a = v
                                    elif i == 2:
                                        b = v
                                    else:
                                        c = v
                                sram[i_addr[idx, 0] + at * opd_step[o, 0]] = \
                                    _compute(code, a, b, c)
                            i_prog[idx] += k
                            if reads:
                                rd_left[p] -= k * reads
                            if writes:
                                wr_left[p] -= k * writes
                            ctr[ELEMENTS] += k
                        if rem == k:
                            fin[nfin] = idx
                            nfin += 1
                    # the reference finishes a wide instruction's PEs in ascending order
                    for j in range(1, nfin):
                        x = fin[j]
                        m = j - 1
                        while m >= 0 and i_pe[fin[m]] > i_pe[x]:
                            fin[m + 1] = fin[m]
                            m -= 1
                        fin[m + 1] = x
                else:
                    # the members of a group share their operand kinds
                    fin1 = nopd > 1 and opd_kind[o0, 1] == K_FABIN
                    fin2 = nopd > 2 and opd_kind[o0, 2] == K_FABIN
                    fin3 = nopd > 3 and opd_kind[o0, 3] == K_FABIN
                    ng = 0
                    multi = False
                    for idx in range(s, s + cnt_u):
                        rem = i_n[idx] - i_prog[idx]
                        if rem <= 0:
                            fin[nfin] = idx     # a zero-length instance ends unstepped
                            nfin += 1
                            continue
                        if fin1 and hrdy[i_q[idx, 1]] > t:
                            continue
                        if fin2 and hrdy[i_q[idx, 2]] > t:
                            continue
                        if fin3 and hrdy[i_q[idx, 3]] > t:
                            continue
                        ok = True
                        if fab_out:
                            q0 = i_q[idx, 0]
                            if cnt[q0] >= cap[q0]:
                                ok = False
                        if not ok:
                            continue
                        p = i_pe[idx]
                        # room for one element on every port it uses; ``left // per < 1``
                        # read as ``left < per``: no division (tens of cycles) per instance
                        if reads and rd_left[p] < reads:
                            continue
                        if writes and wr_left[p] < writes:
                            continue
                        if fab_out and ramp_left[p] < 1:
                            continue
                        if reads:
                            rd_left[p] -= reads
                        if writes:
                            wr_left[p] -= writes
                        if fab_out:
                            ramp_left[p] -= 1
                        granted[ng] = idx
                        ng += 1
                        if pe_mark[p] == stamp + 1:
                            multi = True
                        pe_mark[p] = stamp + 1
                        if rem == 1:
                            fin[nfin] = idx
                            nfin += 1
                    stamp += 1
                    if ng and not multi:
                        # one granted instance per PE: PEs share no memory and no queue, so
                        # reading, computing and writing instance by instance is the same
                        # as the reference's operand-by-operand batches
                        kind1 = opd_kind[o0, 1] if nopd > 1 else K_ARG
                        kind2 = opd_kind[o0, 2] if nopd > 2 else K_ARG
                        kind3 = opd_kind[o0, 3] if nopd > 3 else K_ARG
                        for j in range(ng):
                            idx = granted[j]
                            o = i_op[idx]
                            at = i_prog[idx]
                            a = np.float32(0)
                            b = np.float32(0)
                            c = np.float32(0)
                            if nopd > 1:
                                if kind1 == K_MEM:
                                    a = sram[i_addr[idx, 1] + at * opd_step[o, 1]]
                                elif kind1 == K_FABIN:
                                    a = _pop(i_q[idx, 1], qval, qrdy, head, cnt, hrdy, awake,
                                             feeders, shift, mask, never)
                                else:
                                    a = i_sval[idx, 1]
                            if nopd > 2:
                                if kind2 == K_MEM:
                                    b = sram[i_addr[idx, 2] + at * opd_step[o, 2]]
                                elif kind2 == K_FABIN:
                                    b = _pop(i_q[idx, 2], qval, qrdy, head, cnt, hrdy, awake,
                                             feeders, shift, mask, never)
                                else:
                                    b = i_sval[idx, 2]
                            if nopd > 3:
                                if kind3 == K_MEM:
                                    c = sram[i_addr[idx, 3] + at * opd_step[o, 3]]
                                elif kind3 == K_FABIN:
                                    c = _pop(i_q[idx, 3], qval, qrdy, head, cnt, hrdy, awake,
                                             feeders, shift, mask, never)
                                else:
                                    c = i_sval[idx, 3]
                            v = _compute(code, a, b, c)
                            if fab_out:
                                q = i_q[idx, 0]
                                ready = t + lat[q]
                                k = cnt[q]
                                qval[(q << shift) + ((head[q] + k) & mask)] = v
                                qrdy[(q << shift) + ((head[q] + k) & mask)] = ready
                                cnt[q] = k + 1
                                if k == 0:
                                    hrdy[q] = ready
                                    live[q >> 6] |= np.int64(1) << (q & 63)
                            else:
                                sram[i_addr[idx, 0] + at * opd_step[o, 0]] = v
                            i_prog[idx] = at + 1
                            flag[i_pe[idx]] |= 1
                        if fab_out:
                            ctr[OCCUPANCY] += ng
                        ctr[ELEMENTS] += ng
                    elif ng:
                        # every operand of every granted instance is read before any write
                        for i in range(1, nopd):
                            stamp += 1
                            kind = opd_kind[o0, i]
                            for j in range(ng):
                                idx = granted[j]
                                o = i_op[idx]
                                if kind == K_MEM:
                                    v = sram[i_addr[idx, i] + i_prog[idx] * opd_step[o, i]]
                                elif kind == K_FABIN:
                                    q = i_q[idx, i]
                                    if qstamp[q] == stamp:
                                        v = qlast[q]
                                    else:
                                        v = _pop(q, qval, qrdy, head, cnt, hrdy, awake, feeders,
                                                 shift, mask, never)
                                        qstamp[q] = stamp
                                        qlast[q] = v
                                else:
                                    v = i_sval[idx, i]
                                gval[j, i - 1] = v
                        for j in range(ng):
                            res[j] = _compute(code, gval[j, 0], gval[j, 1], gval[j, 2])
                        if fab_out:
                            stamp += 1
                            for j in range(ng):
                                idx = granted[j]
                                q = i_q[idx, 0]
                                if qstamp[q] == stamp:
                                    qval[qpos[q]] = res[j]
                                    continue
                                qstamp[q] = stamp
                                ready = t + lat[q]
                                k = cnt[q]
                                at = (q << shift) + ((head[q] + k) & mask)
                                qpos[q] = at
                                qval[at] = res[j]
                                qrdy[at] = ready
                                cnt[q] = k + 1
                                if k == 0:
                                    hrdy[q] = ready
                                    live[q >> 6] |= np.int64(1) << (q & 63)
                            ctr[OCCUPANCY] += ng
                        else:
                            for j in range(ng):
                                idx = granted[j]
                                o = i_op[idx]
                                sram[i_addr[idx, 0] + i_prog[idx] * opd_step[o, 0]] = res[j]
                        for j in range(ng):
                            idx = granted[j]
                            i_prog[idx] += 1
                            flag[i_pe[idx]] |= 1
                        ctr[ELEMENTS] += ng
                if nfin == 0:
                    continue
                did = True
                # finish, member by member (launch order within one), then compact the unit
                for mm in range(unit_ops.shape[1]):
                    o = unit_ops[u, mm]
                    if o < 0:
                        break
                    nf = 0
                    for j in range(nfin):
                        idx = fin[j]
                        if i_op[idx] == o:
                            tmp[nf] = i_pe[idx]
                            nf += 1
                    if nf == 0:
                        continue
                    pes = picked[:nf]
                    pes[:] = tmp[:nf]
                    for j in range(nf):
                        p = pes[j]
                        inflight[p] -= 1
                        op_running[o, p] = False
                    op_count[o] -= nf
                    if op_info[o, 8]:
                        for j in range(nf):
                            n_async[pes[j]] -= 1
                        then = op_info[o, 10]
                        if then >= 0:
                            if not _control(then, pes, nf, tmp, ctl, src, src_arr, regs, bound,
                                            activated, blocked, act_count):
                                errsel[:nf] = pes
                                ctr[ERR_ID] = then
                                ctr[ERR_N] = nf
                                return ERR_CONTROL
                    else:
                        for j in range(nf):
                            wait[pes[j]] = -1
                        _advance(op_info[o, 11], pes, nf, succ, pc, cur)
                keep = s
                for idx in range(s, s + cnt_u):
                    if i_prog[idx] >= i_n[idx]:
                        continue
                    if keep != idx:
                        i_pe[keep] = i_pe[idx]
                        i_op[keep] = i_op[idx]
                        i_n[keep] = i_n[idx]
                        i_prog[keep] = i_prog[idx]
                        for i in range(nopd):
                            i_addr[keep, i] = i_addr[idx, i]
                            i_q[keep, i] = i_q[idx, i]
                            i_sval[keep, i] = i_sval[idx, i]
                    keep += 1
                unit_count[u] = keep - s
            if ctr[ELEMENTS] != before:
                did = True
        # ---- routers (`jit.router_step`: requests, the links' winners move, they pop) -----
        moved = 0
        if ctr[OCCUPANCY] != 0:
            moved, held = router_step(t, nch, hrdy, awake, pend, tx, cnt, cap, head, qval,
                                      qrdy, lat, feeders, shift, mask, never, slot_pack,
                                      link_pack, req, live)
            ctr[OCCUPANCY] += held
            ctr[MOVED] += moved
        # ---- state counters, livelock, fast-forward -----------------------------------------
        if did or moved:
            for p in range(npes):
                f = flag[p] | (2 if inflight[p] > 0 else 0)
                stats_flat[code_base[f] + p] += 1
                flag[p] = 0
            ctr[LAST_ACTIVE] = t
            now = ctr[ELEMENTS] + ctr[MOVED]
            if now != ctr[PROGRESS]:
                ctr[PROGRESS] = now
                ctr[LAST_USEFUL] = t
            elif t - ctr[LAST_USEFUL] > window:
                ctr[T] = t
                return LIVELOCK
            t += 1
            continue
        nxt = never
        for qi in range(nq):
            h = hrdy[qi]
            if t < h < nxt:
                nxt = h
        if nxt == never:
            ctr[T] = t
            return QUIET
        for p in range(npes):
            f = flag[p] | (2 if inflight[p] > 0 else 0)
            stats_flat[code_base[f] + p] += nxt - t
            flag[p] = 0
        t = nxt


# -- tables from the Python objects ----------------------------------------------------------
class Unsupported(Exception):
    """A program shape the tables below do not encode: the run stays on the reference."""


class CompiledRun:
    """The flat tables of one `ComputeEngines` (sharing its state arrays) and the loop."""

    def __init__(self, ce, router) -> None:  # noqa: ANN001 (ce.py imports this lazily)
        from waferscale.fabric.cycle import isa

        self.ce, self.router = ce, router
        q, ch, code, prog = ce.q, ce.ch, ce.code, ce.prog
        pes = ce.pes
        self.reg_index = {name: i for i, name in enumerate(ce.regs)}
        srcs: list[tuple[int, int, int, int]] = []
        arrs: list[np.ndarray] = []

        def source(kind_value: tuple[str, object]) -> int:
            kind, value = kind_value
            if kind == "const":
                srcs.append((0, int(value), 0, 0))  # type: ignore[call-overload]
            elif kind == "arr":
                arrs.append(np.asarray(value, dtype=np.int64).reshape(-1))
                srcs.append((1, len(arrs) - 1, 0, 0))
            else:
                srcs.append((2, self.reg_index[value.name], value.scale, value.bias))  # type: ignore[attr-defined]
            return len(srcs) - 1

        def value_source(value: object) -> int:
            if isinstance(value, isa.Reg):
                return source(("reg", value))
            arr = np.asarray(value, dtype=np.int64)
            if arr.ndim == 0:
                return source(("const", int(arr)))
            if arr.size != pes:
                raise Unsupported("a per-PE value without one entry per PE")
            return source(("arr", arr))

        nop = len(ce.ops)
        ngid = len(code.instrs)
        ctl = np.zeros((ngid + nop, 7), dtype=np.int64)
        kinds = {isa.SetReg: I_SETREG, isa.AddReg: I_ADDREG, isa.Activate: I_ACTIVATE,
                 isa.Block: I_BLOCK, isa.Unblock: I_UNBLOCK}

        def control(k: int, ins: isa.Instr) -> None:
            ctl[k, 0] = kinds[type(ins)]
            if isinstance(ins, (isa.SetReg, isa.AddReg)):
                ctl[k, 1] = self.reg_index[ins.reg]
                ctl[k, 2] = value_source(ins.value)
                return
            ctl[k, 3] = prog.task_index[ins.task]  # type: ignore[attr-defined]
            when = ins.when  # type: ignore[attr-defined]
            if when is not None:
                ctl[k, 4] = CMPS[when.cmp]
                ctl[k, 5] = self.reg_index[when.reg]
                ctl[k, 6] = value_source(when.value)

        gid_info = np.full((ngid, 2), -1, dtype=np.int64)
        for gid, ins in enumerate(code.instrs):
            gid_info[gid, 0] = code.task_of[gid]
            if isinstance(ins, isa.Vec):
                gid_info[gid, 1] = code.op_of[gid]
            else:
                control(gid, ins)
        # units: the reference's fused groups and single wide ops, in its order
        units = ce.groups
        members = [u.members for u in units]
        unit_of = {id(m): (u, j) for u, ms in enumerate(members) for j, m in enumerate(ms)}
        width = max((len(ms) for ms in members), default=1)
        unit_ops = np.full((max(len(units), 1), width), -1, dtype=np.int64)
        caps = [len(ms) * pes for ms in members]
        unit_start = np.zeros(len(units) + 1, dtype=np.int64)
        unit_start[1:] = np.cumsum(caps) if caps else []
        op_info = np.zeros((nop, 12), dtype=np.int64)
        nopd = 4
        opd = {name: np.zeros((nop, nopd), dtype=np.int64)
               for name in ("kind", "src", "off", "len", "stride", "srow")}
        svals: list[np.ndarray] = []
        for o, op in enumerate(ce.ops):
            ins = op.ins
            u, j = unit_of[id(op)]
            unit_ops[u, j] = o
            op_info[o] = (OPS[ins.op], len(op.operands), source(op.n_src), op.reads,
                          op.writes, int(op.fab_out), u, op.width, int(ins.async_),
                          int(not units[u].fused), -1, op.gid)
            if ins.then is not None:
                control(ngid + o, ins.then)
                op_info[o, 10] = ngid + o
            for i, operand in enumerate(op.operands):
                if isinstance(operand, isa.Mem):
                    opd["kind"][o, i] = K_MEM
                    opd["src"][o, i] = source(op.base_src[i])
                    opd["off"][o, i] = ce.offset[operand.array]
                    opd["len"][o, i] = prog.arrays[operand.array].length
                    opd["stride"][o, i] = operand.stride
                elif isinstance(operand, (isa.FabIn, isa.FabOut)):
                    opd["kind"][o, i] = K_FABIN if isinstance(operand, isa.FabIn) else K_FABOUT
                    opd["src"][o, i] = source(op.color_src[i])
                elif isinstance(operand, isa.Scalar):
                    opd["kind"][o, i] = K_SCALAR
                    value = np.asarray(operand.value, dtype=np.float32)
                    if value.ndim and value.size != pes:
                        raise Unsupported("a per-PE scalar without one entry per PE")
                    svals.append(np.broadcast_to(value.reshape(-1) if value.ndim else value,
                                                 (pes,)).astype(np.float32))
                    opd["srow"][o, i] = len(svals) - 1
                else:
                    opd["kind"][o, i] = K_ARG
        ntask = len(prog.tasks)
        task_cq = np.full((max(ntask, 1), pes), -1, dtype=np.int64)
        has_dq = np.zeros(max(ntask, 1), dtype=np.bool_)
        for tid, cq in enumerate(ce.task_cq):
            if cq is not None:
                task_cq[tid] = cq
                has_dq[tid] = True
        bound = np.array([t.bind for t in prog.tasks], dtype=np.int64).reshape(ntask, pes)
        src = np.array(srcs or [(0, 0, 0, 0)], dtype=np.int64).reshape(-1, 4)
        src_arr = np.array(arrs, dtype=np.int64).reshape(-1, pes) if arrs else \
            np.zeros((1, pes), dtype=np.int64)
        sval_tab = np.array(svals, dtype=np.float32).reshape(-1, pes) if svals else \
            np.zeros((1, pes), dtype=np.float32)
        # state the reference keeps in lists or per-op arrays, in shared 2-D arrays
        ce.act_count = np.array(ce.act_count, dtype=np.int64)
        self.op_running = np.zeros((max(nop, 1), pes), dtype=np.bool_)
        for o, op in enumerate(ce.ops):
            self.op_running[o] = op.running
            op.running = self.op_running[o]
        self.op_count = np.array([op.count for op in ce.ops] or [0], dtype=np.int64)
        total = int(unit_start[-1])
        big = max(max(caps, default=1), 1)
        self.unit_count = np.zeros(max(len(units), 1), dtype=np.int64)
        # int32 and only as many operand columns as the widest instruction: the unit scans
        # stream these every cycle
        used = max((len(op.operands) for op in ce.ops), default=1)
        self.i_pe = np.zeros(max(total, 1), dtype=np.int32)
        self.i_op = np.zeros_like(self.i_pe)
        self.i_n = np.zeros(max(total, 1), dtype=np.int64)
        self.i_prog = np.zeros_like(self.i_n)
        addr_t = np.int32 if pes * ce.words < 1 << 31 else np.int64
        self.i_addr = np.zeros((max(total, 1), used), dtype=addr_t)
        self.i_q = np.zeros((max(total, 1), used), dtype=np.int32)
        self.i_sval = np.zeros((max(total, 1), used), dtype=np.float32)
        self.ctr = np.zeros(10, dtype=np.int64)
        self.ctr[LAST_ACTIVE] = -1
        self.errsel = np.zeros(pes, dtype=np.int64)
        # SRAM interleaved while the loop runs (`_interleave`, in place): the PEs of a group
        # of ``lanes`` (the largest power of two up to 1,024 that divides the grid) hold
        # each word side by side, so the PEs of one instruction, scanned in ascending order,
        # share a cache line per word (16 PEs) instead of using one each, in runs the
        # hardware prefetches (groups of 16 were slower); an element step of an operand then
        # moves ``stride * lanes`` words. In place, so no second SRAM image is paged in
        lanes = 1024
        while pes % lanes:
            lanes //= 2
        self.lanes = lanes
        self.lane_temp = np.empty(lanes * ce.words, dtype=np.float32)
        consts = np.array([ce.words, ce.port_caps[0], ce.port_caps[1], ce.port_caps[2],
                           ce.config.microthreads, ce.spec.routable_colors, lanes],
                          dtype=np.int64)
        self.prog_tabs = (code.first, code.succ, gid_info, ctl, src, src_arr, task_cq,
                          has_dq, bound)
        self.op_tabs = (op_info, opd["kind"], opd["src"], opd["off"], opd["len"],
                        opd["stride"], opd["stride"] * lanes, opd["srow"], sval_tab,
                        unit_start, unit_ops, consts)
        self.pe_state = (ce.cur, ce.pc, ce.wait, ce.activated, ce.blocked, ce.act_count,
                         ce.arg, ce.n_async, ce.regs_arr, ce.sram_flat, ce.rd_left,
                         ce.wr_left, ce.ramp_left, ce.flag, ce.inflight, ce.stats_flat,
                         ce.code_base, self.op_running, self.op_count, ch.cq_of, ch.up_of)
        self.inst = (self.unit_count, self.i_pe, self.i_op, self.i_n, self.i_prog,
                     self.i_addr, self.i_q, self.i_sval)
        nq = q.n
        self.scratch = (np.zeros(pes, dtype=np.int64), np.zeros(pes, dtype=np.int64),
                        np.zeros(pes, dtype=np.int64), np.zeros(ngid + 1, dtype=np.int64),
                        np.zeros(pes, dtype=np.int64), np.zeros(big, dtype=np.int64),
                        np.zeros((big, 3), dtype=np.float32), np.zeros(big, dtype=np.float32),
                        np.zeros(ngid + 1, dtype=np.int64), np.zeros(big, dtype=np.int64),
                        np.zeros(pes, dtype=np.int64), np.zeros(nq, dtype=np.int64),
                        np.zeros(nq, dtype=np.float32), np.zeros(nq, dtype=np.int64),
                        self.errsel, np.zeros(pes, dtype=np.int64))
        self.queues = (q.val, q.rdy, q.head, q.cnt, q.cap, q.hrdy, q.lat, q.awake, q.pend,
                       q.tx, q.feeders)
        # bit c of ``live`` (64 channels a word) is set while router channel c holds a
        # wavelet: the router step scans only the words with one (about a third)
        self.live = np.zeros((ch.nch + 63) >> 6, dtype=np.int64)
        self.router_tabs = (ch.nch, q.shift, q.mask, np.int64(q.never),
                            *router.compiled_tables(), self.live)

    def run(self, t: int, max_cycles: int, window: int) -> int:
        """Run the compiled loop from cycle ``t``; returns the outcome code (`ctr` holds
        the cycle and the counters)."""
        self.ctr[OCCUPANCY] = self.router.occupancy
        _interleave(self.ce.sram_flat, self.ce.words, self.lanes, self.lane_temp, True)
        full = np.zeros(self.live.size * 64, dtype=np.bool_)
        full[: self.ce.ch.nch] = self.ce.q.cnt[: self.ce.ch.nch] > 0
        self.live[:] = np.packbits(full, bitorder="little").view("<i8")
        try:
            code = run_cycles(t, max_cycles, window, self.ctr, self.prog_tabs, self.op_tabs,
                              self.pe_state, self.inst, self.scratch, self.queues,
                              self.router_tabs)
        finally:
            self.sync()     # SRAM back in PE order whatever happens
        return int(code)

    def sync(self) -> None:
        """Put the SRAM images back in PE order and copy the counters and in-flight
        instructions back where the reports read them."""
        ce, ctr = self.ce, self.ctr
        _interleave(ce.sram_flat, ce.words, self.lanes, self.lane_temp, False)
        ce.elements, ce.issued = int(ctr[ELEMENTS]), int(ctr[ISSUED])
        self.router.moved, self.router.occupancy = int(ctr[MOVED]), int(ctr[OCCUPANCY])
        for o, op in enumerate(ce.ops):
            op.count = int(self.op_count[o])
        start = self.op_tabs[9]
        for u in range(len(start) - 1):
            for idx in range(int(start[u]), int(start[u] + self.unit_count[u])):
                op = ce.ops[int(self.i_op[idx])]
                p = int(self.i_pe[idx])
                op.prog[p], op.n[p] = self.i_prog[idx], self.i_n[idx]
                for i in op.queue:
                    op.queue[i][p] = self.i_q[idx, i]

    def selection(self) -> np.ndarray:
        return self.errsel[: int(self.ctr[ERR_N])].copy()
