"""Causal multi-head attention for long sequences: K/V blocks stream down the PE columns.

Mapping (query blocks over PE rows, heads over PE columns):

* ``G = batch * heads`` attention groups are cut over the C columns (``g = ceil(G/C)`` per
  PE) and the sequence into R query blocks of ``tq = ceil(S/R)`` tokens, one per PE row.
  PE (r, c) keeps its queries Q[r] ([g, tq, D]), an fp32 output accumulator O[r], and the
  online-softmax running max m[r] and sum l[r] ([g, tq]).
* Keys and values live with their query block, packed as one [g, 2, D, tq] block (K and V
  transposed, so one shift moves both). Step 0 uses the PE's own block (the diagonal,
  masked causally). Before each step every PE passes its K/V block one PE south
  (`movement.shift`), so at step s PE row r holds block r - s: exactly the blocks a causal
  query block needs, and no block ever has to wrap around the mesh. Rows r < s are done.
* Double buffering: the block for step s+1 arrives while step s computes; a PE lets its
  northern neighbour send only once its spare buffer is free (its step s-1 is done), so at
  most two K/V blocks sit in a PE at once.
* Per step and PE (flash-attention): S = Q K^T (fp32 accumulate), m' = max(m, rowmax S),
  P = exp(scale (S - m')), l = exp(scale (m - m')) l + rowsum P,
  O = exp(scale (m - m')) O + P V. At the end O / l. No PE ever holds more than a
  [g, tq, tq] block of scores, so 10,240 tokens fit.

Rotary embeddings (GPT-NeoX, `rotary`) are applied to Q and K in place before step 0.

Cost: every row that is still active runs the same step, so the slowest (last) row
follows a scalar max-plus recurrence (`cost`): compute-bound steps add ``W`` each, and
when a K/V shift ``X`` is slower than a step, the stream paces the rows instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import shift_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import rotary
from waferscale.kernels.elementwise import (
    WORK,
    check_dtype,
    local_pass,
    op_cycles,
    pad_mask,
)

KERNEL = "attention"


# ----------------------------------------------------------------------------- plan --------
@dataclass(frozen=True)
class Plan:
    """Sizes of one attention run on an R x C rectangle, and its per-PE SRAM budget."""

    groups: int
    seq: int
    head_dim: int
    rows: int
    cols: int
    dtype: str
    rot: int

    @property
    def g(self) -> int:
        """Attention groups (batch x head) per PE column."""
        return -(-self.groups // self.cols)

    @property
    def tq(self) -> int:
        """Tokens per query (and key/value) block: one block per PE row."""
        return -(-self.seq // self.rows)

    @property
    def acc(self) -> str | None:
        """Accumulator of the two matmuls: 16-bit inputs use the mixed fp32 datapath."""
        return WORK if self.dtype != "fp32" else None

    @property
    def p_dtype(self) -> str:
        """Probabilities are stored in the input dtype before P V (as flash-attention does)."""
        return self.dtype

    def sram(self) -> dict[str, int]:
        """Bytes per PE of each buffer, and the peak over the kernel's three phases."""
        eb = BYTES[self.dtype]
        blk = self.g * self.tq * self.head_dim
        scores = self.g * self.tq * self.tq
        parts = {
            "q": blk * eb,
            "kv_block": 2 * blk * eb,
            "o_fp32": blk * 4,
            "m_l": 2 * self.g * self.tq * 4,
            "scores_fp32": scores * 4,
            "p": scores * eb if self.dtype != "fp32" else 0,
            "rope_tables": 2 * self.tq * self.rot * eb,
            "out": blk * eb,
        }
        rotary_phase = parts["q"] + parts["kv_block"] + parts["rope_tables"]
        buffers = 2 if self.rows > 1 else 1      # one row never receives a block
        loop = (parts["q"] + buffers * parts["kv_block"] + parts["o_fp32"] + parts["m_l"]
                + parts["scores_fp32"] + parts["p"])
        final = parts["q"] + parts["o_fp32"] + parts["m_l"] // 2 + parts["out"]
        parts["peak"] = max(rotary_phase, loop, final)
        return parts


def plan(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", rotary_pct: float = 0.0
         ) -> Plan:
    """Validate sizes against the rectangle and the PE's SRAM; raise what would fit."""
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    rows, cols = rect_shape
    for name, value in (("groups", groups), ("seq", seq), ("head_dim", head_dim),
                        ("rows", rows), ("cols", cols)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} must be a positive integer, got {value!r}")
    if rows > seq:
        raise KernelFitError(f"{KERNEL}: {seq} tokens cannot be cut into {rows} query blocks; "
                             f"use at most {seq} PE rows")
    if cols > groups:
        raise KernelFitError(f"{KERNEL}: {groups} (batch x head) groups cannot spread over "
                             f"{cols} PE columns; use at most {groups} columns")
    rot = rotary.rotary_dims(head_dim, rotary_pct)
    p = Plan(int(groups), int(seq), int(head_dim), int(rows), int(cols), dtype, rot)
    need = p.sram()["peak"]
    if need > spec.sram_bytes:
        raise KernelFitError(
            f"{KERNEL}: {groups} groups x {seq} tokens x head_dim {head_dim} ({dtype}) on "
            f"{rows}x{cols} PEs needs {need} B per PE (query block {p.tq}: "
            f"{_breakdown(p)}) but a PE has {spec.sram_bytes} B; {_what_fits(spec, p)}")
    return p


def _breakdown(p: Plan) -> str:
    parts = p.sram()
    keys = ("q", "kv_block", "o_fp32", "scores_fp32", "p", "m_l")
    return ", ".join(f"{k} {parts[k]}" + (" x2" if k == "kv_block" else "") for k in keys
                     if parts[k])


def _what_fits(spec: WaferSpec, p: Plan) -> str:
    """The largest query block (hence fewest rows) that fits at this many columns."""
    best = 0
    for tq in range(1, p.tq + 1):
        trial = Plan(p.groups, tq, p.head_dim, 1, p.cols, p.dtype, p.rot)
        if trial.sram()["peak"] <= spec.sram_bytes:
            best = tq
        else:
            break
    if best:
        rows = -(-p.seq // best)
        fits = rows <= spec.rows
        return (f"query blocks of at most {best} tokens fit, i.e. at least {rows} PE rows"
                + ("" if fits else f" (more than the wafer's {spec.rows}: add columns)"))
    cols = p.cols
    while cols < p.groups:
        cols += 1
        trial = Plan(p.groups, 1, p.head_dim, 1, cols, p.dtype, p.rot)
        if trial.sram()["peak"] <= spec.sram_bytes:
            return f"even 1-token blocks do not fit {p.g} groups per PE; use >= {cols} columns"
    return "even one group and one token per PE do not fit; use a smaller head_dim"


# -------------------------------------------------------------------------- per step -------
def step_cycles(spec: WaferSpec, p: Plan, diagonal: bool) -> float:
    """CE cycles of one streaming step on one PE (the diagonal step also applies the mask)."""
    g, tq, d = p.g, p.tq, p.head_dim
    scores, rows, blk = g * tq * tq, g * tq, g * tq * d
    total = op_cycles(spec, scores * d, p.dtype, "fmac", reads=2, accumulate=p.acc)
    if diagonal:
        total += op_cycles(spec, scores, WORK, "select")
    total += op_cycles(spec, scores, WORK, "max", writes=0)
    total += op_cycles(spec, rows, WORK, "max", reads=2)
    total += op_cycles(spec, rows, WORK, "exp", reads=2)
    total += op_cycles(spec, scores, WORK, "exp")
    total += op_cycles(spec, scores, p.p_dtype, "add", writes=0, accumulate=p.acc)
    total += op_cycles(spec, rows, WORK, "fmac", reads=2)
    total += op_cycles(spec, blk, WORK, "mul")
    total += op_cycles(spec, scores * d, p.p_dtype, "fmac", reads=2, accumulate=p.acc)
    return float(total)


def _run_step(fabric: Fabric, rect: Rect, p: Plan, diagonal: bool, ready: np.ndarray
              ) -> np.ndarray:
    """Charge one step's passes (the order `step_cycles` adds them) to the CEs of ``rect``."""
    g, tq, d = p.g, p.tq, p.head_dim
    scores, rows, blk = g * tq * tq, g * tq, g * tq * d
    end = local_pass(fabric, rect, scores * d, p.dtype, "fmac", ready, reads=2,
                     accumulate=p.acc)
    if diagonal:
        end = local_pass(fabric, rect, scores, WORK, "select", end)
    end = local_pass(fabric, rect, scores, WORK, "max", end, writes=0)
    end = local_pass(fabric, rect, rows, WORK, "max", end, reads=2)
    end = local_pass(fabric, rect, rows, WORK, "exp", end, reads=2)
    end = local_pass(fabric, rect, scores, WORK, "exp", end)
    end = local_pass(fabric, rect, scores, p.p_dtype, "add", end, writes=0, accumulate=p.acc)
    end = local_pass(fabric, rect, rows, WORK, "fmac", end, reads=2)
    end = local_pass(fabric, rect, blk, WORK, "mul", end)
    return local_pass(fabric, rect, scores * d, p.p_dtype, "fmac", end, reads=2,
                      accumulate=p.acc)


def _final_cycles(spec: WaferSpec, p: Plan) -> float:
    rows, blk = p.g * p.tq, p.g * p.tq * p.head_dim
    return float(op_cycles(spec, rows, WORK, "reciprocal") + op_cycles(spec, blk, WORK, "mul"))


def _rotary_cycles(spec: WaferSpec, p: Plan) -> float:
    """Rotary on the Q block and on the K half of the K/V block, in place."""
    return 2 * rotary.pass_cycles(spec, p.g * p.tq * p.rot, p.dtype) if p.rot else 0.0


# ----------------------------------------------------------------------------- cost --------
def cost(spec: WaferSpec | str | None, groups: int, seq: int, head_dim: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", rotary_pct: float = 0.0
         ) -> float:
    """Cycles of `run` in closed form: a scalar max-plus recurrence over the R steps.

    ``A_s``: when step s's K/V block has arrived; ``E_s``: when step s is done (the last row,
    which runs every step). A shift of the [g, 2, D, tq] block takes ``X`` cycles and may
    start once the block is there and the receiver's spare buffer is free (``E_{s-2}``):

        E_0 = T0 + W0,  A_s = max(A_{s-1}, E_{s-2}) + X,  E_s = max(E_{s-1}, A_s) + W

    with T0 the rotary passes; when W >= X this is E_{R-1} = T0 + W0 + (R - 1) W.
    """
    spec = get_spec(spec)
    p = plan(spec, groups, seq, head_dim, rect_shape, dtype=dtype, rotary_pct=rotary_pct)
    t0 = _rotary_cycles(spec, p)
    w0, w = step_cycles(spec, p, True), step_cycles(spec, p, False)
    x = shift_cycles(spec, 2 * p.g * p.tq * p.head_dim, p.rows, 1)
    arrive, done_prev2, done = t0, 0.0, t0 + w0     # A_0, E_{-1} (buffer credit), E_0
    for _ in range(1, p.rows):
        arrive = max(arrive, done_prev2) + x
        done_prev2, done = done, max(done, arrive) + w
    return done + _final_cycles(spec, p)


def flops(groups: int, seq: int, head_dim: int) -> float:
    """Useful FLOPs of causal attention (QK^T and PV over the lower triangle, with diagonal)."""
    pairs = seq * (seq + 1) / 2
    return 4.0 * groups * pairs * head_dim


# ------------------------------------------------------------------------------ run --------
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


def run(fabric: Fabric, q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
        rect: Rect | None = None, dtype: str = "fp32", causal: bool = True,
        rotary_pct: float = 0.0, rotary_base: float = 10000.0, scale: float | None = None
        ) -> MeshTensor:
    """Causal attention of q, k, v ([heads, seq, D] or [batch, heads, seq, D]) on ``rect``.

    Inputs are resident at time 0 (q, k, v as a projection kernel would leave them). In
    timing-only mode only their shapes are used: pass ``np.broadcast_to(0.0, shape)``.
    Returns the output [groups, seq, D] (groups = batch x heads) on ``rect``, blocked like
    the queries: sequence over rows, groups over columns.
    """
    if not causal:
        raise KernelError(f"{KERNEL}: only causal (decoder) attention is implemented; the "
                          f"south-only K/V stream sees exactly the blocks at or before "
                          f"each query block")
    rect = rect or fabric.full
    q, k, v = (_as_groups(n, np.asarray(a)) for n, a in (("q", q), ("k", k), ("v", v)))
    if not q.shape == k.shape == v.shape:
        raise KernelShapeError(f"{KERNEL}: q {q.shape}, k {k.shape}, v {v.shape} must match")
    groups, seq, head_dim = q.shape
    p = plan(fabric.spec, groups, seq, head_dim, rect.shape, dtype=dtype,
             rotary_pct=rotary_pct)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    R, C, g, tq, d = p.rows, p.cols, p.g, p.tq, head_dim
    gp, sp = g * C, tq * R
    values = not fabric.timing_only

    # -- inputs: Q [G, S, D] and packed K^T/V^T [G, 2, D, S], padded to whole blocks
    if values:
        qh = _pad(q.astype(np.float32), (gp, sp, d))
        kv = np.stack([_pad(k.astype(np.float32), (gp, sp, d)),
                       _pad(v.astype(np.float32), (gp, sp, d))], axis=1).transpose(0, 1, 3, 2)
        Q = MeshTensor.from_numpy(fabric, qh, rect, 1, 0, dtype, name=fabric.fresh_name("q"))
        KV = MeshTensor.from_numpy(fabric, kv, rect, 3, 0, dtype, name=fabric.fresh_name("kv"))
    else:
        Q = MeshTensor.empty(fabric, (gp, sp, d), rect, 1, 0, dtype, fabric.fresh_name("q"))
        KV = MeshTensor.empty(fabric, (gp, 2, d, sp), rect, 3, 0, dtype,
                              fabric.fresh_name("kv"))
    if p.rot:
        _apply_rotary(Q, KV, p, rotary_base)

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
    cur = KV                          # the K/V block each active row holds now
    for s in range(R):
        sub = Rect(rect.row + s, rect.col, R - s, C)
        kv_now = _rows_from(cur, s - (cur.rect.row - rect.row))
        nxt = None
        if s < R - 1:                 # prefetch the next block while this step computes
            credit = kv_now.ready.copy()
            credit[:-1] = np.maximum(credit[:-1], done[s + 1:])
            sender = MeshTensor(fabric, sub, kv_now.shape, dtype, 3, 0, kv_now.tiles, credit,
                                name=kv_now.name, allocate=False)
            nxt = mv.shift(sender, "south", 1)
        ready = np.maximum(kv_now.ready, Q.ready[s:])
        done[s:] = _run_step(fabric, sub, p, s == 0, ready)
        if values:
            _step_values(Q.tiles[s:], kv_now.tiles, acc_o.tiles[s:], m.tiles[s:], l_.tiles[s:],
                         s == 0, scale, p.p_dtype)
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
    out = MeshTensor(fabric, rect, (groups, seq, d), dtype, 1, 0, tiles, end,
                     fabric.fresh_name("attn_out"))
    mask = pad_mask(out)
    if values and mask is not None:
        out.tiles[...] = np.where(mask, out.tiles, 0)
    for t in (Q, acc_o, l_):
        t.free()
    return out


def _rows_from(t: MeshTensor, first: int) -> MeshTensor:
    """A view (no new SRAM) of ``t``'s rows ``first..`` as a tensor of its own."""
    if first == 0:
        return t
    rect = Rect(t.rect.row + first, t.rect.col, t.rect.rows - first, t.rect.cols)
    shape = list(t.shape)
    shape[t.row_map] = t.tile_shape[t.row_map] * rect.rows
    tiles = None if t.tiles is None else t.tiles[first:]
    return MeshTensor(t.fabric, rect, tuple(shape), t.dtype, t.row_map, t.col_map, tiles,
                      t.ready[first:], name=t.name, allocate=False)


def _apply_rotary(Q: MeshTensor, KV: MeshTensor, p: Plan, base: float) -> None:
    """GPT-NeoX rotary on Q and on the K half of KV, in place, with resident tables."""
    fabric = Q.fabric
    cos, sin = rotary.place_tables(Q, p.rot, base)
    n = p.g * p.tq * p.rot
    ready = np.maximum.reduce([Q.ready, cos.ready, sin.ready])
    end = local_pass(fabric, Q.rect, n, p.dtype, "mul", ready, reads=2)
    Q.ready = local_pass(fabric, Q.rect, n, p.dtype, "fmac", end, reads=3)
    ready = np.maximum.reduce([KV.ready, cos.ready, sin.ready])
    end = local_pass(fabric, KV.rect, n, p.dtype, "mul", ready, reads=2)
    KV.ready = local_pass(fabric, KV.rect, n, p.dtype, "fmac", end, reads=3)
    if not fabric.timing_only:
        c = cos.tiles.astype(np.float32)[:, :, None]        # [R, C, 1, tq, rot]
        s = sin.tiles.astype(np.float32)[:, :, None]
        Q.tiles[...] = to_storage(rotary.rotate(Q.tiles.astype(np.float32), c, s, p.rot),
                                  p.dtype)
        kt = np.swapaxes(KV.tiles[:, :, :, 0].astype(np.float32), -1, -2)  # [.., g, tq, D]
        KV.tiles[:, :, :, 0] = np.swapaxes(
            to_storage(rotary.rotate(kt, c, s, p.rot), p.dtype), -1, -2)
    cos.free()
    sin.free()


def _step_values(q: np.ndarray, kv: np.ndarray, o: np.ndarray, m: np.ndarray, l_: np.ndarray,
                 diagonal: bool, scale: float, p_dtype: str) -> None:
    """One online-softmax step on the active rows' tiles, updating o, m, l in place."""
    qf = q.astype(np.float32)
    kt = kv[:, :, :, 0].astype(np.float32)          # [n, C, g, D, tq]
    vt = kv[:, :, :, 1].astype(np.float32)
    s = np.matmul(qf, kt)                           # [n, C, g, tq, tq]
    if diagonal:
        tq = s.shape[-1]
        s = np.where(np.triu(np.ones((tq, tq), dtype=bool), 1), np.float32(-np.inf), s)
    m_new = np.maximum(m, s.max(axis=-1))
    alpha = np.exp(np.float32(scale) * (m - m_new))
    pr = to_storage(np.exp(np.float32(scale) * (s - m_new[..., None])), p_dtype
                    ).astype(np.float32)
    l_[...] = alpha * l_ + pr.sum(axis=-1)
    o[...] = o * alpha[..., None] + np.matmul(pr, np.swapaxes(vt, -1, -2))
    m[...] = m_new
