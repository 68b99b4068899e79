"""The SC22 25-point stencil (Jacquelin et al., arXiv 2204.03775) as a fabric program.

The acoustic wave equation ``u' = 2u - u_prev + vel * L(u)`` with an 8th-order Laplacian
``L`` (radius 4 on each of x, y, z: 1 + 24 = 25 points). Mapped as the paper maps it: the
x-y plane is spread over the PEs, one PE per (x, y), and each PE keeps the whole z-column
in its SRAM. The z-neighbours are local; the 16 x/y neighbours arrive over the fabric by a
radius-4 multicast along rows and columns.

Timing follows the schedule of the code SC22 ran ([R0], the SDK examples of May 2022), not
an idealised one: `stencil_schedule` has the mechanisms (receive phase of 5 serialised
switch turns per direction with the PE's own data received back, fabric values multiplied
into buffers then summed by a 4-D FADD after all four directions have arrived, one
instruction issued per cycle for all threads, task activations, DSD set-ups, SRAM bank
conflicts, neighbours coupled through the turns). `cost()` is its steady-state step times
the steps; `run()` replays the same per-chunk phases on the fabric, where a chunk's turns
start only once every PE within the radius along its row and column has armed (the
neighbour wait), so edges, detours and uneven starts show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from waferscale.errors import GridError, SramOverflowError
from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric.grid import EAST, NORTH, RAMP_IN, RAMP_OUT, SOUTH, WEST, Rect
from waferscale.hardware.spec import WaferSpec, get_spec
from waferscale.kernels import stencil_schedule as sched
from waferscale.kernels.stencil_schedule import ASSUMED, Assumptions, Schedule

RADIUS = sched.RADIUS
#: 8th-order central second-derivative weights for offsets 0..4 (one axis, unit spacing).
AXIS_WEIGHTS = np.array([-205 / 72, 8 / 5, -1 / 5, 8 / 315, -1 / 560])
#: FLOPs per cell-step by SC22's counting convention, used for TFLOP/s so that our figure
#: and the paper's count the same work.
COUNTED_FLOPS_PER_CELL = 51
#: SC22 Table II, 755 x 994 x 1000 on a WSE-2, 1000 steps, and its profile of 600 x 600 x
#: 1000 (Jacquelin et al., SC22).
PUBLISHED = {"grid": [755, 994, 1000], "steps": 1000, "seconds": 0.0761,
             "gcell_per_s": 9862.78, "tflop_per_s": 503, "mflop_per_s_per_pe": 670.3,
             "busy_fraction": 0.696, "memory_stall_fraction": 0.116,
             "fabric_wait_fraction": 0.188, "flops_executed": 57, "flops_counted": 51,
             "memory_accesses": 112, "fabric_loads": 17}


def cell_counts() -> dict[str, float]:
    """Per cell-step of [R0]'s program: FLOPs executed, SRAM accesses, fabric loads.

    ``fabric_loads`` counts as SC22 does (16 neighbour values and the cell's own, 17);
    ``wavelets_received`` is what the code receives (5 per direction, its own 4 among
    them) and ``wavelets_sent`` its 4 sends.
    """
    counts = sched.cell_counts()
    counts["fabric_loads"] = float(4 * RADIUS + 1)
    return counts


def schedule(spec: WaferSpec | str | None, z: int,
             assumptions: Assumptions = ASSUMED) -> Schedule:
    """The steady-state time step of an interior PE for a z-column of ``z`` cells."""
    spec = get_spec(spec)
    chunk_cells(spec, z)
    return sched.solve(spec, z, assumptions)


def chunk_cells(spec: WaferSpec, z: int) -> int:
    """[R0]'s z-chunk (``ceil(z / (1 + z // 401))`` cells), once the column fits a PE."""
    need = sched.sram_bytes(z)
    if need > spec.sram_bytes:
        raise SramOverflowError(
            f"stencil: a z-column of {z} cells needs {need} B per PE (u, u_prev, acc and 20 "
            f"receive slices of {max(sched.chunk_sizes(z))} cells), over the "
            f"{spec.sram_bytes} B SRAM; use z <= {sched.max_nz(spec.sram_bytes)}")
    return max(sched.chunk_sizes(z))


def check_grid(spec: WaferSpec, x: int, y: int, z: int) -> None:
    if min(x, y, z) < 1:
        raise GridError(f"stencil grid {x}x{y}x{z} must be positive in every dimension")
    if x > spec.cols or y > spec.rows:
        raise GridError(f"stencil grid {x}x{y} (x by y) needs {x} columns and {y} rows of PEs, "
                        f"but {spec.name} offers {spec.cols}x{spec.rows}; shrink the grid")
    if x < 2 * RADIUS + 1 or y < 2 * RADIUS + 1:
        raise GridError(f"stencil grid {x}x{y} is smaller than the stencil's width "
                        f"{2 * RADIUS + 1}; use at least {2 * RADIUS + 1} in x and y")


def cost(spec: WaferSpec | str | None, x: int, y: int, z: int, steps: int,
         assumptions: Assumptions = ASSUMED) -> float:
    """Cycles of ``steps`` time steps: the steady-state step of an interior PE (the
    grid's size does not enter: there is no global barrier, only neighbours)."""
    spec = get_spec(spec)
    check_grid(spec, x, y, z)
    return steps * schedule(spec, z, assumptions).step_cycles


def shares(spec: WaferSpec | str | None, z: int,
           assumptions: Assumptions = ASSUMED) -> dict[str, float]:
    """Busy / memory-stall / fabric-wait shares of an interior PE's cycles."""
    return schedule(spec, z, assumptions).shares


def busy_fraction(spec: WaferSpec | str | None, z: int) -> float:
    """Share of an interior PE's cycles its CE issues instructions."""
    return shares(spec, z)["busy"]


def validation_case(spec: WaferSpec | str | None = "wse2") -> dict[str, object]:
    """Reference case 1 of docs/validation.md: full-size time against SC22."""
    spec = get_spec(spec)
    x, y, z = PUBLISHED["grid"]
    s = schedule(spec, z)
    ours = spec.seconds(cost(spec, x, y, z, PUBLISHED["steps"]))
    published = PUBLISHED["seconds"]
    sh = s.shares
    return {"name": "stencil 25-pt fp32 755x994x1000, 1000 steps (SC22)", "ours": ours,
            "published": published, "error": ours / published - 1, "unit": "s",
            "note": f"[R0]'s schedule: {len(s.chunks)} z-chunks of {max(s.chunks)}, 5 switch "
                    f"turns per direction, {s.step_cycles / z:.1f} cycles per cell at "
                    f"{spec.clock_hz / 1e9:.2f} GHz (SC22: 64.7); busy / memory stall / "
                    f"fabric wait {100 * sh['busy']:.1f} / {100 * sh['memory_stall']:.1f} / "
                    f"{100 * sh['fabric_wait']:.1f} % (SC22 69.6 / 11.6 / 18.8)"}


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
        vel: np.ndarray | None, steps: int, shape: tuple[int, int, int] | None = None,
        assumptions: Assumptions = ASSUMED) -> StencilResult:
    """Run ``steps`` time steps on the fabric; arrays are [y, x, z] (y over PE rows).

    Per chunk every PE arms its receives when its previous work ends; the chunk's receive
    phase (`Schedule.phase_cycles`, the torus solution of `stencil_schedule`) starts once
    every PE within the radius along its row and column has armed too, plus the detour
    cycles of defect remaps on the links its turns cross (once per turn); then the
    reduction, and after the last chunk the z terms and the update, run on its CE. In
    timing-only mode pass ``None`` arrays and ``shape``; the clocks advance exactly as in a
    full run. The velocity, which [R0] folds into the coefficients, takes no SRAM here.
    """
    spec = fabric.spec
    y, x, z = shape if shape is not None else u0.shape
    check_grid(spec, x, y, z)
    chunk = chunk_cells(spec, z)
    plan = sched.solve(spec, z, assumptions)
    rect = fabric.rect(0, 0, y, x)

    def place(array: np.ndarray | None, name: str) -> MeshTensor:
        if fabric.timing_only or array is None:
            return MeshTensor.empty(fabric, (y, x, z), rect, 0, 1, "fp32", name=name)
        return MeshTensor.from_numpy(fabric, array.astype(np.float32), rect, 0, 1, "fp32",
                                     name=name)

    u, u_prev = place(u0, "u"), place(u_prev0, "u_prev")
    vel_tiles = None if fabric.timing_only else np.asarray(vel, np.float32)
    acc = MeshTensor.empty(fabric, (y, x, z), rect, 0, 1, "fp32", name="acc")
    slices = MeshTensor.empty(fabric, (y, x, 4 * (RADIUS + 1) * chunk), rect, 0, 1, "fp32",
                              name="receive slices")
    weights = AXIS_WEIGHTS.astype(np.float32)
    detour = _turn_detours(fabric, rect)
    counts = cell_counts()
    sl = rect.slices
    for _ in range(steps):
        new_u = None if fabric.timing_only else np.empty((y, x, z), np.float32)
        u_val = None if fabric.timing_only else u.to_numpy()
        prev_val = None if fabric.timing_only else u_prev.to_numpy()
        for c, (z0, z1) in enumerate(_chunks(plan.chunks)):
            cells = z1 - z0
            armed = np.maximum(fabric.ce_clock[sl], u.ready)
            begin = _plus_max(armed, RADIUS)
            # the receive phase: its CE work after waiting for the neighbours and the turns
            phase = plan.phase_cycles[c] + RADIUS * detour
            work = plan.phase_work[c]
            fabric.execute(rect, work, begin + phase - work)
            _count_traffic(fabric, rect, cells)
            serial, stall = plan.serial_cycles[c], plan.serial_stalls[c]
            fabric.execute(rect, serial - stall, fabric.ce_clock[sl], memory_stall=stall,
                           flops=cells * counts["flops"],
                           mem_bytes=cells * counts["memory_accesses"] * 4)
            if u_val is not None:
                lap = _laplacian_chunk(u_val, weights, z0, z1)
                new_u[..., z0:z1] = 2 * u_val[..., z0:z1] - prev_val[..., z0:z1] \
                    + vel_tiles[..., z0:z1] * lap
        ready = fabric.ce_clock[sl].copy()
        u_prev.free()   # the new u is written over u_prev's buffer
        tiles = None if new_u is None else new_u[:, :, None, None, :]
        next_u = u.like(tiles, ready, name=fabric.fresh_name("u"))
        u_prev, u = u, next_u
    acc.free()
    slices.free()
    if fabric.timing_only:
        return StencilResult(None, fabric.elapsed(), fabric)
    return StencilResult(u.to_numpy(), fabric.elapsed(), fabric, u_prev.to_numpy())


def _chunks(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    out, z0 = [], 0
    for b in sizes:
        out.append((z0, z0 + b))
        z0 += b
    return out


def _plus_max(a: np.ndarray, r: int) -> np.ndarray:
    """Max of ``a`` over each PE's row and column within ``r`` (the PEs its turns reach)."""
    out = a.copy()
    for k in range(1, r + 1):
        np.maximum(out[:, k:], a[:, :-k], out=out[:, k:])
        np.maximum(out[:, :-k], a[:, k:], out=out[:, :-k])
        np.maximum(out[k:], a[:-k], out=out[k:])
        np.maximum(out[:-k], a[k:], out=out[:-k])
    return out


def _turn_detours(fabric: Fabric, rect: Rect) -> np.ndarray:
    """Per PE, the detour cycles (defect remaps, `Fabric.link_extra`) on the ``RADIUS``
    links its farthest incoming turn crosses, the worst of the four directions; 0 on a
    perfect wafer."""
    extra = fabric.link_extra[(slice(None), *rect.slices)]
    worst = np.zeros(rect.shape)
    if not extra.any():
        return worst
    # data moving east arrives over the east-going links of the PEs 1..r to its west, etc.
    for port, axis, sign in ((EAST, 1, 1), (WEST, 1, -1), (SOUTH, 0, 1), (NORTH, 0, -1)):
        total = sum(_shifted(extra[port], sign * k, axis) for k in range(1, RADIUS + 1))
        np.maximum(worst, total, out=worst)
    return worst


def _shifted(a: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``a`` moved ``k`` places along ``axis`` (toward higher indices if k > 0), zero-filled."""
    out = np.zeros_like(a)
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if k > 0:
        src[axis], dst[axis] = slice(0, a.shape[axis] - k), slice(k, None)
    else:
        src[axis], dst[axis] = slice(-k, None), slice(0, a.shape[axis] + k)
    out[tuple(dst)] = a[tuple(src)]
    return out


def _count_traffic(fabric: Fabric, rect: Rect, cells: int) -> None:
    """Wavelets of one chunk: 20b down each ramp, 4b and the control wavelets up it, and on
    each link the 4 of 5 turns whose segment crosses it."""
    sl = rect.slices
    d = sched.DIRECTIONS
    fabric.port_wavelets[RAMP_IN][sl] += d * (RADIUS + 1) * cells
    fabric.port_wavelets[RAMP_OUT][sl] += d * cells + d * sched.CONTROL_WAVELETS_PER_SEND
    rows, cols = rect.shape
    load = RADIUS * cells
    for port, has in ((EAST, (slice(None), slice(0, cols - 1))),
                      (WEST, (slice(None), slice(1, cols))),
                      (SOUTH, (slice(0, rows - 1), slice(None))),
                      (NORTH, (slice(1, rows), slice(None)))):
        view = fabric.port_wavelets[port][sl]
        view[has] += load
        fabric.wavelet_hops += float(load) * view[has].size


def _laplacian_chunk(u: np.ndarray, w: np.ndarray, z0: int, z1: int) -> np.ndarray:
    """The Laplacian of cells z0..z1 of every PE's column (u is [y, x, z]; zeros outside),
    in [R0]'s order: per direction the 5 values a PE receives (its own, with a quarter of
    the x-y centre weight, and its 4 neighbours) multiplied into slices, the 20 slices
    summed, then the z terms (the centre's z share first) accumulated."""
    r = RADIUS
    ny, nx, nz = u.shape
    col = u[..., z0:z1]
    own = np.float32(2 * w[0] / 4) * col           # x and y centre weights, split 4 ways
    slices = []
    for axis, sign in ((1, 1), (1, -1), (0, 1), (0, -1)):
        slices.append(own)
        for k in range(1, r + 1):
            slices.append(w[k] * _shifted(col, sign * k, axis))
    acc = np.zeros_like(col)
    for piece in slices:
        acc = acc + piece
    zpad = np.pad(u, ((0, 0), (0, 0), (r, r)))
    acc = acc + np.float32(w[0]) * col
    for k in range(1, r + 1):
        acc = acc + w[k] * zpad[..., r + z0 - k:r + z1 - k]
        acc = acc + w[k] * zpad[..., r + z0 + k:r + z1 + k]
    return acc.astype(np.float32)
