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
(512^3), a compute-bound (4096^3) and the 8K (8192^3) product, all full timing-only runs
of the kernel on the defective fabric. ``--no-programs`` skips this part.

Last, GenSLM-25M compiled once for the perfect wafer (meta weights, ``--genslm-seq``
tokens, batch 1) and timed with `CompiledModel.time_only` (every stage's kernels on a
timing-only fabric, no values) on the perfect wafer and on the remapped one (the same
program: the remap hides the defects behind spares, so placement does not change; each
stage's fabric is charged the detours under its rectangle). It prints the bottleneck
stage's cycles, the samples per second it allows, and the slowdown of both.
``--no-genslm`` skips it.
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
#: GEMM grid and the (m = k = n) sizes: 512 is latency-bound, 4096 compute-bound on 256^2,
#: 8192 the issue's 8K GEMM (about 6 s per timing-only run).
GEMM_GRID, GEMM_SIZES = 256, (512, 4096, 8192)
#: GenSLM-25M sequence length of the compiled-model rows (tokens, batch 1).
GENSLM_SEQ = 512


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


def genslm(spec_name: str, seq: int, seed: int = 0) -> None:
    """GenSLM-25M, compiled once, timed (`time_only`) on the perfect and remapped wafers."""
    import torch

    from waferscale.api import CompiledModel, compile
    from waferscale.fabric.defective import resolve_remap
    from waferscale.models import load_model

    spec = get_spec(spec_name)
    torch.manual_seed(0)
    model, example, _ = load_model("genslm-25m", seq=seq, batch=1, meta=True)
    start = time.perf_counter()
    base_cm = compile(model, example, spec=spec)
    prog = base_cm.program
    print(f"\ngenslm-25m on {spec.name} (seed {seed}), seq {seq}, batch 1: compiled once "
          f"({prog.mode}, {len(prog.stages)} stages, {time.perf_counter() - start:.0f} s), "
          f"timed with CompiledModel.time_only (timing-only fabrics, meta weights)")
    print(f"{'D0/mm2':>7} {'defects':>8} {'bottleneck':>18} {'cycles':>10} {'samples/s':>10} "
          f"{'slowdown':>9} {'stages slower':>13} {'sum slowdown':>12} {'run s':>6}")
    base_cycles: dict[str, float] | None = None
    base_sum = base_bottleneck = 0.0
    for density in DENSITIES:
        start = time.perf_counter()
        try:
            remap = resolve_remap(spec, (density, seed))
        except SparesExhaustedError:
            print(f"{density:>7g} {'-':>8} {'-':>18} {'-':>10} {'-':>10} {'-':>9} {'-':>13} "
                  f"{'-':>12} {'-':>6}  spares exhausted")
            continue
        cm = CompiledModel(prog, example, remap)
        rep = cm.time_only(**example)
        assert cm.last_run is not None
        cycles = {k: r.cycles for k, r in cm.last_run["runs"].items()}
        if base_cycles is None:
            base_cycles, base_sum = cycles, sum(cycles.values())
            base_bottleneck = float(rep["bottleneck_cycles"])
        slower = sum(cycles[k] > base_cycles[k] for k in cycles)
        print(f"{density:>7g} {remap.n_defects:>8} {rep['bottleneck_stage']:>18} "
              f"{rep['bottleneck_cycles']:>10.0f} {rep['samples_per_second']:>10.1f} "
              f"{rep['bottleneck_cycles'] / base_bottleneck:>9.5f} "
              f"{slower:>4}/{len(cycles):<8} {sum(cycles.values()) / base_sum:>12.5f} "
              f"{time.perf_counter() - start:>6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="wse2")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-programs", action="store_true",
                        help="skip the program slowdown part (about two minutes)")
    parser.add_argument("--no-genslm", action="store_true",
                        help="skip the GenSLM-25M part (about two minutes)")
    parser.add_argument("--genslm-seq", type=int, default=GENSLM_SEQ)
    args = parser.parse_args()
    bench(args.spec, args.seeds)
    if not args.no_programs:
        programs(args.spec)
    if not args.no_genslm:
        genslm(args.spec, args.genslm_seq)


if __name__ == "__main__":
    main()
