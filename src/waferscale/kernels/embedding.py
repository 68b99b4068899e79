"""Token embedding lookup, with the table replicated down the PE rows or sharded over them.

Both mappings leave the output [tokens, hidden] with tokens over the rectangle's rows and
hidden over its columns (the layout layer norm and the projections take), so consumers do
not care which one ran.

``layout="replicated"``: every PE keeps the table slice [vocab, hidden / C] of its column,
so each token row is a local gather and nothing crosses the fabric. That suits small
vocabularies (GenSLM's 69 codons: 69 x 64 x 2 B = 8.8 KB per PE on 8 columns) but no
rectangle holds GPT-2's 50,257 x 768 table (154 MB fp32) on every row.

``layout="sharded"``: the table is stored once, vocabulary rows blocked over the R PE rows
(``vb = ceil(vocab / R)`` each) and hidden over the C columns. The token ids start on the
first PE row and are multicast down every column (`movement.multicast`), so every PE knows
every token; each PE scans them once for the ids of its shard. The output rows are then
delivered by a bidirectional systolic reduce-scatter along each column, built from
one-hop `movement.shift` steps (the tile of block d holds the rows of tokens d*tr ...):

* north pass, R - 1 steps: the tile of block d starts on the last row, moves one row north
  per step and reaches row d at the last step; every row it passes writes in the rows of
  the tokens its shard owns ("select" merge), so it arrives with those of rows d..R-1;
* south pass, R_out - 1 steps, over the output rows only: the mirror image, from row 0;
  on arrival row d takes from it the tokens owned by rows above d.

Why this scheme and not "each owner sends its rows to their destinations": that traffic
depends on the ids, and a compiled program (and the placer, which has no ids) needs one
cost. The reduce-scatter's schedule is the same for every id sequence, and its link load is
the worst case of the direct scheme: when all ids fall in one shard, the owner's link
carries every token row, which is what the first link of each pass always carries here.
The pieces are one-hop shifts in lockstep, so the cost is `timing.shift_cycles` plus a
merge per step (docs/kernels-transformer.md). Values are only moved and selected, never
added, so the result is bit-identical to a gather. Fewer tokens than rows is allowed: the
output then occupies the first ``R_out = min(R, tokens)`` rows.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from waferscale.errors import KernelError, KernelFitError, KernelShapeError
from waferscale.fabric import Fabric, MeshTensor, Rect
from waferscale.fabric import movement as mv
from waferscale.fabric.dtypes import BYTES, to_storage
from waferscale.fabric.timing import multicast_cycles, shift_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.ir import Graph, Node
from waferscale.kernels.elementwise import check_dtype, local_pass, op_cycles
from waferscale.kernels.family import (
    ExecContext,
    KernelFamily,
    Sizing,
    Stage,
    StageParams,
    StageRun,
    done,
    figures_key,
    remember,
    remembered,
    row_rect,
    shape_of,
    to_np,
    to_torch,
)

KERNEL = "embedding"
#: Token ids are stored as 32-bit words (one wavelet each).
ID_BYTES = 4
LAYOUTS = ("replicated", "sharded")


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise KernelError(f"{KERNEL}: layout {layout!r} is not a mapping of the table; use "
                          f"'replicated' (a copy per PE row) or 'sharded' (stored once)")
    return layout


def _tiles(tokens: int, hidden: int, rect_shape: tuple[int, int], layout: str
           ) -> tuple[int, int, int]:
    """(tokens per output row tr, hidden per column tc, output rows R_out)."""
    rows, cols = rect_shape
    out_rows = min(rows, tokens) if layout == "sharded" else rows
    return -(-tokens // out_rows), -(-hidden // cols), out_rows


def sram_bytes(tokens: int, vocab: int, hidden: int, rect_shape: tuple[int, int],
               dtype: str = "fp32", *, layout: str = "replicated") -> int:
    """Bytes per PE of the busiest PE.

    Replicated: the table slice, the token ids of the PE's row and its output tile.
    Sharded: the table shard, all token ids, and [tr, tc] tiles: the north tile (which
    becomes the output), the south tile on output rows, and a receive buffer while a
    shift is in flight (a PE sends one tile while the next arrives).
    """
    rows, cols = rect_shape
    tr, tc, out_rows = _tiles(tokens, hidden, rect_shape, _check_layout(layout))
    if layout == "replicated":
        return vocab * tc * BYTES[dtype] + tr * ID_BYTES + tr * tc * BYTES[dtype]
    buffers = 1 + (rows > 1) + (out_rows > 1)
    return (-(-vocab // rows) * tc + buffers * tr * tc) * BYTES[dtype] + tokens * ID_BYTES


def check(spec: WaferSpec, tokens: int, vocab: int, hidden: int,
          rect_shape: tuple[int, int], dtype: str, *, layout: str = "replicated") -> None:
    """Raise what does not fit: too many rows/columns, or SRAM, with what would fit."""
    check_dtype(KERNEL, dtype)
    _check_layout(layout)
    for name, value in (("tokens", tokens), ("vocab", vocab), ("hidden", hidden)):
        if value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} = {value}; it must be at least 1")
    rows, cols = rect_shape
    if rows < 1 or cols < 1:
        raise KernelFitError(f"{KERNEL}: a {rows}x{cols} rectangle has no PEs; use at least "
                             f"1x1")
    if layout == "replicated" and rows > tokens:
        raise KernelFitError(f"{KERNEL}: {tokens} tokens cannot be spread over {rows} PE rows; "
                             f"use at most {tokens} rows (or layout='sharded')")
    if layout == "sharded" and rows > vocab:
        raise KernelFitError(f"{KERNEL}: a vocabulary of {vocab} cannot be sharded over {rows} "
                             f"PE rows; use at most {vocab} rows")
    if cols > hidden:
        raise KernelFitError(f"{KERNEL}: hidden size {hidden} cannot be spread over {cols} PE "
                             f"columns; use at most {hidden} columns")
    need = sram_bytes(tokens, vocab, hidden, rect_shape, dtype, layout=layout)
    if need <= spec.sram_bytes:
        return
    tc = -(-hidden // cols)
    if layout == "replicated":
        what = f"table slice {vocab * tc * BYTES[dtype]} B"
        hint = ("no column count fits: the vocabulary is too large to replicate; shard it "
                "with layout='sharded'")
        for c in range(cols + 1, hidden + 1):
            if sram_bytes(tokens, vocab, hidden, (rows, c), dtype) <= spec.sram_bytes:
                hint = f"use at least {c} columns"
                break
    else:
        what = f"table shard {-(-vocab // rows) * tc * BYTES[dtype]} B, ids {tokens * ID_BYTES} B"
        hint = _sharded_hint(spec, tokens, vocab, hidden, rows, cols, dtype)
    raise KernelFitError(
        f"{KERNEL}: table [{vocab}, {hidden}] ({dtype}, {layout}) with {tokens} tokens on "
        f"{rows}x{cols} PEs needs {need} B per PE ({what}) but a PE has {spec.sram_bytes} B; "
        f"{hint}")


def _sharded_hint(spec: WaferSpec, tokens: int, vocab: int, hidden: int, rows: int,
                  cols: int, dtype: str) -> str:
    """What makes a sharded table fit: more rows, more columns, or both (error path only)."""
    options = []
    r = _fewest_rows(spec, tokens, vocab, hidden, cols, dtype, rows + 1, vocab)
    if r is not None:
        options.append(f"at least {r} rows")
    for c in range(cols + 1, hidden + 1):
        if sram_bytes(tokens, vocab, hidden, (rows, c), dtype, layout="sharded") \
                <= spec.sram_bytes:
            options.append(f"at least {c} columns")
            break
    if options:
        return "use " + " or ".join(options)
    r = _fewest_rows(spec, tokens, vocab, hidden, hidden, dtype, 1, vocab)
    if r is not None:
        return f"use at least {r} rows and {hidden} columns"
    return (f"no rectangle fits: the {tokens} token ids ({tokens * ID_BYTES} B) and the output "
            f"tiles fill a PE; embed fewer tokens per call")


def _fewest_rows(spec: WaferSpec, tokens: int, vocab: int, hidden: int, cols: int,
                 dtype: str, first: int, last: int) -> int | None:
    """The first row count in [first, last] whose sharded layout on ``cols`` fits."""
    for r in range(first, last + 1):
        if sram_bytes(tokens, vocab, hidden, (r, cols), dtype, layout="sharded") \
                <= spec.sram_bytes:
            return r
    return None


# ---------------------------------------------------------------------------------- run ----
def run(fabric: Fabric, ids: np.ndarray, table: np.ndarray | tuple[int, int], *,
        rect: Rect | None = None, dtype: str = "fp32", layout: str = "replicated"
        ) -> MeshTensor:
    """``table[ids]`` as a [tokens, hidden] tensor (ids flattened), table resident at time 0.

    On a timing-only fabric ``table`` may be its shape (vocab, hidden), so a wafer-sized
    table need not exist on the host. Ids must be integers in [0, vocab); anything else is
    refused before the fabric runs.
    """
    rect = rect or fabric.full
    _check_layout(layout)
    ids = np.asarray(ids)
    if isinstance(table, tuple):
        if not fabric.timing_only or len(table) != 2:
            raise KernelShapeError(f"{KERNEL}: a table given as a shape {table} needs a "
                                   f"timing-only fabric and must be (vocab, hidden); pass the "
                                   f"table's values otherwise")
        vocab, hidden = (int(s) for s in table)
    else:
        table = np.asarray(table)
        if table.ndim != 2:
            raise KernelShapeError(f"{KERNEL}: table of shape {table.shape} must be "
                                   f"[vocab, hidden]")
        vocab, hidden = table.shape
    ids = _checked_ids(ids, vocab)
    check(fabric.spec, ids.size, vocab, hidden, rect.shape, dtype, layout=layout)
    row_map = 0 if layout == "sharded" else None
    name = fabric.fresh_name("embed_table")
    if isinstance(table, tuple):
        tab = MeshTensor.empty(fabric, (vocab, hidden), rect, row_map, 1, dtype, name)
    else:
        tab = MeshTensor.from_numpy(fabric, table.astype(np.float32), rect, row_map, 1, dtype,
                                    name=name)
    if layout == "replicated":
        return _run_replicated(fabric, rect, ids, tab, dtype)
    return _run_sharded(fabric, rect, ids, tab, dtype)


def _checked_ids(ids: np.ndarray, vocab: int) -> np.ndarray:
    """``ids`` flattened, or a `KernelError` naming the first one that is not an integer
    in [0, vocab)."""
    if not np.issubdtype(ids.dtype, np.integer):
        raise KernelError(f"{KERNEL}: token ids must be integers, got dtype {ids.dtype}")
    ids = ids.reshape(-1)
    bad = np.nonzero((ids < 0) | (ids >= vocab))[0]
    if bad.size:
        raise KernelError(f"{KERNEL}: token id {int(ids[bad[0]])} at position {int(bad[0])} is "
                          f"out of range for a vocabulary of {vocab} (valid ids 0..{vocab - 1}); "
                          f"{bad.size} id(s) out of range")
    return ids


def replicated_values(ids: np.ndarray, table: np.ndarray, dtype: str = "fp32") -> np.ndarray:
    """What the replicated layout's ``run(...).to_numpy()`` returns, without a fabric:
    the table's rows as the tiles store them (rounded to ``dtype``), gathered, as fp32. A
    gather copies, so these are the fabric run's bits (tests/test_kernels_embedding.py)."""
    table = np.asarray(table)
    ids = _checked_ids(np.asarray(ids), table.shape[0])
    return to_storage(table.astype(np.float32), dtype)[ids].astype(np.float32)


def _run_replicated(fabric: Fabric, rect: Rect, ids: np.ndarray, tab: MeshTensor,
                    dtype: str) -> MeshTensor:
    """One local gather pass per PE over its output tile."""
    idt = MeshTensor.from_numpy(fabric, ids.astype(np.float32), rect, 0, None, "fp32",
                                name=fabric.fresh_name("token_ids"))
    out_shape = (ids.size, tab.shape[1])
    probe = MeshTensor(fabric, rect, out_shape, dtype, 0, 1, None, allocate=False)
    n = float(np.prod(probe.tile_shape))
    end = local_pass(fabric, rect, n, dtype, "copy", np.maximum(tab.ready, idt.ready))
    tiles = None
    if not fabric.timing_only:
        tr = probe.tile_shape[0]
        local = idt.tiles.astype(np.int64)[..., None]              # [R, C, tr, 1]; pad = 0
        gathered = np.take_along_axis(tab.tiles, local, axis=2)     # [R, C, tr, tc]
        real = np.arange(tr)[None, :] < _row_extent(ids.size, rect.rows, tr)[:, None]
        tiles = to_storage(np.where(real[:, None, :, None], gathered.astype(np.float32), 0),
                           dtype)
    out = MeshTensor(fabric, rect, out_shape, dtype, 0, 1, tiles, end,
                     fabric.fresh_name("embedded"))
    tab.free()
    idt.free()
    return out


def _row_extent(tokens: int, rows: int, tr: int) -> np.ndarray:
    return np.clip(tokens - np.arange(rows) * tr, 0, tr)


class _Shards:
    """What a PE row contributes to a block of output tokens: the rows of the tokens whose
    ids fall in its shard. Values only: the fabric charges the SPMD merge pass every PE
    runs whatever it owns, so a timing-only run needs none of this."""

    def __init__(self, ids: np.ndarray, tab: MeshTensor, tr: int, out_rows: int) -> None:
        self.ids, self.tab, self.tr, self.out_rows = ids, tab, tr, out_rows
        self.vb = tab.tile_shape[0]

    def tokens(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ids of each block's token slots [rows, tr] and which slots are real tokens."""
        tok = blocks[:, None] * self.tr + np.arange(self.tr)[None, :]
        real = (blocks[:, None] >= 0) & (blocks[:, None] < self.out_rows) & (tok < self.ids.size)
        return self.ids[np.where(real, tok, 0)], real

    def merge(self, tiles: np.ndarray, rows: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """``tiles`` [rows, C, tr, tc] with each row's owned token rows written in."""
        tid, real = self.tokens(blocks)
        own = real & (tid // self.vb == rows[:, None])
        local = np.where(own, tid - rows[:, None] * self.vb, 0)
        rows_of = self.tab.tiles[rows[:, None], :, local]              # [rows, tr, C, tc]
        return np.where(own[:, None, :, None], rows_of.transpose(0, 2, 1, 3), tiles)


def _run_sharded(fabric: Fabric, rect: Rect, ids: np.ndarray, tab: MeshTensor, dtype: str
                 ) -> MeshTensor:
    """Multicast the ids, scan them, then the north and south passes of the module doc."""
    rows, cols = rect.shape
    tokens, hidden = ids.size, tab.shape[1]
    tr, tc, out_rows = _tiles(tokens, hidden, rect.shape, "sharded")
    values = not fabric.timing_only
    shards = _Shards(ids, tab, tr, out_rows) if values else None
    # ids on the first row; the multicast result is also the root's buffer, so the root
    # charges SRAM only when there is no multicast (a single row)
    top = Rect(rect.row, rect.col, 1, cols)
    root = MeshTensor(fabric, top, (tokens,), "fp32", None, None,
                      np.broadcast_to(ids.astype(np.float32), (1, cols, tokens)).copy()
                      if values else None, 0.0, fabric.fresh_name("token_ids"),
                      allocate=rows == 1)
    idt = root if rows == 1 else mv.multicast(root, rect, "col")
    scanned = local_pass(fabric, rect, tokens, "fp32", "sub", idt.ready)   # id - shard base
    n = float(tr * tc)

    def fresh(at: Rect, name: str) -> MeshTensor:
        """A full-size [tr, tc] tile per PE of ``at`` (every PE sends whole tiles: SPMD)."""
        return MeshTensor.empty(fabric, (at.rows * tr, cols * tc), at, 0, 1, dtype,
                                fabric.fresh_name(name), scanned[: at.rows])

    def merge(t: MeshTensor, blocks: np.ndarray) -> None:
        """The select pass writing each row's owned token rows into its tile of ``blocks``."""
        t.ready = local_pass(fabric, t.rect, n, dtype, "select", t.ready, reads=2)
        if shards is not None:
            t.tiles = to_storage(shards.merge(t.tiles, np.arange(t.rect.rows), blocks), dtype)

    def step(t: MeshTensor, direction: str) -> MeshTensor:
        moved = mv.shift(t, direction)
        t.free()
        return moved

    pos = np.arange(rows)
    north = fresh(rect, "embed_north")
    merge(north, pos - (rows - 1))
    for s in range(1, rows):
        north = step(north, "north")
        merge(north, pos - (rows - 1) + s)
    if out_rows > 1:
        band, last = Rect(rect.row, rect.col, out_rows, cols), out_rows - 1
        south = fresh(band, "embed_south")
        merge(south, pos[:out_rows] + last)
        for s in range(1, last):
            south = step(south, "south")
            merge(south, pos[:out_rows] + last - s)
        south = step(south, "south")
        # row d keeps the tokens of rows >= d from the north tile, the rest from the south
        ready = np.maximum(south.ready, north.ready[:out_rows])
        north.ready[:out_rows] = local_pass(fabric, band, n, dtype, "select", ready, reads=2)
        if shards is not None:
            tid, real = shards.tokens(pos[:out_rows])
            above = real & (tid // shards.vb < pos[:out_rows, None])
            north.tiles[:out_rows] = np.where(above[:, None, :, None], south.tiles,
                                              north.tiles[:out_rows])
        south.free()
    tiles = north.tiles[:out_rows].copy() if values else None
    ready = north.ready[:out_rows]
    north.free()
    out = MeshTensor(fabric, Rect(rect.row, rect.col, out_rows, cols), (tokens, hidden), dtype,
                     0, 1, tiles, ready, fabric.fresh_name("embedded"))
    tab.free()
    idt.free()
    return out


# --------------------------------------------------------------------------------- cost ----
def cost(spec: WaferSpec | str | None, tokens: int, vocab: int, hidden: int,
         rect_shape: tuple[int, int], *, dtype: str = "fp32", layout: str = "replicated"
         ) -> float:
    """Closed form of `run` (see the module doc and docs/kernels-transformer.md).

    Replicated: one gather pass over the output tile. Sharded: the ids multicast, the scan,
    and R - 1 north plus R_out - 1 south steps of (one-hop shift + select merge); the
    schedule does not depend on the ids, so neither does the cost.
    """
    spec = get_spec(spec)
    check(spec, tokens, vocab, hidden, rect_shape, dtype, layout=layout)
    return _cycles(spec, tokens, hidden, rect_shape[0], rect_shape[1], dtype, layout)


@lru_cache(maxsize=65536)
def _cycles(spec: WaferSpec, tokens: int, hidden: int, rows: int, cols: int, dtype: str,
            layout: str) -> float:
    """`cost` without the checks: scalars only, cached (the placer asks again and again)."""
    tr, tc, out_rows = _tiles(tokens, hidden, (rows, cols), layout)
    n = tr * tc
    if layout == "replicated":
        return float(op_cycles(spec, n, dtype, "copy"))
    merge = float(op_cycles(spec, n, dtype, "select", reads=2))
    total = multicast_cycles(spec, tokens, rows) \
        + float(op_cycles(spec, tokens, "fp32", "sub")) + merge \
        + (rows - 1) * (shift_cycles(spec, n, rows) + merge)
    if out_rows > 1:
        total += merge + (out_rows - 1) * (shift_cycles(spec, n, out_rows) + merge)
    return total


def choose_layout(spec: WaferSpec | str | None, tokens: int, vocab: int, hidden: int, *,
                  max_rows: int, max_cols: int, dtype: str = "fp32"
                  ) -> tuple[str, int, int, float]:
    """(layout, rows, cols, cycles) of the fastest mapping that fits in max_rows x max_cols
    (and the spec's program rectangle); replicated unless it does not fit or is slower.
    Among equally fast rectangles it takes the one with the fewest PEs, because the placer
    pays for area: a replicated lookup costs the same on every rectangle whose tile the CE
    sweeps in as many cycles.

    Why no grid search over every (rows, cols): both costs only grow with the tile
    (``ceil(tokens / rows) x ceil(hidden / cols)``) and a smaller tile needs less SRAM.
    Replicated: the fastest tile is the one of the largest rectangle; each distinct tile
    height is then tried with the widest tile that costs the same and fits. Sharded: cost
    grows strictly with the tile width, so the widest column count wins (reduced to the
    fewest columns with that width), and for a fixed output tile height cost grows with the
    row count, so each distinct height is tried at its fewest fitting rows. About
    2 sqrt(tokens) closed forms in all; cached, for the placer's inner loop.
    """
    spec = get_spec(spec)
    check_dtype(KERNEL, dtype)
    return _choose(spec, tokens, vocab, hidden, max_rows, max_cols, dtype)


def _heights(tokens: int, max_rows: int) -> dict[int, int]:
    """Distinct output tile heights ``ceil(tokens / rows)`` -> fewest rows giving each."""
    out: dict[int, int] = {}
    for r in range(1, min(max_rows, tokens) + 1):
        out.setdefault(-(-tokens // r), r)
    return out


def _replicated_pick(spec: WaferSpec, tokens: int, vocab: int, hidden: int, max_rows: int,
                     max_cols: int, dtype: str) -> tuple[str, int, int, float] | None:
    """The fewest-PE replicated rectangle as fast as the largest one, or None if none fits."""
    tile = -(-tokens // min(max_rows, tokens)) * -(-hidden // min(max_cols, hidden))
    best = float(op_cycles(spec, tile, dtype, "copy"))
    # the largest tile the CE sweeps in as many cycles (the cost is monotone in the tile)
    lo, hi = tile, tile
    while hi < tokens * hidden and float(op_cycles(spec, 2 * hi, dtype, "copy")) == best:
        lo, hi = 2 * hi, 2 * hi
    hi = min(2 * hi, tokens * hidden)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if float(op_cycles(spec, mid, dtype, "copy")) == best \
            else (lo, mid - 1)
    width = BYTES[dtype]
    pick: tuple[int, int, int] | None = None
    for tr, rows in _heights(tokens, max_rows).items():
        # widest tile of this height within the cycle budget and the SRAM
        tc = min(hidden, lo // tr, (spec.sram_bytes - tr * ID_BYTES) // ((vocab + tr) * width))
        if tc < 1 or -(-hidden // tc) > max_cols:
            continue
        cols = -(-hidden // tc)
        if pick is None or rows * cols < pick[0]:
            pick = (rows * cols, rows, cols)
    if pick is None:
        return None
    return "replicated", pick[1], pick[2], _cycles(spec, tokens, hidden, pick[1], pick[2],
                                                   dtype, "replicated")


@lru_cache(maxsize=65536)
def _choose(spec: WaferSpec, tokens: int, vocab: int, hidden: int, max_rows: int,
            max_cols: int, dtype: str) -> tuple[str, int, int, float]:
    for name, value in (("tokens", tokens), ("vocab", vocab), ("hidden", hidden),
                        ("max_rows", max_rows), ("max_cols", max_cols)):
        if value < 1:
            raise KernelShapeError(f"{KERNEL}: {name} = {value}; it must be at least 1")
    max_rows, max_cols = min(max_rows, spec.rows), min(max_cols, spec.cols)
    best = _replicated_pick(spec, tokens, vocab, hidden, max_rows, max_cols, dtype)
    cols = -(-hidden // -(-hidden // min(max_cols, hidden)))
    heights: set[int] = set()
    for r in range(1, min(max_rows, vocab) + 1):
        tr = -(-tokens // min(r, tokens))
        if tr in heights or sram_bytes(tokens, vocab, hidden, (r, cols), dtype,
                                       layout="sharded") > spec.sram_bytes:
            continue
        heights.add(tr)
        c = _cycles(spec, tokens, hidden, r, cols, dtype, "sharded")
        if best is None or c < best[3]:
            best = ("sharded", r, cols, c)
    if best is None:
        raise KernelFitError(
            f"{KERNEL}: table [{vocab}, {hidden}] ({dtype}) with {tokens} tokens fits neither "
            f"layout inside {max_rows}x{max_cols} PEs; sharded: "
            f"{_sharded_hint(spec, tokens, vocab, hidden, max_rows, cols, dtype)}")
    return best


# ------------------------------------------------------------------ the stage family ------
@dataclass(frozen=True)
class EmbeddingParams(StageParams):
    """A lookup of ``tokens`` ids in a [vocab, hidden] table; ``layout`` once sized."""

    tokens: int
    vocab: int
    hidden: int
    layout: str = "replicated"

    def __post_init__(self) -> None:
        if min(self.tokens, self.vocab, self.hidden) < 1:
            raise KernelShapeError(f"{KERNEL}: {self.tokens} ids into a [{self.vocab}, "
                                   f"{self.hidden}] table: sizes must be >= 1")
        _check_layout(self.layout)


def run_stage(ctx: ExecContext, st: Stage, table: torch.Tensor, ids: torch.Tensor
              ) -> tuple[torch.Tensor | None, StageRun]:
    """The lookup on the stage's fabric in the layout the plan chose; timing only, the
    closed forms (`cost`, `sram_bytes`: the tests prove them equal to `run`'s)."""
    layout = st.params.layout  # type: ignore[attr-defined]
    flat = ids.reshape(-1)
    if ctx.timing_only:
        n, (v, h) = flat.numel(), table.shape
        return None, StageRun(cost(ctx.spec, n, v, h, st.rect, dtype=st.dtype, layout=layout),
                              sram_bytes(n, v, h, st.rect, st.dtype, layout=layout), 1.0)
    # the replicated lookup's clocks depend on no id (every PE sweeps its tile): a stage
    # with the figures of an earlier one (every training step) reads them and gathers
    key = figures_key(ctx, st)
    measured = remembered(key) if layout == "replicated" else None
    if measured is not None:
        val = replicated_values(flat.numpy(), to_np(table), st.dtype)
    else:
        fab = ctx.fabric(st)
        val = run(fab, flat.numpy(), to_np(table), dtype=st.dtype, layout=layout).to_numpy()
        measured = remember(key, done(fab))
    return to_torch(val.reshape(*ids.shape, table.shape[1]), table.dtype), measured


class Embedding(KernelFamily):
    """``aten.embedding``: the table replicated down the rows when it fits (a local
    gather, no fabric traffic: GenSLM's 69 codons), else sharded over the rows (GPT-2's
    50,257 x 768 is 154 MB in fp32), whichever `choose_layout` finds fastest."""

    kind = "embedding"
    targets = frozenset({"embedding"})

    def describe(self, g: Graph, nodes: list[Node], dtype: str
                 ) -> tuple[EmbeddingParams, float]:
        node = nodes[0]
        v, h = shape_of(g, node.args[0])
        tokens = math.prod(shape_of(g, node.args[1]) or [1])
        return EmbeddingParams(tokens, v, h), float(tokens * h)

    def size(self, spec: WaferSpec, st: Stage, area: float, side_cap: int,
             bounds: tuple[int, int] | None) -> tuple[EmbeddingParams, Sizing]:
        """At planning time, without bounds, about ``area`` PEs shaped like `row_rect`,
        or the whole wafer when a table needs more than that to be stored once."""
        p: EmbeddingParams = st.params  # type: ignore[assignment]
        dt = st.dtype
        t, v, h = p.tokens, p.vocab, p.hidden
        layout = "replicated"
        rect = row_rect(spec, t, h, area, bounds, lambda r, c: sram_bytes(t, v, h, (r, c), dt))
        if sram_bytes(t, v, h, rect, dt) > spec.sram_bytes:
            if bounds is not None:
                limits = bounds
            else:
                c = max(1, min(h, spec.cols, int(math.sqrt(max(area, 1)))))
                limits = (max(1, min(spec.rows, int(max(area, 1) // c))), c)
            try:
                layout, r, c, _ = choose_layout(spec, t, v, h, max_rows=limits[0],
                                                max_cols=limits[1], dtype=dt)
            except KernelError:
                if bounds is not None:
                    raise
                layout, r, c, _ = choose_layout(spec, t, v, h, max_rows=spec.rows,
                                                max_cols=spec.cols, dtype=dt)
            rect = (r, c)
        check(spec, t, v, h, rect, dt, layout=layout)
        return dataclasses.replace(p, layout=layout), Sizing(
            rect, cost(spec, t, v, h, rect, dtype=dt, layout=layout),
            sram_bytes(t, v, h, rect, dt, layout=layout),
            "local gather, table replicated down rows" if layout == "replicated"
            else "table sharded over rows, ids multicast, column reduce-scatter")

    def execute(self, ctx: ExecContext, st: Stage, node: Node) -> StageRun:
        table, ids = ctx.value(node.args[:2])
        out, measured = run_stage(ctx, st, table, ids)
        if out is not None:
            ctx.env[node.name] = out
        return measured


FAMILY = Embedding()
