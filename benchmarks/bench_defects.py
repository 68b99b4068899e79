"""Benchmark: remap the full wafer at several defect densities; report time and detour cost.

Run: ``python benchmarks/bench_defects.py [--spec wse2] [--seeds 3]``. For each density
it draws Poisson maps (seeds 0..n-1), times `Remap.from_defects` and
`Remap.link_extra_cycles`, and prints the mean/max extra cycles per logical link. A map
whose spares run out is reported as such (that is a result, not a crash): on WSE-2 at
0.1 /mm^2 the neighbour rule exhausts the 12 spares of some row on most maps.

Then, for seed 0 at each density, the slowdown of whole programs on the remapped wafer
(cycles on the defective fabric / cycles on a perfect one, both timing-only): the SC22
stencil on the full program rectangle (z = 1000, 2 steps) and, if `waferscale.kernels.gemm`
is importable with its ``run``, MeshGEMM on a 256 x 256 PE grid for a latency-bound
(512^3) and a compute-bound (4096^3) product. ``--no-programs`` skips this part.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections.abc import Callable

from waferscale.errors import SparesExhaustedError
from waferscale.fabric import Fabric
from waferscale.fabric.defective import defective_fabric
from waferscale.hardware import get_spec
from waferscale.hardware.defects import Remap, generate_defects

DENSITIES = (0.0, 0.001, 0.01, 0.1)
#: Stencil depth and steps of the program benchmark (x, y: the whole program rectangle).
STENCIL_Z, STENCIL_STEPS = 1000, 2
#: GEMM grid and the (m = k = n) sizes: 512 is latency-bound, 4096 compute-bound on 256^2.
GEMM_GRID, GEMM_SIZES = 256, (512, 4096)


def bench(spec_name: str, seeds: int) -> None:
    spec = get_spec(spec_name)
    print(f"spec {spec.name}: logical {spec.rows}x{spec.cols}, hop_cycles={spec.hop_cycles}")
    header = (f"{'D0/mm2':>7} {'ok':>5} {'defects':>8} {'remapped':>9} {'remap s':>8} "
              f"{'links s':>8} {'iters':>5} {'mean extra':>11} {'max extra':>9} "
              f"{'detour links':>12}")
    print(header)
    for density in DENSITIES:
        times, link_times, results, failures = [], [], [], []
        for seed in range(seeds):
            dmap = generate_defects(spec, density, seed=seed)
            start = time.perf_counter()
            try:
                remap = Remap.from_defects(dmap, spec)
            except SparesExhaustedError as exc:
                times.append(time.perf_counter() - start)
                failures.append(exc)
                continue
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
            extra = remap.link_extra_cycles(spec.hop_cycles)
            link_times.append(time.perf_counter() - start)
            east, south = extra[0, :, :-1], extra[2, :-1, :]
            links = east.size + south.size
            results.append((dmap.n_defects, remap.n_remapped, remap.iterations,
                            float(east.sum() + south.sum()) / links, float(extra.max()),
                            int((east > 0).sum() + (south > 0).sum())))
        ok = f"{len(results)}/{seeds}"
        if results:
            d, r, it, mean, _, det = (statistics.mean(v) for v in zip(*results, strict=True))
            mx = max(res[4] for res in results)     # worst link over all maps
            print(f"{density:>7g} {ok:>5} {d:>8.0f} {r:>9.0f} {min(times):>8.3f} "
                  f"{min(link_times):>8.3f} {it:>5.1f} {mean:>11.2e} {mx:>9.1f} {det:>12.0f}")
        else:
            print(f"{density:>7g} {ok:>5} {'-':>8} {'-':>9} {min(times):>8.3f} {'-':>8} "
                  f"{'-':>5} {'-':>11} {'-':>9} {'-':>12}")
        if failures:
            print(f"        spares exhausted on {len(failures)} map(s), e.g.: {failures[0]}")


def _stencil(fabric: Fabric) -> float:
    """Stencil over the whole fabric: y over PE rows, x over columns, z in each PE."""
    from waferscale.kernels import stencil

    shape = (fabric.rows, fabric.cols, STENCIL_Z)
    return stencil.run(fabric, None, None, None, STENCIL_STEPS, shape=shape).cycles


def _gemm_runner(size: int) -> Callable[[Fabric], float] | str:
    """A timing-only GEMM on a given fabric, or why there is none (another module's API)."""
    try:
        gemm = importlib.import_module("waferscale.kernels.gemm")
    except ImportError as exc:
        return f"not available ({exc})"
    if not callable(getattr(gemm, "run", None)):
        return "not available (waferscale.kernels.gemm has no run())"

    def go(fabric: Fabric) -> float:
        return float(gemm.run((size, size), (size, size), grid=GEMM_GRID,
                              fabric=fabric).cycles)
    return go


def programs(spec_name: str, seed: int = 0) -> None:
    """Slowdown of whole programs: same program, perfect vs remapped fabric."""
    spec = get_spec(spec_name)
    cases: list[tuple[str, int, int, Callable[[Fabric], float] | str]] = [
        (f"stencil {spec.cols}x{spec.rows}x{STENCIL_Z}, {STENCIL_STEPS} steps", spec.rows,
         spec.cols, _stencil)]
    for size in GEMM_SIZES:
        cases.append((f"gemm meshgemm {size}^3 on {GEMM_GRID}^2", GEMM_GRID, GEMM_GRID,
                      _gemm_runner(size)))
    print(f"\nprogram slowdown on {spec.name} (seed {seed}): cycles defective / perfect")
    print(f"{'program':<34} {'D0/mm2':>7} {'defects':>8} {'cycles':>12} {'slowdown':>9} "
          f"{'run s':>6}")
    for name, rows, cols, runner in cases:
        if isinstance(runner, str):
            print(f"{name:<34} gemm: {runner}")
            continue
        base = None
        for density in DENSITIES:
            start = time.perf_counter()
            try:
                fabric, remap = defective_fabric(spec, rows, cols, density, seed,
                                                 timing_only=True)
            except SparesExhaustedError:
                print(f"{name:<34} {density:>7g} {'-':>8} {'-':>12} {'-':>9} {'-':>6}  "
                      f"spares exhausted")
                continue
            try:
                cycles = runner(fabric)
            except Exception as exc:  # another module's kernel: report, do not crash
                print(f"{name:<34} {density:>7g}  not usable ({type(exc).__name__}: {exc})")
                break
            base = cycles if density == 0.0 else base
            ratio = f"{cycles / base:>9.5f}" if base else f"{'-':>9}"
            print(f"{name:<34} {density:>7g} {remap.n_defects:>8} {cycles:>12.0f} {ratio} "
                  f"{time.perf_counter() - start:>6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="wse2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-programs", action="store_true",
                        help="skip the program slowdown part (about a minute)")
    args = parser.parse_args()
    bench(args.spec, args.seeds)
    if not args.no_programs:
        programs(args.spec)


if __name__ == "__main__":
    main()
