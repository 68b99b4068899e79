"""Causal multi-head attention for long sequences: K/V blocks flow along a snake of PEs.

Mapping (a chain of query blocks per group of heads, folded over ``fold`` columns):

* The R x C rectangle is cut into ``Cg = C / (fold * split)`` *bands* of ``fold * split``
  adjacent PE columns. ``G = batch * heads`` attention groups are cut over the bands
  (``g = ceil(G/Cg)`` per PE) and the sequence into a chain of ``L = R * fold`` query blocks
  of ``tq = ceil(S/L)`` tokens. Each run of ``fold`` columns holds one chain: position b sits
  in its column ``b // R``, on row ``b % R`` in even columns and ``R - 1 - b % R`` in odd
  ones: a snake down the first column, up the second, ..., so consecutive positions are
  always neighbours (one hop south or north, or east at a turn). ``fold = 1`` is one column
  per chain and block r on row r.
* Why fold: unfolded, the kernel can use at most ``S x G`` PEs however wide its rectangle
  is (994 x 8 for GenSLM's 8 heads at batch 1). Folding spends columns on the sequence
  instead: the same algorithm on smaller blocks, on ``fold`` times as many PEs.
* The PE at chain position b keeps its queries Q[b] ([g, tq, D]), an fp32 output
  accumulator O[b], and the online-softmax running max m[b] and sum l[b] ([g, tq]).
* Per step and PE (flash-attention): S = Q K^T (fp32 accumulate), m' = max(m, rowmax S),
  P = exp(scale (S - m')), l = exp(scale (m - m')) l + rowsum P,
  O = exp(scale (m - m')) O + P V. At the end O / l. No PE ever holds more than a
  [g, tq, tq] block of scores, so 10,240 tokens fit.

How the K/V blocks reach the queries (``kv``):

* ``"shift"`` (systolic, the default; ``split`` 1): keys and values live with their query
  block, packed as one [g, 2, D, tq] block (K and V transposed, so one shift moves both).
  Step 0 uses the PE's own block (the diagonal, masked causally). Before each step every
  PE passes its K/V block one hop on along the snake (`_snake_shift`), so at step s
  position b holds block b - s: exactly the blocks a causal query block needs, and no
  block ever has to wrap around. Positions b < s are done. The hops of one step use
  disjoint links and ramps, so they all run at once. Double buffering: the block for step
  s+1 arrives while step s computes; a PE lets its predecessor send only once its spare
  buffer is free (its step s-1 is done), so at most two K/V blocks sit in a PE at once.
  Rotary embeddings (GPT-NeoX, `rotary`) are applied to Q and K in place before step 0.
* ``"stream"``: the K/V blocks 0, 1, ..., L-1 enter each chain at its head (position 0)
  from the producer and flow down the snake as one multicast stream: every router
  forwards it to the next position and copies to its own CE the blocks that position
  needs, blocks 0..b at position b (its route then only forwards: the ramp into position
  b carries b + 1 blocks), which it consumes in order as they arrive, the diagonal one
  last and masked (`_stream_block`). The stream moves at one wavelet per cycle and holds
  back (router backpressure) whenever a receiver's spare buffer is still in use, so a PE
  again holds at most two K/V blocks. K must enter already rotated (``rotary_pct`` 0):
  the head of a 10,240-token chain cannot hold the cos/sin tables of every position.
* ``split = S`` (stream only): each band holds S *sub-bands* side by side, each a snake
  of R x fold holding the same query blocks (sub-band 0's Q is multicast to the others
  first, `_subband_multicast`), and sub-band j's stream carries only the blocks
  b = j (mod S): each PE works through ceil(L/S) blocks instead of L. The S partial
  results of a position (m, l and the unnormalised O) are then merged by a log-sum-exp
  tree over the S PEs that hold it (one row, ``fold`` columns apart, `_merge_subbands`),
  and sub-band 0 divides and holds the output.

Cost: `cost` is the closed form of `run`'s clocks (`last_step_end` for the shift, the
stream's in `_stream_cycles`); `choose_layout` searches rows, folds, the K/V mode and the
split for the fastest layout that fits.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waferscale.errors import KernelError, KernelFitError, KernelShapeError, ShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import tree_levels
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node, Ref, tensor_meta
from waferscale.kernels import rotary
from waferscale.kernels.elementwise import WORK, check_dtype, local_pass, op_cycles
from waferscale.kernels.family import (
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    done,
    float_out,
    shape_of,
    to_np,
    to_torch,
)

KERNEL = "attention"

#: Rotary's two in-place passes over the rotated features (op, memory reads per element):
#: x*cos, then += rotate_half(x)*sin. `_apply_rotary` runs them and `cost` counts them.
_ROTARY_PASSES = (("mul", 2), ("fmac", 3))


# ----------------------------------------------------------------------------- plan --------
#: How K/V blocks reach the query blocks (module docstring).
KV_MODES = ("shift", "stream")


@dataclass(frozen=True)
class Plan:
    """Sizes of one attention run on an R x C rectangle folded ``fold`` times, and its SRAM."""

    groups: int
    seq: int
    head_dim: int
    rows: int
    cols: int
    dtype: str
    rot: int
    fold: int = 1
    kv: str = "shift"
    split: int = 1

    @property
    def group_cols(self) -> int:
        """Bands of ``fold * split`` adjacent columns: each holds whole chains of its groups."""
        return self.cols // (self.fold * self.split)

    @property
    def chain(self) -> int:
        """Query blocks per chain, the positions the K/V blocks flow along: R * fold."""
        return self.rows * self.fold

    @property
    def g(self) -> int:
        """Attention groups (batch x head) per PE."""
        return -(-self.groups // self.group_cols)

    @property
    def tq(self) -> int:
        """Tokens per query (and key/value) block: one block per chain position."""
        return -(-self.seq // self.chain)

    @property
    def steps(self) -> int:
        """The most K/V blocks one PE works through: the whole chain when shifting, one
        block in ``split`` when streaming."""
        return self.chain if self.kv == "shift" else -(-self.chain // self.split)

    @property
    def p_dtype(self) -> str:
        """Probabilities are stored in the input dtype before P V (as flash-attention does)."""
        return self.dtype

    def sram(self) -> dict[str, int]:
        """Bytes per PE of each buffer, and the peak over the kernel's phases."""
        parts = _sram(self.g, self.tq, self.head_dim, self.dtype, self.rot, self.steps,
                      self.split)
        return {k: int(v) for k, v in parts.items()}


def _sram(g: Any, tq: Any, head_dim: int, dtype: str, rot: int, steps: Any, split: Any = 1
          ) -> dict[str, Any]:
    """`Plan.sram` on scalars or NumPy arrays of (g, tq, steps, split): `choose_layout`
    checks all its candidates in one pass with it."""
    eb = BYTES[dtype]
    blk = g * tq * head_dim
    scores = g * tq * tq
    parts = {
        "q": blk * eb,
        "kv_block": 2 * blk * eb,
        "o_fp32": blk * 4,
        "m_l": 2 * g * tq * 4,
        "scores_fp32": scores * 4,
        "p": scores * eb if dtype != "fp32" else 0 * scores,
        "rope_tables": 2 * tq * rot * eb,
        "out": blk * eb,
        # a sub-band's partial (O, m, l in fp32) arriving to be merged
        "merge_in": g * tq * (head_dim + 2) * 4 * (np.asarray(split) > 1),
    }
    rotary_phase = parts["q"] + parts["kv_block"] + parts["rope_tables"]
    buffers = 1 + (np.asarray(steps) > 1)     # a PE that sees one block never receives another
    loop = (parts["q"] + buffers * parts["kv_block"] + parts["o_fp32"] + parts["m_l"]
            + parts["scores_fp32"] + parts["p"])
    merge = parts["q"] + parts["o_fp32"] + parts["m_l"] + parts["merge_in"]
    final = parts["q"] + parts["o_fp32"] + parts["m_l"] // 2 + parts["out"]
    parts["peak"] = np.maximum(np.maximum(rotary_phase, loop), np.maximum(merge, final))
    return parts


def _check_sizes(dtype: str, rotary_pct: float, **sizes: Any) -> int:
    """Check the dtype and that every size is a positive integer; return the rotated width."""
    check_dtype(KERNEL, dtype)
    for name, value in sizes.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} must be a positive integer, got {value!r}")
    return rotary.rotary_dims(sizes["head_dim"], rotary_pct)


def plan(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", rotary_pct: float = 0.0,
         fold: int = 1, kv: str = "shift", split: int = 1) -> Plan:
    """Validate sizes against the (folded, split) rectangle and the PE's SRAM; raise what
    would fit.

    The SRAM need is a few multiplications; the message that says what would fit is built
    only when it does not, since the placer tries many layouts that do not fit.
    """
    spec = get_spec(spec)
    rows, cols = rect_shape
    rot = _check_sizes(dtype, rotary_pct, groups=groups, seq=seq, head_dim=head_dim,
                       rows=rows, cols=cols, fold=fold, split=split)
    if kv not in KV_MODES:
        raise KernelShapeError(f"{KERNEL}: kv {kv!r}: use 'shift' (every K/V block hops one "
                               f"PE per step) or 'stream' (one multicast stream per chain)")
    if split > 1 and kv != "stream":
        raise KernelShapeError(f"{KERNEL}: split {split} needs kv='stream' (sub-bands take "
                               f"every {split}th K/V block of a stream)")
    if kv == "stream" and rot:
        raise KernelShapeError(f"{KERNEL}: kv='stream' takes K already rotated (the stream "
                               f"enters at the head of each chain, which cannot hold the "
                               f"cos/sin tables of all {seq} positions); apply rotary before "
                               f"the kernel or use kv='shift'")
    width = fold * split
    if cols % width:
        cut = (f"bands of fold {fold} columns" if split == 1 else
               f"bands of {split} sub-bands of fold {fold} columns")
        raise KernelShapeError(f"{KERNEL}: {cols} PE columns cannot be cut into {cut}; use a "
                               f"multiple of {width}")
    if rows * fold > seq:
        limit = (f"use at most {seq // fold} PE rows" + (f" at fold {fold}" if fold > 1 else "")
                 if seq >= fold else f"use a fold of at most {seq}")
        raise KernelFitError(f"{KERNEL}: {seq} tokens cannot be cut into {rows * fold} query "
                             f"blocks; {limit}")
    if cols // width > groups:
        bands = f" ({cols // width} bands of {width})" if width > 1 else ""
        raise KernelFitError(f"{KERNEL}: {groups} (batch x head) groups cannot spread over "
                             f"{cols} PE columns{bands}; use at most {groups * width} columns")
    if split > rows * fold:
        raise KernelFitError(f"{KERNEL}: split {split} exceeds the chain of {rows * fold} "
                             f"query blocks (sub-bands past it would get no K/V block); use "
                             f"a split of at most {rows * fold}")
    p = Plan(int(groups), int(seq), int(head_dim), int(rows), int(cols), dtype, rot, int(fold),
             kv, int(split))
    need = p.sram()["peak"]
    if need > spec.sram_bytes:
        layout = (f"{rows}x{cols} PEs" + (f" at fold {fold}" if fold > 1 else "")
                  + (f" (kv stream, split {split})" if kv == "stream" else ""))
        raise KernelFitError(
            f"{KERNEL}: {groups} groups x {seq} tokens x head_dim {head_dim} ({dtype}) on "
            f"{layout} needs {need} B per PE (query block {p.tq}: {_breakdown(p)}) but a PE "
            f"has {spec.sram_bytes} B; {_what_fits(spec, p)}")
    return p


def _breakdown(p: Plan) -> str:
    parts = p.sram()
    keys = ("q", "kv_block", "o_fp32", "scores_fp32", "p", "m_l", "merge_in")
    return ", ".join(f"{k} {parts[k]}" + (" x2" if k == "kv_block" else "") for k in keys
                     if parts[k])


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """The largest x in 1..hi with ``fits(x)`` (0 if none), for ``fits`` true up to a bound.

    Every buffer grows with the block and the group count, so a bisection finds the bound in
    a dozen SRAM evaluations where a scan took up to one per token.
    """
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _what_fits(spec: WaferSpec, p: Plan) -> str:
    """The largest query block (hence the fewest rows) that fits at this many columns.

    Any smaller block means a chain of two or more, so two K/V buffers are counted.
    """
    def fits(g: int, tq: int) -> bool:
        return bool(_sram(g, tq, p.head_dim, p.dtype, p.rot, 2, p.split)["peak"]
                    <= spec.sram_bytes)

    best = _largest(lambda tq: fits(p.g, tq), p.tq)
    if best:
        blocks = -(-p.seq // best)
        rows = -(-blocks // p.fold)
        at_fold = f" at fold {p.fold}" if p.fold > 1 else ""
        more = ("" if rows <= spec.rows else
                f" (more than the wafer's {spec.rows}: fold the chain over more columns)")
        return (f"query blocks of at most {best} tokens fit, i.e. at least {rows} PE "
                f"rows{at_fold}{more}")
    most = _largest(lambda g: fits(g, 1), p.g - 1)
    if most:
        cols = -(-p.groups // most) * p.fold
        return f"even 1-token blocks do not fit {p.g} groups per PE; use >= {cols} columns"
    return "even one group and one token per PE do not fit; use a smaller head_dim"


# ---------------------------------------------------------------------------- snake --------
#: The snake's hops, in the order of `_Snake.hop`: direction, and the receiver's offset.
_HOPS = (("south", 1, 0), ("north", -1, 0), ("east", 0, 1))


@dataclass(frozen=True, eq=False)
class _Snake:
    """Where each chain position sits on an R x C rectangle folded ``fold`` times.

    Coordinates are relative to the rectangle. ``row[b]`` and ``col[b, j]``: the PE of
    position b in chain j (the j-th run of ``fold`` columns: band j when ``split`` is 1);
    ``block``: each PE's position; ``hop``: the index in `_HOPS` of the way its K/V block
    moves next (-1 at the end of the chain).
    """

    rows: int
    cols: int
    fold: int
    row: np.ndarray
    col: np.ndarray
    block: np.ndarray
    hop: np.ndarray

    def at(self, first: int, dr: int = 0, dc: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Index of positions ``first..`` of every band into the tiles of a tensor whose
        rectangle starts (dr, dc) into ours: ``tiles[at]`` is [L - first, Cg, *tile]."""
        return self.row[first:, None] - dr, self.col[first:] - dc

    def active(self, rect: Rect, s: int) -> tuple[Rect, np.ndarray | None]:
        """The bounding rectangle of the positions still active at step s (those >= s), and
        which of its PEs they are (None: all of them).

        Position s sits in band column s // R, so every later column is whole; only the
        last column can leave rows above (even) or below (odd) the active ones.
        """
        first, k = divmod(s, self.rows)
        if first < self.fold - 1:
            r0, r1 = 0, self.rows
        elif first % 2 == 0:
            r0, r1 = k, self.rows
        else:
            r0, r1 = 0, self.rows - k
        live = self.block[r0:r1, first:] >= s
        sub = Rect(rect.row + r0, rect.col + first, r1 - r0, self.cols - first)
        return sub, None if live.all() else live


@functools.lru_cache(maxsize=64)
def _snake(rows: int, cols: int, fold: int) -> _Snake:
    """The snake of an R x C rectangle (cached: `run` and `FoldedOutput` share it)."""
    b = np.arange(rows * fold)
    turn, down = np.divmod(b, rows)            # band column, and steps into it
    row = np.where(turn % 2 == 0, down, rows - 1 - down)
    col = np.arange(0, cols, fold)[None, :] + turn[:, None]
    nxt = np.where((b + 1) % rows == 0, 2, turn % 2)        # east at a turn, else down / up
    nxt[-1] = -1
    block = np.empty((rows, cols), dtype=int)
    hop = np.empty((rows, cols), dtype=int)
    block[row[:, None], col] = b[:, None]
    hop[row[:, None], col] = nxt[:, None]
    for a in (row, col, block, hop):
        a.flags.writeable = False
    return _Snake(rows, cols, fold, row, col, block, hop)


def _snake_shift(kv: MeshTensor, credit_from: np.ndarray, hop: np.ndarray) -> MeshTensor:
    """Every PE with ``hop >= 0`` sends its K/V block one hop on (`_HOPS`); a new tensor.

    `movement.shift` moves all PEs of a rectangle the same way, but the snake's columns of
    alternate parity move in opposite directions, turn east at their ends, and interleave
    across bands. So this applies `shift`'s one-hop port accounting (send ramps, link loads,
    detours, receive ramps) with the same public line helpers, once per direction over the
    lines (columns or rows) of the whole rectangle; each PE sends and receives at most one
    block, so the hops never share a port and run concurrently. With fold 1 only south hops
    occur, and this is exactly `movement.shift(kv, "south")`. A sender waits until its
    receiver's spare buffer is free: ``credit_from`` is when each PE's previous step ends.
    """
    fabric, spec = kv.fabric, kv.fabric.spec
    wav = kv.wavelets()
    credit = kv.ready.copy()
    moves = []
    for k, (direction, dr, dc) in enumerate(_HOPS):
        src = np.nonzero(hop == k)
        if src[0].size:
            dst = (src[0] + dr, src[1] + dc)
            credit[src] = np.maximum(credit[src], credit_from[dst])
            moves.append((direction, src, dst))
    to_line, from_line = mv.local_view("col", False)
    start = from_line(mv.send(fabric, mv.line_view(kv.rect, "col", False), to_line(credit),
                              to_line(wav), to_line(hop >= 0)))
    ready = credit.copy()
    tiles = None if kv.tiles is None else np.zeros_like(kv.tiles)
    for direction, src, dst in moves:
        axis, port, reverse = mv.DIRECTIONS[direction]
        view = mv.line_view(kv.rect, axis, reverse)
        to_line, from_line = mv.local_view(axis, reverse)
        sends = np.zeros(hop.shape, dtype=bool)
        sends[src] = True
        st, w, m = to_line(start), to_line(wav), to_line(sends)
        mv.load_links(fabric, view, port, st.min(axis=1, keepdims=True), np.where(m, w, 0.0))
        extra = mv.path_extra(fabric, view, port)
        n = st.shape[1]
        heads, wav_in = np.zeros(st.shape), np.zeros(st.shape)
        got = np.zeros(st.shape, dtype=bool)
        heads[:, 1:] = st[:, :-1] + spec.ramp_cycles + spec.hop_cycles \
            + extra[:, 1:n] - extra[:, :n - 1]
        wav_in[:, 1:] = w[:, :-1]
        got[:, 1:] = m[:, :-1]
        arrive = from_line(mv.deliver(fabric, view, heads, wav_in, 1.0, got))
        ready[dst] = arrive[dst]
        if tiles is not None:
            tiles[dst] = kv.tiles[src]
    return kv.like(tiles, ready)


# -------------------------------------------------------------------------- stream -------
def _snake_latency(fabric: Fabric, rect: Rect, snake: _Snake) -> np.ndarray:
    """Cycles from each chain's head router to every position's router along the snake:
    one hop per position, plus the detours of the links passed (`movement.path_extra` on
    each direction's lines gives the detour of every PE's outgoing link)."""
    link = np.zeros(rect.shape)
    for k, (direction, _, _) in enumerate(_HOPS):
        axis, port, reverse = mv.DIRECTIONS[direction]
        _, from_line = mv.local_view(axis, reverse)
        extra = mv.path_extra(fabric, mv.line_view(rect, axis, reverse), port)
        np.copyto(link, from_line(extra[:, 1:] - extra[:, :-1]), where=snake.hop == k)
    along = link[snake.at(0)]                                   # [L, chains]: chain order
    lat = np.zeros(along.shape)
    lat[1:] = (np.cumsum(along[:-1], axis=0)
               + fabric.spec.hop_cycles * np.arange(1, along.shape[0])[:, None])
    out = np.empty(rect.shape)
    out[snake.at(0)] = lat
    return out


def _stream_block(fabric: Fabric, rect: Rect, snake: _Snake, heads: np.ndarray,
                  wavelets: np.ndarray, carry: np.ndarray, copy: np.ndarray) -> np.ndarray:
    """One K/V block of every chain's stream: a flooding multicast down the snake.

    The block's first wavelet passes each router at ``heads`` (its chain's release time
    plus `_snake_latency`); every router of a chain that ``carry``-ies the block forwards
    it to the next position (each link of the chain carries it once, accounted with
    `movement.load_links` per direction), and the routers where ``copy`` also send it up
    their ramp (`movement.deliver`, one wavelet per cycle). `movement.multicast` floods a
    straight line from a PE's CE; the snake turns, and the stream enters from outside the
    rectangle, so this composes the same public helpers. Returns when each copied block is
    complete in its CE.
    """
    for k, (direction, _, _) in enumerate(_HOPS):
        forward = (snake.hop == k) & carry
        if forward.any():
            axis, port, reverse = mv.DIRECTIONS[direction]
            to_line, _ = mv.local_view(axis, reverse)
            mv.load_links(fabric, mv.line_view(rect, axis, reverse), port, to_line(heads),
                          to_line(np.where(forward, wavelets, 0.0)))
    return mv.deliver(fabric, mv.line_view(rect, "row", False), heads, wavelets, 1.0, copy)


def _subband_multicast(q: MeshTensor, p: Plan, sub: np.ndarray) -> np.ndarray:
    """Sub-band 0's query blocks flood east to the ``split - 1`` other sub-bands of their
    band; returns when each PE holds its Q block (sub-band 0 at once).

    In each row of a band, the flow of sub-band 0's column c is copied to columns
    c + j fold (j = 1..split-1) by a router fan-out, as in `movement.multicast`. The
    ``fold`` flows of a band row overlap on its links, so their wavelets interleave and
    arrive one every ``fold`` cycles: sub-band j has its queries after
    ``timing.transfer_cycles(g tq D, j fold hops, share=fold)``.
    """
    fabric, spec, rect = q.fabric, q.fabric.spec, q.rect
    view = mv.line_view(rect, "row", False)
    port = mv.line_port("row", False)
    wav = q.wavelets()
    source = np.broadcast_to(sub == 0, rect.shape)
    start = mv.send(fabric, view, q.ready, wav, source)
    col = np.arange(rect.cols)
    origin = col - sub * p.fold                          # the column each block comes from
    flows = np.zeros(rect.cols + 1)                      # flows on the link leaving a column
    first = np.nonzero(sub == 0)[0]
    flows[first] += 1
    flows[first + (p.split - 1) * p.fold] -= 1
    mv.load_links(fabric, view, port, start.min(axis=1, keepdims=True),
                  np.cumsum(flows)[:-1] * wav)
    extra = mv.path_extra(fabric, view, port)
    heads = (start[:, origin] + spec.ramp_cycles + (col - origin) * spec.hop_cycles
             + extra[:, col] - extra[:, origin])
    arrive = mv.deliver(fabric, view, heads, wav, float(p.fold), ~source)
    return np.where(source, q.ready, arrive)


def _merge_wavelets(g: Any, tq: Any, head_dim: int) -> Any:
    """A partial on the way to be merged: O, m and l in fp32, one element per wavelet."""
    return g * tq * (head_dim + 2)


def _merge_subbands(fabric: Fabric, rect: Rect, p: Plan, sub: np.ndarray, ready: np.ndarray
                    ) -> np.ndarray:
    """Charge the log-sum-exp tree that merges each position's ``split`` partials onto
    sub-band 0; returns when each PE is done (sub-band 0: its merged partial).

    Level l: the PE of sub-band j = 2^l (mod 2^(l+1)) sends its partial 2^l fold columns
    west to sub-band j - 2^l, which combines it (`_merge_passes`). As in `movement.reduce`'s
    tree, levels are synchronous along each row: a level starts when every PE of the row is
    done with the previous one (level 0: when every partial of the row is final). The
    ``fold`` positions of a band row send over the same links at once, so their wavelets
    interleave (share ``fold``); flows of different pairs use disjoint links. A level
    costs ``timing.transfer_cycles(g tq (D+2), 2^l fold hops, share=fold)`` plus the combine.
    """
    spec = fabric.spec
    view = mv.line_view(rect, "row", True)                # westward: toward sub-band 0
    to_line, from_line = mv.local_view("row", True)
    port = mv.line_port("row", True)
    wav = np.full((rect.rows, rect.cols), float(_merge_wavelets(p.g, p.tq, p.head_dim)))
    line_sub = sub[::-1]
    extra = mv.path_extra(fabric, view, port)
    done = ready
    for level in range(tree_levels(p.split)):
        span, dist = 2 ** level, 2 ** level * p.fold
        src = np.nonzero(line_sub % (2 * span) == span)[0]
        dst = src + dist
        done = np.maximum(done, done.max(axis=1, keepdims=True))
        sends = np.zeros(rect.cols, dtype=bool)
        sends[src] = True
        start = mv.send(fabric, view, to_line(done), wav, np.broadcast_to(sends, wav.shape))
        flows = np.zeros(rect.cols + 1)
        flows[src] += 1
        flows[dst] -= 1
        mv.load_links(fabric, view, port, start.min(axis=1, keepdims=True),
                      np.cumsum(flows)[:-1] * wav)
        heads = np.zeros(wav.shape)
        heads[:, dst] = (start[:, src] + spec.ramp_cycles + dist * spec.hop_cycles
                         + extra[:, dst] - extra[:, src])
        gets = np.zeros(rect.cols, dtype=bool)
        gets[dst] = True
        arrive = from_line(mv.deliver(fabric, view, heads, wav, float(p.fold),
                                      np.broadcast_to(gets, wav.shape)))
        live = from_line(np.broadcast_to(gets, wav.shape))
        end = arrive
        for n, dt, op, kw in _merge_passes(p.g, p.tq, p.head_dim):
            end = local_pass(fabric, rect, n * live, dt, op, end, **kw)
        done = np.where(live, end, done)
    return done


# -------------------------------------------------------------------------- per step -------
def _step_passes(g: Any, tq: Any, head_dim: int, dtype: str, masked: Any
                 ) -> list[tuple[Any, str, str, dict[str, Any]]]:
    """One step's CE passes in order: (elements per PE, dtype, op, op options).

    ``masked``: whether the step is the diagonal block (causal mask), or per PE a 0/1
    array of where it is (a stream step is the diagonal of one position only); a step
    that masks nowhere has no mask pass. `_run_step` executes exactly this list and `cost`
    adds it up, so they cannot drift apart. 16-bit inputs use the mixed fp32-accumulate
    datapath; P is stored in the input dtype before P V (`Plan.p_dtype`).
    """
    acc = WORK if dtype != "fp32" else None
    scores, rows, blk = g * tq * tq, g * tq, g * tq * head_dim
    return [
        (scores * head_dim, dtype, "fmac", {"reads": 2, "accumulate": acc}),   # S = Q K^T
        *([(scores * masked, WORK, "select", {})] if np.any(masked) else []),  # causal mask
        (scores, WORK, "max", {"writes": 0}),                                # rowmax S
        (rows, WORK, "max", {"reads": 2}),                                   # m' = max(m, .)
        (rows, WORK, "exp", {"reads": 2}),                                   # alpha
        (scores, WORK, "exp", {}),                                           # P
        (scores, dtype, "add", {"writes": 0, "accumulate": acc}),            # rowsum P
        (rows, WORK, "fmac", {"reads": 2}),                                  # l = alpha l + .
        (blk, WORK, "mul", {}),                                              # alpha O
        (scores * head_dim, dtype, "fmac", {"reads": 2, "accumulate": acc}), # O += P V
    ]


def _merge_passes(g: Any, tq: Any, head_dim: int) -> list[tuple[Any, str, str, dict[str, Any]]]:
    """One log-sum-exp combine of an arriving partial (m_b, l_b, O_b) into the PE's own
    (m_a, l_a, O_a), all fp32: `_merge_subbands` executes it and `_stream_cycles` adds it up.
    An empty partial (m = -inf: a sub-band that had no block for this position) must weigh
    nothing, hence the select on the two weights."""
    rows, blk = g * tq, g * tq * head_dim
    return [
        (rows, WORK, "max", {"reads": 2}),                  # m = max(m_a, m_b)
        (2 * rows, WORK, "exp", {"reads": 2}),              # a = exp(scale (m_a - m)), b
        (2 * rows, WORK, "select", {}),                     # weights of empty partials: 0
        (rows, WORK, "mul", {}),                            # l = a l_a
        (rows, WORK, "fmac", {"reads": 2}),                 #   + b l_b
        (blk, WORK, "mul", {}),                             # O = a O_a
        (blk, WORK, "fmac", {"reads": 2}),                  #   + b O_b
    ]


def _run_step(fabric: Fabric, rect: Rect, p: Plan, masked: Any, ready: np.ndarray,
              live: np.ndarray | None) -> np.ndarray:
    """Charge one step's passes to the CEs of ``rect`` where ``live`` (None: everywhere).

    PEs that are not live get zero elements, which `Fabric.execute` leaves untouched.
    """
    end = ready
    for n, dt, op, kw in _step_passes(p.g, p.tq, p.head_dim, p.dtype, masked):
        end = local_pass(fabric, rect, n if live is None else n * live, dt, op, end, **kw)
    return end


# ----------------------------------------------------------------------------- cost --------
def _step_cycles(spec: WaferSpec, g: Any, tq: Any, head_dim: int, dtype: str,
                 diagonal: bool) -> Any:
    """CE cycles of one streaming step on one PE (the diagonal step also applies the mask)."""
    return sum(op_cycles(spec, n, dt, op, **kw)
               for n, dt, op, kw in _step_passes(g, tq, head_dim, dtype, diagonal))


def _rotary_cycles(spec: WaferSpec, rotated: Any, dtype: str) -> Any:
    """Rotary on the Q block and on the K half of the K/V block, in place."""
    return 2 * sum(op_cycles(spec, rotated, dtype, op, reads=reads)
                   for op, reads in _ROTARY_PASSES)


def _final_cycles(spec: WaferSpec, g: Any, tq: Any, head_dim: int) -> Any:
    return (op_cycles(spec, g * tq, WORK, "reciprocal")
            + op_cycles(spec, g * tq * head_dim, WORK, "mul"))


def _merge_cycles(spec: WaferSpec, g: Any, tq: Any, head_dim: int) -> Any:
    """CE cycles of one log-sum-exp combine (`_merge_passes`)."""
    return sum(op_cycles(spec, n, dt, op, **kw)
               for n, dt, op, kw in _merge_passes(g, tq, head_dim))


def mean_busy_cycles(spec: WaferSpec | str | None, p: Plan) -> float:
    """CE cycles a PE of the layout computes, on average over its PEs; divided by `cost` it
    is the stage's busy share.

    Causal: chain position l works through blocks 0..l (l + 1 steps, its diagonal one
    masked), so one chain's steps take ``W L (L+1) / 2 + (W0 - W) L``. Shifting, each PE
    adds the rotary T0 and the final F: ``T0 + W0 + F + W (L - 1) / 2``. Streaming with
    split S, the S chains of a band share those steps, each position adds S - 1 combines
    of C cycles, and only sub-band 0 divides: ``(W (L+1) / 2 + W0 - W + (S-1) C + F) / S``.
    """
    spec = get_spec(spec)
    w0 = _step_cycles(spec, p.g, p.tq, p.head_dim, p.dtype, True)
    w = _step_cycles(spec, p.g, p.tq, p.head_dim, p.dtype, False)
    f = _final_cycles(spec, p.g, p.tq, p.head_dim)
    if p.kv == "shift":
        t0 = _rotary_cycles(spec, p.g * p.tq * p.rot, p.dtype)
        return float(t0 + w0 + f + w * (p.chain - 1) / 2)
    c = _merge_cycles(spec, p.g, p.tq, p.head_dim)
    return float((w * (p.chain + 1) / 2 + w0 - w + (p.split - 1) * c + f) / p.split)


def _hop_cycles(spec: WaferSpec, wavelets: Any) -> Any:
    """One K/V block over one hop; no link carries two blocks of a step."""
    return _transfer(spec, wavelets, 1, 1)


def _transfer(spec: WaferSpec, wavelets: Any, hops: Any, share: Any) -> Any:
    """`timing.transfer_cycles` (messages of at least one wavelet) on NumPy arrays:
    `choose_layout` prices thousands of layouts at once."""
    return share * (wavelets - 1) + 2 + hops * spec.hop_cycles + 2 * spec.ramp_cycles


def last_step_end(t0: Any, w0: Any, w: Any, x: Any, steps: Any) -> Any:
    """When the chain's last position finishes its last step: the closed form of

        E_0 = T0 + W0,  A_s = max(A_{s-1}, E_{s-2}) + X,  E_s = max(E_{s-1}, A_s) + W

    (A_0 = T0, E_{-1} = 0), with A_s when step s's K/V block has arrived (a shift of X
    cycles starts once the block is there and the receiver's spare buffer is free, at
    E_{s-2}) and E_s when step s is done. Unrolling: A_1 = T0 + X and E_1 = T0 + M0 + W with
    M0 = max(W0, X); then for s >= 2, by induction, A_s = T0 + M0 + (s-2) M + X and
    E_s = T0 + M0 + (s-1) M + W with M = max(W, X): both maxima compare terms that differ
    only in their last summand (X against W). So after the first two steps every step adds
    max(W, X), and

        E_{n-1} = T0 + W0                                 (n = 1)
                = T0 + max(W0, X) + (n-2) max(W, X) + W   (n >= 2).

    Works elementwise on NumPy arrays (`choose_layout` prices all its candidates at once).
    """
    steps = np.asarray(steps)
    return np.where(steps > 1,
                    t0 + np.maximum(w0, x) + (steps - 2) * np.maximum(w, x) + w,
                    t0 + w0)


def _cycles(spec: WaferSpec, g: Any, tq: Any, chain: Any, head_dim: int, dtype: str,
            rot: int) -> Any:
    """Cycles of `run` for per-PE groups g, block tq and chain length, scalars or arrays."""
    return _shift_formula(spec, g, tq, chain, head_dim, dtype, rot,
                          _step_cycles(spec, g, tq, head_dim, dtype, True),
                          _step_cycles(spec, g, tq, head_dim, dtype, False))


def _shift_formula(spec: WaferSpec, g: Any, tq: Any, chain: Any, head_dim: int, dtype: str,
                   rot: int, w0: Any, w: Any) -> Any:
    """`_cycles` given the steps' CE cycles W0 and W (`choose_layout` computes them once
    for all its candidates of both K/V modes)."""
    t0 = _rotary_cycles(spec, g * tq * rot, dtype)
    x = _hop_cycles(spec, 2 * g * tq * head_dim)
    return last_step_end(t0, w0, w, x, chain) + _final_cycles(spec, g, tq, head_dim)


def _stream_cycles(spec: WaferSpec, g: Any, tq: Any, chain: Any, head_dim: int, dtype: str,
                   fold: Any, split: Any) -> Any:
    """Cycles of `run` with ``kv="stream"``, for scalars or NumPy arrays of the layout.

    One chain (sub-band j; S = ``split``): its k-th block passes position l's router at
    ``H_l(k) = R_k + lat_l`` (``lat_l = l`` hops on a perfect wafer) and is complete in the
    CE at ``A_l(k) = H_l(k) + B + T_R`` (B = 2 g tq D wavelets, one per cycle up the ramp).
    The stream is released at one wavelet per cycle, held back until every receiver's
    spare buffer is free when the block reaches the end of its ramp:
    ``R_k = max(R_{k-1} + B, max_l E_l(k-2) - T_R - lat_l)``, ``R_0 = G_j`` (sub-band j's
    queries have arrived: 0 for j = 0, else the Q multicast
    ``transfer_cycles(g tq D, j fold hops, share=fold)``), and step k ends at
    ``E_l(k) = max(E_l(k-1), A_l(k)) + W``. Relative to ``G_j + lat_l`` every receiver is
    in the same state, a(k) and e(k), with

        a(0) = B + T_R,  a(k) = max(a(k-1), e(k-2)) + B,  e(k) = max(e(k-1), a(k)) + W,

    the shift's recurrence (`last_step_end`) with B for X: by the same induction
    ``a(k) = a(0) + (k-1) M + B`` and ``e(k) = a(0) + k M + W``, ``M = max(W, B)``. A PE
    with K blocks, the last one costing W' (W0 if it is its diagonal), is done at
    ``G_j + lat_l + B + T_R + (K-1) M + W'``. The latest is, with ``K = ceil(L/S)`` and
    ``d = (L-1) mod S`` the sub-band holding block L - 1, either position L - 1 of
    sub-band d (K blocks, diagonal last) or, when d < S - 1, a position of sub-band S - 1
    (K - 1 blocks, the latest queries): L - 1 itself, or the one whose diagonal is last
    there, ``L - 2 - d`` (every other candidate has fewer blocks, earlier queries or a
    nearer router). Then ``ceil(log2 S)`` merge levels of
    ``transfer_cycles(g tq (D+2), 2^l fold hops, share=fold) + C`` and the final F.
    """
    return _stream_formula(spec, g, tq, chain, head_dim, fold, split,
                           _stream_parts(spec, g, tq, head_dim, dtype))


def _stream_parts(spec: WaferSpec, g: Any, tq: Any, head_dim: int, dtype: str
                  ) -> tuple[Any, Any, Any, Any]:
    """The CE cycles `_stream_cycles` needs per (g, tq): a step W0 (diagonal) and W, a
    merge combine C, the final F. Computed once per candidate block by `choose_layout`,
    which prices each block at several splits."""
    return (_step_cycles(spec, g, tq, head_dim, dtype, True),
            _step_cycles(spec, g, tq, head_dim, dtype, False),
            _merge_cycles(spec, g, tq, head_dim), _final_cycles(spec, g, tq, head_dim))


def _stream_formula(spec: WaferSpec, g: Any, tq: Any, chain: Any, head_dim: int, fold: Any,
                    split: Any, parts: tuple[Any, Any, Any, Any]) -> Any:
    """`_stream_cycles` from its `_stream_parts`."""
    w0, w, c, f = parts
    hop = spec.hop_cycles
    b = 2 * g * tq * head_dim
    m = np.maximum(w, b)
    first = b + spec.ramp_cycles
    k = -(-chain // split)
    d = (chain - 1) % split

    def gate(j: Any) -> Any:
        return np.where(j > 0, _transfer(spec, g * tq * head_dim, j * fold, fold), 0)

    last = gate(d) + (chain - 1) * hop + first + (k - 1) * m + w0
    short = np.where(d < split - 1,
                     gate(split - 1) + first + (k - 2) * m
                     + np.maximum((chain - 1) * hop + w, (chain - 2 - d) * hop + w0),
                     -np.inf)
    levels = np.frexp(np.asarray(split) - 1)[1]          # ceil(log2 S), 0 for S = 1
    merge = (levels * (_transfer(spec, _merge_wavelets(g, tq, head_dim), 0, fold) + c)
             + (2 ** levels - 1) * fold * hop)
    return np.maximum(last, short) + merge + f


def cost(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", rotary_pct: float = 0.0,
         fold: int = 1, kv: str = "shift", split: int = 1) -> float:
    """Cycles of `run` in closed form.

    Shifting, the chain's last position runs every one of the ``n = R * fold`` steps; with
    W the CE cycles of a step (W0 for the masked diagonal one), X those of a K/V shift of
    ``2 g tq D`` wavelets over one hop, T0 the rotary passes and F the final O / l:

        cost = T0 + W0 + F                                  (n = 1)
             = T0 + max(W0, X) + (n-2) max(W, X) + W + F     (n >= 2)

    (`last_step_end` derives it from the step recurrence). Streaming (``kv="stream"``,
    split S, K = ceil(L/S) blocks per sub-band, ``M = max(W, 2 g tq D)``), the latest
    partial is done at ``G_d + (L-1) hops + 2 g tq D + T_R + (K-1) M + W0`` (or a few
    cycles later on sub-band S - 1, see `_stream_cycles`), then the merge levels and F.
    Cached: the placer prices the same layouts many times.
    """
    return _cost(get_spec(spec), groups, seq, head_dim, tuple(rect_shape), dtype,
                 rotary_pct, fold, kv, split)


@functools.lru_cache(maxsize=1 << 16)
def _cost(spec: WaferSpec, groups: int, seq: int, head_dim: int, rect_shape: tuple[int, int],
          dtype: str, rotary_pct: float, fold: int, kv: str, split: int) -> float:
    p = plan(spec, groups, seq, head_dim, rect_shape, dtype=dtype, rotary_pct=rotary_pct,
             fold=fold, kv=kv, split=split)
    if p.kv == "shift":
        return float(_cycles(spec, p.g, p.tq, p.chain, p.head_dim, p.dtype, p.rot))
    return float(_stream_cycles(spec, p.g, p.tq, p.chain, p.head_dim, p.dtype, p.fold,
                                p.split))


@dataclass(frozen=True)
class Layout:
    """`choose_layout`'s answer: the rectangle, how the kernel maps onto it, its cycles."""

    rows: int
    cols: int
    fold: int
    kv: str
    split: int
    cycles: float


def choose_layout(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int, *,
                  max_rows: int, max_cols: int, dtype: str = "fp32", rotary_pct: float = 0.0
                  ) -> Layout:
    """The fastest layout within ``max_rows x max_cols`` that fits, over both K/V modes.

    ``cycles == cost(spec, groups, seq, head_dim, (rows, cols), fold=, kv=, split=, ...)``.
    Both costs depend on the layout through the groups per PE ``g`` (set by the number of
    bands), the block ``tq``, the chain length ``L = R * fold`` and, streaming, the fold and
    split; they grow with g, tq, L and the fold. So for every band count that gives a
    distinct ``g``, every block size that can fit (``4 g tq^2`` bytes of scores alone bound
    it) and every fold the columns allow, only the fewest rows that reach that block,
    ``ceil(ceil(S / tq) / fold)``, can be fastest. Shifting, per (bands, block) the fold
    with the shortest chain is kept; streaming, every fold whose chain is shorter than at
    all smaller folds, each with every split its columns allow (``bands * fold * split``
    <= max_cols, split <= L). Those layouts are priced in one vectorised pass. Ties go to
    fewer PEs, then to less folding, then to the shift. Streaming needs ``rotary_pct`` 0
    (K enters rotated). When nothing fits, raises the kernel's `KernelFitError` for the
    longest chain on the most bands. Cached: the placer asks again.
    """
    return _choose_layout(get_spec(spec), groups, seq, head_dim, max_rows, max_cols, dtype,
                          rotary_pct)


@functools.lru_cache(maxsize=4096)
def _choose_layout(spec: WaferSpec, groups: int, seq: int, head_dim: int, max_rows: int,
                   max_cols: int, dtype: str, rotary_pct: float) -> Layout:
    rot = _check_sizes(dtype, rotary_pct, groups=groups, seq=seq, head_dim=head_dim,
                       max_rows=max_rows, max_cols=max_cols)
    row_cap, col_cap = int(min(max_rows, spec.rows, seq)), int(min(max_cols, spec.cols))
    bands = sorted({-(-groups // g) for g in range(1, groups + 1)} & set(range(1, col_cap + 1)))
    # the blocks each band count can try: 4 g tq^2 bytes of scores bound them, and where
    # even one K/V buffer (and no merge buffer) overflows, no layout fits
    gs = [-(-groups // band) for band in bands]
    tqs = [np.arange(1, min(seq, math.isqrt(spec.sram_bytes // (4 * g))) + 1) for g in gs]
    sizes = [t.size for t in tqs]
    need = _sram(np.repeat(gs, sizes), np.concatenate(tqs), head_dim, dtype, rot, 1)["peak"]
    fits = np.split(need <= spec.sram_bytes, np.cumsum(sizes)[:-1])
    shifts, streams = [], []            # (bands, rows, fold) of each mode's candidates
    for band, tq, ok in zip(bands, tqs, fits, strict=True):
        tq = tq[ok][:, None]
        fold = np.arange(1, min(col_cap // band, seq) + 1)[None, :]
        blocks = -(-seq // tq)
        rows = -(-blocks // fold)                   # the fewest rows that reach block tq
        chain = np.where((rows <= row_cap) & (rows * fold <= seq), rows * fold, seq + 1)
        pick = np.arange(tq.size), chain.argmin(axis=1)  # shortest chain, least folding
        ok = chain[pick] <= seq
        shifts.append((np.full(int(ok.sum()), band), rows[pick][ok], pick[1][ok] + 1))
        if not rot:
            pareto = chain <= seq                   # shorter than at every smaller fold
            pareto[:, 1:] &= chain[:, 1:] < np.minimum.accumulate(chain, axis=1)[:, :-1]
            ti, fi = np.nonzero(pareto)
            streams.append((np.full(ti.size, band), rows[ti, fi], fi + 1))
    # the steps' CE cycles of every candidate block of both modes, computed once
    band, r, f = (np.concatenate(a) for a in zip(*shifts, *streams, strict=True))
    chain = r * f
    g, tq = -(-groups // band), -(-seq // chain)
    parts = _stream_parts(spec, g, tq, head_dim, dtype)
    n = sum(a[0].size for a in shifts)
    layouts = [(band[:n], r[:n], f[:n], np.ones(n, dtype=int), np.zeros(n, dtype=bool))]
    cycles = [_shift_prices(spec, seq, head_dim, dtype, rot, g[:n], chain[:n],
                            parts[0][:n], parts[1][:n])]
    if streams:
        band, r, f, chain, g, tq = (a[n:] for a in (band, r, f, chain, g, tq))
        parts = tuple(x[n:] for x in parts)
        most = np.minimum(col_cap // (band * f), chain)     # the widest split per chain
        price = _stream_prices(spec, seq, head_dim, dtype, g, chain, f, most, parts)
        # a split S cannot beat the best so far unless its ceil(L/S) - 1 steps of
        # M = max(W, B) on top of the rest of the latest partial (a lower bound of its
        # cost) do: only S >= ceil(L / k) can, k the most steps that fit under the best
        best = min(np.min(c, initial=np.inf) for c in (*cycles, price))
        w0, w, _, fin = parts
        m = np.maximum(w, 2 * g * tq * head_dim)
        rest = (chain - 1) * spec.hop_cycles + 2 * g * tq * head_dim + spec.ramp_cycles + w0 + fin
        steps = np.floor((best - rest) / m) + 1
        least = np.where(steps >= 1, np.maximum(-(-chain // np.maximum(steps, 1)), 1),
                         most + 1)             # (steps is inf while nothing fits yet)
        count = np.maximum(most - least + 1, 0).astype(int)
        at = np.repeat(np.arange(band.size), count)
        s = np.arange(at.size) - np.repeat(np.cumsum(count) - count, count) + least[at]
        band, r, f = band[at], r[at], f[at]
        layouts.append((band, r, f, s, np.ones(at.size, dtype=bool)))
        cycles.append(_stream_prices(spec, seq, head_dim, dtype, g[at], chain[at], f, s,
                                     tuple(x[at] for x in parts)))
    band, r, f, s, stream = (np.concatenate(a) for a in zip(*layouts, strict=True))
    cycles = np.concatenate(cycles)
    if not np.isfinite(cycles).any():
        most = bands[-1]
        fold = max(1, min(col_cap // most, seq // row_cap))
        plan(spec, groups, seq, head_dim, (row_cap, most * fold), dtype=dtype,
             rotary_pct=rotary_pct, fold=fold)      # raises: not even this fits
    i = int(np.lexsort((s, stream, f, r * f * band * s, cycles))[0])
    return Layout(int(r[i]), int(band[i] * f[i] * s[i]), int(f[i]),
                  "stream" if stream[i] else "shift", int(s[i]), float(cycles[i]))


def _shift_prices(spec: WaferSpec, seq: int, head_dim: int, dtype: str, rot: int,
                  g: np.ndarray, chain: np.ndarray, w0: np.ndarray, w: np.ndarray
                  ) -> np.ndarray:
    """`cost` of shift layouts given as arrays (with their steps' cycles); inf where they
    do not fit."""
    tq = -(-seq // chain)
    fits = _sram(g, tq, head_dim, dtype, rot, chain)["peak"] <= spec.sram_bytes
    cycles = np.full(chain.size, np.inf)
    cycles[fits] = _shift_formula(spec, g[fits], tq[fits], chain[fits], head_dim, dtype, rot,
                                  w0[fits], w[fits])
    return cycles


def _stream_prices(spec: WaferSpec, seq: int, head_dim: int, dtype: str, g: np.ndarray,
                   chain: np.ndarray, fold: np.ndarray, split: np.ndarray,
                   parts: tuple[Any, Any, Any, Any]) -> np.ndarray:
    """`cost` of stream layouts given as arrays (with their `_stream_parts`); inf where
    they do not fit."""
    tq = -(-seq // chain)
    fits = (_sram(g, tq, head_dim, dtype, 0, -(-chain // split), split)["peak"]
            <= spec.sram_bytes)
    cycles = np.full(chain.size, np.inf)
    cycles[fits] = _stream_formula(spec, g[fits], tq[fits], chain[fits], head_dim, fold[fits],
                                   split[fits], tuple(x[fits] for x in parts))
    return cycles


def flops(groups: int, seq: int, head_dim: int) -> float:
    """Useful FLOPs of causal attention (QK^T and PV over the lower triangle, with diagonal)."""
    pairs = seq * (seq + 1) / 2
    return 4.0 * groups * pairs * head_dim


# ------------------------------------------------------------------------------ run --------
class FoldedOutput(MeshTensor):
    """`run`'s output when ``fold > 1`` or ``split > 1``: [groups, seq, D] in the snake layout.

    No (row_map, col_map) blocking puts block b of band j on the PE at (snake row, band
    column b // R), so the tiles are kept as the padded physical tensor [g C, tq R, D],
    blocked like the unfolded output (its SRAM, clocks and tile sizes are exact), and
    `to_numpy` reads the blocks back in sequence order: the [groups, seq, D] value. With
    ``split > 1`` only sub-band 0 of each band holds (and is charged for) the output.
    """

    def __init__(self, fabric: Fabric, rect: Rect, p: Plan, tiles: np.ndarray | None,
                 ready: np.ndarray, name: str) -> None:
        self.plan = p                   # first: `bytes_per_pe` needs it to allocate
        super().__init__(fabric, rect, (p.g * p.cols, p.tq * p.rows, p.head_dim), p.dtype, 1,
                         0, tiles, ready, name)

    def bytes_per_pe(self) -> np.ndarray:
        """The tile on sub-band 0's PEs, nothing on the other sub-bands' (merged away)."""
        full = super().bytes_per_pe()
        if self.plan.split == 1:
            return full
        return np.where(_sub_bands(self.plan) == 0, full, 0)

    def to_numpy(self) -> np.ndarray:
        """The [groups, seq, D] value (fp32 for 16-bit dtypes, as `MeshTensor.to_numpy`)."""
        if self.tiles is None:
            raise ShapeError(f"tensor {self.name!r} has no values: the fabric runs in "
                             f"timing-only mode")
        p = self.plan
        blocks = self.tiles[_snake(p.rows, p.cols, p.fold).at(0)][:, ::p.split]
        value = blocks.astype(np.float32).transpose(1, 2, 0, 3, 4).reshape(
            p.group_cols * p.g, p.chain * p.tq, p.head_dim)
        return np.ascontiguousarray(value[:p.groups, :p.seq])


def _sub_bands(p: Plan) -> np.ndarray:
    """The sub-band (0..split-1) of each column of the rectangle."""
    return (np.arange(p.cols) // p.fold) % p.split


def _as_groups(name: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    if x.ndim != 3:
        raise KernelShapeError(f"{KERNEL}: {name} of shape {x.shape} must be [heads, seq, "
                               f"head_dim] or [batch, heads, seq, head_dim]")
    return x


def _pad(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if x.shape == shape:
        return x
    out = np.zeros(shape, dtype=np.float32)
    out[tuple(slice(0, s) for s in x.shape)] = x
    return out


def _blocks(x: np.ndarray, p: Plan) -> np.ndarray:
    """[groups, seq, D] -> [L, Cg, g, tq, D]: chain position b of band j, zero-padded."""
    x = _pad(x.astype(np.float32), (p.group_cols * p.g, p.chain * p.tq, p.head_dim))
    return x.reshape(p.group_cols, p.g, p.chain, p.tq, p.head_dim).transpose(2, 0, 1, 3, 4)


def run(fabric: Fabric, q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
        rect: Rect | None = None, dtype: str = "fp32", causal: bool = True,
        rotary_pct: float = 0.0, rotary_base: float = 10000.0, scale: float | None = None,
        fold: int = 1, kv: str = "shift", split: int = 1) -> MeshTensor:
    """Causal attention of q, k, v ([heads, seq, D] or [batch, heads, seq, D]) on ``rect``.

    In timing-only mode only the inputs' shapes are used: pass
    ``np.broadcast_to(0.0, shape)``. ``fold``: each chain of query blocks snakes through
    ``fold`` adjacent columns (module docstring); ``rect`` needs a multiple of
    ``fold * split`` columns. ``kv="shift"``: q, k, v are resident at time 0 with their
    query blocks (as a projection kernel would leave them) and the K/V blocks hop along the
    chain. ``kv="stream"``: q is resident on (sub-band 0 of) the chains, while K and V
    enter at each chain's head from time 0 as a stream from outside the rectangle (in a
    pipeline, the producing stage streams them there); the head PE could not hold them
    (2 S D values per group: 5 MB at 10,240 tokens against 48 KB), so nothing is preloaded
    and only the stream's links and ramps are charged. ``split`` (stream only): sub-bands
    per band (module docstring). Returns the output (groups = batch x heads) on ``rect``:
    with fold 1 and split 1 a [groups, seq, D] tensor blocked like the queries (sequence
    over rows, groups over columns); else a `FoldedOutput` whose `to_numpy` is
    [groups, seq, D] (with split > 1 it lives on sub-band 0).
    """
    if not causal:
        raise KernelError(f"{KERNEL}: only causal (decoder) attention is implemented; the "
                          f"one-way K/V stream sees exactly the blocks at or before "
                          f"each query block")
    rect = rect or fabric.full
    q, k, v = (_as_groups(n, np.asarray(a)) for n, a in (("q", q), ("k", k), ("v", v)))
    if not q.shape == k.shape == v.shape:
        raise KernelShapeError(f"{KERNEL}: q {q.shape}, k {k.shape}, v {v.shape} must match")
    groups, seq, head_dim = q.shape
    p = plan(fabric.spec, groups, seq, head_dim, rect.shape, dtype=dtype,
             rotary_pct=rotary_pct, fold=fold, kv=kv, split=split)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    if p.kv == "stream":
        return _run_stream(fabric, rect, p, q, k, v, scale)
    R, C, L, g, tq, d = p.rows, p.cols, p.chain, p.g, p.tq, head_dim
    gp, sp = g * C, tq * R              # the padded tensor that holds one tile per PE
    snake = _snake(R, C, p.fold)
    values = not fabric.timing_only

    # -- inputs: Q [g, tq, D] and packed K^T/V^T [g, 2, D, tq] blocks in snake order
    Q = MeshTensor.empty(fabric, (gp, sp, d), rect, 1, 0, dtype, fabric.fresh_name("q"))
    KV = MeshTensor.empty(fabric, (gp, 2, d, sp), rect, 3, 0, dtype, fabric.fresh_name("kv"))
    if values:
        Q.tiles[snake.at(0)] = to_storage(_blocks(q, p), dtype)
        kv = np.stack([_blocks(k, p), _blocks(v, p)], axis=3)       # [L, Cg, g, 2, tq, D]
        KV.tiles[snake.at(0)] = to_storage(np.swapaxes(kv, -1, -2), dtype)
    if p.rot:
        _apply_rotary(Q, KV, p, snake, rotary_base)

    # -- state: O (fp32), running max m and sum l, score block S and (16-bit) P
    acc_o = MeshTensor.empty(fabric, (gp, sp, d), rect, 1, 0, WORK, fabric.fresh_name("o"))
    m = MeshTensor.empty(fabric, (gp, sp), rect, 1, 0, WORK, fabric.fresh_name("m"))
    l_ = MeshTensor.empty(fabric, (gp, sp), rect, 1, 0, WORK, fabric.fresh_name("l"))
    S = MeshTensor.empty(fabric, (gp, sp, tq), rect, 1, 0, WORK, fabric.fresh_name("scores"))
    P = None
    if p.p_dtype != "fp32":
        P = MeshTensor.empty(fabric, (gp, sp, tq), rect, 1, 0, p.p_dtype,
                             fabric.fresh_name("p"))
    if values:
        m.tiles[...] = -np.inf
    done = np.zeros(rect.shape)       # per PE: end of its latest step (buffer credits)
    cur = KV                          # the K/V block each active position holds now
    for s in range(L):
        sub, live = snake.active(rect, s)
        dr, dc = sub.row - rect.row, sub.col - rect.col
        here = (slice(dr, dr + sub.rows), slice(dc, dc + sub.cols))
        kv_now = _within(cur, sub)
        nxt = None
        if s < L - 1:                 # prefetch the next block while this step computes
            hop = np.where(snake.block[here] >= s, snake.hop[here], -1)
            nxt = _snake_shift(kv_now, done[here], hop)
        end = _run_step(fabric, sub, p, s == 0, np.maximum(kv_now.ready, Q.ready[here]),
                        live)
        if live is None:
            done[here] = end
        else:
            np.copyto(done[here], end, where=live)
        if values:
            at = snake.at(s)
            acc_o.tiles[at], m.tiles[at], l_.tiles[at] = _step_values(
                Q.tiles[at], kv_now.tiles[snake.at(s, dr, dc)], acc_o.tiles[at], m.tiles[at],
                l_.tiles[at], s == 0, scale, p.p_dtype)
        cur.free()
        cur = nxt if nxt is not None else cur

    # -- out = O / l
    end = local_pass(fabric, rect, g * tq, WORK, "reciprocal", done)
    end = local_pass(fabric, rect, g * tq * d, WORK, "mul", end)
    for t in (S, P, m):
        if t is not None:
            t.free()
    tiles = None
    if values:
        with np.errstate(divide="ignore", invalid="ignore"):
            tiles = to_storage(acc_o.tiles / l_.tiles[..., None], dtype)
        tiles[...] = np.where(_real(p, snake)[..., None], tiles, 0)
    name = fabric.fresh_name("attn_out")
    out = (MeshTensor(fabric, rect, (groups, seq, d), dtype, 1, 0, tiles, end, name)
           if p.fold == 1 else FoldedOutput(fabric, rect, p, tiles, end, name))
    for t in (Q, acc_o, l_):
        t.free()
    return out


def _run_stream(fabric: Fabric, rect: Rect, p: Plan, q: np.ndarray, k: np.ndarray,
                v: np.ndarray, scale: float) -> MeshTensor:
    """`run` with ``kv="stream"``: every chain's K/V blocks enter at its head and flow down
    the snake as one multicast stream (`_stream_block`); with ``split`` S, sub-band j of a
    band takes the blocks j, j + S, ... and the S partials are merged onto sub-band 0
    (`_merge_subbands`). Timing is vectorised over all PEs per block; values are kept in
    chain order ([L, chains, ...]) and written to the output's tiles at the end."""
    spec = fabric.spec
    R, C, L, g, tq, d, S = p.rows, p.cols, p.chain, p.g, p.tq, p.head_dim, p.split
    gp, sp = g * C, tq * R              # the padded tensors that hold one tile per PE
    snake = _snake(R, C, p.fold)
    chains = C // p.fold
    sub = _sub_bands(p)
    values = not fabric.timing_only

    # -- Q on every sub-band (sub-band 0 multicasts it to the others), K/V stream buffers
    Q = MeshTensor.empty(fabric, (gp, sp, d), rect, 1, 0, p.dtype, fabric.fresh_name("q"))
    if S > 1:
        Q.ready = _subband_multicast(Q, p, sub)
    bufs = [MeshTensor.empty(fabric, (gp, 2, d, sp), rect, 3, 0, p.dtype,
                             fabric.fresh_name("kv")) for _ in range(1 + (p.steps > 1))]
    # the state's buffers, as the shift's (they charge the SRAM; the values are below)
    acc_o = MeshTensor.empty(fabric, (gp, sp, d), rect, 1, 0, WORK, fabric.fresh_name("o"))
    m = MeshTensor.empty(fabric, (gp, sp), rect, 1, 0, WORK, fabric.fresh_name("m"))
    l_ = MeshTensor.empty(fabric, (gp, sp), rect, 1, 0, WORK, fabric.fresh_name("l"))
    scores = MeshTensor.empty(fabric, (gp, sp, tq), rect, 1, 0, WORK,
                              fabric.fresh_name("scores"))
    probs = None
    if p.p_dtype != "fp32":
        probs = MeshTensor.empty(fabric, (gp, sp, tq), rect, 1, 0, p.p_dtype,
                                 fabric.fresh_name("p"))
    if values:
        band = np.arange(chains) // S
        qc = to_storage(_blocks(q, p)[:, band], p.dtype)           # [L, chains, g, tq, D]
        kvc = to_storage(np.swapaxes(np.stack([_blocks(k, p), _blocks(v, p)], axis=3),
                                     -1, -2), p.dtype)            # [L, bands, g, 2, D, tq]
        oc = np.zeros(qc.shape, dtype=np.float32)
        mc = np.full(qc.shape[:-1], -np.inf, dtype=np.float32)
        lc = np.zeros(qc.shape[:-1], dtype=np.float32)

    # -- the streams: block k of each chain, released as the receivers' buffers allow
    lat = _snake_latency(fabric, rect, snake)
    pos = snake.block
    wav = bufs[0].wavelets()

    def per_chain(x: np.ndarray) -> np.ndarray:
        return x.reshape(R, chains, p.fold).max(axis=(0, 2))

    release = per_chain(Q.ready)        # a chain's stream starts once its queries are in
    ends = (Q.ready, Q.ready)           # each PE's last two step ends: its buffer credits
    for step in range(p.steps):
        b = sub + step * S              # the block each column's chain streams now
        copy = pos >= b                 # the positions that need it
        if step:
            release = release + per_chain(wav)      # one wavelet per cycle behind the last
            if step > 1:                # held until the spare buffers are free (step - 2)
                release = np.maximum(release, per_chain(np.where(
                    copy, ends[1] - spec.ramp_cycles - lat, -np.inf)))
        heads = np.repeat(release, p.fold)[None, :] + lat
        arrive = _stream_block(fabric, rect, snake, heads, wav,
                               np.broadcast_to(b < L, rect.shape), copy)
        end = _run_step(fabric, rect, p, pos == b, np.maximum(arrive, Q.ready), copy)
        ends = (np.where(copy, end, ends[0]), ends[0])
        if values:
            first = step * S            # no chain needs this block before that position
            bc = np.arange(chains) % S + step * S
            at = np.arange(first, L)[:, None]
            live = at >= bc
            new = _step_values(qc[first:], kvc[np.minimum(bc, L - 1), band][None],
                               oc[first:], mc[first:], lc[first:], at == bc, scale,
                               p.p_dtype)
            for state, value in zip((oc, mc, lc), new, strict=True):
                keep = live.reshape(live.shape + (1,) * (value.ndim - 2))
                state[first:] = np.where(keep, value, state[first:])
    for t in (scores, probs, *bufs):
        if t is not None:
            t.free()

    # -- merge the sub-bands' partials onto sub-band 0, which divides: out = O / l
    done = ends[0]
    if S > 1:
        gets = np.broadcast_to((sub % 2 == 0) & (sub + 1 < S), rect.shape)
        name = fabric.fresh_name("merge_in")
        fabric.sram.alloc(name, rect.row, rect.col,
                          gets * int(_sram(g, tq, d, p.dtype, p.rot, p.steps, S)["merge_in"]))
        done = _merge_subbands(fabric, rect, p, sub, done)
        fabric.sram.free(name)
        if values:
            _merge_values(oc, mc, lc, S, scale)
    m.free()
    root = np.broadcast_to(sub == 0, rect.shape)
    end = local_pass(fabric, rect, g * tq * root, WORK, "reciprocal", done)
    end = local_pass(fabric, rect, g * tq * d * root, WORK, "mul", end)
    tiles = None
    if values:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = to_storage(oc / lc[..., None], p.dtype)
        tiles = np.zeros((R, C, g, tq, d), dtype=result.dtype)
        tiles[snake.at(0)] = result
        tiles[...] = np.where((_real(p, snake) & root[..., None, None])[..., None], tiles, 0)
    name = fabric.fresh_name("attn_out")
    out = (MeshTensor(fabric, rect, (p.groups, p.seq, d), p.dtype, 1, 0, tiles, end, name)
           if p.fold == 1 and S == 1 else FoldedOutput(fabric, rect, p, tiles, end, name))
    for t in (Q, acc_o, l_):
        t.free()
    return out


def _merge_values(o: np.ndarray, m: np.ndarray, l_: np.ndarray, split: int, scale: float
                  ) -> None:
    """The values of `_merge_subbands`' tree, in place on the chain-order partials
    [L, chains, ...]: sub-band 0 of each band ends with the log-sum-exp combination of its
    band's ``split`` partials (an empty one, m = -inf, weighs nothing)."""
    L, chains = m.shape[:2]
    o, m, l_ = (x.reshape(L, chains // split, split, *x.shape[2:]) for x in (o, m, l_))
    for level in range(tree_levels(split)):
        span = 2 ** level
        a, b = slice(0, split - span, 2 * span), slice(span, split, 2 * span)
        top = np.maximum(m[:, :, a], m[:, :, b])
        full = top > -np.inf            # two empty partials stay empty
        base = np.where(full, top, np.float32(0))
        wa, wb = (np.where(full, np.exp(np.float32(scale) * (m[:, :, x] - base)),
                           np.float32(0)) for x in (a, b))
        l_[:, :, a] = wa * l_[:, :, a] + wb * l_[:, :, b]
        o[:, :, a] = wa[..., None] * o[:, :, a] + wb[..., None] * o[:, :, b]
        m[:, :, a] = top


def _real(p: Plan, snake: _Snake) -> np.ndarray:
    """[R, C, g, tq] mask of real (not padded) tokens and groups, to zero the padding."""
    token = np.arange(p.chain * p.tq).reshape(p.chain, 1, 1, p.tq) < p.seq
    band = np.arange(p.cols // p.fold) // p.split           # each chain's band
    group = (band[:, None] * p.g + np.arange(p.g))[None, :, :, None] < p.groups
    mask = np.empty((p.rows, p.cols, p.g, p.tq), dtype=bool)
    mask[snake.at(0)] = token & group
    return mask


def _within(t: MeshTensor, sub: Rect) -> MeshTensor:
    """A view (no new SRAM) of the part of ``t`` on ``sub`` as a tensor of its own."""
    if sub == t.rect:
        return t
    dr, dc = sub.row - t.rect.row, sub.col - t.rect.col
    shape = list(t.shape)
    shape[t.row_map] = t.tile_shape[t.row_map] * sub.rows
    shape[t.col_map] = t.tile_shape[t.col_map] * sub.cols
    here = (slice(dr, dr + sub.rows), slice(dc, dc + sub.cols))
    tiles = None if t.tiles is None else t.tiles[here]
    return MeshTensor(t.fabric, sub, tuple(shape), t.dtype, t.row_map, t.col_map, tiles,
                      t.ready[here], name=t.name, allocate=False)


def _apply_rotary(Q: MeshTensor, KV: MeshTensor, p: Plan, snake: _Snake, base: float
                  ) -> None:
    """GPT-NeoX rotary on Q and on the K half of KV, in place, with resident tables.

    Each PE's cos/sin [tq, rot] are the rows of its own block's positions.
    """
    fabric, dtype = Q.fabric, p.dtype
    sp = p.tq * p.rows
    cos = MeshTensor.empty(fabric, (sp, p.rot), Q.rect, 0, None, dtype,
                           fabric.fresh_name("rope_cos"))
    sin = MeshTensor.empty(fabric, (sp, p.rot), Q.rect, 0, None, dtype,
                           fabric.fresh_name("rope_sin"))
    n = p.g * p.tq * p.rot
    for x in (Q, KV):
        end = np.maximum.reduce([x.ready, cos.ready, sin.ready])
        for op, reads in _ROTARY_PASSES:
            end = local_pass(fabric, x.rect, n, dtype, op, end, reads=reads)
        x.ready = end
    if not fabric.timing_only:
        for table, t in zip((cos, sin), rotary.tables(p.chain * p.tq, p.rot, base, dtype),
                            strict=True):
            table.tiles[snake.at(0)] = to_storage(t, dtype).reshape(p.chain, 1, p.tq, p.rot)
        c = cos.tiles.astype(np.float32)[:, :, None]        # [R, C, 1, tq, rot]
        s = sin.tiles.astype(np.float32)[:, :, None]
        Q.tiles[...] = to_storage(rotary.rotate(Q.tiles.astype(np.float32), c, s, p.rot),
                                  dtype)
        kt = np.swapaxes(KV.tiles[:, :, :, 0].astype(np.float32), -1, -2)  # [.., g, tq, D]
        KV.tiles[:, :, :, 0] = np.swapaxes(
            to_storage(rotary.rotate(kt, c, s, p.rot), dtype), -1, -2)
    cos.free()
    sin.free()


def _step_values(q: np.ndarray, kv: np.ndarray, o: np.ndarray, m: np.ndarray, l_: np.ndarray,
                 diagonal: Any, scale: float, p_dtype: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One online-softmax step on the active positions' tiles: the new (o, m, l).

    ``diagonal``: whether the block is the positions' own (masked causally), or a boolean
    array over the leading (position, chain) axes of where it is (a stream step)."""
    qf = q.astype(np.float32)
    kt = kv[..., 0, :, :].astype(np.float32)        # [n, Cg, g, D, tq]
    vt = kv[..., 1, :, :].astype(np.float32)
    s = np.matmul(qf, kt)                           # [n, Cg, g, tq, tq]
    if np.any(diagonal):
        tq = s.shape[-1]
        mask = np.triu(np.ones((tq, tq), dtype=bool), 1)
        if np.ndim(diagonal):
            mask = mask & np.reshape(diagonal, np.shape(diagonal) + (1, 1, 1))
        s = np.where(mask, np.float32(-np.inf), s)
    m_new = np.maximum(m, s.max(axis=-1))
    alpha = np.exp(np.float32(scale) * (m - m_new))
    pr = to_storage(np.exp(np.float32(scale) * (s - m_new[..., None])), p_dtype
                    ).astype(np.float32)
    return (o * alpha[..., None] + np.matmul(pr, np.swapaxes(vt, -1, -2)), m_new,
            alpha * l_ + pr.sum(axis=-1))


# ------------------------------------------------------------------ the stage family ------
#: ATen's CPU flash attention: what torch.compile's training graphs keep of an SDPA
#: (`backend.decompositions`); it returns the output and the row log-sum-exp.
FLASH_CPU = "_scaled_dot_product_flash_attention_for_cpu"

#: Run compiled attention stages step by step on the fabric even on a perfect wafer (the
#: tests set it to check the closed-form path against the simulation).
SIMULATE_STAGES = False


@dataclass(frozen=True)
class AttentionParams(StageParams):
    """Causal attention of ``batch x heads`` groups of [seq, head_dim]; the layout
    (``fold``, ``kv``, ``split``: `choose_layout`) once sized."""

    groups: int
    seq: int
    head_dim: int
    batch: int
    heads: int
    assumed_causal: bool = False
    fold: int = 1
    kv: str = "shift"
    split: int = 1

    def __post_init__(self) -> None:
        if min(self.groups, self.seq, self.head_dim) < 1 or self.kv not in KV_MODES:
            raise KernelShapeError(f"{KERNEL}: {self.groups} groups of [{self.seq}, "
                                   f"{self.head_dim}] with K/V mode {self.kv!r}: sizes must "
                                   f"be >= 1 and the mode one of {KV_MODES}")

    def layout(self) -> dict[str, Any]:
        return {"fold": self.fold, "kv": self.kv, "split": self.split}


def _attention_args(node: Node) -> tuple[Any, bool, float]:
    """``(attn_mask, is_causal, dropout_p)`` of an SDPA or a CPU flash attention: the two
    ops order their arguments differently (the flash op's mask is keyword-only)."""
    a, kw = node.args, node.kwargs
    if node.short == FLASH_CPU:
        return (kw.get("attn_mask"), bool(a[4] if len(a) > 4 else kw.get("is_causal")),
                float(a[3] if len(a) > 3 else kw.get("dropout_p", 0.0)))
    return (a[3] if len(a) > 3 else kw.get("attn_mask"),
            bool(a[5] if len(a) > 5 else kw.get("is_causal")),
            float(a[4] if len(a) > 4 else kw.get("dropout_p", 0.0)))


def causal(node: Node, g: Graph) -> bool:
    """Causal if ``is_causal`` or the mask is a folded constant equal to a lower triangle.

    A mask built on the meta device has no values; it is assumed causal (decoder models
    build it from ``arange``) and the assumption is recorded in ``meta['assumed_causal']``.
    """
    mask, is_causal, dropout = _attention_args(node)
    if dropout:
        return False
    if is_causal:
        return True
    if mask is None:
        return False
    if not isinstance(mask, Ref) or g.nodes[mask.name].op != "const":
        return False
    src = g.nodes[mask.name]
    if "causal" not in src.meta:   # every layer reads the same mask: check it once
        src.meta["causal"] = causal_mask_value(node, g.constants[mask.name])
    if src.meta.get("assumed_causal"):
        node.meta["assumed_causal"] = True
    return bool(src.meta["causal"])


def causal_mask_value(node: Node, value: torch.Tensor) -> bool:
    """Whether a folded attention mask is a lower triangle (bool: True where attended;
    float: 0 where attended). A mask on the meta device has no values: assumed causal and
    recorded in ``node.meta['assumed_causal']``. Row by row against the positions, so a
    10,240-token mask needs no second [seq, seq] array."""
    if value.device.type == "meta":
        node.meta["assumed_causal"] = True
        return True
    s_q, s_k = value.shape[-2], value.shape[-1]
    attended = value if value.dtype == torch.bool else value == 0
    cols = torch.arange(s_k)
    for i in range(0, s_q, 1024):
        rows = torch.arange(i, min(i + 1024, s_q)).unsqueeze(-1)
        if not bool((attended[..., i:i + 1024, :] == (cols <= rows)).all()):
            return False
    return True


def attention_lse(q: torch.Tensor, k: torch.Tensor, scale: float | None,
                  block: int = 1024) -> torch.Tensor:
    """Each query row's causal log-sum-exp of its scaled scores, [batch, heads, seq] fp32:
    the second output of the CPU flash attention, which its backward reads. The kernel
    keeps every row's running max m and sum l, and m + log l is this value; it is computed
    here on the host arrays, in query blocks so that 10,240 tokens do not need the whole
    [seq, seq] score matrix at once."""
    s, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf, kf = q.float(), k.float()
    out = []
    for i in range(0, s, block):
        scores = (qf[..., i:i + block, :] @ kf.transpose(-1, -2)) * scale
        rows = torch.arange(i, min(i + block, s)).unsqueeze(-1)
        scores = scores.masked_fill(torch.arange(s) > rows, float("-inf"))
        out.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(out, dim=-1)


def closed_form_run(spec: WaferSpec, st: Stage) -> StageRun:
    """What `run` would measure on a perfect wafer, from the closed forms: cycles, SRAM
    peak and the CE busy share (chain position l runs l + 1 of the L steps:
    `mean_busy_cycles`)."""
    p: AttentionParams = st.params  # type: ignore[assignment]
    kp = plan(spec, p.groups, p.seq, p.head_dim, st.rect, dtype=st.dtype, **p.layout())
    cycles = cost(spec, p.groups, p.seq, p.head_dim, st.rect, dtype=st.dtype, **p.layout())
    busy = mean_busy_cycles(spec, kp) / cycles if cycles else 0.0
    return StageRun(cycles, int(kp.sram()["peak"]), busy)


def run_stage(ctx: ExecContext, st: Stage, q: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor, scale: float | None) -> tuple[torch.Tensor | None, StageRun]:
    """Causal attention on the stage's rectangle (fold, K/V mode and split from the plan).

    Unless `SIMULATE_STAGES` is set, the values come from PyTorch's attention in fp32 with
    the kernel's storage rounding (they differ from the kernel's online softmax only in
    rounding order, within its tolerances), and the clocks from `cost` on a perfect wafer:
    the kernel tests prove cost() equal to `run`'s clocks for every layout. Simulating the
    kernel step by step took ~60 % of GenSLM-25M's fabric wall time at seq 1,024 and about
    a minute per layer at 10,240, for the same numbers. On a defective wafer the kernel
    runs timing-only on the fabric, which charges the detours of the stage's links; the
    values stay the same as on a perfect wafer."""
    layout = st.params.layout()  # type: ignore[attr-defined]
    shape = q.shape
    # SDPA takes any number of leading (batch) dims: [b, s, d] is one head per batch entry
    q, k, v = (x.reshape(-1, 1, *shape[-2:]) if x.dim() != 4 else x for x in (q, k, v))
    b, h, s, d = q.shape
    if SIMULATE_STAGES and not ctx.timing_only:
        fab = ctx.fabric(st)
        out = run(fab, to_np(q), to_np(k), to_np(v), dtype=st.dtype, causal=True,
                  scale=scale, **layout)
        return to_torch(out.to_numpy().reshape(shape), q.dtype), done(fab)
    if SIMULATE_STAGES or ctx.link_extra is not None:
        fab = Fabric(ctx.spec, st.rect[0], st.rect[1], timing_only=True,
                     link_extra=ctx.link_extra.get(st.name) if ctx.link_extra else None)
        z = np.broadcast_to(np.float32(0), (b, h, s, d))
        run(fab, z, z, z, dtype=st.dtype, causal=True, scale=scale, **layout)
        measured = done(fab)
    else:
        measured = closed_form_run(ctx.spec, st)
    if ctx.timing_only:
        return None, measured
    qs, ks, vs = (torch.from_numpy(to_storage(to_np(x), st.dtype).astype(np.float32))
                  for x in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                           scale=scale)
    return to_torch(to_storage(out.numpy(), st.dtype).reshape(shape), q.dtype), measured


def decompose_non_causal(g: Graph) -> int:
    """Rewrite each SDPA that is not causal, has no mask and no dropout (an encoder's
    self-attention, cross-attention) as the ops of its definition, which the GEMM, pointwise
    and softmax kernels run: ``softmax(q k^T * scale) v`` over [groups, seq, d] views. The
    flash kernel is causal by construction (each query block's K/V stream stops at its
    diagonal), and a host fallback sent every such attention off the wafer. The [groups,
    seq_q, seq_k] scores are then a tensor between stages, as in torch.compile's
    decomposed inference graphs; the SDPA node becomes the last view, so its users keep
    reading it. Returns the number of rewrites."""
    rewrites = 0
    for node in list(g.calls()):
        if node.short != "scaled_dot_product_attention" or node.kwargs.get("enable_gqa"):
            continue
        mask, is_causal, dropout = _attention_args(node)
        if is_causal or mask is not None or dropout or not float_out(node):
            continue
        q, k, v = node.args[:3]
        shapes = [shape_of(g, x) for x in (q, k, v)]
        if any(len(sh) < 3 for sh in shapes) or shapes[0][:-2] != shapes[1][:-2] \
                or shapes[1][:-1] != shapes[2][:-1] or shapes[0][-1] != shapes[1][-1]:
            continue
        *lead, s_q, d = shapes[0]
        s_k, d_v = shapes[1][-2], shapes[2][-1]
        groups = math.prod(lead)
        scale = node.kwargs.get("scale")
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        aten = torch.ops.aten
        steps: list[tuple[Any, ...]] = [
            ("q3", aten.reshape.default, (q, [groups, s_q, d])),
            ("k3", aten.reshape.default, (k, [groups, s_k, d])),
            ("v3", aten.reshape.default, (v, [groups, s_k, d_v])),
            ("kt", aten.transpose.int, ("k3", 1, 2)),
        ]
        dtype = getattr(torch, g.nodes[q.name].meta["dtype"]) if isinstance(q, Ref) else None
        if dtype in (torch.float16, torch.bfloat16):
            # scores and softmax in fp32, as SDPA computes them (and a flash kernel keeps
            # them in its accumulators); 16-bit scores between the stages lose whole units
            # of large logits, which flips near-one-hot rows (fuzz seeds 206504, 207203).
            # The cost: q k^T priced as an fp32 GEMM, an over-estimate of the hardware's
            # fp16 x fp16 -> fp32 FMAC (fmachs) path, which the IR cannot express.
            steps += [("q3f", aten._to_copy.default, ("q3",), {"dtype": torch.float32}),
                      ("ktf", aten._to_copy.default, ("kt",), {"dtype": torch.float32}),
                      ("scores", aten.bmm.default, ("q3f", "ktf")),
                      ("scaled", aten.mul.Tensor, ("scores", scale)),
                      ("probs32", aten._softmax.default, ("scaled", -1, False)),
                      ("probs", aten._to_copy.default, ("probs32",), {"dtype": dtype})]
        else:
            steps += [("scores", aten.bmm.default, ("q3", "kt")),
                      ("scaled", aten.mul.Tensor, ("scores", scale)),
                      ("probs", aten._softmax.default, ("scaled", -1, False))]
        steps.append(("out3", aten.bmm.default, ("probs", "v3")))
        made = _insert_before(g, node, steps)
        node.target, node.fn = "aten.reshape.default", aten.reshape.default
        node.args, node.kwargs = (Ref(made["out3"]), list(node.meta["shape"])), {}
        rewrites += 1
    return rewrites


def _insert_before(g: Graph, at: Node, steps: list[tuple[Any, ...]]) -> dict[str, str]:
    """Insert ``steps`` (local name, ATen op, args naming earlier steps or graph refs, and
    optionally keyword arguments) before ``at`` in the graph's order, with their
    shape/dtype meta from running the ops on meta tensors and ``at``'s source line.
    Returns local name -> node name."""
    names: dict[str, str] = {}
    metas: dict[str, torch.Tensor] = {}

    def meta_of(x: Any) -> Any:
        if isinstance(x, Ref):
            m = g.nodes[x.name].meta
            return torch.empty(m["shape"], dtype=getattr(torch, m["dtype"]), device="meta")
        return metas[x] if isinstance(x, str) and x in metas else x

    new: list[Node] = []
    for local, fn, args, *rest in steps:
        kwargs = rest[0] if rest else {}
        name = f"{at.name}_{local}"
        while name in g.nodes:
            name += "_"
        value = fn(*(meta_of(a) for a in args), **kwargs)
        metas[local], names[local] = value, name
        refs = tuple(Ref(names[a]) if isinstance(a, str) and a in names else a for a in args)
        meta = tensor_meta(value)
        meta.update({k: at.meta[k] for k in ("source", "code", "module") if k in at.meta})
        new.append(Node(name, "call", target=str(fn), args=refs, kwargs=dict(kwargs),
                        meta=meta, fn=fn))
    order = list(g.nodes.values())
    i = order.index(at)
    g.nodes = {n.name: n for n in order[:i] + new + order[i:]}
    return names


class Attention(KernelFamily):
    """Causal SDPA (and the CPU flash attention of training graphs) as flash attention:
    query blocks over rows, each group's chain of key blocks snaked over ``fold`` columns,
    K/V shifted along it or multicast down it to ``split`` sub-bands."""

    kind = "attention"
    targets = frozenset({"scaled_dot_product_attention", FLASH_CPU})

    def rejects(self, node: Node, g: Graph) -> str | None:
        if not float_out(node) or not causal(node, g):
            return "attention with a non-causal mask or dropout (the kernel is causal, no dropout)"
        shapes = [shape_of(g, a) for a in node.args[:3]]
        if len(shapes[0]) < 3 or any(s != shapes[0] for s in shapes) \
                or node.kwargs.get("enable_gqa"):
            return ("attention whose q, k and v differ in shape or lack a batch dim (the "
                    "kernel runs self-attention: [..., seq, head_dim] each)")
        return None

    def match(self, g: Graph) -> int:
        return decompose_non_causal(g)

    def weight_bytes(self, g: Graph, nodes: list[Node], dtype: str) -> int:
        # its only constant is the causal mask, which the kernel builds from positions
        # instead of storing (a [seq, seq] table: 419 MB per layer at 10,240 tokens)
        return 0

    def group(self, g: Graph) -> int:
        """Each attention is a stage of its own (no grouping). After lowering, an SDPA
        whose folded mask `causal` found a lower triangle is rewritten to ``is_causal=True``
        without the mask (the same op: the host computes it so too if the stage does not
        fit), and a mask nothing else reads is dropped from the graph: the kernel masks by
        position, and a real-weight model kept a [batch, 1, seq, seq] fp32 table for the
        program's life (0.42 GB per sample at 10,240 tokens). Training graphs' CPU flash
        attention keeps its mask: the backward graph is told it is causal through it."""
        masks = set()
        for node in g.calls():
            if node.meta.get("kind") != self.kind or node.short == FLASH_CPU:
                continue
            mask = _attention_args(node)[0]
            if not isinstance(mask, Ref) or not g.nodes[mask.name].meta.get("causal"):
                continue
            scale = node.kwargs.get("scale")
            node.args = tuple(node.args[:3])
            node.kwargs = {"is_causal": True, **({"scale": scale} if scale is not None else {})}
            masks.add(mask.name)
        read = {name for name, us in g.users().items() if us}
        for name in masks - read:
            del g.nodes[name]
            g.constants.pop(name, None)
        return 0

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[AttentionParams, float]:
        node = nodes[0]
        *lead, s, d = shape_of(g, node.args[0])
        # [batch, heads, seq, d], or any other leading dims (a 3-D [batch, seq, d]: one
        # head per batch entry); the kernel sees batch x heads groups either way
        b = lead[0]
        h = math.prod(lead[1:])
        return (AttentionParams(b * h, s, d, b, h, bool(node.meta.get("assumed_causal"))),
                flops(b * h, s, d))

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[AttentionParams, Sizing]:
        """The fastest layout inside the placed rectangle or, at planning time, inside
        about ``area`` PEs of full-height columns (the whole wafer when nothing fits)."""
        p: AttentionParams = st.params  # type: ignore[assignment]
        dt = st.dtype
        if bounds is not None:
            limits = bounds
        else:
            rows = max(1, min(spec.rows, side_cap))
            limits = (rows, max(1, min(spec.cols, side_cap, int(max(area, 1) // rows))))
        try:
            lay = choose_layout(spec, p.groups, p.seq, p.head_dim, max_rows=limits[0],
                                max_cols=limits[1], dtype=dt)
        except KernelError:
            if bounds is not None:
                raise
            lay = choose_layout(spec, p.groups, p.seq, p.head_dim,
                                max_rows=min(spec.rows, side_cap),
                                max_cols=min(spec.cols, side_cap), dtype=dt)
        sized = dataclasses.replace(p, fold=lay.fold, kv=lay.kv, split=lay.split)
        rect = (lay.rows, lay.cols)
        sram = plan(spec, p.groups, p.seq, p.head_dim, rect, dtype=dt,
                    **sized.layout()).sram()["peak"]
        algorithm = (f"flash, K/V shifted along a snake (fold {lay.fold})" if lay.kv == "shift"
                     else f"flash, K/V multicast down a snake (fold {lay.fold}, split "
                          f"{lay.split})")
        return sized, Sizing(rect, lay.cycles, sram, algorithm)

    def notes(self, st: Stage) -> list[str]:
        if st.params.assumed_causal:  # type: ignore[attr-defined]
            return ["attention masks built on the meta device are assumed causal"]
        return []

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        q, k, v = ctx.value(node.args[:3])
        scale = node.kwargs.get("scale")
        out, measured = run_stage(ctx, st, q, k, v, scale)
        if out is not None:
            # the CPU flash attention returns (output, row log-sum-exp)
            ctx.env[node.name] = (out, attention_lse(q, k, scale)) \
                if node.short == FLASH_CPU else out
        return measured


FAMILY = Attention()
