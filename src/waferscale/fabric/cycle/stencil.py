"""One time step of the SC22 25-point stencil (radius 4 in x and y over the fabric, z local).

Each PE holds one z-column. It needs the columns of the 4 nearest PEs in each of the four
directions. SC22 multicasts each column to 4 PEs per direction and fits that into the colour
budget with router switches, which this simulator does not model; here each direction
multicasts to distance 1 and 2 (3 colours: flows overlap in threes), then every PE relays
the column it got from distance 2 in a second shot, which delivers distances 3 and 4.
12 colours in all. Communication is asynchronous and overlaps the compute: z, x and y terms
accumulate separately, each as soon as its data is there, and are summed at the end.

Completion of the asynchronous operations is counted the way CSL programs do it: each op
activates its own callback task, which bumps a counter and activates the next stage when the
counter reaches that stage's total on this PE.
"""

from __future__ import annotations

import numpy as np

from waferscale.errors import ShapeError
from waferscale.fabric.cycle import isa
from waferscale.fabric.cycle.gemv import KernelRun
from waferscale.fabric.cycle.lines import DIRECTIONS, ColorPool, Lines
from waferscale.fabric.cycle.sim import CycleSim

RADIUS = 4
#: direction the data travels -> the prefix of the arrays it fills at the receiver
FROM = {"east": "W", "west": "E", "south": "N", "north": "S"}


def reference(u: np.ndarray, c0: float, cx: np.ndarray, cy: np.ndarray, cz: np.ndarray
              ) -> np.ndarray:
    """The stencil in NumPy with zero boundaries: u is [y (rows), x (cols), z]."""
    rows, cols, nz = u.shape
    p = RADIUS
    pad = np.zeros((rows + 2 * p, cols + 2 * p, nz + 2 * p), dtype=np.float64)
    pad[p:-p, p:-p, p:-p] = u
    out = c0 * u.astype(np.float64)
    for k in range(1, p + 1):
        west, east = pad[p:-p, p - k:p - k + cols, p:-p], pad[p:-p, p + k:p + k + cols, p:-p]
        out += cx[k - 1] * (west + east)
        north, south = pad[p - k:p - k + rows, p:-p, p:-p], pad[p + k:p + k + rows, p:-p, p:-p]
        out += cy[k - 1] * (north + south)
        out += cz[k - 1] * (pad[p:-p, p:-p, p - k:p - k + nz] + pad[p:-p, p:-p, p + k:p + k + nz])
    return out.astype(np.float32)


def _exchange_routes(sim: CycleSim, pool: ColorPool, direction: str
                     ) -> tuple[Lines, np.ndarray, np.ndarray, np.ndarray]:
    """Routes of 'every PE multicasts to the next two PEs toward ``direction``'.

    Returns the line geometry and, per PE, the colour it sends on and the colours of the
    flows from distance 1 and 2.
    """
    axis, reverse = DIRECTIONS[direction]
    ln = Lines.of((sim.rows, sim.cols), None, axis, reverse)
    colors = pool.take(3, f"stencil exchange {direction}")
    x, L = ln.pos, ln.length
    for m, color in enumerate(colors):
        p = x - ((x - m) % 3)
        valid = (p >= 0) & (p < L - 1)
        role = x - p
        sim.route(color, "R", ln.fwd, valid & (role == 0))
        sim.route(color, ln.back, ln.fwd + "R", valid & (role == 1) & (x < L - 1))
        sim.route(color, ln.back, "R", valid & (((role == 1) & (x == L - 1)) | (role == 2)))
    c = np.asarray(colors)
    return ln, c[x % 3], c[(x - 1) % 3], c[(x - 2) % 3]


def build_stencil(sim: CycleSim, u: np.ndarray, c0: float, cx: np.ndarray, cy: np.ndarray,
                  cz: np.ndarray) -> None:
    rows, cols, nz = u.shape
    if (rows, cols) != (sim.rows, sim.cols):
        raise ShapeError(f"stencil: u is {rows}x{cols}xnz but the grid is {sim.rows}x{sim.cols}")
    p = RADIUS
    upad = np.zeros((rows, cols, nz + 2 * p), dtype=np.float32)
    upad[:, :, p:p + nz] = u
    sim.alloc("u", nz + 2 * p, init=upad)
    sim.alloc("out", nz)
    for prefix in FROM.values():
        for k in range(1, p + 1):
            sim.alloc(f"{prefix}{k}", nz)
    sim.reg("cnt", 0)
    pool = ColorPool(sim.spec.routable_colors)
    stages: dict[str, list[isa.Vec]] = {"x1": [], "x2": [], "y1": [], "y2": []}
    for direction in ("east", "west", "south", "north"):
        ln, send_c, c1, c2 = _exchange_routes(sim, pool, direction)
        x, L = ln.pos, ln.length
        pre = FROM[direction]
        axis = "x" if direction in ("east", "west") else "y"
        shots = ((isa.Mem("u", offset=p), f"{pre}1", f"{pre}2"),
                 (isa.Mem(f"{pre}2"), f"{pre}3", f"{pre}4"))
        for shot, (payload, near, far) in enumerate(shots, start=1):
            stages[f"{axis}{shot}"] += [
                isa.mov(isa.FabOut(send_c), payload, nz, async_=True, mask=x < L - 1,
                        label=f"send {direction} {shot}"),
                isa.mov(isa.Mem(near), isa.FabIn(c1), nz, async_=True, mask=x >= 1,
                        label=f"recv {near}"),
                isa.mov(isa.Mem(far), isa.FabIn(c2), nz, async_=True, mask=x >= 2,
                        label=f"recv {far}"),
            ]
    # per-PE number of completions that closes each stage (ops on this PE + the stage itself)
    order = ["x1", "x2", "y1", "y2"]
    after = {"x1": ["x2"], "x2": ["y1", "xt0"], "y1": ["y2"], "y2": ["yt0"]}
    total = np.zeros((rows, cols), dtype=np.int64)
    threshold: dict[str, np.ndarray] = {}
    for name in order:
        total = total + 1 + sum(np.asarray(op.mask, dtype=np.int64) for op in stages[name])
        threshold[name] = total.copy()

    def close(name: str) -> list[isa.Instr]:
        return [isa.AddReg(reg="cnt", value=1)] + [
            isa.Activate(task=t, when=isa.Cond("cnt", "==", threshold[name]))
            for t in after[name]]

    # callbacks first: declaration order is task priority, so they run between compute steps
    for name in order:
        for i, op in enumerate(stages[name]):
            op.then = isa.Activate(task=f"{name}_done{i}")
            sim.task(f"{name}_done{i}", close(name))
    sim.task("x1", [*stages["x1"], *close("x1")], entry=True)
    for name in order[1:]:
        sim.task(name, [*stages[name], *close(name)])
    # three independent accumulations, each a chain of one-op tasks so that the callbacks
    # above get the main thread between steps (tasks are not preempted)
    z_terms = [(isa.Mem("u", offset=p + s * k), cz[k - 1]) for k in range(1, p + 1)
               for s in (-1, 1)]
    x_terms = [(isa.Mem(f"{pre}{k}"), cx[k - 1]) for k in range(1, p + 1) for pre in "WE"]
    y_terms = [(isa.Mem(f"{pre}{k}"), cy[k - 1]) for k in range(1, p + 1) for pre in "NS"]
    sim.reg("join", 0)
    first = {"z": isa.mul(isa.Mem("acc_z"), isa.Mem("u", offset=p), isa.Scalar(float(c0)), nz,
                          label="c0*u")}
    for axis, terms in (("z", z_terms), ("x", x_terms), ("y", y_terms)):
        sim.alloc(f"acc_{axis}", nz)
        steps: list[isa.Instr] = [first[axis]] if axis in first else []
        acc = isa.Mem(f"acc_{axis}")
        for j, (src, coef) in enumerate(terms):
            if axis != "z" and j == 0:
                steps.append(isa.mul(acc, src, isa.Scalar(float(coef)), nz, label="fmul"))
            else:
                steps.append(isa.fmac(acc, acc, src, isa.Scalar(float(coef)), nz,
                                      label="fmac"))
        for j, step in enumerate(steps):
            tail: list[isa.Instr] = [isa.Activate(task=f"{axis}t{j + 1}")]
            if j == len(steps) - 1:
                tail = [isa.AddReg(reg="join", value=1),
                        isa.Activate(task="sum", when=isa.Cond("join", "==", 3))]
            sim.task(f"{axis}t{j}", [step, *tail], entry=(axis == "z" and j == 0))
    sim.task("sum", [isa.add(isa.Mem("out"), isa.Mem("acc_z"), isa.Mem("acc_x"), nz),
                     isa.add(isa.Mem("out"), isa.Mem("out"), isa.Mem("acc_y"), nz)])


def coefficients(seed: int = 0) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c0 = float(rng.uniform(-1, 1))
    return c0, *(rng.uniform(-0.5, 0.5, RADIUS).astype(np.float32) for _ in range(3))


def run_stencil(spec: object, rows: int, cols: int, nz: int, seed: int = 0,
                max_cycles: int = 2_000_000) -> KernelRun:
    """One stencil step on a random field; output is the new field on every PE."""
    sim = CycleSim(spec, rows, cols)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((rows, cols, nz)).astype(np.float32)
    c0, cx, cy, cz = coefficients(seed)
    build_stencil(sim, u, c0, cx, cy, cz)
    result = sim.run(max_cycles=max_cycles)
    return KernelRun("stencil25", sim.read("out").copy(), reference(u, c0, cx, cy, cz), result)
