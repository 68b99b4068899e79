"""y = A x for the 7-point operator on an X x Y x Z grid: the SpMV of the CS-1 BiCGStab.

Mapping (the one issue 15 attributes to Rocki et al., SC20, for the CS-1, and the one the
SC22 stencil uses for its grid): one PE per (x, y), holding its whole z-column of the
seven matrix diagonals and of the vectors; x runs over PE columns, y over PE rows. The
z-1 and z+1 terms are local; the x-1, x+1, y-1, y+1 columns arrive over the fabric from
the four neighbours. Cells outside the grid are zero (a Dirichlet boundary: the
coefficients that would reach them are unused).

Precision (the mixed-precision scheme of the CS-1 BiCGStab, docs/bicgstab.md): matrix and
vectors are fp16; the products accumulate in fp16 on the SIMD-4 datapath, each instruction
rounding its result once per operation as `fabric.compute.fmac` does (product, then sum).

Why this schedule (docs/bicgstab.md has every constant and its source): no code of the
SC20 program is public, so this is a program one would write from the SDK's mechanisms,
not a reconstruction. Per z-chunk (the fewest chunks whose receive buffers fit the SRAM):

1. a task arms four receives and one send (one task activation, five DSD set-ups);
2. the PE sends its chunk of x once, packed two fp16 values per 32-bit wavelet
   (`fabric.dtypes.move_wavelets`: a pure memory-to-memory move), and its router fans it
   out to the four neighbours; the four incoming chunks share the PE's ramp in, one
   wavelet per cycle (`timing.halo_cycles` with radius 1);
3. meanwhile the CE computes the local terms: y = c * x, then the z-1 and z+1 FMACs;
4. when the four chunks are in (a receive-completion task), four FMACs add the x and y
   neighbour terms from the receive buffers.

Sends and receives run on microthreads and take no CE issue slots, as everywhere in the
fast fabric model [A] (the SC22 stencil's single-issue schedule charges them; see
`Assumptions.single_issue` for that variant's cost). Vector instructions run at the spec's
SIMD width unless the SRAM ports are slower (`timing.vector_cycles`): an FMAC reading a
memory accumulator and two fp16 operands is port-bound at 3 x 2 B / 16 B = 0.375 cycles
per element on every preset.

`cost()` is the closed form of the busiest PE (one with the most neighbours); `run()`
replays the chunks on the fabric with real values: a chunk's exchange starts once the PE
and its four neighbours have armed (so uneven starts propagate, as in `stencil.run`), and
on uniform starts its cycles equal `cost()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from waferscale.errors import GridError, KernelShapeError, SramOverflowError
from waferscale.fabric import Fabric
from waferscale.fabric.dtypes import move_wavelets
from waferscale.fabric.grid import EAST, NORTH, RAMP_IN, RAMP_OUT, SOUTH, WEST, Rect
from waferscale.fabric.timing import halo_cycles, vector_cycles
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels.overhead import OVERHEADS, Overheads

#: The seven diagonals, in the order the program accumulates them (and the oracle too, so
#: the fp16 roundings agree bit for bit): centre, z-1, z+1, x-1 (west), x+1 (east),
#: y-1 (north), y+1 (south).
DIAGONALS = ("c", "zm", "zp", "xm", "xp", "ym", "yp")
#: Bytes of one stored value (fp16 matrix and vectors).
VALUE_BYTES = 2
#: FLOPs per cell of one SpMV: 7 multiplies and 6 adds (the FMUL and six FMACs executed).
FLOPS_PER_CELL = 13
#: Vectors the SpMV alone keeps beside the matrix: its input x and its output y.
SPMV_VECTORS = 2


@dataclass(frozen=True)
class Assumptions:
    """The choices of this schedule that have no published figure [A].

    ``single_issue``: charge the send and the four receives as CE issue cycles too (one
    wavelet per cycle), as the SC22 stencil's schedule does for its fabric instructions;
    default False, the fast fabric model's asynchronous microthreads.
    ``overheads``: task activation and DSD set-up cycles (`kernels.overhead`).
    """

    single_issue: bool = False
    overheads: Overheads = OVERHEADS


ASSUMED = Assumptions()


# ------------------------------------------------------------------------- sizing ------
def sram_bytes(z: int, chunk: int, vectors: int = SPMV_VECTORS) -> int:
    """SRAM per PE: seven diagonals and ``vectors`` z-columns of fp16, four receive
    buffers of one chunk. Scalars and code are not counted [A] (a few hundred bytes)."""
    return VALUE_BYTES * ((len(DIAGONALS) + vectors) * z + 4 * chunk)


def max_z(spec: WaferSpec | str | None, vectors: int = SPMV_VECTORS) -> int:
    """The deepest z-column that fits a PE (with one-cell chunks)."""
    spec = get_spec(spec)
    return max(0, (spec.sram_bytes // VALUE_BYTES - 4) // (len(DIAGONALS) + vectors))


def chunk_sizes(spec: WaferSpec | str | None, z: int, vectors: int = SPMV_VECTORS,
                what: str = "spmv7") -> tuple[int, ...]:
    """The z-chunks: the fewest whose receive buffers fit beside the columns [A] (each
    chunk costs a task and set-ups, so fewer is faster), split as evenly as possible.

    Raises `SramOverflowError` naming the deepest z that fits when none does."""
    spec = get_spec(spec)
    if z < 1:
        raise GridError(f"{what}: z must be at least 1, got {z}")
    room = spec.sram_bytes // VALUE_BYTES - (len(DIAGONALS) + vectors) * z
    if room < 4:
        raise SramOverflowError(
            f"{what}: a z-column of {z} cells needs {sram_bytes(z, 1, vectors)} B per PE "
            f"({len(DIAGONALS)} fp16 diagonals, {vectors} fp16 vectors and 4 receive buffers), "
            f"over the {spec.sram_bytes} B SRAM of {spec.name}; use z <= {max_z(spec, vectors)}")
    chunk = min(z, room // 4)
    n = math.ceil(z / chunk)
    base, extra = divmod(z, n)
    return tuple(base + 1 if i < extra else base for i in range(n))


def check_grid(spec: WaferSpec, x: int, y: int, z: int, what: str = "spmv7") -> None:
    """A typed error for a grid that is empty or does not fit the program rectangle."""
    for name, v in (("x", x), ("y", y), ("z", z)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise GridError(f"{what}: grid {x}x{y}x{z} must be positive in every dimension "
                            f"({name} = {v!r})")
    if x > spec.cols or y > spec.rows:
        raise GridError(f"{what}: grid {x}x{y} (x by y) needs {x} columns and {y} rows of PEs, "
                        f"but {spec.name} offers {spec.cols}x{spec.rows}; shrink the grid "
                        f"or use a larger spec")


def directions(x: int, y: int) -> int:
    """Neighbours of the busiest PE: 4 inside a grid of at least 3 x 3."""
    return min(2, x - 1) + min(2, y - 1)


# ------------------------------------------------------------------ closed form ------
def fmul_cycles(spec: WaferSpec, n: float) -> float:
    """y = a * b over ``n`` fp16 cells (two memory operands, one result)."""
    return float(vector_cycles(spec, n, "fp16", "mul", reads=2, writes=1,
                               element_bytes=VALUE_BYTES))


def fmac_cycles(spec: WaferSpec, n: float) -> float:
    """y = y + a * b over ``n`` fp16 cells: three memory operands (port-bound)."""
    return float(vector_cycles(spec, n, "fp16", "fmac", reads=3, writes=1,
                               element_bytes=VALUE_BYTES))


@dataclass(frozen=True)
class ChunkTimes:
    """One chunk's parts on the busiest PE, in cycles."""

    arm: float        # task + DSD set-ups of the 4 receives and the send
    local: float      # FMUL + 2 FMACs (z terms) + their set-ups: overlaps the exchange
    exchange: float   # send + fan-out + 4 packed chunks through the ramp in
    tail: float       # completion task + 4 neighbour FMACs + their set-ups

    @property
    def total(self) -> float:
        return self.arm + max(self.local, self.exchange) + self.tail


def chunk_times(spec: WaferSpec, cells: int, dirs: int,
                assumptions: Assumptions = ASSUMED) -> ChunkTimes:
    """The parts of one chunk of ``cells`` cells on a PE with ``dirs`` neighbours."""
    ov = assumptions.overheads
    wav = float(move_wavelets(cells, "fp16", spec.wavelet_bits))
    exchange = halo_cycles(spec, wav, 1, dirs) if dirs else 0.0
    local = fmul_cycles(spec, cells) + 2 * fmac_cycles(spec, cells) + ov.cycles(0, 3)
    if assumptions.single_issue and dirs:
        local += wav * (1 + dirs)      # the send and the receives issue on the CE too
    return ChunkTimes(arm=ov.cycles(1, 5), local=local, exchange=exchange,
                      tail=ov.cycles(1, 4) + 4 * fmac_cycles(spec, cells))


def cost(spec: WaferSpec | str | None, x: int, y: int, z: int, *,
         vectors: int = SPMV_VECTORS, assumptions: Assumptions = ASSUMED) -> float:
    """Cycles of one SpMV on an X x Y x Z grid (busiest PE, every PE starting together).

    ``vectors``: z-columns the caller keeps beside the matrix (2 for the SpMV alone; the
    BiCGStab keeps 6), which sets the chunking."""
    spec = get_spec(spec)
    check_grid(spec, x, y, z)
    dirs = directions(x, y)
    return sum(chunk_times(spec, b, dirs, assumptions).total
               for b in chunk_sizes(spec, z, vectors))


def breakdown(spec: WaferSpec | str | None, x: int, y: int, z: int, *,
              vectors: int = SPMV_VECTORS, assumptions: Assumptions = ASSUMED
              ) -> dict[str, float]:
    """Where one SpMV's cycles go on the busiest PE (they add up to `cost`)."""
    spec = get_spec(spec)
    check_grid(spec, x, y, z)
    dirs = directions(x, y)
    out = {"overheads": 0.0, "local_compute": 0.0, "exchange_wait": 0.0,
           "neighbour_fmacs": 0.0}
    for b in chunk_sizes(spec, z, vectors):
        t = chunk_times(spec, b, dirs, assumptions)
        ovl = assumptions.overheads.cycles(0, 3)
        out["overheads"] += t.arm + ovl + assumptions.overheads.cycles(1, 4)
        out["local_compute"] += t.local - ovl
        out["exchange_wait"] += max(0.0, t.exchange - t.local)
        out["neighbour_fmacs"] += t.tail - assumptions.overheads.cycles(1, 4)
    return out


# ------------------------------------------------------------------------ values ------
def random_problem(x: int, y: int, z: int, seed: int = 0, dominance: float = 1.5
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A diagonally dominant 7-point operator and a right-hand side, fp16, [y, x, z].

    Off-diagonals are -U(0.5, 1) (a variable-coefficient diffusion operator); the centre is
    ``dominance`` times the sum of their magnitudes (> 1: strictly dominant)."""
    rng = np.random.default_rng(seed)
    off = -rng.uniform(0.5, 1.0, size=(6, y, x, z))
    centre = dominance * np.abs(off).sum(axis=0)
    diags = np.concatenate([centre[None], off]).astype(np.float16)
    # scale rows so the centre is about 1: fp16 keeps its precision near unity
    diags = (diags / diags[0:1].astype(np.float32)).astype(np.float16)
    b = rng.uniform(-1.0, 1.0, size=(y, x, z)).astype(np.float16)
    return diags, b


def reference(diags: np.ndarray, x: np.ndarray, dtype: type = np.float16) -> np.ndarray:
    """NumPy oracle: y = A x in fp16, terms added in `DIAGONALS` order, one rounding per
    multiply and per add (zeros outside the grid). Arrays are [y, x, z] (diagonals
    [7, y, x, z]). ``dtype=np.float64``: the operator itself, for true residuals."""
    d = np.asarray(diags, dtype)
    v = np.asarray(x, dtype)
    p = np.pad(v, 1)
    ny, nx, nz = v.shape
    neighbours = (p[1:-1, 1:-1, 0:nz], p[1:-1, 1:-1, 2:nz + 2],       # z-1, z+1
                  p[1:-1, 0:nx, 1:-1], p[1:-1, 2:nx + 2, 1:-1],       # x-1, x+1
                  p[0:ny, 1:-1, 1:-1], p[2:ny + 2, 1:-1, 1:-1])       # y-1, y+1
    y = d[0] * v
    for k, nb in enumerate(neighbours, start=1):
        y = y + d[k] * nb
    return y


def _neighbour_columns(v: np.ndarray) -> tuple[np.ndarray, ...]:
    """The z-1, z+1, west, east, north and south columns each PE uses (zeros outside)."""
    zero = np.zeros_like(v)
    zm, zp, xm, xp, ym, yp = (zero.copy() for _ in range(6))
    zm[..., 1:], zp[..., :-1] = v[..., :-1], v[..., 1:]
    xm[:, 1:], xp[:, :-1] = v[:, :-1], v[:, 1:]
    ym[1:], yp[:-1] = v[:-1], v[1:]
    return zm, zp, xm, xp, ym, yp


def _plus_max(a: np.ndarray) -> np.ndarray:
    """Max of ``a`` over each PE and its four neighbours: when a chunk's exchange can start."""
    out = a.copy()
    np.maximum(out[:, 1:], a[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], a[:, 1:], out=out[:, :-1])
    np.maximum(out[1:], a[:-1], out=out[1:])
    np.maximum(out[:-1], a[1:], out=out[:-1])
    return out


def _degree(rect: Rect) -> np.ndarray:
    """Neighbours of every PE of ``rect``."""
    r, c = rect.shape
    deg = np.zeros(rect.shape)
    deg[:, 1:] += 1
    deg[:, :-1] += 1
    deg[1:] += 1
    deg[:-1] += 1
    return deg if r * c > 1 else np.zeros(rect.shape)


def _count_traffic(fabric: Fabric, rect: Rect, wav: float, begin: np.ndarray) -> None:
    """One chunk's wavelets: one send up each ramp, one chunk per neighbour down it, and
    on every link between two PEs of the grid one chunk each way."""
    sl = rect.slices
    deg = _degree(rect)
    fabric.port_wavelets[RAMP_OUT][sl] += wav * (deg > 0)
    fabric.port_wavelets[RAMP_IN][sl] += wav * deg
    rows, cols = rect.shape
    for port, has in ((EAST, (slice(None), slice(0, cols - 1))),
                      (WEST, (slice(None), slice(1, cols))),
                      (SOUTH, (slice(0, rows - 1), slice(None))),
                      (NORTH, (slice(1, rows), slice(None)))):
        view = fabric.port_wavelets[port][sl]
        view[has] += wav
        clock = fabric.port_clock[port][sl]
        clock[has] = np.maximum(clock[has], begin[has] + wav)
        fabric.wavelet_hops += wav * view[has].size
    for port, load in ((RAMP_IN, wav * deg), (RAMP_OUT, wav * (deg > 0))):
        clock = fabric.port_clock[port][sl]
        np.maximum(clock, begin + load, out=clock)


def apply(fabric: Fabric, rect: Rect, diags: np.ndarray | None, v: np.ndarray | None,
          ready: np.ndarray | float, z: int, *, vectors: int = SPMV_VECTORS,
          assumptions: Assumptions = ASSUMED) -> tuple[np.ndarray | None, np.ndarray]:
    """One SpMV on ``rect`` (one PE per (x, y)) from ``ready``: (y values or None, when
    each PE has its y). The caller holds the columns' SRAM; the receive buffers are
    charged here for the call. ``diags``/``v`` None: timing only."""
    spec = fabric.spec
    sl = rect.slices
    sizes = chunk_sizes(spec, z, vectors)
    dirs = directions(rect.cols, rect.rows)
    buffers = fabric.fresh_name("spmv7 receive buffers")
    fabric.sram.alloc(buffers, rect.row, rect.col, 4 * max(sizes) * VALUE_BYTES, rect.shape)
    out = None
    if v is not None and diags is not None:
        cols = _neighbour_columns(np.asarray(v, np.float16))
        out = diags[0] * v
    z0 = 0
    for b in sizes:
        t = chunk_times(spec, b, dirs, assumptions)
        armed = fabric.execute(rect, t.arm, np.maximum(fabric.ce_clock[sl], ready))
        begin = _plus_max(armed) if dirs else armed
        wav = float(move_wavelets(b, "fp16", spec.wavelet_bits))
        if dirs:
            _count_traffic(fabric, rect, wav, begin)
        fabric.execute(rect, t.local, armed, flops=5.0 * b,
                       mem_bytes=VALUE_BYTES * 11.0 * b)
        fabric.execute(rect, t.tail, begin + t.exchange, flops=8.0 * b,
                       mem_bytes=VALUE_BYTES * 16.0 * b)
        ready = 0.0
        z0 += b
    if out is not None:
        for k, nb in enumerate(cols, start=1):
            out = out + diags[k] * nb
    fabric.sram.free(buffers)
    return out, fabric.ce_clock[sl].copy()


@dataclass
class SpmvResult:
    """y (fp16, [y, x, z]; None timing-only), the cycles and the fabric it ran on."""

    y: np.ndarray | None
    cycles: float
    fabric: Fabric


def run(fabric: Fabric, diags: np.ndarray | None, x: np.ndarray | None,
        shape: tuple[int, int, int] | None = None,
        assumptions: Assumptions = ASSUMED) -> SpmvResult:
    """y = A x on the fabric; arrays [y, x, z] fp16 (diagonals [7, y, x, z], `DIAGONALS`
    order). Timing only: pass ``None`` arrays and ``shape`` (y, x, z)."""
    spec = fabric.spec
    ny, nx, nz = shape if shape is not None else np.shape(x)
    if diags is not None and np.shape(diags) != (len(DIAGONALS), ny, nx, nz):
        raise KernelShapeError(f"spmv7: diagonals of shape {np.shape(diags)} must be "
                               f"({len(DIAGONALS)}, {ny}, {nx}, {nz}) for x of shape "
                               f"{(ny, nx, nz)}")
    check_grid(spec, nx, ny, nz)
    chunk_sizes(spec, nz)
    rect = fabric.rect(0, 0, ny, nx)
    cols = fabric.fresh_name("spmv7 columns")
    fabric.sram.alloc(cols, 0, 0, VALUE_BYTES * (len(DIAGONALS) + SPMV_VECTORS) * nz,
                      rect.shape)
    timing = fabric.timing_only or x is None or diags is None
    d = None if timing else np.asarray(diags, np.float16)
    v = None if timing else np.asarray(x, np.float16)
    y, _ = apply(fabric, rect, d, v, 0.0, nz, assumptions=assumptions)
    fabric.sram.free(cols)
    return SpmvResult(y, fabric.elapsed(), fabric)


__all__ = ["ASSUMED", "DIAGONALS", "FLOPS_PER_CELL", "Assumptions", "SpmvResult", "apply",
           "breakdown", "chunk_sizes", "cost", "max_z", "random_problem", "reference", "run",
           "sram_bytes"]
