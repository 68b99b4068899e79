"""Benchmark: remap the full wafer at several defect densities; report time and detour cost.

Run: ``python benchmarks/bench_defects.py [--spec wse2] [--seeds 3]``. For each density
it draws Poisson maps (seeds 0..n-1), times `Remap.from_defects` and
`Remap.link_extra_cycles`, and prints the mean/max extra cycles per logical link. A map
whose spares run out is reported as such (that is a result, not a crash): on WSE-2 at
0.1 /mm^2 the neighbour rule exhausts the 12 spares of some row on most maps.
"""

from __future__ import annotations

import argparse
import statistics
import time

from waferscale.errors import SparesExhaustedError
from waferscale.hardware import get_spec
from waferscale.hardware.defects import Remap, generate_defects

DENSITIES = (0.0, 0.001, 0.01, 0.1)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="wse2")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    bench(args.spec, args.seeds)


if __name__ == "__main__":
    main()
