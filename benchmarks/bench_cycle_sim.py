"""Speed of the wavelet-level cycle simulator: simulated PE-cycles per CPU second.

Runs a full-grid allreduce (row chain reduce, column chain reduce, column and row
broadcast) and one 25-point stencil step on 32 x 32 and 64 x 64 grids, checks the numbers
against NumPy, and prints where the time went. Every rate is given as ratios to two
references measured in the same run:

* the same program with the NumPy router step (`Router.step_numpy`, the reference the
  compiled loop is tested against): the speed-up of the compiled step;
* one grid-wide NumPy operation (a float32 add over rows x cols values): a simulated cycle
  costs this many of them, a figure that holds on a busy or a quiet machine alike.

Rates are per CPU second of this process, steadier than wall time when other jobs share
the machine (the wall rate and the load average are printed too). Issue 19's goal is
1e7 PE-cycles/s on a 64 x 64 program. The last line is the slowest compiled run:
``PE-cycles/s: <number>``.

    python benchmarks/bench_cycle_sim.py [--wavelets 256] [--nz 64] [--grids 32 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from waferscale.fabric.cycle.router import Router
from waferscale.fabric.cycle.runs import run_allreduce, run_shift
from waferscale.fabric.cycle.sim import RunResult
from waferscale.fabric.cycle.stencil import run_stencil
from waferscale.hardware import custom_spec


def numpy_pass_s(pes: int) -> float:
    """CPU seconds of one float32 add over ``pes`` values (fastest of many)."""
    a = np.random.default_rng(0).standard_normal(pes).astype(np.float32)
    out = np.empty_like(a)
    best = float("inf")
    for _ in range(20):
        start = time.process_time()
        for _ in range(200):
            np.add(a, a, out=out)
        best = min(best, (time.process_time() - start) / 200)
    return best


def simulate(spec: object, name: str, n: int, args: argparse.Namespace, compiled: bool
             ) -> tuple[RunResult, bool, str]:
    """One program with the compiled or the NumPy router step; (result, values ok, what)."""
    Router.compiled_from_pes = 0 if compiled else None
    try:
        if name == "allreduce":
            run = run_allreduce(spec, n, n, args.wavelets, "both", "chain")
            return run.result, run.ok(), f"allreduce {args.wavelets} wavelets"
        krun = run_stencil(spec, n, n, args.nz)
        return krun.result, krun.max_error() < 1e-5, f"stencil step nz={args.nz}"
    finally:
        Router.compiled_from_pes = 1024


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wavelets", type=int, default=256, help="allreduce message size")
    parser.add_argument("--nz", type=int, default=64, help="stencil z-column per PE")
    parser.add_argument("--grids", type=int, nargs="+", default=[32, 64])
    args = parser.parse_args(argv)
    spec = custom_spec(name="bench", rows=max(args.grids), cols=max(args.grids))
    Router.compiled_from_pes = 0
    run_shift(spec, 2, 2, 2)        # load the compiled step before anything is timed
    Router.compiled_from_pes = 1024
    rates = []
    for n in args.grids:
        unit = numpy_pass_s(n * n)
        for name in ("allreduce", "stencil"):
            result, ok, what = simulate(spec, name, n, args, compiled=True)
            ref, ref_ok, _ = simulate(spec, name, n, args, compiled=False)
            rate, ref_rate = result.pe_cycles_per_cpu_s, ref.pe_cycles_per_cpu_s
            rates.append(rate)
            per_cycle = result.cpu_s / max(result.cycles, 1)
            print(f"{n}x{n} {what}: {result.cycles} cycles, {rate:,.0f} PE-cycles per CPU "
                  f"second = {rate / ref_rate:.2f}x the NumPy router's ({ref_rate:,.0f}); a "
                  f"cycle costs {per_cycle / unit:,.0f} grid-wide NumPy adds "
                  f"(NumPy router: {ref.cpu_s / max(ref.cycles, 1) / unit:,.0f}); "
                  f"{result.pe_cycles_per_s:,.0f} PE-cycles/s wall; values "
                  f"{'ok' if ok and ref_ok else 'WRONG'}")
            for line in result.profile_lines():
                print(f"    {line}")
            if not (ok and ref_ok) or ref.cycles != result.cycles:
                print("values disagree with NumPy or between the two routers", file=sys.stderr)
                sys.exit(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average {load:.2f} on {os.cpu_count()} CPUs")
    slowest = min(rates)
    print(f"PE-cycles/s: {slowest:.0f}")
    return slowest


if __name__ == "__main__":
    main()
