"""Causal multi-head attention for long sequences: K/V blocks stream along a snake of PEs.

Mapping (a chain of query blocks per group of heads, folded over ``fold`` columns):

* The R x C rectangle is cut into ``Cg = C / fold`` *bands* of ``fold`` adjacent PE columns.
  ``G = batch * heads`` attention groups are cut over the bands (``g = ceil(G/Cg)`` per PE)
  and the sequence into a chain of ``L = R * fold`` query blocks of ``tq = ceil(S/L)``
  tokens. Chain position b of a band sits in the band's column ``b // R``, on row ``b % R``
  in even columns and ``R - 1 - b % R`` in odd ones: a snake down the first column, up the
  second, ..., so consecutive positions are always neighbours (one hop south or north, or
  east at a turn). ``fold = 1`` is one column per band and block r on row r.
* Why fold: unfolded, the kernel can use at most ``S x G`` PEs however wide its rectangle
  is (994 x 8 for GenSLM's 8 heads at batch 1). Folding spends columns on the sequence
  instead: the same algorithm on smaller blocks, on ``fold`` times as many PEs.
* The PE at chain position b keeps its queries Q[b] ([g, tq, D]), an fp32 output
  accumulator O[b], and the online-softmax running max m[b] and sum l[b] ([g, tq]).
* Keys and values live with their query block, packed as one [g, 2, D, tq] block (K and V
  transposed, so one shift moves both). Step 0 uses the PE's own block (the diagonal,
  masked causally). Before each step every PE passes its K/V block one hop on along the
  snake (`_snake_shift`), so at step s position b holds block b - s: exactly the blocks a
  causal query block needs, and no block ever has to wrap around. Positions b < s are done.
  The hops of one step use disjoint links and ramps, so they all run at once.
* Double buffering: the block for step s+1 arrives while step s computes; a PE lets its
  predecessor send only once its spare buffer is free (its step s-1 is done), so at most
  two K/V blocks sit in a PE at once.
* Per step and PE (flash-attention): S = Q K^T (fp32 accumulate), m' = max(m, rowmax S),
  P = exp(scale (S - m')), l = exp(scale (m - m')) l + rowsum P,
  O = exp(scale (m - m')) O + P V. At the end O / l. No PE ever holds more than a
  [g, tq, tq] block of scores, so 10,240 tokens fit.

Rotary embeddings (GPT-NeoX, `rotary`) are applied to Q and K in place before step 0.

Cost: every position that is still active runs the same step, so the chain's last one
follows a scalar max-plus recurrence (`cost`) whose increment settles to max(W, X): steps
that compute longer than a K/V shift add W each, otherwise the stream paces the chain.
`choose_layout` searches rows and folds for the fastest layout that fits.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from waferscale.errors import KernelError, KernelFitError, KernelShapeError, ShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import transfer_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import rotary
from waferscale.kernels.elementwise import WORK, check_dtype, local_pass, op_cycles

KERNEL = "attention"

#: Rotary's two in-place passes over the rotated features (op, memory reads per element):
#: x*cos, then += rotate_half(x)*sin. `_apply_rotary` runs them and `cost` counts them.
_ROTARY_PASSES = (("mul", 2), ("fmac", 3))


# ----------------------------------------------------------------------------- plan --------
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

    @property
    def group_cols(self) -> int:
        """Bands of ``fold`` adjacent columns: each holds whole chains of its groups."""
        return self.cols // self.fold

    @property
    def chain(self) -> int:
        """Query blocks per band, the positions the K/V blocks stream along: R * fold."""
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
    def p_dtype(self) -> str:
        """Probabilities are stored in the input dtype before P V (as flash-attention does)."""
        return self.dtype

    def sram(self) -> dict[str, int]:
        """Bytes per PE of each buffer, and the peak over the kernel's three phases."""
        parts = _sram(self.g, self.tq, self.head_dim, self.dtype, self.rot, self.chain)
        return {k: int(v) for k, v in parts.items()}


def _sram(g: Any, tq: Any, head_dim: int, dtype: str, rot: int, chain: Any) -> dict[str, Any]:
    """`Plan.sram` on scalars or NumPy arrays of (g, tq, chain): `choose_layout` checks all
    its candidates in one pass with it."""
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
    }
    rotary_phase = parts["q"] + parts["kv_block"] + parts["rope_tables"]
    buffers = 1 + (np.asarray(chain) > 1)     # a chain of one block never receives one
    loop = (parts["q"] + buffers * parts["kv_block"] + parts["o_fp32"] + parts["m_l"]
            + parts["scores_fp32"] + parts["p"])
    final = parts["q"] + parts["o_fp32"] + parts["m_l"] // 2 + parts["out"]
    parts["peak"] = np.maximum(np.maximum(rotary_phase, loop), final)
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
         fold: int = 1) -> Plan:
    """Validate sizes against the (folded) rectangle and the PE's SRAM; raise what would fit.

    The SRAM need is a few multiplications; the message that says what would fit is built
    only when it does not, since the placer tries many layouts that do not fit.
    """
    spec = get_spec(spec)
    rows, cols = rect_shape
    rot = _check_sizes(dtype, rotary_pct, groups=groups, seq=seq, head_dim=head_dim,
                       rows=rows, cols=cols, fold=fold)
    if cols % fold:
        raise KernelShapeError(f"{KERNEL}: {cols} PE columns cannot be cut into bands of "
                               f"fold {fold} columns; use a multiple of {fold}")
    if rows * fold > seq:
        limit = (f"use at most {seq // fold} PE rows" + (f" at fold {fold}" if fold > 1 else "")
                 if seq >= fold else f"use a fold of at most {seq}")
        raise KernelFitError(f"{KERNEL}: {seq} tokens cannot be cut into {rows * fold} query "
                             f"blocks; {limit}")
    if cols // fold > groups:
        bands = f" ({cols // fold} bands of {fold})" if fold > 1 else ""
        raise KernelFitError(f"{KERNEL}: {groups} (batch x head) groups cannot spread over "
                             f"{cols} PE columns{bands}; use at most {groups * fold} columns")
    p = Plan(int(groups), int(seq), int(head_dim), int(rows), int(cols), dtype, rot, int(fold))
    need = p.sram()["peak"]
    if need > spec.sram_bytes:
        layout = f"{rows}x{cols} PEs" + (f" at fold {fold}" if fold > 1 else "")
        raise KernelFitError(
            f"{KERNEL}: {groups} groups x {seq} tokens x head_dim {head_dim} ({dtype}) on "
            f"{layout} needs {need} B per PE (query block {p.tq}: {_breakdown(p)}) but a PE "
            f"has {spec.sram_bytes} B; {_what_fits(spec, p)}")
    return p


def _breakdown(p: Plan) -> str:
    parts = p.sram()
    keys = ("q", "kv_block", "o_fp32", "scores_fp32", "p", "m_l")
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
        return bool(_sram(g, tq, p.head_dim, p.dtype, p.rot, 2)["peak"] <= spec.sram_bytes)

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
    position b in band j; ``block``: each PE's position; ``hop``: the index in `_HOPS` of
    the way its K/V block moves next (-1 at the end of the chain).
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


# -------------------------------------------------------------------------- per step -------
def _step_passes(g: Any, tq: Any, head_dim: int, dtype: str, diagonal: bool
                 ) -> list[tuple[Any, str, str, dict[str, Any]]]:
    """One streaming step's CE passes in order: (elements per PE, dtype, op, op options).

    `_run_step` executes exactly this list and `cost` adds it up, so they cannot drift
    apart. 16-bit inputs use the mixed fp32-accumulate datapath; P is stored in the input
    dtype before P V (`Plan.p_dtype`).
    """
    acc = WORK if dtype != "fp32" else None
    scores, rows, blk = g * tq * tq, g * tq, g * tq * head_dim
    return [
        (scores * head_dim, dtype, "fmac", {"reads": 2, "accumulate": acc}),   # S = Q K^T
        *([(scores, WORK, "select", {})] if diagonal else []),               # causal mask
        (scores, WORK, "max", {"writes": 0}),                                # rowmax S
        (rows, WORK, "max", {"reads": 2}),                                   # m' = max(m, .)
        (rows, WORK, "exp", {"reads": 2}),                                   # alpha
        (scores, WORK, "exp", {}),                                           # P
        (scores, dtype, "add", {"writes": 0, "accumulate": acc}),            # rowsum P
        (rows, WORK, "fmac", {"reads": 2}),                                  # l = alpha l + .
        (blk, WORK, "mul", {}),                                              # alpha O
        (scores * head_dim, dtype, "fmac", {"reads": 2, "accumulate": acc}), # O += P V
    ]


def _run_step(fabric: Fabric, rect: Rect, p: Plan, diagonal: bool, ready: np.ndarray,
              live: np.ndarray | None) -> np.ndarray:
    """Charge one step's passes to the CEs of ``rect`` where ``live`` (None: everywhere).

    PEs that are not live get zero elements, which `Fabric.execute` leaves untouched.
    """
    end = ready
    for n, dt, op, kw in _step_passes(p.g, p.tq, p.head_dim, p.dtype, diagonal):
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


def mean_busy_cycles(spec: WaferSpec | str | None, p: Plan) -> float:
    """CE cycles a PE of the layout computes, on average over the chain: position l runs
    l + 1 of the L steps (causal: later query blocks see more keys), so the mean is
    ``T0 + W0 + F + W (L - 1) / 2``; divided by `cost` it is the stage's busy share."""
    spec = get_spec(spec)
    t0 = _rotary_cycles(spec, p.g * p.tq * p.rot, p.dtype)
    w0 = _step_cycles(spec, p.g, p.tq, p.head_dim, p.dtype, True)
    w = _step_cycles(spec, p.g, p.tq, p.head_dim, p.dtype, False)
    f = _final_cycles(spec, p.g, p.tq, p.head_dim)
    return float(t0 + w0 + f + w * (p.chain - 1) / 2)


def _hop_cycles(spec: WaferSpec, wavelets: Any) -> Any:
    """One K/V block over one hop; no link carries two blocks of a step."""
    return np.vectorize(lambda w: transfer_cycles(spec, w, 1), otypes=[float])(wavelets)


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
    t0 = _rotary_cycles(spec, g * tq * rot, dtype)
    w0 = _step_cycles(spec, g, tq, head_dim, dtype, True)
    w = _step_cycles(spec, g, tq, head_dim, dtype, False)
    x = _hop_cycles(spec, 2 * g * tq * head_dim)
    return last_step_end(t0, w0, w, x, chain) + _final_cycles(spec, g, tq, head_dim)


def cost(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", rotary_pct: float = 0.0,
         fold: int = 1) -> float:
    """Cycles of `run` in closed form.

    The chain's last position runs every one of the ``n = R * fold`` steps; with W the CE
    cycles of a step (W0 for the masked diagonal one), X those of a K/V shift of
    ``2 g tq D`` wavelets over one hop, T0 the rotary passes and F the final O / l:

        cost = T0 + W0 + F                                  (n = 1)
             = T0 + max(W0, X) + (n-2) max(W, X) + W + F     (n >= 2)

    (`last_step_end` derives it from the step recurrence). Cached: the placer prices the
    same layouts many times.
    """
    return _cost(get_spec(spec), groups, seq, head_dim, tuple(rect_shape), dtype,
                 rotary_pct, fold)


@functools.lru_cache(maxsize=1 << 16)
def _cost(spec: WaferSpec, groups: int, seq: int, head_dim: int, rect_shape: tuple[int, int],
          dtype: str, rotary_pct: float, fold: int) -> float:
    p = plan(spec, groups, seq, head_dim, rect_shape, dtype=dtype, rotary_pct=rotary_pct,
             fold=fold)
    return float(_cycles(spec, p.g, p.tq, p.chain, p.head_dim, p.dtype, p.rot))


def choose_layout(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int, *,
                  max_rows: int, max_cols: int, dtype: str = "fp32", rotary_pct: float = 0.0
                  ) -> tuple[int, int, int, float]:
    """The fastest layout within ``max_rows x max_cols`` that fits: (rows, cols, fold, cycles).

    ``cycles == cost(spec, groups, seq, head_dim, (rows, cols), fold=fold, ...)``. The cost
    depends on the layout only through the groups per PE ``g`` (set by the number of bands),
    the block ``tq`` and the chain length ``R * fold``, and grows with each of them. So for
    every band count that gives a distinct ``g``, every block size that can fit (``4 g tq^2``
    bytes of scores alone bound it) and every fold the columns allow, only the fewest rows
    that reach that block, ``ceil(ceil(S / tq) / fold)``, can be fastest (this dominates any
    fixed row grid such as powers of two); per (bands, block) the fold with the shortest
    chain is kept and those few hundred layouts are priced in one vectorised pass. Ties go
    to fewer PEs, then to less folding. When nothing fits, raises the kernel's
    `KernelFitError` for the longest chain on the most bands. Cached: the placer asks again.
    """
    return _choose_layout(get_spec(spec), groups, seq, head_dim, max_rows, max_cols, dtype,
                          rotary_pct)


@functools.lru_cache(maxsize=4096)
def _choose_layout(spec: WaferSpec, groups: int, seq: int, head_dim: int, max_rows: int,
                   max_cols: int, dtype: str, rotary_pct: float
                   ) -> tuple[int, int, int, float]:
    rot = _check_sizes(dtype, rotary_pct, groups=groups, seq=seq, head_dim=head_dim,
                       max_rows=max_rows, max_cols=max_cols)
    row_cap, col_cap = int(min(max_rows, spec.rows, seq)), int(min(max_cols, spec.cols))
    bands = sorted({-(-groups // g) for g in range(1, groups + 1)} & set(range(1, col_cap + 1)))
    found = []                                      # (bands, rows, fold) per band count
    for band in bands:
        g = -(-groups // band)
        tq = np.arange(1, min(seq, math.isqrt(spec.sram_bytes // (4 * g))) + 1)[:, None]
        fold = np.arange(1, min(col_cap // band, seq) + 1)[None, :]
        blocks = -(-seq // tq)
        rows = -(-blocks // fold)                   # the fewest rows that reach block tq
        chain = np.where((rows <= row_cap) & (rows * fold <= seq), rows * fold, seq + 1)
        pick = np.arange(tq.size), chain.argmin(axis=1)  # shortest chain, least folding
        ok = chain[pick] <= seq
        found.append((np.full(int(ok.sum()), band), rows[pick][ok], pick[1][ok] + 1))
    band, r, f = (np.concatenate(a) for a in zip(*found, strict=True))
    chain = r * f
    g, tq = -(-groups // band), -(-seq // chain)
    fits = _sram(g, tq, head_dim, dtype, rot, chain)["peak"] <= spec.sram_bytes
    if not fits.any():
        most = bands[-1]
        fold = max(1, min(col_cap // most, seq // row_cap))
        plan(spec, groups, seq, head_dim, (row_cap, most * fold), dtype=dtype,
             rotary_pct=rotary_pct, fold=fold)      # raises: not even this fits
    band, r, f, chain, g, tq = (a[fits] for a in (band, r, f, chain, g, tq))
    cycles = _cycles(spec, g, tq, chain, head_dim, dtype, rot)
    i = int(np.lexsort((f, chain * band, cycles))[0])
    return int(r[i]), int(band[i] * f[i]), int(f[i]), float(cycles[i])


def flops(groups: int, seq: int, head_dim: int) -> float:
    """Useful FLOPs of causal attention (QK^T and PV over the lower triangle, with diagonal)."""
    pairs = seq * (seq + 1) / 2
    return 4.0 * groups * pairs * head_dim


# ------------------------------------------------------------------------------ run --------
class FoldedOutput(MeshTensor):
    """`run`'s output when ``fold > 1``: [groups, seq, D] in the snake layout.

    No (row_map, col_map) blocking puts block b of band j on the PE at (snake row, band
    column b // R), so the tiles are kept as the padded physical tensor [g C, tq R, D],
    blocked like the unfolded output (its SRAM, clocks and tile sizes are exact), and
    `to_numpy` reads the blocks back in sequence order: the [groups, seq, D] value.
    """

    def __init__(self, fabric: Fabric, rect: Rect, p: Plan, tiles: np.ndarray | None,
                 ready: np.ndarray, name: str) -> None:
        super().__init__(fabric, rect, (p.g * p.cols, p.tq * p.rows, p.head_dim), p.dtype, 1,
                         0, tiles, ready, name)
        self.plan = p

    def to_numpy(self) -> np.ndarray:
        """The [groups, seq, D] value (fp32 for 16-bit dtypes, as `MeshTensor.to_numpy`)."""
        if self.tiles is None:
            raise ShapeError(f"tensor {self.name!r} has no values: the fabric runs in "
                             f"timing-only mode")
        p = self.plan
        blocks = self.tiles[_snake(p.rows, p.cols, p.fold).at(0)].astype(np.float32)
        value = blocks.transpose(1, 2, 0, 3, 4).reshape(p.group_cols * p.g, p.chain * p.tq,
                                                        p.head_dim)
        return np.ascontiguousarray(value[:p.groups, :p.seq])


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
        fold: int = 1) -> MeshTensor:
    """Causal attention of q, k, v ([heads, seq, D] or [batch, heads, seq, D]) on ``rect``.

    Inputs are resident at time 0 (q, k, v as a projection kernel would leave them). In
    timing-only mode only their shapes are used: pass ``np.broadcast_to(0.0, shape)``.
    ``fold``: each band of groups takes ``fold`` adjacent columns and its chain of query
    blocks snakes through them (module docstring); ``rect`` needs a multiple of ``fold``
    columns. Returns the output (groups = batch x heads) on ``rect``: with fold 1 a
    [groups, seq, D] tensor blocked like the queries (sequence over rows, groups over
    columns); folded, a `FoldedOutput` whose `to_numpy` is [groups, seq, D].
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
             rotary_pct=rotary_pct, fold=fold)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
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


def _real(p: Plan, snake: _Snake) -> np.ndarray:
    """[R, C, g, tq] mask of real (not padded) tokens and groups, to zero the padding."""
    token = np.arange(p.chain * p.tq).reshape(p.chain, 1, 1, p.tq) < p.seq
    group = np.arange(p.group_cols * p.g).reshape(1, p.group_cols, p.g, 1) < p.groups
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
                 diagonal: bool, scale: float, p_dtype: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One online-softmax step on the active positions' tiles: the new (o, m, l)."""
    qf = q.astype(np.float32)
    kt = kv[..., 0, :, :].astype(np.float32)        # [n, Cg, g, D, tq]
    vt = kv[..., 1, :, :].astype(np.float32)
    s = np.matmul(qf, kt)                           # [n, Cg, g, tq, tq]
    if diagonal:
        tq = s.shape[-1]
        s = np.where(np.triu(np.ones((tq, tq), dtype=bool), 1), np.float32(-np.inf), s)
    m_new = np.maximum(m, s.max(axis=-1))
    alpha = np.exp(np.float32(scale) * (m - m_new))
    pr = to_storage(np.exp(np.float32(scale) * (s - m_new[..., None])), p_dtype
                    ).astype(np.float32)
    return (o * alpha[..., None] + np.matmul(pr, np.swapaxes(vt, -1, -2)), m_new,
            alpha * l_ + pr.sum(axis=-1))
