"""Speed of the fast fabric model on a full WSE-2 (755 x 994), as a share of plain NumPy's.

A PE-update is one PE completing one primitive (a neighbour shift of a K-word tile followed
by a multiply-add). The reference is a plain NumPy step over the same [rows, cols, K]
arrays that moves and updates the values without any clocks, so the ratio shows what the
bookkeeping (per-PE CE and port clocks, link counters, SRAM) costs. The two run in one
process, one step of each in turn, and each keeps its fastest step, so a busy machine
slows both alike; every figure is printed as a ratio to the NumPy step of the same run
(issue 19's goal: at least 50 % of its rate at K = 16 and 10 % at K = 1).

With ``--zeros``, a share of the values is zero: the FMAC skips zeros, so PEs' cycles
differ and the clocks are per-PE arrays from the first step (the figures above keep them
compact: every PE of a line does the same work).

    python benchmarks/bench_fabric.py [--repeats 5] [--k 1 4 16] [--zeros 0.1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import compute as cp
from waferscale.fabric import movement as mv
from waferscale.hardware import get_spec


def values(rows: int, cols: int, k: int, zeros: float) -> np.ndarray:
    """The tiles: normal values, a share ``zeros`` of them set to zero."""
    x = np.random.default_rng(0).standard_normal((rows, cols, k), np.float32)
    if zeros:
        x[np.random.default_rng(1).random(x.shape) < zeros] = 0
    return x


def fabric_stepper(spec, k: int, zeros: float = 0.0) -> Callable[[], None]:
    """One shift (east, cyclic) + FMAC step of the fast model, accumulating as it goes."""
    fabric = Fabric(spec)
    x = values(fabric.rows, fabric.cols, k, zeros)
    t = MeshTensor.from_numpy(fabric, x)
    state = {"acc": MeshTensor.from_numpy(fabric, np.zeros_like(x))}

    def step() -> None:
        moved = mv.shift(t, "east", 1, cyclic=True)
        acc = cp.fmac(state["acc"], moved, 0.5)
        moved.free()
        state["acc"].free()
        state["acc"] = acc

    return step


def numpy_stepper(rows: int, cols: int, k: int, zeros: float = 0.0) -> Callable[[], None]:
    """The same step on bare arrays: the values only, no clocks."""
    x = values(rows, cols, k, zeros)
    state = {"acc": np.zeros_like(x)}

    def step() -> None:
        moved = np.roll(x, 1, axis=1)
        state["acc"] = state["acc"] + moved * np.float32(0.5)

    return step


def fastest(steps: list[Callable[[], None]], repeats: int) -> list[float]:
    """Each step's fastest time over ``repeats`` rounds, the steps taking turns."""
    best = [float("inf")] * len(steps)
    for step in steps:
        step()      # first touch of the arrays, outside the timing
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start = time.perf_counter()
            step()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4, 16], help="words per PE")
    parser.add_argument("--zeros", type=float, default=0.0,
                        help="share of the values that are zero: the FMAC skips them, so "
                             "PEs' cycles differ and the clocks are per-PE arrays")
    args = parser.parse_args(argv)
    spec = get_spec("wse2")
    pes = spec.pes
    print(f"fabric {spec.rows} x {spec.cols} = {pes:,} PEs; shift(east, cyclic) + fmac per "
          f"step; reference: the same step in plain NumPy without clocks, same run"
          + (f"; {100 * args.zeros:g} % of the values zero" if args.zeros else ""))
    print(f"{'K':>4} {'fabric ms':>10} {'numpy ms':>9} {'time ratio':>11} "
          f"{'rate vs numpy':>14}")
    shares = {}
    for k in args.k:
        f, n = fastest([fabric_stepper(spec, k, args.zeros),
                        numpy_stepper(spec.rows, spec.cols, k, args.zeros)], args.repeats)
        shares[k] = n / f
        print(f"{k:>4} {1e3 * f:>10.1f} {1e3 * n:>9.1f} {f / n:>10.1f}x {100 * n / f:>13.1f}%")
    print("fabric rate as a share of NumPy's: "
          + ", ".join(f"K={k}: {100 * s:.1f}%" for k, s in shares.items()))
    return shares


if __name__ == "__main__":
    main()
