"""GEMM 2K / 8K / 16K (square) on 360^2 .. 750^2 PEs of a WSE-2: SUMMA, Cannon, MeshGEMM.

For every (size, grid, algorithm): simulated time and compute efficiency from `gemm.cost`
(the closed form the tests check against the fabric) and the wall time that took. Then,
for the grids named by ``--fabric``, the same kernels run on timing-only fabrics (every
PE's clocks and ports, no values) with their wall time. A timing-only run costs about
p steps x p^2 PEs of vectorised work, so it grows as p^3: 8-18 s per algorithm at 360^2 on
the build machine, 70-290 s at 720^2; the default runs only the 360^2 grid.

    python benchmarks/bench_gemm.py [--dtype fp32] [--fabric 360 [720 ...]]
"""

from __future__ import annotations

import argparse
import time

from waferscale.hardware import get_spec
from waferscale.kernels import gemm

SIZES = (2048, 8192, 16384)
GRIDS = (360, 480, 600, 720, 750)


def closed_form(spec, dtype: str) -> None:
    print(f"{'size':>6} {'grid':>8} " + " ".join(f"{a:>24}" for a in gemm.ALGORITHMS)
          + f" {'cost() wall':>12}")
    print(f"{'':>6} {'':>8} " + " ".join(f"{'time us   eff':>24}" for _ in gemm.ALGORITHMS))
    for size in SIZES:
        for p in GRIDS:
            cells = []
            wall = time.perf_counter()
            for a in gemm.ALGORITHMS:
                need = gemm.sram_bytes(size, size, size, p, dtype, "fp32", a)
                if need > spec.sram_bytes:
                    cells.append(f"{'SRAM ' + str(need // 1024) + ' KB':>24}")
                    continue
                c = gemm.cost(size, size, size, algorithm=a, grid=p, spec=spec, dtype=dtype)
                cells.append(f"{c.seconds * 1e6:>12.1f} {c.efficiency:>11.2f}")
            wall = time.perf_counter() - wall
            print(f"{size:>6} {p:>4}^2   " + " ".join(cells) + f" {wall * 1e3:>9.1f} ms")


def on_fabric(spec, dtype: str, grids: list[int], sizes: list[int]) -> None:
    print("\ntiming-only fabric runs (cycles equal cost() exactly; see tests/test_gemm.py)")
    print(f"{'size':>6} {'grid':>8} {'algorithm':>10} {'time us':>10} {'eff':>6} "
          f"{'cost() us':>10} {'wall s':>8}")
    for size in sizes:
        for p in grids:
            for a in gemm.ALGORITHMS:
                if gemm.sram_bytes(size, size, size, p, dtype, "fp32", a) > spec.sram_bytes:
                    print(f"{size:>6} {p:>4}^2   {a:>10} {'does not fit the SRAM':>30}")
                    continue
                wall = time.perf_counter()
                r = gemm.run((size, size), (size, size), algorithm=a, grid=p, spec=spec,
                             dtype=dtype)
                wall = time.perf_counter() - wall
                c = gemm.cost(size, size, size, algorithm=a, grid=p, spec=spec, dtype=dtype)
                print(f"{size:>6} {p:>4}^2   {a:>10} {r.seconds * 1e6:>10.1f} "
                      f"{r.efficiency:>6.2f} {c.seconds * 1e6:>10.1f} {wall:>8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="wse2")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--clock-ghz", type=float, default=None,
                    help="model at this clock (WaferLLM quotes 1.1 GHz); default: the spec's")
    ap.add_argument("--fabric", type=int, nargs="*", default=[360],
                    help="grids (p for p x p) to also run on timing-only fabrics")
    ap.add_argument("--fabric-sizes", type=int, nargs="*", default=[2048])
    args = ap.parse_args()
    spec = get_spec(args.spec)
    if args.clock_ghz:
        spec = spec.replace(clock_hz=args.clock_ghz * 1e9)
    print(f"GEMM on {spec.name} at {spec.clock_hz / 1e9:.2f} GHz, {args.dtype} inputs, fp32 "
          f"accumulate; efficiency = useful FMACs / (p^2 x peak FMAC rate x cycles)\n")
    closed_form(spec, args.dtype)
    if args.fabric:
        on_fabric(spec, args.dtype, args.fabric, args.fabric_sizes)


if __name__ == "__main__":
    main()
