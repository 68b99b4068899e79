"""Collectives as wavelet programs: shift, multicast, chain/tree reduce, allreduce.

Each ``*_phase`` function sets the routes of one primitive on a `CycleSim` and returns the
instructions every PE runs for it (masked per PE), so phases compose into one task in
program order, as a hand-written PE program would chain them. Data is an array name; the
primitives work in place where the hardware would (a reduce accumulates into the root's
buffer, a multicast overwrites the receivers').
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import GridError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.lines import DIRECTIONS, ColorPool, Lines
from waferscale.fabric.cycle.sim import CycleSim

Rect4 = tuple[int, int, int, int]


def _grid(sim: CycleSim) -> tuple[int, int]:
    return (sim.rows, sim.cols)


def _colors_grid(sim: CycleSim) -> np.ndarray:
    return np.zeros((sim.rows, sim.cols), dtype=np.int64)


# ------------------------------------------------------------------------------- shift ----
def shift_phase(sim: CycleSim, pool: ColorPool, src: str, dst: str, n: int, direction: str,
                distance: int = 1, cyclic: bool = False, rect: Rect4 | None = None
                ) -> list[isa.Instr]:
    """Every PE sends ``src`` ``distance`` PEs toward ``direction`` into ``dst``.

    Flow p -> p+d covers PEs p..p+d, each in a different role, so flows whose spans overlap
    need different colours: d+1 colours cycle along the line. Cyclic: the d flows that fall
    off the end travel back along the line (no wrap links on a mesh), d more colours.
    """
    axis, reverse = DIRECTIONS[direction]
    ln = Lines.of(_grid(sim), rect, axis, reverse)
    L, d = ln.length, distance
    if not 0 < d < L:
        raise GridError(f"shift distance {d} must be between 1 and {L - 1} on a line of {L}")
    fwd_colors = pool.take(d + 1, f"shift by {d}")
    send_c, recv_c = _colors_grid(sim), _colors_grid(sim)
    x = ln.pos
    for m, color in enumerate(fwd_colors):
        p = x - ((x - m) % (d + 1))               # the flow on this colour passing x
        valid = ln.inside & (p >= 0) & (p < L - d)
        role = x - p
        sim.route(color, "R", ln.fwd, valid & (role == 0))
        sim.route(color, ln.back, ln.fwd, valid & (role > 0) & (role < d))
        sim.route(color, ln.back, "R", valid & (role == d))
        send_c[valid & (role == 0)] = color
        recv_c[valid & (role == d)] = color
    senders = ln.inside & (x < L - d)
    receivers = ln.inside & (x >= d)
    if cyclic:
        wrap_colors = pool.take(d, f"cyclic shift by {d} (wrap)")
        for i, color in enumerate(wrap_colors):
            s, t = L - d + i, i                     # travels back from s to t
            sim.route(color, "R", ln.back, ln.at(s))
            mid = ln.inside & (x > t) & (x < s)
            sim.route(color, ln.fwd, ln.back, mid)
            sim.route(color, ln.fwd, "R", ln.at(t))
            send_c[ln.at(s)] = color
            recv_c[ln.at(t)] = color
        senders = receivers = ln.inside
    return [
        isa.mov(isa.FabOut(send_c), isa.Mem(src), n, async_=True, mask=senders,
                label="shift send"),
        isa.mov(isa.Mem(dst), isa.FabIn(recv_c), n, mask=receivers, label="shift recv"),
    ]


# --------------------------------------------------------------------------- multicast ----
def multicast_phase(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str,
                    root: int = 0, rect: Rect4 | None = None) -> list[isa.Instr]:
    """Flood ``arr`` of the PE at position ``root`` of each line over its line, in place.

    One colour: the root sends toward both ends; every other router copies each wavelet to
    its CE and passes it on (multicast by fan-out), so all PEs receive in a pipeline.
    """
    ln = Lines.of(_grid(sim), rect, axis)
    L, x = ln.length, ln.pos
    if not 0 <= root < L:
        raise GridError(f"multicast root {root} is not a position of a line of {L} PEs")
    (color,) = pool.take(1, "multicast")
    out = (ln.fwd if root < L - 1 else "") + (ln.back if root > 0 else "")
    sim.route(color, "R", out, ln.at(root))
    after, before = ln.inside & (x > root), ln.inside & (x < root)
    sim.route(color, ln.back, ln.fwd + "R", after & (x < L - 1))
    sim.route(color, ln.back, "R", after & (x == L - 1))
    sim.route(color, ln.fwd, ln.back + "R", before & (x > 0))
    sim.route(color, ln.fwd, "R", before & (x == 0))
    if L == 1:
        return []
    return [
        isa.mov(isa.FabOut(color), isa.Mem(arr), n, mask=ln.at(root), label="bcast send"),
        isa.mov(isa.Mem(arr), isa.FabIn(color), n, mask=ln.inside & (x != root),
                label="bcast recv"),
    ]


# ------------------------------------------------------------------------------ reduce ----
def chain_reduce_phase(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str,
                       root: str = "first", rect: Rect4 | None = None) -> list[isa.Instr]:
    """Sum ``arr`` over each line into the PE at one end, wavelet by wavelet.

    The far end sends; each PE adds what arrives to its own element and forwards the sum in
    the same instruction (fabric in + memory -> fabric out), so the stages pipeline. Links
    alternate two colours because a PE both receives and sends.
    """
    ln = Lines.of(_grid(sim), rect, axis, reverse=(root == "first"))
    # positions counted from the root: the root is the last position of the line
    L = ln.length
    d = np.where(ln.inside, L - 1 - ln.pos, -1)          # distance from the root
    if L == 1:
        return []
    a, b = pool.take(2, "chain reduce")
    color_of = np.where(d % 2 == 0, a, b)                 # colour of the link into distance d
    recv_c = color_of
    send_c = np.where(d % 2 == 0, b, a)                   # link into distance d-1
    toward, away = ln.fwd, ln.back                        # the root is at the high end
    for color, parity in ((a, 0), (b, 1)):
        sim.route(color, away, "R", ln.inside & (d < L - 1) & (d % 2 == parity))
        sim.route(color, "R", toward, ln.inside & (d > 0) & (d % 2 != parity))
    leaf = ln.inside & (d == L - 1)
    mid = ln.inside & (d > 0) & (d < L - 1)
    top = ln.inside & (d == 0)
    return [
        isa.mov(isa.FabOut(send_c), isa.Mem(arr), n, mask=leaf, label="reduce leaf"),
        isa.add(isa.FabOut(send_c), isa.FabIn(recv_c), isa.Mem(arr), n, mask=mid,
                label="reduce add+fwd"),
        isa.add(isa.Mem(arr), isa.FabIn(recv_c), isa.Mem(arr), n, mask=top,
                label="reduce root"),
    ]


def tree_reduce_phase(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str,
                      root: str = "first", rect: Rect4 | None = None) -> list[isa.Instr]:
    """Binary-tree reduce: at level l, the PE 2**l from a level-(l+1) node sends it ``arr``.

    Each level is store-and-forward (a node sends once its own subtree is summed) and has
    its own colour, because every level's path ends at the root's side of the line.
    """
    ln = Lines.of(_grid(sim), rect, axis, reverse=(root == "first"))
    L = ln.length
    d = np.where(ln.inside, L - 1 - ln.pos, -1)
    levels = int(np.ceil(np.log2(L))) if L > 1 else 0
    colors = pool.take(levels, "tree reduce")
    body: list[isa.Instr] = []
    toward, away = ln.fwd, ln.back
    for level, color in enumerate(colors):
        span = 2 ** level
        senders = ln.inside & (d % (2 * span) == span)
        receivers = ln.inside & (d % (2 * span) == 0) & (d + span <= L - 1)
        off = d % (2 * span)
        path = ln.inside & (off > 0) & (off < span) & (d - off + span <= L - 1)
        sim.route(color, "R", toward, senders)
        sim.route(color, away, toward, path)
        sim.route(color, away, "R", receivers)
        body.append(isa.add(isa.Mem(arr), isa.Mem(arr), isa.FabIn(color), n, mask=receivers,
                            label=f"tree recv l{level}"))
        body.append(isa.mov(isa.FabOut(color), isa.Mem(arr), n, mask=senders,
                            label=f"tree send l{level}"))
    return body


def ktree_reduce_phase(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str,
                       levels: int = 2, rect: Rect4 | None = None) -> tuple[list[isa.Instr],
                                                                             int]:
    """MeshGEMV's K-tree (`waferscale.fabric.movement.ktree_reduce`): groups of
    ceil(L**(1/K)) PEs reduce into their middle member by two chains, one from each side,
    and the group leaders do the same at the next level, ``levels`` times. Returns the
    instructions and the position of the root (the last leader).

    A chain's members add what arrives to their own element and forward the sum (as in
    `chain_reduce_phase`); the PEs between two members only pass it on in their routers
    (no ramp, no compute), so a stage over h hops costs 2*T_R + h + 1 cycles. Per level, 2
    colours for the chains flowing toward higher positions and 2 for the others; a leader
    takes its lower side's sum, then its upper side's.
    """
    from waferscale.fabric.timing import ktree_group_size, ktree_groups, leader_index

    ln = Lines.of(_grid(sim), rect, axis)
    L, x = ln.length, ln.pos
    body: list[isa.Instr] = []
    members = np.arange(L)
    if L == 1:
        return body, 0
    size = ktree_group_size(L, levels)
    for level in range(levels):
        up_a, up_b, dn_a, dn_b = pool.take(4, f"k-tree level {level}")
        send_c, recv_lo, recv_hi = (_colors_grid(sim) for _ in range(3))
        leaf, mid, lead_lo, lead_hi = (np.zeros((sim.rows, sim.cols), dtype=bool)
                                       for _ in range(4))
        leaders = []
        for group in ktree_groups(members, size):
            c = leader_index(group.size)
            leaders.append(int(group[c]))
            # lower side flows toward higher positions, upper side toward lower ones
            for side, fwd, back, colours in ((group[: c + 1], ln.fwd, ln.back, (up_a, up_b)),
                                             (group[c:][::-1], ln.back, ln.fwd,
                                              (dn_a, dn_b))):
                for i in range(side.size - 1):
                    src, dst = int(side[i]), int(side[i + 1])
                    color = colours[i % 2]
                    lo, hi = min(src, dst), max(src, dst)
                    sim.route(color, "R", fwd, ln.at(src))
                    sim.route(color, back, fwd, ln.inside & (x > lo) & (x < hi))
                    sim.route(color, back, "R", ln.at(dst))
                    send_c[ln.at(src)] = color
                    if i + 1 < side.size - 1:
                        recv_lo[ln.at(dst)] = color     # a middle member's input
                    elif fwd == ln.fwd:
                        lead_lo |= ln.at(dst)
                        recv_lo[ln.at(dst)] = color
                    else:
                        lead_hi |= ln.at(dst)
                        recv_hi[ln.at(dst)] = color
                    if i == 0:
                        leaf |= ln.at(src)
                    else:
                        mid |= ln.at(src)
        body += [
            isa.mov(isa.FabOut(send_c), isa.Mem(arr), n, mask=leaf, label=f"ktree{level} leaf"),
            isa.add(isa.FabOut(send_c), isa.FabIn(recv_lo), isa.Mem(arr), n, mask=mid,
                    label=f"ktree{level} add+fwd"),
            isa.add(isa.Mem(arr), isa.FabIn(recv_lo), isa.Mem(arr), n, mask=lead_lo,
                    label=f"ktree{level} leader lower"),
            isa.add(isa.Mem(arr), isa.FabIn(recv_hi), isa.Mem(arr), n, mask=lead_hi,
                    label=f"ktree{level} leader upper"),
        ]
        members = np.asarray(leaders)
        if members.size == 1:
            break
    return body, int(members[0])


def reduce_phase(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str,
                 algorithm: str = "chain", root: str = "first",
                 rect: Rect4 | None = None) -> list[isa.Instr]:
    if algorithm == "chain":
        return chain_reduce_phase(sim, pool, arr, n, axis, root, rect)
    if algorithm == "tree":
        return tree_reduce_phase(sim, pool, arr, n, axis, root, rect)
    raise GridError(f"reduce algorithm {algorithm!r}: use 'chain' or 'tree'")


def allreduce_phases(sim: CycleSim, pool: ColorPool, arr: str, n: int, axis: str = "row",
                     algorithm: str = "chain") -> list[isa.Instr]:
    """Reduce to the first PE of each line, then flood the sum back (axis 'both': rows, then
    column 0, then broadcast down column 0 and along every row)."""
    rows = sim.rows
    if axis == "both":
        body = reduce_phase(sim, pool, arr, n, "row", algorithm)
        body += reduce_phase(sim, pool, arr, n, "col", algorithm, rect=(0, 0, rows, 1))
        body += multicast_phase(sim, pool, arr, n, "col", 0, rect=(0, 0, rows, 1))
        return body + multicast_phase(sim, pool, arr, n, "row", 0)
    return reduce_phase(sim, pool, arr, n, axis, algorithm) + \
        multicast_phase(sim, pool, arr, n, axis, 0)
