"""The SC22 25-point stencil (Jacquelin et al., arXiv 2204.03775) as a fabric program.

The acoustic wave equation ``u' = 2u - u_prev + vel * L(u)`` with an 8th-order Laplacian
``L`` (radius 4 on each of x, y, z: 1 + 24 = 25 points). Mapped as the paper maps it: the
x-y plane is spread over the PEs, one PE per (x, y), and each PE keeps the whole z-column
in its SRAM. The z-neighbours are local; the 16 x/y neighbours arrive over the fabric by a
radius-4 multicast along rows and columns.

The 16 neighbour columns do not fit a PE's 48 KB next to the state (u, u_prev, vel, acc), so
the column is processed in z-chunks: exchange a chunk, compute it, next chunk. Per cell the
compute engine runs the instruction list `INSTRUCTIONS` at the spec's SIMD widths and SRAM
ports. `cost()` is the same arithmetic in closed form; tests check both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import GridError, SramOverflowError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.dtypes import BYTES
from waferscale.fabric.movement import halo_exchange
from waferscale.fabric.timing import halo_cycles, vector_cycles
from waferscale.hardware.spec import WaferSpec, get_spec

RADIUS = 4
#: 8th-order central second-derivative weights for offsets 0..4 (one axis, unit spacing).
AXIS_WEIGHTS = np.array([-205 / 72, 8 / 5, -1 / 5, 8 / 315, -1 / 560])
#: Words kept per cell besides the exchange buffers: u, u_prev, vel, acc.
STATE_ARRAYS = 4
#: FLOPs per cell-step by SC22's counting convention, used for TFLOP/s so that our figure
#: and the paper's count the same work.
COUNTED_FLOPS_PER_CELL = 51
#: SC22 Table II, 755 x 994 x 1000 on a WSE-2, 1000 steps (Jacquelin et al., SC22).
PUBLISHED = {"grid": [755, 994, 1000], "steps": 1000, "seconds": 0.0761,
             "gcell_per_s": 9862.78, "tflop_per_s": 503, "mflop_per_s_per_pe": 670.3,
             "busy_fraction": 0.696, "flops_executed": 57, "flops_counted": 51,
             "memory_accesses": 112, "fabric_loads": 17}


@dataclass(frozen=True)
class Instruction:
    """One vector instruction the CE runs per cell: op, memory operands read and written."""

    name: str
    op: str
    reads: int
    writes: int
    flops: int
    count: int = 1


#: The per-cell program (fp32). Fabric data lands in SRAM buffers during the exchange.
INSTRUCTIONS = (
    Instruction("acc = c0 * u", "mul", 1, 1, 1),
    Instruction("acc += c_k * u[z +- k]", "fmac", 2, 1, 2, count=2 * RADIUS),
    Instruction("acc += c_k * neighbour", "fmac", 2, 1, 2, count=4 * RADIUS),
    Instruction("t = vel * acc", "mul", 2, 1, 1),
    Instruction("u_prev = 2 u - u_prev", "fmac", 2, 1, 2),
    Instruction("u_prev += t", "add", 2, 1, 1),
)


def cell_counts() -> dict[str, float]:
    """Per cell-step: FLOPs, SRAM accesses and fabric loads of this program."""
    flops = sum(i.flops * i.count for i in INSTRUCTIONS)
    accesses = sum((i.reads + i.writes) * i.count for i in INSTRUCTIONS)
    fabric_loads = 4 * RADIUS + 1   # 16 neighbour values in, own value out once
    return {"flops": float(flops), "memory_accesses": float(accesses + 4 * RADIUS),
            "fabric_loads": float(fabric_loads)}


def compute_cycles(spec: WaferSpec, cells: np.ndarray | float) -> np.ndarray:
    """CE cycles for ``cells`` cells: each instruction a vector op over the chunk."""
    cells = np.asarray(cells, dtype=float)
    total = np.zeros_like(cells)
    for ins in INSTRUCTIONS:
        total = total + ins.count * vector_cycles(spec, cells, "fp32", ins.op, ins.reads,
                                                  ins.writes, element_bytes=4)
    return total


def chunk_cells(spec: WaferSpec, z: int) -> int:
    """Largest z-chunk whose 16 neighbour buffers fit beside the state in one PE's SRAM."""
    word = BYTES["fp32"]
    free = spec.sram_bytes - STATE_ARRAYS * z * word
    chunk = free // (4 * RADIUS * word)
    if chunk < 1:
        raise SramOverflowError(
            f"stencil: a z-column of {z} cells needs {STATE_ARRAYS * z * word} B of state per "
            f"PE, leaving no room for neighbour buffers in {spec.sram_bytes} B; use z <= "
            f"{(spec.sram_bytes - 4 * RADIUS * word) // (STATE_ARRAYS * word)}")
    return int(min(chunk, z))


def _chunks(z: int, chunk: int) -> list[tuple[int, int]]:
    return [(z0, min(z0 + chunk, z)) for z0 in range(0, z, chunk)]


def check_grid(spec: WaferSpec, x: int, y: int, z: int) -> None:
    if min(x, y, z) < 1:
        raise GridError(f"stencil grid {x}x{y}x{z} must be positive in every dimension")
    if x > spec.cols or y > spec.rows:
        raise GridError(f"stencil grid {x}x{y} (x by y) needs {x} columns and {y} rows of PEs, "
                        f"but {spec.name} offers {spec.cols}x{spec.rows}; shrink the grid")
    if x < 2 * RADIUS + 1 or y < 2 * RADIUS + 1:
        raise GridError(f"stencil grid {x}x{y} is smaller than the stencil's width "
                        f"{2 * RADIUS + 1}; use at least {2 * RADIUS + 1} in x and y")


def cost(spec: WaferSpec | str | None, x: int, y: int, z: int, steps: int) -> float:
    """Cycles of ``steps`` time steps on an interior PE, in closed form."""
    spec = get_spec(spec)
    check_grid(spec, x, y, z)
    per_step = 0.0
    for z0, z1 in _chunks(z, chunk_cells(spec, z)):
        cells = z1 - z0
        per_step += halo_cycles(spec, cells, RADIUS) + float(compute_cycles(spec, cells))
    return steps * per_step


def busy_fraction(spec: WaferSpec | str | None, z: int) -> float:
    """Share of an interior PE's cycles its CE computes (the rest it waits for the halo)."""
    spec = get_spec(spec)
    busy = total = 0.0
    for z0, z1 in _chunks(z, chunk_cells(spec, z)):
        compute = float(compute_cycles(spec, z1 - z0))
        busy += compute
        total += compute + halo_cycles(spec, z1 - z0, RADIUS)
    return busy / total


def validation_case(spec: WaferSpec | str | None = "wse2") -> dict[str, object]:
    """Reference case 1 of docs/validation.md: full-size time against SC22."""
    x, y, z = PUBLISHED["grid"]
    ours = get_spec(spec).seconds(cost(spec, x, y, z, PUBLISHED["steps"]))
    published = PUBLISHED["seconds"]
    return {"name": "stencil 25-pt fp32 755x994x1000, 1000 steps (SC22)", "ours": ours,
            "published": published, "error": ours / published - 1, "unit": "s",
            "note": f"one z-column per PE, z-chunks of {chunk_cells(get_spec(spec), z)}, "
                    f"clock {get_spec(spec).clock_hz / 1e9:.2f} GHz"}


# ----------------------------------------------------------------------- values ---------
def laplacian_reference(u: np.ndarray) -> np.ndarray:
    """NumPy oracle: the 25-point Laplacian of u[y, x, z] with zeros outside the domain."""
    r = RADIUS
    p = np.pad(u, r)
    ny, nx, nz = u.shape
    out = 3 * AXIS_WEIGHTS[0] * u
    for k in range(1, r + 1):
        w = AXIS_WEIGHTS[k]
        out = out + w * (p[r + k:r + k + ny, r:r + nx, r:r + nz]
                         + p[r - k:r - k + ny, r:r + nx, r:r + nz]
                         + p[r:r + ny, r + k:r + k + nx, r:r + nz]
                         + p[r:r + ny, r - k:r - k + nx, r:r + nz]
                         + p[r:r + ny, r:r + nx, r + k:r + k + nz]
                         + p[r:r + ny, r:r + nx, r - k:r - k + nz])
    return out.astype(np.float32)


def reference(u: np.ndarray, u_prev: np.ndarray, vel: np.ndarray, steps: int) -> np.ndarray:
    """NumPy oracle of the whole time loop (float32)."""
    u, u_prev = u.astype(np.float32), u_prev.astype(np.float32)
    for _ in range(steps):
        u, u_prev = (2 * u - u_prev + vel * laplacian_reference(u)).astype(np.float32), u
    return u


@dataclass
class StencilResult:
    """The field after the last step and the one before it (what a restart needs)."""

    u: np.ndarray | None
    cycles: float
    fabric: Fabric
    u_prev: np.ndarray | None = None


def run(fabric: Fabric, u0: np.ndarray | None, u_prev0: np.ndarray | None,
        vel: np.ndarray | None, steps: int, shape: tuple[int, int, int] | None = None
        ) -> StencilResult:
    """Run ``steps`` time steps on the fabric; arrays are [y, x, z] (y over PE rows).

    In timing-only mode pass ``None`` arrays and ``shape``; the clocks advance exactly as
    in a full run.
    """
    spec = fabric.spec
    y, x, z = shape if shape is not None else u0.shape
    check_grid(spec, x, y, z)
    rect = fabric.rect(0, 0, y, x)
    chunk = chunk_cells(spec, z)

    def place(array: np.ndarray | None, name: str) -> MeshTensor:
        if fabric.timing_only or array is None:
            return MeshTensor.empty(fabric, (y, x, z), rect, 0, 1, "fp32", name=name)
        return MeshTensor.from_numpy(fabric, array.astype(np.float32), rect, 0, 1, "fp32",
                                     name=name)

    u, u_prev, vel_t = place(u0, "u"), place(u_prev0, "u_prev"), place(vel, "vel")
    acc = MeshTensor.empty(fabric, (y, x, z), rect, 0, 1, "fp32", name="acc")
    buffers = MeshTensor.empty(fabric, (y, x, 4 * RADIUS * chunk), rect, 0, 1, "fp32",
                               name="halo buffers")
    weights = AXIS_WEIGHTS.astype(np.float32)
    for _ in range(steps):
        new_tiles = None if fabric.timing_only else np.empty_like(u.tiles)
        ready = u.ready
        for z0, z1 in _chunks(z, chunk):
            # one set of neighbour buffers: a chunk's exchange waits for the last compute
            part = _z_slice(u, z0, z1, not_before=ready)
            halo = halo_exchange(part, RADIUS)
            cells = part.valid / (part.tile_shape[0] * part.tile_shape[1])
            end = fabric.execute(rect, compute_cycles(spec, cells),
                                 halo["west"][0].ready,
                                 flops=cells * cell_counts()["flops"],
                                 mem_bytes=cells * cell_counts()["memory_accesses"] * 4)
            ready = end
            if new_tiles is not None:
                lap = _laplacian_chunk(u.tiles, halo, weights, z0, z1)
                uu = u.tiles[..., z0:z1]
                new_tiles[..., z0:z1] = 2 * uu - u_prev.tiles[..., z0:z1] \
                    + vel_t.tiles[..., z0:z1] * lap
        u_prev.free()   # the new u is written over u_prev's buffer
        next_u = u.like(new_tiles, ready, name=fabric.fresh_name("u"))
        u_prev, u = u, next_u
    acc.free()
    buffers.free()
    if fabric.timing_only:
        return StencilResult(None, fabric.elapsed(), fabric)
    return StencilResult(u.to_numpy(), fabric.elapsed(), fabric, u_prev.to_numpy())


def _z_slice(t: MeshTensor, z0: int, z1: int, not_before: np.ndarray) -> MeshTensor:
    tiles = None if t.tiles is None else np.ascontiguousarray(t.tiles[..., z0:z1])
    return t.like(tiles, np.maximum(t.ready, not_before), shape=(*t.shape[:2], z1 - z0),
                  allocate=False)


def _laplacian_chunk(u: np.ndarray, halo: dict[str, list[MeshTensor]], w: np.ndarray,
                     z0: int, z1: int) -> np.ndarray:
    """The Laplacian of cells z0..z1 of every PE's column, from local z and the halo."""
    r = RADIUS
    col = np.pad(u[:, :, 0, 0], ((0, 0), (0, 0), (r, r)))   # [y, x, z + 2r]
    center = col[..., r + z0:r + z1]
    out = 3 * w[0] * center
    for k in range(1, r + 1):
        lo, hi = r + z0 - k, r + z1 - k
        z_terms = col[..., lo:hi] + col[..., lo + 2 * k:hi + 2 * k]
        xy_terms = sum(halo[side][k - 1].tiles[:, :, 0, 0] for side in halo)
        out = out + w[k] * (z_terms + xy_terms)
    return out[:, :, None, None, :].astype(np.float32)
