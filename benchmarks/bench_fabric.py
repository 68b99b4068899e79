"""Simulated PE-updates per second of the fast fabric model on a full WSE-2 (755 x 994).

A PE-update is one PE completing one primitive (a neighbour shift of a K-word tile followed
by a multiply-add). The baseline is a plain NumPy loop over the same [rows, cols, K] arrays
that moves and updates the values without any clocks, so the ratio shows what the
bookkeeping (per-PE CE and port clocks, link counters, SRAM) costs. Both run in one process,
one after the other, and are compared as a ratio.
"""

from __future__ import annotations

import time

import numpy as np

from waferscale.fabric import Fabric, MeshTensor
from waferscale.fabric import compute as cp
from waferscale.fabric import movement as mv
from waferscale.hardware import get_spec

REPEATS = 5


def fabric_step(spec, k: int) -> float:
    fabric = Fabric(spec)
    x = np.random.default_rng(0).standard_normal((fabric.rows, fabric.cols, k), np.float32)
    t = MeshTensor.from_numpy(fabric, x)
    acc = MeshTensor.from_numpy(fabric, np.zeros_like(x))
    start = time.perf_counter()
    for _ in range(REPEATS):
        moved = mv.shift(t, "east", 1, cyclic=True)
        acc2 = cp.fmac(acc, moved, 0.5)
        moved.free()
        acc.free()
        acc = acc2
    return (time.perf_counter() - start) / REPEATS


def numpy_step(rows: int, cols: int, k: int) -> float:
    x = np.random.default_rng(0).standard_normal((rows, cols, k), np.float32)
    acc = np.zeros_like(x)
    start = time.perf_counter()
    for _ in range(REPEATS):
        moved = np.roll(x, 1, axis=1)
        acc = acc + moved * np.float32(0.5)
    return (time.perf_counter() - start) / REPEATS


def main() -> None:
    spec = get_spec("wse2")
    pes = spec.pes
    print(f"fabric {spec.rows} x {spec.cols} = {pes:,} PEs; shift(east, cyclic) + fmac per step")
    print(f"{'K':>4} {'fabric ms':>10} {'numpy ms':>9} {'fabric M PE-upd/s':>18} "
          f"{'numpy M PE-upd/s':>17} {'ratio':>6}")
    worst = None
    for k in (1, 4, 16):
        f = fabric_step(spec, k)
        n = numpy_step(spec.rows, spec.cols, k)
        rate = pes / f / 1e6
        worst = rate if worst is None else min(worst, rate)
        print(f"{k:>4} {1e3 * f:>10.1f} {1e3 * n:>9.1f} {rate:>18.1f} {pes / n / 1e6:>17.1f} "
              f"{f / n:>6.1f}")
    print(f"PE-updates/s: {worst * 1e6:.3g}")


if __name__ == "__main__":
    main()
